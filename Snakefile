# flowvae: params.yaml -> data -> trained VAEs -> evaluations -> tables and figures.
# `snakemake --cores 2 reports/table1.md` (default profile: params.yaml's `profile`),
# `snakemake --cores 2 --config profile=smoke -- reports/summary.md`, or any run as a target:
# `snakemake --cores 2 results/quick/binarized_mnist/nf7/seed0/eval.json`.

configfile: "params.yaml"

include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
