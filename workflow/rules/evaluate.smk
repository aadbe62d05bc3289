rule evaluate:
    """Importance-sampled log p(x), ELBO terms and diagnostics of one trained run."""
    input:
        model=rules.train.output.model,
        settings=rules.train.output.settings,
        timings=rules.train.output.timings,
        data=rules.prepare.output,
    output:
        metrics=f"{RUN}/{layout.EVAL_FILE}",
        headline=f"{RUN}/{layout.METRICS_FILE}",
        timings=f"{RUN}/{layout.EVAL_TIMINGS_FILE}",
        samples=f"{RUN}/{layout.SAMPLES_FILE}",
        per_image=f"{RUN}/{layout.PER_IMAGE_FILE}",
    params:
        settings=lambda w: plan.param_values(config, plan.eval_param_keys(w.profile)),
    log:
        f"logs/evaluate/{RUN_LOG}",
    threads: resource("threads")
    resources:
        mem_mb=resource("mem_mb"),
        runtime=resource("runtime_min"),
        gpu=resource("gpus"),
        gpu_hundredths=gpu_share,
    shell:
        "flowvae evaluate --params \"$FLOWVAE_PARAMS\" --profile {wildcards.profile} --dataset {wildcards.dataset}"
        " --model {wildcards.model} --seed {wildcards.seed} --threads {threads} > {log} 2>&1"


rule gaps:
    """Inference gaps (runs/gaps.py): L[q], the per-image optimum L[q*] and AIS log p(x) on a seeded test subset."""
    input:
        model=rules.train.output.model,
        settings=rules.train.output.settings,
        data=rules.prepare.output,
    output:
        metrics=f"{RUN}/{layout.GAPS_FILE}",
        per_image=f"{RUN}/{layout.GAPS_PER_IMAGE_FILE}",
    params:
        settings=lambda w: plan.param_values(config, plan.gaps_param_keys(w.profile)),
        folder=lambda w: RUN.format(**w),
    log:
        f"logs/gaps/{RUN_LOG}",
    threads: resource("threads")
    resources:
        mem_mb=resource("mem_mb"),
        runtime=resource("runtime_min"),
        gpu=resource("gpus"),
        gpu_hundredths=gpu_share,
    shell:
        "flowvae gaps {params.folder} --params \"$FLOWVAE_PARAMS\" --threads {threads} > {log} 2>&1"


rule bdmc:
    """BDMC (runs/ais.py): forward and reverse AIS on images simulated from one trained run, at the profile's AIS settings."""
    input:
        model=rules.train.output.model,
        settings=rules.train.output.settings,
        data=rules.prepare.output,
    output:
        metrics=f"{RUN}/{layout.BDMC_FILE}",
        per_image=f"{RUN}/{layout.BDMC_PER_IMAGE_FILE}",
    params:
        settings=lambda w: plan.param_values(config, plan.ais_param_keys(w.profile)),
        folder=lambda w: RUN.format(**w),
    log:
        f"logs/bdmc/{RUN_LOG}",
    threads: resource("threads")
    resources:
        mem_mb=resource("mem_mb"),
        runtime=resource("runtime_min"),
        gpu=resource("gpus"),
        gpu_hundredths=gpu_share,
    shell:
        "flowvae bdmc {params.folder} --params \"$FLOWVAE_PARAMS\" --threads {threads} > {log} 2>&1"


rule ais:
    """log p(x) by annealed importance sampling (runs/ais.py) on a seeded subset of the test images of one trained run."""
    input:
        model=rules.train.output.model,
        settings=rules.train.output.settings,
        data=rules.prepare.output,
    output:
        metrics=f"{RUN}/{layout.AIS_FILE}",
        per_image=f"{RUN}/{layout.AIS_PER_IMAGE_FILE}",
        timings=f"{RUN}/{layout.AIS_TIMINGS_FILE}",
    params:
        settings=lambda w: plan.param_values(config, plan.ais_param_keys(w.profile)),
    log:
        f"logs/ais/{RUN_LOG}",
    threads: resource("threads")
    resources:
        mem_mb=resource("mem_mb"),
        runtime=resource("runtime_min"),
        gpu=resource("gpus"),
        gpu_hundredths=gpu_share,
    shell:
        "flowvae evaluate --estimator ais --params \"$FLOWVAE_PARAMS\" --profile {wildcards.profile} --dataset {wildcards.dataset}"
        " --model {wildcards.model} --seed {wildcards.seed} --threads {threads} > {log} 2>&1"


rule classifier:
    """A data set's feature classifier (runs/sample_quality.py), trained on its training split and labels."""
    input:
        data=rules.prepare.output,
    output:
        weights=f"{layout.CLASSIFIER_PATTERN}/{layout.CLASSIFIER_WEIGHTS}",
        record=f"{layout.CLASSIFIER_PATTERN}/{layout.CLASSIFIER_RECORD}",
    params:
        settings=lambda w: plan.param_values(config, plan.sample_quality_param_keys(w.profile)),
    log:
        "logs/classifier/{profile}/{dataset}.log",
    threads: resource("threads")
    resources:
        mem_mb=resource("mem_mb"),
        runtime=resource("runtime_min"),
        gpu=resource("gpus"),
        gpu_hundredths=gpu_share,
    shell:
        "flowvae classifier --params \"$FLOWVAE_PARAMS\" --profile {wildcards.profile} --dataset {wildcards.dataset}"
        " --threads {threads} > {log} 2>&1"


rule sample_quality:
    """The Fréchet classifier distance of one trained run's samples to its test images (sample_quality.json)."""
    input:
        model=rules.train.output.model,
        settings=rules.train.output.settings,
        classifier=rules.classifier.output.weights,
        data=rules.prepare.output,
    output:
        metrics=f"{RUN}/{layout.SAMPLE_QUALITY_FILE}",
    params:
        settings=lambda w: plan.param_values(config, plan.sample_quality_param_keys(w.profile)),
        folder=lambda w: RUN.format(**w),
    log:
        f"logs/sample_quality/{RUN_LOG}",
    threads: resource("threads")
    resources:
        mem_mb=resource("mem_mb"),
        runtime=resource("runtime_min"),
        gpu=resource("gpus"),
        gpu_hundredths=gpu_share,
    shell:
        "flowvae sample-quality {params.folder} --params \"$FLOWVAE_PARAMS\" --threads {threads} > {log} 2>&1"


rule gaussian_obs:
    """A trained VAE decoder's log p under the GAN's Gaussian observation model (gaussian_obs.json), for tables beside a GAN."""
    input:
        model=rules.train.output.model,
        settings=rules.train.output.settings,
        data=rules.prepare.output,
    output:
        metrics=f"{RUN}/{layout.GAUSSIAN_OBS_FILE}",
        per_image=f"{RUN}/{layout.GAUSSIAN_OBS_PER_IMAGE_FILE}",
    params:
        settings=lambda w: plan.param_values(config, plan.ais_param_keys(w.profile)),
        folder=lambda w: RUN.format(**w),
    log:
        f"logs/gaussian_obs/{RUN_LOG}",
    threads: resource("threads")
    resources:
        mem_mb=resource("mem_mb"),
        runtime=resource("runtime_min"),
        gpu=resource("gpus"),
        gpu_hundredths=gpu_share,
    shell:
        "flowvae gaussian-obs {params.folder} --params \"$FLOWVAE_PARAMS\" --threads {threads} > {log} 2>&1"
