"""One run resolved once: (params, profile, data set, model, seed) -> RunSpec, every default filled in.

The variant name is parsed and every settings block typed here and nowhere else; the builder, the
trainer, evaluate, status and bench take the RunSpec. Its `record()` is the run's settings record:
everything that determines what a training computes, written to settings.json and into
model.safetensors' metadata when it trains. Evaluate refuses a run whose record differs from what
params.yaml resolves now; `RunSpec.from_record` gives back the run a record describes (a run folder
read without its params.yaml).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowvae.spec.datasets import DatasetSpec
from flowvae.spec.families import Family, family
from flowvae.spec.layout import RunFolder, prepared_dir, run_dir
from flowvae.spec.params import profile_settings, source_dataset, train_block
from flowvae.spec.settings import MODEL_BLOCKS, EvalSettings, ModelSettings, Resources, TrainSettings
from flowvae.spec.variants import Variant, parse_variant


def model_settings(fam: Family, block: dict[str, Any]) -> ModelSettings:
    """A family's model settings (network, ladder, pixel flow or PixelCNN) from a params block or a record."""
    return MODEL_BLOCKS[fam.block].from_params(block)


@dataclass(frozen=True)
class RunSpec:
    """Everything one training or evaluation run needs, resolved from params.yaml (or a settings record)."""

    code_version: Any
    profile: str
    dataset_name: str  # the name in paths and tables
    dataset: DatasetSpec  # the data actually used (smoke: a synthetic stand-in for CIFAR-10)
    variant: Variant
    family: Family
    seed: int
    network: ModelSettings  # the family's block: network, ladder, pixel_flow or pixel_cnn
    train: TrainSettings
    eval: EvalSettings
    resources: Resources
    subset: dict | None  # images kept per split (the smoke profile's subsets), as params.yaml says it; None for all
    prepared_dir: Path

    @classmethod
    def resolve(
        cls, params: dict, profile: str, dataset: str, model: str, seed: int
    ) -> "RunSpec":
        """Resolve one (profile, dataset, model, seed) from params.yaml."""
        settings = profile_settings(params, profile)
        variant = parse_variant(model)
        fam = family(variant.family)
        source = source_dataset(params, profile, dataset)
        block = copy.deepcopy(settings.get(fam.block) or {})
        if fam.block == "network":  # a data set may set its own network keys (e.g. a 2-D latent)
            block.update(params["datasets"][source].get("network", {}))
        return cls(
            code_version=params.get("code_version"),
            profile=profile,
            dataset_name=dataset,
            dataset=DatasetSpec.from_params(source, params["datasets"][source]),
            variant=variant,
            family=fam,
            seed=int(seed),
            network=model_settings(fam, block),
            train=TrainSettings.from_params(train_block(params, profile, dataset, model)),
            eval=EvalSettings.from_params({**settings["eval"], "ais": settings.get("ais")}),
            resources=Resources.from_params(settings["resources"]),
            subset=copy.deepcopy(settings["subset"]),
            prepared_dir=prepared_dir(params, profile, dataset),
        )

    @classmethod
    def from_record(cls, record: dict, eval_settings: EvalSettings, resources: Resources, prepared: Path) -> "RunSpec":
        """The run a settings record describes, with the evaluation and resource settings of now."""
        variant = parse_variant(record["model"])
        fam = family(variant.family)
        return cls(
            code_version=record["code_version"],
            profile=record["profile"],
            dataset_name=record["dataset"],
            dataset=DatasetSpec.from_params(record["source"], record["data"]),
            variant=variant,
            family=fam,
            seed=int(record["seed"]),
            network=model_settings(fam, record["network"]),
            train=TrainSettings.from_params(record["train"]),
            eval=eval_settings,
            resources=resources,
            subset=copy.deepcopy(record.get("subset")),
            prepared_dir=Path(prepared),
        )

    def record(self) -> dict:
        """The settings record: what the run's folder records, JSON-ready."""
        return {
            "code_version": self.code_version,
            "profile": self.profile,
            "dataset": self.dataset_name,
            "source": self.dataset.name,
            "model": self.variant.name,
            "seed": self.seed,
            "data": copy.deepcopy(self.dataset.entry),
            "subset": copy.deepcopy(self.subset),
            "network": self.network.record(),
            "train": self.train.record(),
        }

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.dataset.shape

    @property
    def likelihood(self) -> str:
        return self.dataset.likelihood

    @property
    def default_folder(self) -> RunFolder:
        """results/{profile}/{dataset}/{model}/seed{seed}: where the pipeline keeps this run."""
        return RunFolder(run_dir(self.profile, self.dataset_name, self.variant.name, self.seed))

    def subset_size(self, split: str) -> int | None:
        """The images a split is cut to (None: all of them)."""
        return (self.subset or {}).get(split) or None

    @property
    def eval_K(self) -> int:
        return self.eval.K_for(self.dataset_name)
