"""params.yaml: loading, the chosen profile, and the settings of one run."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from flowvae.data import DatasetSpec
from flowvae.variants import Variant, parse_variant


def load_params(path: str | os.PathLike = "params.yaml") -> dict:
    """Read params.yaml (validation is the schema module's job)."""
    with open(path) as f:
        return yaml.safe_load(f)


def profile_settings(params: dict, profile: str) -> dict:
    """The settings block of a profile, with a clear error for an unknown one."""
    profiles = params.get("profiles", {})
    if profile not in profiles:
        raise ValueError(f"profile: {profile!r} is not one of {sorted(profiles)}")
    return profiles[profile]


def source_dataset(params: dict, profile: str, dataset: str) -> str:
    """The data set whose files a profile prepares under a data set's name (smoke: synthetic for CIFAR-10)."""
    source = (profile_settings(params, profile).get("substitute") or {}).get(dataset, dataset)
    datasets = params.get("datasets", {})
    if source not in datasets:
        raise ValueError(f"dataset: {source!r} is not one of {sorted(datasets)}")
    return source


def prepared_dir(params: dict, profile: str, dataset: str) -> Path:
    """data/prepared/{profile}/{dataset}: each profile prepares its own subsets."""
    return Path(params["data"]["prepared_dir"]) / profile / dataset


def run_dir(profile: str, dataset: str, model: str, seed: int, root: str = "results") -> Path:
    """results/{profile}/{dataset}/{model}/seed{seed}."""
    return Path(root) / profile / dataset / model / f"seed{seed}"


@dataclass(frozen=True)
class RunConfig:
    """Everything one training or evaluation run needs, resolved from params.yaml."""

    profile: str
    dataset_name: str  # the name in paths and tables
    dataset: DatasetSpec  # the data actually used (smoke: a synthetic stand-in for CIFAR-10)
    likelihood: str
    variant: Variant
    seed: int
    network: dict
    ladder: dict
    settings: dict  # the profile block
    subset: dict
    prepared_dir: Path
    eval_K: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.dataset.shape


def run_config(params: dict, profile: str, dataset: str, model: str, seed: int) -> RunConfig:
    """Resolve the settings of one (profile, dataset, model, seed)."""
    settings = profile_settings(params, profile)
    source = source_dataset(params, profile, dataset)
    entry = params["datasets"][source]
    network = copy.deepcopy(settings["network"])
    network.update(entry.get("network", {}))
    eval_K = (settings.get("eval_K") or {}).get(dataset, settings["eval"]["K"])
    return RunConfig(
        profile=profile,
        dataset_name=dataset,
        dataset=DatasetSpec.from_params(source, entry),
        likelihood=entry["likelihood"],
        variant=parse_variant(model),
        seed=int(seed),
        network=network,
        ladder=dict(settings.get("ladder") or {}),
        settings=settings,
        subset=dict(settings.get("subset") or {}),
        prepared_dir=prepared_dir(params, profile, dataset),
        eval_K=int(eval_K),
    )
