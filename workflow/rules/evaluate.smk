rule evaluate:
    """Importance-sampled log p(x), ELBO terms and diagnostics of one trained run."""
    input:
        model=f"{RUN}/model.safetensors",
        settings=f"{RUN}/settings.json",
        timings=f"{RUN}/train_timings.json",
        data=lambda w: plan.prepared_files(config, w.profile, w.dataset),
    output:
        metrics=f"{RUN}/eval.json",
        timings=f"{RUN}/eval_timings.json",
        samples=f"{RUN}/samples.npz",
    params:
        settings=lambda w: plan.param_values(config, plan.eval_param_keys(w.profile)),
        file=PARAMS_FILE,
    log:
        f"logs/evaluate/{RUN_LOG}",
    threads: resource("threads")
    resources:
        mem_mb=resource("mem_mb"),
        runtime=resource("runtime_min"),
        gpu=resource("gpus"),
        gpu_hundredths=gpu_share,
    shell:
        "flowvae evaluate --params {params.file} --profile {wildcards.profile} --dataset {wildcards.dataset}"
        " --model {wildcards.model} --seed {wildcards.seed} --threads {threads} > {log} 2>&1"
