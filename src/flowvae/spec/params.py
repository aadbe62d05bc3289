"""params.yaml: reading it (validated), and the lookups every layer shares: a profile's block, the data
set a profile prepares under a name, the budgets that apply to a run."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import yaml

from flowvae.spec.layout import PROFILE_FILE
from flowvae.spec.schema import ParamsError, validate_params


def read_params(path: str | os.PathLike = "params.yaml") -> dict:
    """Parse a params file, with the active profile from profile.yaml beside it (layout.PROFILE_FILE) where the file
    sets none itself; a YAML syntax error becomes one ParamsError line with file, line and column."""
    params = _read_mapping(path)
    beside = Path(path).with_name(PROFILE_FILE)
    if beside.is_file():
        active = _read_mapping(beside)
        if set(active) != {"profile"} or not isinstance(active["profile"], str):
            raise ParamsError(f"{beside}: expected one line `profile: <name>`, found {sorted(active)}")
        if "profile" in params:
            raise ParamsError(f"{path} sets `profile` and so does {beside}: keep it in {beside} only")
        params["profile"] = active["profile"]
    return params


def active_profile_source(path: str | os.PathLike = "params.yaml") -> str:
    """Where the active profile of a params file is set: profile.yaml beside it, else the file itself."""
    beside = Path(path).with_name(PROFILE_FILE)
    return str(beside) if beside.is_file() else str(path)


def _read_mapping(path: str | os.PathLike) -> dict:
    """A YAML file's top-level mapping; ParamsError naming file, line and column otherwise."""
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


def train_block(params: dict, profile: str, dataset: str, model: str) -> dict:
    """The profile's train block, updated by every budget that matches the run (later ones win)."""
    block = dict(profile_settings(params, profile)["train"])
    for name in matching_budgets(params, dataset, model, profile):
        block.update(params["budgets"][name]["train"])
    return block
