rule evaluate:
    """Importance-sampled log p(x), ELBO terms and diagnostics of one trained run."""
    input:
        model=f"{RUN}/model.safetensors",
        history=f"{RUN}/train.jsonl",
        data=lambda w: plan.prepared_files(config, w.profile, w.dataset),
    output:
        metrics=f"{RUN}/eval.json",
        samples=f"{RUN}/samples.npz",
    log:
        f"logs/evaluate/{RUN_LOG}",
    threads: resource("threads", 1)
    resources:
        mem_mb=resource("mem_mb", 4000),
        runtime=resource("runtime_min", 120),
        gpu=resource("gpus", 0),
    shell:
        "{FLOWVAE} evaluate --profile {wildcards.profile} --dataset {wildcards.dataset} --model {wildcards.model}"
        " --seed {wildcards.seed} --threads {threads} > {log} 2>&1"
