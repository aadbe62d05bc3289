"""Paired differences against a table's baseline row, from the per-image -log p(x) of runs evaluated on the same images.

For a row and the baseline, on each seed both have: Δ_s = mean_i (a_i - b_i) over the test images i and its
paired standard error sd_i(a_i - b_i) / sqrt(n). The row shows the mean of Δ_s over the shared seeds ± the mean
paired SE, marked ≈ where |Δ| < 2 SE (not distinguishable), and the sd of Δ_s over the seeds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PER_IMAGE_KEY = "_per_image"  # where load_eval puts a run's per_image.npz arrays
NOT_DISTINGUISHABLE = "≈"


@dataclass(frozen=True)
class PairedDelta:
    """A row's difference from the baseline row over the seeds both have."""

    delta: float
    se: float
    seed_sd: float | None  # None with one shared seed
    seeds: int

    @property
    def distinguishable(self) -> bool:
        return abs(self.delta) >= 2 * self.se


def per_image(ev: Mapping[str, Any], key: str = "neg_log_px") -> np.ndarray | None:
    arrays = ev.get(PER_IMAGE_KEY)
    return None if arrays is None or key not in arrays else np.asarray(arrays[key], dtype=np.float64)


def paired_delta(row: Sequence[Mapping[str, Any]], base: Sequence[Mapping[str, Any]], scale: float = 1.0) -> PairedDelta | None:
    """The paired difference row - base (times `scale`, e.g. nats to bits/dim); None without shared seeds or per-image values."""
    by_seed = {ev.get("seed"): per_image(ev) for ev in base}
    deltas, ses = [], []
    for ev in row:
        a, b = per_image(ev), by_seed.get(ev.get("seed"))
        if a is None or b is None:
            continue
        if a.shape != b.shape:
            raise ValueError(f"{ev.get('model')} seed {ev.get('seed')}: {a.size} per-image values against the baseline's "
                             f"{b.size}: the rows were not evaluated on the same test images")
        diff = (a - b) * scale
        deltas.append(float(diff.mean()))
        ses.append(float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else 0.0)
    if not deltas:
        return None
    sd = statistics.stdev(deltas) if len(deltas) > 1 else None
    return PairedDelta(statistics.fmean(deltas), statistics.fmean(ses), sd, len(deltas))
