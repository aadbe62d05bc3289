"""params.yaml: loading (validated), the chosen profile, and the resolved settings of one run."""

from __future__ import annotations

import copy
import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flowvae.data import DatasetSpec
from flowvae.schema import ParamsError, validate_params
from flowvae.settings import EvalSettings, Resources, TrainSettings
from flowvae.variants import Variant, parse_variant


def read_params(path: str | os.PathLike = "params.yaml") -> dict:
    """Parse a params file; a YAML syntax error becomes one ParamsError line with file, line and column."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ParamsError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        raise ParamsError(f"{where}: YAML syntax error: {problem}" + (f" ({context})" if context else "")) from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping of settings at the top level, found {type(params).__name__}")
    return params


def load_params(path: str | os.PathLike = "params.yaml", published: str | os.PathLike | None = None) -> dict:
    """Read and validate a params file (every CLI entry point and the Snakefile go through here)."""
    params = read_params(path)
    validate_params(params, source=str(path), published=published)
    return params


def profile_settings(params: dict, profile: str) -> dict:
    """The settings block of a profile, with a clear error for an unknown one."""
    profiles = params.get("profiles", {})
    if profile not in profiles:
        raise ValueError(f"profile: {profile!r} is not one of {sorted(profiles)}")
    return profiles[profile]


def source_dataset(params: dict, profile: str, dataset: str) -> str:
    """The data set whose files a profile prepares under a data set's name (smoke: synthetic for CIFAR-10)."""
    source = profile_settings(params, profile)["substitute"].get(dataset, dataset)
    datasets = params.get("datasets", {})
    if source not in datasets:
        raise ValueError(f"dataset: {source!r} is not one of {sorted(datasets)}")
    return source


def candidate_sources(params: dict, dataset: str) -> list[str]:
    """The data set and every stand-in any profile substitutes for it: the entries its runs depend on."""
    stand_ins = {p["substitute"].get(dataset) for p in params["profiles"].values()}
    return [dataset, *sorted(s for s in stand_ins if s and s != dataset)]


def prepared_dir(params: dict, profile: str, dataset: str) -> Path:
    """data/prepared/{profile}/{dataset}: each profile prepares its own subsets."""
    return Path(params["data"]["prepared_dir"]) / profile / dataset


def run_dir(profile: str, dataset: str, model: str, seed: int, root: str = "results") -> Path:
    """results/{profile}/{dataset}/{model}/seed{seed}."""
    return Path(root) / profile / dataset / model / f"seed{seed}"


def resolved_network(params: dict, profile: str, dataset: str, variant: Variant) -> dict[str, Any]:
    """The network settings a run's model is built from, defaults filled in.

    The ladder (resvae) reads profiles.<profile>.ladder, the pixel real NVP profiles.<profile>.pixel_flow;
    every other family the profile's network,
    updated by the data set's own `network` entry (e.g. a 2-D latent for mnist_digits4).
    """
    from flowvae.ladder import ladder_settings
    from flowvae.networks import net_settings
    from flowvae.pixelflow import pixel_flow_settings

    settings = profile_settings(params, profile)
    if variant.family == "resvae":
        return ladder_settings(dict(settings["ladder"]))
    if variant.family == "realnvp":
        return pixel_flow_settings(dict(settings.get("pixel_flow") or {}))
    network = copy.deepcopy(settings["network"])
    network.update(params["datasets"][source_dataset(params, profile, dataset)].get("network", {}))
    return net_settings(network)


def matching_budgets(params: dict, dataset: str, model: str, profile: str | None = None) -> list[str]:
    """The names of the budgets that apply to a run, in params.yaml order.

    A budget (budgets.<name>) matches a run when its `datasets` list the run's data set and, if it has
    `models`, one of those glob patterns matches the model name; with `profile`, also when its
    `profiles` list that profile. Without `profile`: every budget that could apply in some profile
    (what a training's params keys list, the same in every profile, as dvc.yaml needs).
    """
    return [
        name
        for name, budget in (params.get("budgets") or {}).items()
        if dataset in budget["datasets"]
        and any(fnmatch.fnmatchcase(model, pattern) for pattern in budget.get("models", ["*"]))
        and (profile is None or profile in budget["profiles"])
    ]


def resolved_train(params: dict, profile: str, dataset: str, model: str) -> TrainSettings:
    """The profile's train block, updated by every budget that matches the run (later ones win)."""
    block = copy.deepcopy(profile_settings(params, profile)["train"])
    for name in matching_budgets(params, dataset, model, profile):
        block.update(params["budgets"][name]["train"])
    return TrainSettings.from_params(block)


def run_settings(params: dict, profile: str, dataset: str, model: str, seed: int, code_version: Any = None) -> dict:
    """Everything that determines what a training computes, fully resolved: the run's settings record.

    Recorded in the run folder (settings.json and model.safetensors metadata) when it trains; evaluate
    builds the model from the record and refuses when params.yaml now resolves to something else.
    """
    settings = profile_settings(params, profile)
    variant = parse_variant(model)
    source = source_dataset(params, profile, dataset)
    return {
        "code_version": params.get("code_version") if code_version is None else code_version,
        "profile": profile,
        "dataset": dataset,
        "source": source,
        "model": model,
        "seed": int(seed),
        "data": copy.deepcopy(params["datasets"][source]),
        "subset": copy.deepcopy(settings["subset"]),
        "network": resolved_network(params, profile, dataset, variant),
        "train": resolved_train(params, profile, dataset, model).record(),
    }


@dataclass(frozen=True)
class RunConfig:
    """Everything one training or evaluation run needs, resolved from params.yaml."""

    profile: str
    dataset_name: str  # the name in paths and tables
    dataset: DatasetSpec  # the data actually used (smoke: a synthetic stand-in for CIFAR-10)
    likelihood: str
    variant: Variant
    seed: int
    network: dict  # resolved network (or ladder) settings
    train: TrainSettings
    eval: EvalSettings
    resources: Resources
    subset: dict
    prepared_dir: Path
    record: dict  # run_settings(): what the run's folder records

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.dataset.shape

    @property
    def eval_K(self) -> int:
        return self.eval.K_for(self.dataset_name)


def config_from_record(record: dict, eval_settings: EvalSettings, resources: Resources, prepared: Path) -> RunConfig:
    """A RunConfig whose model, data and training settings come from a settings record."""
    return RunConfig(
        profile=record["profile"],
        dataset_name=record["dataset"],
        dataset=DatasetSpec.from_params(record["source"], record["data"]),
        likelihood=record["data"]["likelihood"],
        variant=parse_variant(record["model"]),
        seed=int(record["seed"]),
        network=dict(record["network"]),
        train=TrainSettings.from_params(record["train"]),
        eval=eval_settings,
        resources=resources,
        subset=dict(record.get("subset") or {}),
        prepared_dir=Path(prepared),
        record=record,
    )


def run_config(params: dict, profile: str, dataset: str, model: str, seed: int) -> RunConfig:
    """Resolve the settings of one (profile, dataset, model, seed) from params.yaml."""
    settings = profile_settings(params, profile)
    return config_from_record(
        run_settings(params, profile, dataset, model, seed),
        EvalSettings.from_params(settings["eval"]),
        Resources.from_params(settings["resources"]),
        prepared_dir(params, profile, dataset),
    )
