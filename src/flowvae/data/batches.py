"""Mini-batches of a prepared split, resident on the training device, reproducible from (seed, epoch)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from flowvae.data.prepare import load_split
from flowvae.spec.run import RunSpec


def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


class Batches:
    """Mini-batches of float images in [0, 1], reproducible from (seed, epoch) alone.

    The order of epoch e and the dynamic binarization of its batch i are drawn from generators
    seeded by (seed, e) and (seed, e, i), so a run resumed at any step sees the same batches.
    """

    def __init__(
        self,
        x: np.ndarray,
        batch_size: int,
        binarize: str = "none",
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        device: torch.device | str = "cpu",
    ) -> None:
        if binarize not in ("none", "fixed", "dynamic"):
            raise ValueError(f"binarize must be none, fixed or dynamic, not {binarize!r}")
        self.device = torch.device(device)
        self.x = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)  # uint8, resident on the device
        self.batch_size = batch_size
        self.binarize = binarize
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.scale = 1.0 if binarize == "fixed" else 255.0

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def n_images(self) -> int:
        return len(self.x)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """Yield the batches of an epoch from batch index `start` on, on the data's device.

        The order is drawn on the CPU and the dynamic binarization on the data's device, so the
        batches are identical across runs on one kind of device (not between CPU and CUDA).
        """
        if self.shuffle:
            g = torch.Generator().manual_seed(_seed_for(self.seed, epoch))
            order = torch.randperm(len(self.x), generator=g).to(self.device)
        else:
            order = torch.arange(len(self.x), device=self.device)
        for i in range(start, len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            batch = self.x[idx].float() / self.scale
            if self.binarize == "dynamic":
                g = torch.Generator(device=self.device).manual_seed(_seed_for(self.seed, epoch, i, 1))
                batch = torch.bernoulli(batch, generator=g)
            yield batch


def split_images(spec: RunSpec, split: str) -> np.ndarray:
    """A run's prepared split, cut to the profile's subset size if it has one."""
    path = spec.prepared_dir / f"{split}.npz"
    command = f"flowvae prepare --profile {spec.profile} --dataset {spec.dataset_name}"
    if not path.exists():
        where = "" if path.is_absolute() else f" (data.prepared_dir is relative: it is read from the working directory, {Path.cwd()}; run from the project folder)"
        raise FileNotFoundError(f"{path} is missing{where}: run `{command}` first")
    x, _ = load_split(path, f"delete it and run `{command}` (Snakemake's rule prepare)", spec.dataset)
    n = spec.subset_size(split)
    return x[:n] if n else x


def batches_for(spec: RunSpec, split: str, batch_size: int, shuffle: bool, seed: int, device="cpu") -> Batches:
    """Batches of a run's split with its data set's binarization, resident on `device`."""
    return Batches(split_images(spec, split), batch_size, spec.dataset.binarize, shuffle=shuffle, seed=seed, device=device)
