import os
import shlex
import sys

from snakemake.exceptions import WorkflowError

from flowvae.pipeline import plan
from flowvae.pipeline.targets import command_line_targets, unknown_targets_message
from flowvae.spec import layout
from flowvae.spec.datasets import SPLITS
from flowvae.spec.layout import PUBLISHED_CSV, RUN_PATTERN, SOURCES_CSV, prepared_files
from flowvae.spec.params import active_profile_source, read_params
from flowvae.spec.schema import ParamsError, validate_params
from flowvae.spec.settings import Resources as JobResources
from flowvae.spec.variants import WILDCARD_PATTERN

# params.yaml is read (and validated) here rather than by `configfile:`, so that a syntax error is
# reported once with file, line and column. `--config profile=...` picks the profile of the default
# target; `--config params_file=other.yaml` reads another file. No other key may be overridden: the jobs
# read the params file itself, so an override would steer the DAG but not what the jobs compute.
PARAMS_FILE = config.pop("params_file", "params.yaml")
_unseen = sorted(set(config) - {"profile"})
if _unseen:
    raise WorkflowError(
        f"--config {', '.join(_unseen)}: the jobs read {PARAMS_FILE}, not Snakemake's config, so they would not see "
        f"this override. Set it in {PARAMS_FILE} (or in a copy passed with --config params_file=<copy>); "
        "--config takes only profile and params_file"
    )
_config_given = set(config)
try:
    _params = {**read_params(PARAMS_FILE), **config}
    _where = PARAMS_FILE + (f" (with --config {', '.join(sorted(config))})" if config else "")
    validate_params(_params, source=_where, published=PUBLISHED_CSV)
except ParamsError as exc:
    raise WorkflowError(str(exc)) from None
config.update(_params)

PROFILE = config["profile"]
if os.path.basename(sys.argv[0]) == "snakemake" and not command_line_targets(sys.argv) and "--lint" not in sys.argv \
        and "--report" not in sys.argv:  # a bare `snakemake` says whose summary it builds
    _from = "--config profile" if "profile" in _config_given else active_profile_source(PARAMS_FILE)
    print(f"flowvae: no target named: building reports/{PROFILE}/summary.md, profile {PROFILE} (from {_from})", file=sys.stderr)
# A mistyped target gets the valid patterns and the nearest names instead of "No rule to produce".
_unknown = unknown_targets_message(config, command_line_targets(sys.argv))
if _unknown:
    raise WorkflowError(_unknown)
# The rules call the `flowvae` command of the environment that runs Snakemake, with the params file in
# $FLOWVAE_PARAMS: its path is in no rule's command or params, so that the same settings read from another
# file (an identical copy) rerun nothing, and a path with spaces stays one argument.
shell.prefix(f'export PATH="{os.path.dirname(sys.executable)}:$PATH" FLOWVAE_PARAMS={shlex.quote(PARAMS_FILE)}; ')
RUN = RUN_PATTERN
RUN_LOG = "{profile}/{dataset}/{model}/seed{seed}.log"


wildcard_constraints:
    profile="|".join(config["profiles"]),
    dataset="|".join(config["datasets"]),
    model=WILDCARD_PATTERN,
    seed=r"\d+",
    table=r"table\d+",


def built_reports(profile):
    """The tables (with their .md, .tex and .html) and figure folders of a profile that are on disk: what a bare
    `snakemake --report` reports on, where the summary's every table would have to be built."""
    folder = os.path.join(layout.REPORTS_ROOT, profile)
    tables = [f"{folder}/{t}.md" for t in plan.table_names(config)
              if all(os.path.isfile(f"{folder}/{t}.{ext}") for ext in ("md", "tex", "html"))]
    figures = [f"{folder}/{plan.figures_name(s)}" for s in plan.summary_names(config)
               if os.path.isdir(f"{folder}/{plan.figures_name(s)}")]
    return tables + figures


_PROFILE_PARAMS = {}


def profile_params(wildcards):
    """params.yaml as the job's profile builds it: its tables cut to the rows it selects (plan.for_profile), once per
    profile (the input functions call it for every job)."""
    if wildcards.profile not in _PROFILE_PARAMS:
        _PROFILE_PARAMS[wildcards.profile] = plan.for_profile(config, wildcards.profile)
    return _PROFILE_PARAMS[wildcards.profile]


def resources_of(profile):
    """The typed resources of a profile (their defaults live in flowvae.spec.settings.Resources)."""
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


def run_outputs(runs, profile, *patterns):
    """Rule outputs (patterns such as rules.evaluate.output.metrics) for each run of a list."""
    return [pattern.format(profile=profile, dataset=r.dataset, model=r.model, seed=r.seed) for r in runs for pattern in patterns]
