"""The device a job runs on, and seeding."""

from __future__ import annotations

import random

import numpy as np
import torch


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present (or as requested), else CPU; ValueError when CUDA is asked for and absent."""
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise ValueError(f"--device: {requested!r} is not a device; use cpu or cuda") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: this torch build or machine has no CUDA device; use --device cpu")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
