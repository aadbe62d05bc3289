rule train:
    """Train one (profile, dataset, model, seed); rerunning after a kill or a time box resumes from its checkpoint."""
    input:
        rules.prepare.output,
    output:
        model=f"{RUN}/{layout.MODEL_FILE}",
        settings=f"{RUN}/{layout.SETTINGS_FILE}",
        history=f"{RUN}/{layout.HISTORY_FILE}",
        curves=f"{RUN}/{layout.CURVES_FILE}",
        timings=f"{RUN}/{layout.TIMINGS_FILE}",
    params:
        settings=lambda w: plan.param_values(config, plan.train_param_keys(config, run_of(w), w.profile)),
    log:
        f"logs/train/{RUN_LOG}",
    threads: resource("threads")
    resources:
        mem_mb=resource("mem_mb"),
        runtime=resource("runtime_min"),
        gpu=resource("gpus"),
        gpu_hundredths=gpu_share,
    shell:
        "flowvae train --params \"$FLOWVAE_PARAMS\" --profile {wildcards.profile} --dataset {wildcards.dataset}"
        " --model {wildcards.model} --seed {wildcards.seed} --threads {threads} --on-change restart > {log} 2>&1"
