import os
import sys

from snakemake.exceptions import WorkflowError

from flowvae import plan
from flowvae.config import read_params
from flowvae.schema import ParamsError, validate_params
from flowvae.settings import Resources as JobResources
from flowvae.variants import WILDCARD_PATTERN

# params.yaml is read (and validated) here rather than by `configfile:`, so that a syntax error is
# reported once with file, line and column. `--config profile=...` (or any top-level key) overrides it;
# `--config params_file=other.yaml` reads another file.
PARAMS_FILE = config.pop("params_file", "params.yaml")
PUBLISHED = "reference/paper_results.csv"
try:
    _params = {**read_params(PARAMS_FILE), **config}
    _where = PARAMS_FILE + (f" (with --config {', '.join(sorted(config))})" if config else "")
    validate_params(_params, source=_where, published=PUBLISHED)
except ParamsError as exc:
    raise WorkflowError(str(exc)) from None
config.update(_params)

PROFILE = config["profile"]
# The rules call the `flowvae` command of the environment that runs Snakemake.
shell.prefix(f'export PATH="{os.path.dirname(sys.executable)}:$PATH"; ')
RUN = "results/{profile}/{dataset}/{model}/seed{seed}"
RUN_LOG = "{profile}/{dataset}/{model}/seed{seed}.log"


wildcard_constraints:
    profile="|".join(config["profiles"]),
    dataset="|".join(config["datasets"]),
    model=WILDCARD_PATTERN,
    seed=r"\d+",
    table=r"table\d+",


def resources_of(profile):
    """The typed resources of a profile (their defaults live in flowvae.settings.Resources)."""
    return JobResources.from_params(config["profiles"][profile]["resources"])


def resource(name):
    """A per-job resource of a profile, from params.yaml's profiles.<profile>.resources."""
    return lambda wildcards: getattr(resources_of(wildcards.profile), name)


def gpu_share(wildcards):
    """Hundredths of a GPU a job takes: `snakemake --resources gpu_hundredths=100` runs jobs_per_gpu jobs on one GPU."""
    r = resources_of(wildcards.profile)
    return 100 * r.gpus // r.jobs_per_gpu


def run_of(wildcards):
    return plan.Run(wildcards.dataset, wildcards.model, int(wildcards.seed))


def run_files(runs, profile, names):
    return [run.path(profile, name) for run in runs for name in names]
