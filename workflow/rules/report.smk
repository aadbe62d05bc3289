localrules:
    summary,
    table,


# The figures are named <kind>_<dataset>.png; data set names contain underscores, so the data set is matched by name.
FIGURE_PATTERN = "{kind}_{dataset,%s}.png" % "|".join(sorted(config["datasets"], key=len, reverse=True))


rule summary:
    """reports/<profile>/summary.md: every table and figure of the profile; summary_<name>.md: params.yaml's summaries.<name>."""
    input:
        tables=lambda w: expand(rules.table.output.md, profile=w.profile, table=plan.summary_tables(config, w.summary)),
        figures=lambda w: f"reports/{w.profile}/{plan.figures_name(w.summary)}",
    output:
        "reports/{profile}/{summary}.md",
    wildcard_constraints:
        summary="|".join(plan.summary_names(config)),
    log:
        "logs/report/{profile}/{summary}.log",
    shell:
        "flowvae report summary --out {output} {input.tables} {input.figures} > {log} 2>&1"


rule table:
    """One results table (Markdown and LaTeX) with the published numbers beside ours."""
    input:
        evals=lambda w: run_outputs(plan.table_runs(profile_params(w), w.table), w.profile, rules.evaluate.output.metrics),
        per_image=lambda w: run_outputs(plan.table_runs(profile_params(w), w.table), w.profile, rules.evaluate.output.per_image),
        # ais.json and its per-image values, for tables that show an AIS metric (ais_neg_log_px, is_bias)
        ais=lambda w: run_outputs(plan.table_ais_runs(profile_params(w), w.table), w.profile, rules.ais.output.metrics, rules.ais.output.per_image),
        gaps=lambda w: run_outputs(plan.table_runs(profile_params(w), w.table), w.profile, rules.gaps.output.metrics, rules.gaps.output.per_image)
        if plan.table_needs_gaps(config, w.table) else [],
        bdmc=lambda w: run_outputs(plan.bdmc_runs(profile_params(w), w.table), w.profile, rules.bdmc.output.metrics),
        sample_quality=lambda w: run_outputs(plan.table_runs(profile_params(w), w.table), w.profile, rules.sample_quality.output.metrics)
        if plan.table_needs_sample_quality(config, w.table) else [],
        gaussian_obs=lambda w: run_outputs(plan.gaussian_obs_runs(profile_params(w), w.table), w.profile, rules.gaussian_obs.output.metrics),
        # The models too: a model replaced or corrupted after its evaluation makes the table out of date, so
        # a failed re-evaluation can never leave an older table looking current.
        models=lambda w: run_outputs(plan.table_runs(profile_params(w), w.table), w.profile, rules.train.output.model),
        timings=lambda w: run_outputs(
            plan.table_runs(profile_params(w), w.table), w.profile, rules.evaluate.output.timings, rules.train.output.timings
        ),
        published=PUBLISHED_CSV,
        sources=SOURCES_CSV,
    output:
        # `snakemake --report report.html`: each table in "Tables", captioned from its own title and text.
        md=report(
            "reports/{profile}/{table}.md",
            caption="../report/table.rst",
            category="Tables",
            subcategory="{table}",
            labels={"table": "{table}", "format": "Markdown"},
        ),
        tex=report(
            "reports/{profile}/{table}.tex",
            caption="../report/table.rst",
            category="Tables",
            subcategory="{table}",
            labels={"table": "{table}", "format": "LaTeX"},
        ),
        # the table as a page of its own, which the report shows in its main pane
        html=report(
            "reports/{profile}/{table}.html",
            caption="../report/table.rst",
            category="Tables",
            subcategory="{table}",
            labels={"table": "{table}", "format": "HTML"},
        ),
    params:
        spec=lambda w: plan.param_values(config, plan.table_param_keys(config, w.table)),
    log:
        "logs/report/{profile}/{table}.log",
    shell:
        "flowvae report table --params \"$FLOWVAE_PARAMS\" --profile {wildcards.profile} --table {wildcards.table}"
        " --published {input.published} --out-md {output.md} --out-tex {output.tex} --out-html {output.html} {input.evals}"
        " > {log} 2>&1"


rule figures:
    """The figures notebook, executed by papermill over the eval, history and samples of a summary page's runs."""
    input:
        notebook=config["figures"]["notebook"],
        runs=lambda w: run_outputs(
            plan.summary_runs(profile_params(w), f"summary{w.part}"),
            w.profile,
            rules.evaluate.output.metrics,
            rules.train.output.history,
            rules.evaluate.output.samples,
        ),
        # the FCD that titles the samples of the tables that show it
        sample_quality=lambda w: run_outputs(plan.summary_sample_quality_runs(profile_params(w), f"summary{w.part}"), w.profile,
                                             rules.sample_quality.output.metrics),
    output:
        # Every PNG of the folder in the report's "Figures", one subcategory per data set.
        figures=report(
            directory("reports/{profile}/figures{part}"),
            patterns=[FIGURE_PATTERN],
            caption="../report/figure.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"figure": "{kind}", "data set": "{dataset}"},
        ),
        notebook="reports/{profile}/figures{part}.ipynb",
    wildcard_constraints:
        # "" for the full summary's figures, "_<name>" for each of params.yaml's summaries
        part="(?:%s)" % "|".join(plan.figures_name(s).removeprefix("figures") for s in plan.summary_names(config)),
    params:
        spec=lambda w: plan.param_values(config, plan.figures_param_keys(config, f"summary{w.part}")),
    log:
        "logs/report/{profile}/figures{part}.log",
    shell:
        "flowvae figures --params \"$FLOWVAE_PARAMS\" --profile {wildcards.profile} --notebook {input.notebook}"
        " --summary summary{wildcards.part} --out-dir {output.figures} --executed {output.notebook} > {log} 2>&1"


rule verify:
    """Retrain one seed of each row of a table from its settings record and compare the files byte for byte."""
    input:
        models=lambda w: run_outputs(plan.verify_runs(profile_params(w), w.table), w.profile, rules.train.output.model),
        evals=lambda w: run_outputs(plan.verify_runs(profile_params(w), w.table), w.profile, rules.evaluate.output.metrics),
    output:
        "reports/{profile}/verify_{table}.txt",
    params:
        runs=lambda w: " ".join(r.folder(w.profile) for r in plan.verify_runs(profile_params(w), w.table)),
    log:
        "logs/verify/{profile}/{table}.log",
    shell:
        "flowvae verify --params \"$FLOWVAE_PARAMS\" --out {output} {params.runs} > {log} 2>&1"
