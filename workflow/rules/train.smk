rule train:
    """Train one (profile, dataset, model, seed); rerunning after a kill or a time box resumes from its checkpoint."""
    input:
        lambda w: plan.prepared_files(config, w.profile, w.dataset),
    output:
        model=f"{RUN}/model.safetensors",
        settings=f"{RUN}/settings.json",
        history=f"{RUN}/train.jsonl",
        curves=f"{RUN}/train_curves.csv",
        timings=f"{RUN}/train_timings.json",
    params:
        settings=lambda w: plan.param_values(config, plan.train_param_keys(config, run_of(w), w.profile)),
        file=PARAMS_FILE,
    log:
        f"logs/train/{RUN_LOG}",
    threads: resource("threads")
    resources:
        mem_mb=resource("mem_mb"),
        runtime=resource("runtime_min"),
        gpu=resource("gpus"),
        gpu_hundredths=gpu_share,
    shell:
        "flowvae train --params {params.file} --profile {wildcards.profile} --dataset {wildcards.dataset}"
        " --model {wildcards.model} --seed {wildcards.seed} --threads {threads} --on-change restart > {log} 2>&1"
