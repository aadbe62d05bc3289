rule train:
    """Train one (profile, dataset, model, seed); rerunning after a kill resumes from its checkpoint."""
    input:
        lambda w: plan.prepared_files(config, w.profile, w.dataset),
    output:
        model=f"{RUN}/model.safetensors",
        history=f"{RUN}/train.jsonl",
    log:
        f"logs/train/{RUN_LOG}",
    threads: resource("threads", 1)
    resources:
        mem_mb=resource("mem_mb", 4000),
        runtime=resource("runtime_min", 120),
        gpu=resource("gpus", 0),
    shell:
        "{FLOWVAE} train --profile {wildcards.profile} --dataset {wildcards.dataset} --model {wildcards.model}"
        " --seed {wildcards.seed} --threads {threads} > {log} 2>&1"
