"""Validation of params.yaml: the JSON schema in workflow/schemas plus the checks a schema cannot say."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml

from flowvae.variants import parse_variant

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "params.schema.yaml"


class ParamsError(ValueError):
    """params.yaml breaks the schema; the message names the key's path."""


def _path(parts) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    """The params schema."""
    return yaml.safe_load(path.read_text())


def validate_params(params: dict, schema: dict | None = None) -> None:
    """Raise ParamsError naming the first offending key's path, or return if params are valid."""
    validator = jsonschema.Draft202012Validator(schema or load_schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        e = errors[0]
        where = list(e.absolute_path)
        if e.validator == "additionalProperties":
            unknown = sorted(set(e.instance) - set(e.schema.get("properties", {})))
            raise ParamsError(f"params.yaml: {_path(where + unknown[:1])}: unknown key")
        raise ParamsError(f"params.yaml: {_path(where)}: {e.message}")
    profiles = params["profiles"]
    if params["profile"] not in profiles:
        raise ParamsError(f"params.yaml: profile: {params['profile']!r} is not one of {sorted(profiles)}")
    datasets = params["datasets"]
    for name, profile in profiles.items():
        for table_dataset, source in (profile.get("substitute") or {}).items():
            if source not in datasets:
                raise ParamsError(f"params.yaml: profiles.{name}.substitute.{table_dataset}: unknown data set {source!r}")
    for name, table in params["tables"].items():
        if table["dataset"] not in datasets:
            raise ParamsError(f"params.yaml: tables.{name}.dataset: unknown data set {table['dataset']!r}")
        for i, row in enumerate(table["rows"]):
            _check_model(row["model"], f"tables.{name}.rows.{i}.model")
    latent = (params.get("figures") or {}).get("latent2d")
    if latent:
        if latent["dataset"] not in datasets:
            raise ParamsError(f"params.yaml: figures.latent2d.dataset: unknown data set {latent['dataset']!r}")
        for i, model in enumerate(latent["variants"]):
            _check_model(model, f"figures.latent2d.variants.{i}")


def _check_model(name: str, where: str) -> None:
    try:
        parse_variant(name)
    except ValueError as exc:
        raise ParamsError(f"params.yaml: {where}: {exc}") from None
