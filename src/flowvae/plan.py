"""The runs a profile needs: which data sets, which (dataset, model, seed) runs, which files.

Snakemake's rules and the generated dvc.yaml both take their job lists from here, so the two
always build the same DAG.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowvae.config import run_dir

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True, order=True)
class Run:
    """One trained and evaluated model."""

    dataset: str
    model: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.dataset}-{self.model}-seed{self.seed}"

    def path(self, profile: str, name: str) -> str:
        """A file of this run, e.g. path('quick', 'eval.json')."""
        return str(run_dir(profile, self.dataset, self.model, self.seed) / name)


def table_names(params: dict) -> list[str]:
    """The tables params.yaml defines, in order."""
    return list(params.get("tables") or {})


def table_runs(params: dict, table: str) -> list[Run]:
    """The runs one table reads: its rows times the seeds."""
    spec = params["tables"][table]
    return [Run(spec["dataset"], row["model"], int(seed)) for row in spec["rows"] for seed in params["seeds"]]


def figure_runs(params: dict) -> list[Run]:
    """The extra runs of the figures: the 2-D latent models for the density plot."""
    latent = (params.get("figures") or {}).get("latent2d")
    if not latent:
        return []
    return [Run(latent["dataset"], model, int(params["seeds"][0])) for model in latent["variants"]]


def all_runs(params: dict) -> list[Run]:
    """Every run of every table and figure, without duplicates, sorted."""
    runs = {r for t in table_names(params) for r in table_runs(params, t)} | set(figure_runs(params))
    return sorted(runs)


def datasets_used(params: dict) -> list[str]:
    """The data sets the runs need, sorted."""
    return sorted({r.dataset for r in all_runs(params)})


def prepared_files(params: dict, profile: str, dataset: str) -> list[str]:
    """The prepared split files of a data set for a profile."""
    root = params["data"]["prepared_dir"]
    return [f"{root}/{profile}/{dataset}/{split}.npz" for split in SPLITS]
