"""Validation of params.yaml: the JSON schema shipped in this package plus the checks a schema cannot say.

Every name that params.yaml refers to (data sets, model variants, table metrics, published sources)
is checked here, before any job runs.
"""

from __future__ import annotations

import csv
import fnmatch
import re
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from flowvae.spec.metrics import metric
from flowvae.spec.variants import parse_variant


class ParamsError(ValueError):
    """params.yaml cannot be read or breaks the schema; the message names the file and the key or line."""


_YAML11_FLOAT = re.compile(r"[-+]?[0-9]+[eE][-+]?[0-9]+")  # 2e-3: a number to Python, a string to YAML 1.1


def _as_yaml_float(text: str) -> str:
    mantissa, exponent = re.split("[eE]", text)
    return f"{mantissa}.0e{exponent}"


def _path(parts) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


def load_schema() -> dict:
    """The params schema (src/flowvae/spec/params.schema.yaml, installed with the package)."""
    return yaml.safe_load(resources.files("flowvae.spec").joinpath("params.schema.yaml").read_text())


def published_sources(csv_path: str | Path) -> set[str]:
    """The source names in a published-numbers CSV."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        return {row["source"] for row in csv.DictReader(f)}


def validate_params(
    params: dict, schema: dict | None = None, source: str = "params.yaml", published: str | Path | None = None
) -> None:
    """Raise ParamsError naming the file and the first offending key's path, or return if params are valid.

    `published`: the published-numbers CSV whose source names the tables may cite (checked when given).
    """

    def fail(where, message: str):
        raise ParamsError(f"{source}: {where}: {message}")

    validator = jsonschema.Draft202012Validator(schema or load_schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        e = errors[0]
        where = list(e.absolute_path)
        if e.validator == "additionalProperties":
            unknown = sorted(set(e.instance) - set(e.schema.get("properties", {})))
            fail(_path(where + unknown[:1]), "unknown key")
        said = e.schema.get("x-message") if e.validator == "pattern" else None  # the schema's words for its pattern
        if "propertyNames" in e.schema_path:  # a key of `where` is not an allowed name
            fail(_path(where), f"name {e.instance!r} {said or 'does not match ' + repr(e.validator_value)}")
        if said:
            fail(_path(where), f"{e.instance!r} {said}")
        if e.validator == "type" and isinstance(e.instance, str) and _YAML11_FLOAT.fullmatch(e.instance):
            fail(_path(where), f"{e.message}: YAML reads {e.instance} as a string (its floats need a dot, as in "
                               f"{_as_yaml_float(e.instance)})")
        fail(_path(where), e.message)
    profiles = params["profiles"]
    if params["profile"] not in profiles:
        fail("profile", f"{params['profile']!r} is not one of {sorted(profiles)}")
    datasets = params["datasets"]
    for name, profile in profiles.items():
        for table_dataset, stand_in in profile["substitute"].items():
            for value in (table_dataset, stand_in):
                if value not in datasets:
                    fail(f"profiles.{name}.substitute.{table_dataset}", f"unknown data set {value!r}; known: {sorted(datasets)}")
        for dataset in profile["eval"].get("K_by_dataset") or {}:
            if dataset not in datasets:
                fail(f"profiles.{name}.eval.K_by_dataset.{dataset}", f"unknown data set; known: {sorted(datasets)}")
    for name, budget in (params.get("budgets") or {}).items():
        for i, profile in enumerate(budget["profiles"]):
            if profile not in profiles:
                fail(f"budgets.{name}.profiles.{i}", f"unknown profile {profile!r}; known: {sorted(profiles)}")
        for i, dataset in enumerate(budget["datasets"]):
            if dataset not in datasets:
                fail(f"budgets.{name}.datasets.{i}", f"unknown data set {dataset!r}; known: {sorted(datasets)}")
            stands_for = {real: p for p in budget["profiles"] if p in profiles
                          for real, stand_in in (profiles[p].get("substitute") or {}).items() if stand_in == dataset}
            if stands_for:
                real, profile = next(iter(stands_for.items()))
                fail(f"budgets.{name}.datasets.{i}", f"{dataset!r} is the {profile} profile's stand-in for {real!r}, and runs "
                     f"are named by the data set they stand in for, so this budget would never apply: list {real!r}")
        planned = _planned_models(params, budget["datasets"])
        for i, pattern in enumerate(budget.get("models") or []):
            if not any(fnmatch.fnmatchcase(model, pattern) for model in planned):
                fail(f"budgets.{name}.models.{i}", f"{pattern!r} matches no model of the tables or figures on "
                     f"{', '.join(budget['datasets'])} (they have: {', '.join(sorted(planned)) or 'none'})")
    known_sources = published_sources(published) if published and Path(published).is_file() else None
    for name, table in params["tables"].items():
        if table["dataset"] not in datasets:
            fail(f"tables.{name}.dataset", f"unknown data set {table['dataset']!r}; known: {sorted(datasets)}")
        for i, row in enumerate(table["rows"]):
            _check_model(fail, row["model"], f"tables.{name}.rows.{i}.model")
        models = [row["model"] for row in table["rows"]]
        if table.get("baseline") is not None and table["baseline"] not in models:
            fail(f"tables.{name}.baseline", f"{table['baseline']!r} is not one of the table's rows {models}")
        for i, name_ in enumerate(table["metrics"]):
            try:
                metric(name_, table.get("units"))
            except ValueError as exc:
                fail(f"tables.{name}.metrics.{i}", str(exc))
        cited = table.get("published") or {}
        sources = list(cited.get("sources") or [])
        if cited.get("primary") and cited["primary"] not in sources:
            fail(f"tables.{name}.published.primary", f"{cited['primary']!r} is not among its sources {sources}")
        if known_sources is not None:
            for i, src in enumerate(sources):
                if src not in known_sources:
                    fail(f"tables.{name}.published.sources.{i}", f"no published numbers from {src!r} in {published}; known: {sorted(known_sources)}")
    for name, summary in (params.get("summaries") or {}).items():
        for i, table in enumerate(summary["tables"]):
            if table not in params["tables"]:
                fail(f"summaries.{name}.tables.{i}", f"unknown table {table!r}; known: {list(params['tables'])}")
    latent = (params.get("figures") or {}).get("latent2d")
    if latent:
        if latent["dataset"] not in datasets:
            fail("figures.latent2d.dataset", f"unknown data set {latent['dataset']!r}; known: {sorted(datasets)}")
        for i, model in enumerate(latent["variants"]):
            _check_model(fail, model, f"figures.latent2d.variants.{i}")


def _planned_models(params: dict, datasets: list[str]) -> set[str]:
    """The model names the tables and figures train on these data sets."""
    models = {row["model"] for t in params["tables"].values() if t["dataset"] in datasets for row in t["rows"]}
    latent = (params.get("figures") or {}).get("latent2d")
    if latent and latent["dataset"] in datasets:
        models |= set(latent["variants"])
    return models


def _check_model(fail, name: str, where: str) -> None:
    try:
        parse_variant(name)
    except ValueError as exc:
        fail(where, str(exc))
