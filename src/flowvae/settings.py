"""Typed settings: a profile's training, evaluation and resource blocks, with their defaults declared here once.

params.yaml is validated against the schema first (schema.py); these classes then give the values
names and types, so that no module reads profile dicts with `.get(key, default)`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


def _from_block(cls, block: dict[str, Any] | None):
    """An instance of a settings dataclass from a validated params block (lists become tuples)."""
    block = block or {}
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(block) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; known: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in block.items()})


@dataclass(frozen=True)
class TrainSettings:
    """profiles.<profile>.train: everything that changes what a training computes."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adamax"  # adamax | adam
    betas: tuple[float, float] = (0.9, 0.999)  # the optimiser's beta1, beta2
    warmup_epochs: float = 0.0  # KL weight rises linearly from 0 to 1 over these epochs
    patience: int = 0  # early stopping after this many epochs without a better validation -ELBO (0: never)
    ema: float = 0.0  # decay of the exponential moving average of the weights (0: none)
    amp: str = "none"  # none | bf16: autocast of the training step (CUDA and CPU)

    # Changing only these extends (or shortens) a run on resume instead of invalidating its checkpoint.
    EXTENDABLE = ("epochs", "patience")

    @classmethod
    def from_params(cls, block: dict[str, Any]) -> "TrainSettings":
        return _from_block(cls, block)

    def record(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class EvalSettings:
    """profiles.<profile>.eval: what only the evaluation reads."""

    K: int  # importance samples per test image
    K_by_dataset: dict = field(default_factory=dict)  # per data set overrides of K
    batch_size: int = 100  # test images per forward pass
    is_curve_points: int = 0  # test images whose raw log-weights give the IS-vs-K curve
    curve_K: tuple[int, ...] = ()
    max_batch: int | None = None  # samples per decoder pass (default: 2,000 convolutional, 20,000 otherwise)
    compile: bool = False  # torch.compile the decoder
    decoder_bf16: bool = False  # bfloat16 decoder (check its effect first: python -m flowvae.bench --bf16-check)

    @classmethod
    def from_params(cls, block: dict[str, Any]) -> "EvalSettings":
        return _from_block(cls, block)

    def K_for(self, dataset: str) -> int:
        """K for one data set."""
        return int(self.K_by_dataset.get(dataset, self.K))


@dataclass(frozen=True)
class Resources:
    """profiles.<profile>.resources: how jobs run; changing them reruns nothing."""

    threads: int = 1
    mem_mb: int = 4000
    runtime_min: int = 120
    gpus: int = 0  # GPUs per training or evaluation job
    jobs_per_gpu: int = 1  # small runs sharing one GPU (Snakemake's gpu_slots resource)
    max_minutes: float | None = None  # time box of one `flowvae train` call: checkpoint and exit 75 after it
    compile_train: bool = False  # torch.compile the training step (pays on GPUs; a compile costs minutes on a CPU)

    @classmethod
    def from_params(cls, block: dict[str, Any] | None) -> "Resources":
        return _from_block(cls, block)


def diff_settings(recorded: Any, current: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(key path, recorded value, current value) for every leaf that differs between two nested dicts."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(recorded) | set(current), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            out += diff_settings(recorded.get(key, "(absent)"), current.get(key, "(absent)"), path)
        return out
    return [] if recorded == current else [(prefix or "(all)", recorded, current)]


def describe_diff(changes: list[tuple[str, Any, Any]]) -> str:
    """'train.lr: 0.002 -> 0.001; ...' for a list from diff_settings."""
    return "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)
