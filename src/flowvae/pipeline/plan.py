"""The runs a profile needs, their files, and the params.yaml keys each kind of job depends on.

Snakemake's rules and the generated dvc.yaml both take their job lists and their params keys from
here, so the two build the same DAG and rerun the same jobs after a change to params.yaml:

- prepare:  the data set's entries (its own and any stand-in's), the profile's subset and substitute;
- train:    code_version, the profile's train block, what the budgets that match the run decide (not their
            notes), its network (ladder for resvae runs), and the prepare keys;
- evaluate: code_version and the profile's eval block (and, through its inputs, the trained model);
- table:    its tables.<name> entry and its runs' budgets' notes (and, through its inputs, the evaluations and
            published numbers);
- figures:  the figures block and its summary page's tables.<name> entries (and, through its inputs, the runs' files);
- resources, seeds of other runs, data.mirror: nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from flowvae.spec.families import family
from flowvae.spec.layout import run_dir
from flowvae.spec.params import candidate_sources, matching_budgets
from flowvae.spec.variants import Variant, parse_variant


@dataclass(frozen=True, order=True)
class Run:
    """One trained and evaluated model."""

    dataset: str
    model: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.dataset}-{self.model}-seed{self.seed}"

    def folder(self, profile: str) -> str:
        """This run's folder, e.g. results/quick/binarized_mnist/vae/seed0."""
        return str(run_dir(profile, self.dataset, self.model, self.seed))

    def path(self, profile: str, name: str) -> str:
        """A file of this run, e.g. path('quick', 'eval.json')."""
        return str(run_dir(profile, self.dataset, self.model, self.seed) / name)

    @property
    def network_block(self) -> str:
        """The profile block its model is built from (the family table's `block`)."""
        return family(self.variant.family).block

    @cached_property
    def variant(self) -> Variant:
        return parse_variant(self.model)


def table_names(params: dict) -> list[str]:
    """The tables params.yaml defines, in order."""
    return list(params.get("tables") or {})


def row_seeds(params: dict, row: dict) -> list[int]:
    """The seeds of one table row: its own `seeds`, else the top-level ones."""
    return [int(seed) for seed in row.get("seeds") or params["seeds"]]


def for_profile(params: dict, profile: str) -> dict:
    """params.yaml as a profile builds it. `rows: all` (the default): as it is. `rows: one_per_family` (the smoke
    profile): each table keeps, of its rows, the first of each kind of model (family, its options, and an objective
    of one or of several samples) and the table's baseline row, each with its first seed: every rule and code path
    runs, not every size. dvc.yaml holds every row whatever the profile (its run lists cannot depend on it)."""
    if (params["profiles"][profile].get("rows") or "all") == "all":
        return params
    tables = {}
    for name, spec in params["tables"].items():
        kinds, rows = set(), []
        for row in spec["rows"]:
            v = parse_variant(row["model"])
            kind = (v.family, v.fixed_sigma, v.gated, v.ladder_posterior, v.objective, v.objective_k > 1)
            if kind not in kinds or row["model"] == spec.get("baseline"):
                kinds.add(kind)
                rows.append({**row, "seeds": row_seeds(params, row)[:1]})
        tables[name] = {**spec, "rows": rows}
    return {**params, "tables": tables}


def table_runs(params: dict, table: str) -> list[Run]:
    """The runs one table reads: each row times its seeds."""
    spec = params["tables"][table]
    return [Run(spec["dataset"], row["model"], seed) for row in spec["rows"] for seed in row_seeds(params, row)]


def verify_runs(params: dict, table: str) -> list[Run]:
    """The runs `verify_<table>` rebuilds: the first seed of each row."""
    spec = params["tables"][table]
    return [Run(spec["dataset"], row["model"], row_seeds(params, row)[0]) for row in spec["rows"]]


def figure_runs(params: dict) -> list[Run]:
    """The extra runs of the figures: the 2-D latent models for the density plot."""
    latent = (params.get("figures") or {}).get("latent2d")
    if not latent:
        return []
    return [Run(latent["dataset"], model, int(params["seeds"][0])) for model in latent["variants"]]


def all_runs(params: dict) -> list[Run]:
    """Every run of every table and figure, without duplicates, sorted."""
    return summary_runs(params, "summary")


def summary_names(params: dict) -> list[str]:
    """The summary pages: `summary` (every table) and each of params.yaml's `summaries`."""
    return ["summary", *(f"summary_{name}" for name in params.get("summaries") or {})]


def summary_tables(params: dict, summary: str) -> list[str]:
    """The tables of a summary page."""
    if summary == "summary":
        return table_names(params)
    return list(params["summaries"][summary.removeprefix("summary_")]["tables"])


def figures_name(summary: str) -> str:
    """The figures folder of a summary page: `figures` for `summary`, `figures_<name>` for `summary_<name>`."""
    return "figures" + summary.removeprefix("summary")


def summary_runs(params: dict, summary: str) -> list[Run]:
    """The runs a summary page reads: its tables' and the figures' own, without duplicates, sorted."""
    runs = {r for t in summary_tables(params, summary) for r in table_runs(params, t)} | set(figure_runs(params))
    return sorted(runs)


def figure_tables(params: dict, summary: str) -> list[dict]:
    """The groups the figures notebook draws curves for: each table of a summary page (name, title, data set,
    units, its rows in order with their model and seeds, its metrics and claims), then the figures' 2-D latent models
    as `latent2d`."""
    groups = []
    for name in summary_tables(params, summary):
        spec = params["tables"][name]
        rows = [{"model": row["model"], "seeds": row_seeds(params, row)} for row in spec["rows"]]
        groups.append({"name": name, "title": spec.get("title") or name, "dataset": spec["dataset"],
                       "units": spec.get("units") or "nats", "rows": rows, "metrics": list(spec["metrics"]),
                       "claims": list(spec.get("claims") or [])})
    latent = (params.get("figures") or {}).get("latent2d")
    if latent:
        rows = [{"model": r.model, "seeds": [r.seed]} for r in figure_runs(params)]
        groups.append({"name": "latent2d", "title": "The 2-D latent models of the latent density figure",
                       "dataset": latent["dataset"], "units": "nats", "rows": rows, "metrics": [], "claims": []})
    return groups


def summary_sample_quality_runs(params: dict, summary: str) -> list[Run]:
    """The runs of a summary page's tables that show the FCD: the figures title their samples with it."""
    return sorted({r for t in summary_tables(params, summary) if table_needs_sample_quality(params, t) for r in table_runs(params, t)})


def figures_param_keys(params: dict, summary: str) -> list[str]:
    """The params.yaml keys a summary page's figures depend on besides its runs' files: the figures block and
    its tables (their titles, rows and units set the curves' figures)."""
    return ["figures", *(f"tables.{name}" for name in summary_tables(params, summary))]


def reports_with_run(params: dict, run: Run) -> list[str]:
    """The tables whose rows include `run`, and the summary pages that show one of them."""
    tables = [t for t in table_names(params) if run in table_runs(params, t)]
    summaries = [s for s in summary_names(params) if set(summary_tables(params, s)) & set(tables)]
    return tables + summaries


def datasets_used(params: dict) -> list[str]:
    """The data sets the runs need, sorted."""
    return sorted({r.dataset for r in all_runs(params)})


def prepare_param_keys(params: dict, dataset: str, profile: str) -> list[str]:
    """The params.yaml keys a data set's prepared files depend on."""
    keys = [f"datasets.{source}" for source in candidate_sources(params, dataset)]
    return keys + [f"profiles.{profile}.subset", f"profiles.{profile}.substitute"]


# What a budget decides about its runs' training; its note is caption text, which only its tables depend on.
BUDGET_TRAINING_KEYS = ("profiles", "datasets", "models", "train")


def train_param_keys(params: dict, run: Run, profile: str) -> list[str]:
    """The params.yaml keys a training depends on."""
    own = ["code_version", f"profiles.{profile}.train", f"profiles.{profile}.{run.network_block}"]
    budgets = [f"budgets.{name}.{key}" for name in matching_budgets(params, run.dataset, run.model)
               for key in BUDGET_TRAINING_KEYS if key in params["budgets"][name]]
    return own + budgets + prepare_param_keys(params, run.dataset, profile)


def table_needs_ais(params: dict, table: str) -> bool:
    """Whether a table shows a metric read from ais.json (spec/metrics.py's AIS_METRICS)."""
    from flowvae.spec.metrics import AIS_METRICS

    return any(m in AIS_METRICS for m in params["tables"][table].get("metrics") or [])


def has_latent(run: Run) -> bool:
    """A VAE (a family that takes an objective): its log p(x) is an estimate, by IS or AIS. A density model's is exact,
    and the GAN's comes from its own AIS under a Gaussian observation model."""
    return family(run.variant.family).objectives


def table_ais_runs(params: dict, table: str) -> list[Run]:
    """The runs of a table whose AIS evaluation (ais.json) it reads: its VAE rows, if it shows an AIS metric."""
    return [r for r in table_runs(params, table) if has_latent(r)] if table_needs_ais(params, table) else []


def ais_runs(params: dict) -> list[Run]:
    """The runs whose AIS evaluation (ais.json) a table reads, sorted."""
    return sorted({r for t in table_names(params) for r in table_ais_runs(params, t)})


def bdmc_runs(params: dict, table: str | None = None) -> list[Run]:
    """The runs whose BDMC check (bdmc.json) a table's caption states: the first AIS-evaluated run of each table."""
    tables = [table] if table else table_names(params)
    return sorted({table_ais_runs(params, t)[0] for t in tables if table_ais_runs(params, t)})


def table_needs_gaps(params: dict, table: str) -> bool:
    """Whether a table shows a metric read from gaps.json (spec/metrics.py's GAP_METRICS)."""
    from flowvae.spec.metrics import GAP_METRICS

    return any(m in GAP_METRICS for m in params["tables"][table].get("metrics") or [])


def gaps_runs(params: dict) -> list[Run]:
    """The runs whose inference gaps (gaps.json) a table reads, sorted."""
    return sorted({r for t in table_names(params) if table_needs_gaps(params, t) for r in table_runs(params, t)})


def table_needs_sample_quality(params: dict, table: str) -> bool:
    """Whether a table shows a metric read from sample_quality.json (spec/metrics.py's SAMPLE_QUALITY_METRICS)."""
    from flowvae.spec.metrics import SAMPLE_QUALITY_METRICS

    return any(m in SAMPLE_QUALITY_METRICS for m in params["tables"][table].get("metrics") or [])


def sample_quality_runs(params: dict) -> list[Run]:
    """The runs whose samples a table scores (sample_quality.json), sorted."""
    return sorted({r for t in table_names(params) if table_needs_sample_quality(params, t) for r in table_runs(params, t)})


def table_needs_gaussian_obs(params: dict, table: str) -> bool:
    """Whether a table shows a metric under the Gaussian observation model (spec/metrics.py's GAUSSIAN_OBS_METRICS)."""
    from flowvae.spec.metrics import GAUSSIAN_OBS_METRICS

    return any(m in GAUSSIAN_OBS_METRICS for m in params["tables"][table].get("metrics") or [])


def gaussian_obs_runs(params: dict, table: str | None = None) -> list[Run]:
    """The VAE runs (posterior families of models/vae.py) whose decoder a table evaluates under the Gaussian observation
    model (gaussian_obs.json), sorted; the GAN's own evaluation is that one, and a density model has no decoder."""
    from flowvae.spec.families import FLOW_VAE

    tables = [table] if table else table_names(params)
    return sorted({r for t in tables if table_needs_gaussian_obs(params, t) for r in table_runs(params, t)
                   if family(r.variant.family).builder == FLOW_VAE})


def classifier_datasets(params: dict) -> list[str]:
    """The data sets whose feature classifier a sample-quality evaluation needs."""
    return sorted({r.dataset for r in sample_quality_runs(params)})


def sample_quality_param_keys(profile: str) -> list[str]:
    """The params.yaml keys a sample-quality evaluation (and a feature classifier) depends on besides its inputs."""
    return ["code_version", f"profiles.{profile}.sample_quality"]


def gaps_param_keys(profile: str) -> list[str]:
    """The params.yaml keys an inference-gap evaluation depends on besides its trained model."""
    return ["code_version", f"profiles.{profile}.ais", f"profiles.{profile}.gaps"]


def eval_param_keys(profile: str) -> list[str]:
    """The params.yaml keys an evaluation depends on besides its trained model."""
    return ["code_version", f"profiles.{profile}.eval"]


def ais_param_keys(profile: str) -> list[str]:
    """The params.yaml keys an AIS evaluation depends on besides its trained model (not the IS settings)."""
    return ["code_version", f"profiles.{profile}.ais"]


def table_param_keys(params: dict, table: str) -> list[str]:
    """The params.yaml keys a table depends on besides its evaluations: its entry, and the notes of the budgets
    that can match its runs (its caption quotes them)."""
    budgets = dict.fromkeys(name for run in table_runs(params, table) for name in matching_budgets(params, run.dataset, run.model))
    return [f"tables.{table}", *(f"budgets.{name}.note" for name in budgets if "note" in params["budgets"][name])]


def lookup(params: dict, key: str) -> Any:
    """The value at a dotted key path; KeyError naming the path if absent."""
    value: Any = params
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"params.yaml has no key {key!r}")
        value = value[part]
    return value


def param_values(params: dict, keys: list[str]) -> str:
    """The values at `keys` as canonical JSON: what Snakemake's params rerun trigger compares."""
    return json.dumps({key: lookup(params, key) for key in keys}, sort_keys=True)
