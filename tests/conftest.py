"""Shared fixtures: tiny synthetic data sets and params written by the tests themselves."""

from __future__ import annotations

import copy
import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from flowvae.config import run_config

TINY_SHAPE = (1, 8, 8)


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def write_amat(path: Path, arr: np.ndarray) -> None:
    path.write_text("".join(" ".join(str(int(v)) for v in row) + "\n" for row in arr.reshape(len(arr), -1)))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def stripe_images(n: int, seed: int) -> np.ndarray:
    """Binary 8x8 images: one of four stripe patterns with a little pixel noise."""
    rng = np.random.default_rng(seed)
    patterns = np.zeros((4, 8, 8), dtype=np.uint8)
    patterns[0, ::2, :] = 1
    patterns[1, :, ::2] = 1
    patterns[2, :4, :] = 1
    patterns[3, :, :4] = 1
    x = patterns[rng.integers(0, 4, n)]
    flip = rng.random(x.shape) < 0.05
    return np.where(flip, 1 - x, x).astype(np.uint8)[:, None]


def tiny_params(root: Path, epochs: int = 3, **overrides) -> dict:
    """A params dict with one synthetic binary data set prepared under root."""
    prepared = root / "prepared" / "test" / "stripes"
    prepared.mkdir(parents=True, exist_ok=True)
    for i, (split, n) in enumerate([("train", 256), ("valid", 64), ("test", 32)]):
        with open(prepared / f"{split}.npz", "wb") as f:
            np.savez(f, x=stripe_images(n, seed=i))
    profile = {
        "network": {"kind": "mlp", "hidden": 32, "layers": 1, "z_dim": 4, "context_dim": 8},
        "ladder": {},
        "subset": None,
        "epochs": epochs,
        "batch_size": 32,
        "optimizer": "adamax",
        "lr": 3e-3,
        "warmup_epochs": 0,
        "patience": 0,
        "ema": 0.0,
        "eval": {"K": 16, "batch_size": 16, "is_curve_points": 8, "curve_K": [1, 4, 16]},
    }
    profile.update(overrides)
    return {
        "profile": "test",
        "data": {"raw_dir": str(root / "raw"), "prepared_dir": str(root / "prepared"), "mirror": None},
        "datasets": {
            "stripes": {
                "kind": "synthetic",
                "binarize": "fixed",
                "likelihood": "bernoulli",
                "shape": list(TINY_SHAPE),
                "splits": {"train": 256, "valid": 64, "test": 32},
            }
        },
        "profiles": {"test": profile},
    }


@pytest.fixture
def tiny(tmp_path):
    """A factory: tiny(model, **profile overrides) -> RunConfig on synthetic stripes."""
    torch.manual_seed(0)

    def make(model: str = "vae", seed: int = 0, **overrides):
        params = tiny_params(tmp_path, **overrides)
        return run_config(copy.deepcopy(params), "test", "stripes", model, seed)

    return make
