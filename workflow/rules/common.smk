import sys

from flowvae import plan
from flowvae.schema import validate_params
from flowvae.variants import WILDCARD_PATTERN

validate_params(config)

PROFILE = config["profile"]
SETTINGS = config["profiles"][PROFILE]
FLOWVAE = f"{sys.executable} -m flowvae.cli"
RUN = "results/{profile}/{dataset}/{model}/seed{seed}"
RUN_LOG = "{profile}/{dataset}/{model}/seed{seed}.log"


wildcard_constraints:
    profile="|".join(config["profiles"]),
    dataset="|".join(config["datasets"]),
    model=WILDCARD_PATTERN,
    seed=r"\d+",
    table=r"table\d+",


def resource(name, default):
    """A per-job resource of a profile, from params.yaml's profiles.<profile>.resources."""
    return lambda wildcards: config["profiles"][wildcards.profile].get("resources", {}).get(name, default)


def eval_files(runs):
    return [run.path(PROFILE, "eval.json") for run in runs]
