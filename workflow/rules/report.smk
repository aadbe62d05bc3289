PUBLISHED = "reference/paper_results.csv"


localrules:
    summary,
    table,


rule summary:
    """reports/summary.md: every table and figure of the profile."""
    input:
        tables=expand("reports/{table}.md", table=plan.table_names(config)),
        figures="reports/figures",
    output:
        "reports/summary.md",
    log:
        "logs/report/summary.log",
    shell:
        "{FLOWVAE} report summary --out {output} {input.tables} {input.figures} > {log} 2>&1"


rule table:
    """One results table (Markdown and LaTeX) with the published numbers beside ours."""
    input:
        evals=lambda w: eval_files(plan.table_runs(config, w.table)),
        published=PUBLISHED,
    output:
        md="reports/{table}.md",
        tex="reports/{table}.tex",
    log:
        "logs/report/{table}.log",
    shell:
        "{FLOWVAE} report table --params params.yaml --profile {PROFILE} --table {wildcards.table}"
        " --published {input.published} --out-md {output.md} --out-tex {output.tex} {input.evals} > {log} 2>&1"


rule figures:
    """The figures notebook, executed by papermill over every run's eval, history and samples."""
    input:
        notebook=config["figures"]["notebook"],
        evals=eval_files(plan.all_runs(config)),
        histories=[run.path(PROFILE, "train.jsonl") for run in plan.all_runs(config)],
        samples=[run.path(PROFILE, "samples.npz") for run in plan.all_runs(config)],
    output:
        figures=directory("reports/figures"),
        notebook="reports/figures.ipynb",
    log:
        "logs/report/figures.log",
    shell:
        "{FLOWVAE} figures --profile {PROFILE} --notebook {input.notebook} --out-dir {output.figures}"
        " --executed {output.notebook} > {log} 2>&1"
