# flowvae: params.yaml -> data -> trained VAEs -> evaluations -> tables and figures.
# `snakemake --cores 2` builds the default profile's summary (reports/<profile>/summary.md);
# `snakemake --cores 2 reports/quick/table1.md`, `snakemake --cores 2 --config profile=smoke`,
# or any run as a target: `snakemake --cores 2 results/quick/binarized_mnist/nf7/seed0/eval.json`.

from snakemake.utils import min_version

min_version("9.0")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    """The default profile's summary page: every table and figure; for a bare `snakemake --report`, what was built."""
    default_target: True
    input:
        built_reports(PROFILE) if "--report" in sys.argv else f"reports/{PROFILE}/summary.md",
