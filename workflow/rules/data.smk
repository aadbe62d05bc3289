rule prepare:
    """Download (mirror first), verify and prepare one data set for one profile."""
    output:
        expand("{root}/{{profile}}/{{dataset}}/{split}.npz", root=config["data"]["prepared_dir"], split=SPLITS),
    params:
        settings=lambda w: plan.param_values(config, plan.prepare_param_keys(config, w.dataset, w.profile)),
    log:
        "logs/prepare/{profile}/{dataset}.log",
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "flowvae prepare --params \"$FLOWVAE_PARAMS\" --profile {wildcards.profile} --dataset {wildcards.dataset} > {log} 2>&1"
