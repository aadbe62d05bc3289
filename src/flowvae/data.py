"""Data sets: parse the raw files, write one uint8 array file per split, and serve torch batches.

Prepared files are `<prepared>/<dataset>/<split>.npz` holding `x` (uint8, N x C x H x W) and,
where the source has labels, `y` (int64). Binary data sets store 0/1, grayscale and colour ones 0..255.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flowvae.atomic import write_npz
from flowvae.safeload import load_npz
from flowvae.download import RemoteFile, fetch, mirror_root

SPLITS = ("train", "valid", "test")
KINDS = ("amat", "idx", "cifar_python", "synthetic")


class DataFormatError(ValueError):
    """A raw file does not have the layout its format promises."""


# ---------------------------------------------------------------- raw formats

def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) of unsigned bytes into an array of its stated shape."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataFormatError(f"{path}: not an IDX file (bad magic number)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise DataFormatError(f"{path}: IDX type 0x{dtype_code:02x} is not unsigned byte (0x08)")
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataFormatError(
            f"{path}: IDX header promises {expected} bytes for shape {shape}, file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_amat(path: Path, width: int = 784) -> np.ndarray:
    """Read a Larochelle .amat file of space-separated 0/1 values, one image per line."""
    rows = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            values = line.split()
            if len(values) != width:
                raise DataFormatError(f"{path}, line {number}: {len(values)} values, expected {width}")
            rows.append(values)
    arr = np.array(rows, dtype=np.float32)
    if not np.isin(arr, (0.0, 1.0)).all():
        raise DataFormatError(f"{path}: values other than 0 and 1")
    return arr.astype(np.uint8)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and builtins but refuses any other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # protocol-2 pickles store array bytes through it
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def read_cifar_tar(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the CIFAR-10 python tarball: {'train': (x, y) of 50k, 'test': (x, y) of 10k}, x as N x 3 x 32 x 32."""
    members = {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch"}
    batches: dict[str, dict] = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            base = Path(member.name).name
            if base in members and member.isfile():
                raw = tar.extractfile(member).read()
                batches[base] = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    missing = sorted(members - batches.keys())
    if missing:
        raise DataFormatError(f"{path}: missing CIFAR-10 batches {missing}")

    def stack(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate([np.asarray(batches[n][b"data"], dtype=np.uint8) for n in names])
        y = np.concatenate([np.asarray(batches[n][b"labels"], dtype=np.int64) for n in names])
        if x.shape[1] != 3072:
            raise DataFormatError(f"{path}: CIFAR rows have {x.shape[1]} bytes, expected 3072")
        return x.reshape(-1, 3, 32, 32), y

    return {"train": stack([f"data_batch_{i}" for i in range(1, 6)]), "test": stack(["test_batch"])}


def synthetic_images(n: int, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Deterministic 8-bit images with spatial structure (smooth colour blobs plus noise)."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    centres = rng.uniform(0, 1, size=(n, 2, 1, 1))
    widths = rng.uniform(0.1, 0.4, size=(n, 1, 1))
    blob = np.exp(-((xx - centres[:, 0]) ** 2 + (yy - centres[:, 1]) ** 2) / (2 * widths**2))
    colours = rng.uniform(0, 1, size=(n, c, 1, 1))
    background = rng.uniform(0, 0.5, size=(n, c, 1, 1))
    img = background + (colours - background) * blob[:, None]
    img = img + rng.normal(0, 0.05, size=img.shape)
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- preparation

@dataclass(frozen=True)
class DatasetSpec:
    """A data set as params.yaml describes it."""

    name: str
    kind: str  # amat | idx | cifar_python | synthetic
    binarize: str  # none | fixed | dynamic: how batches are served
    shape: tuple[int, int, int]
    files: dict[str, RemoteFile]
    split_sizes: dict[str, int]
    digits: tuple[int, ...] = ()  # keep only these labels (idx data sets)

    @classmethod
    def from_params(cls, name: str, entry: dict) -> "DatasetSpec":
        """Build from params.yaml `datasets.<name>`."""
        kind = entry.get("kind")
        if kind not in KINDS:
            raise ValueError(f"datasets.{name}.kind: {kind!r} is not one of {KINDS}")
        files = {role: RemoteFile.from_params(f) for role, f in (entry.get("files") or {}).items()}
        return cls(
            name=name,
            kind=kind,
            binarize=entry.get("binarize", "none"),
            shape=tuple(entry["shape"]),
            files=files,
            split_sizes={k: int(v) for k, v in entry["splits"].items()},
            digits=tuple(entry.get("digits", ())),
        )


def _check_roles(spec: DatasetSpec, roles: tuple[str, ...]) -> None:
    missing = [r for r in roles if r not in spec.files]
    if missing:
        raise ValueError(f"datasets.{spec.name}.files: missing {missing} for kind {spec.kind!r}")


def _load_splits(spec: DatasetSpec, raw_dir: Path, mirror: Path | None) -> dict[str, dict[str, np.ndarray]]:
    def get(role: str) -> Path:
        return fetch(spec.files[role], raw_dir, mirror)

    c, h, w = spec.shape
    if spec.kind == "amat":
        _check_roles(spec, SPLITS)
        return {s: {"x": read_amat(get(s), c * h * w).reshape(-1, c, h, w)} for s in SPLITS}
    if spec.kind == "idx":
        roles = ("train_images", "train_labels", "test_images", "test_labels")
        _check_roles(spec, roles)
        x_train, y_train = read_idx(get("train_images")), read_idx(get("train_labels")).astype(np.int64)
        x_test, y_test = read_idx(get("test_images")), read_idx(get("test_labels")).astype(np.int64)
        n_valid = spec.split_sizes["valid"]
        splits = {
            "train": (x_train[:-n_valid], y_train[:-n_valid]),
            "valid": (x_train[-n_valid:], y_train[-n_valid:]),
            "test": (x_test, y_test),
        }
        out = {}
        for s, (x, y) in splits.items():
            if spec.digits:
                keep = np.isin(y, spec.digits)
                x, y = x[keep], y[keep]
            out[s] = {"x": x.reshape(-1, c, h, w), "y": y}
        return out
    if spec.kind == "cifar_python":
        _check_roles(spec, ("archive",))
        parts = read_cifar_tar(get("archive"))
        (x_train, y_train), (x_test, y_test) = parts["train"], parts["test"]
        n_valid = spec.split_sizes["valid"]
        return {
            "train": {"x": x_train[:-n_valid], "y": y_train[:-n_valid]},
            "valid": {"x": x_train[-n_valid:], "y": y_train[-n_valid:]},
            "test": {"x": x_test, "y": y_test},
        }
    return {
        s: {"x": synthetic_images(spec.split_sizes[s], spec.shape, seed=i)} for i, s in enumerate(SPLITS)
    }


def prepare(
    spec: DatasetSpec, raw_dir: Path, out_dir: Path, mirror: str | Path | None = None, subset: dict | None = None
) -> dict[str, Path]:
    """Fetch, verify and parse a data set; write one uint8 .npz per split (its first `subset[split]`
    images when a subset is given); return their paths."""
    splits = _load_splits(spec, Path(raw_dir), mirror_root(mirror))
    if not spec.digits:
        for split, arrays in splits.items():
            expected = spec.split_sizes.get(split)
            if expected is not None and len(arrays["x"]) != expected:
                raise DataFormatError(
                    f"{spec.name}/{split}: {len(arrays['x'])} images, params.yaml expects {expected}"
                )
    paths = {}
    for split, arrays in splits.items():
        n = (subset or {}).get(split)
        if n:
            arrays = {k: v[:n] for k, v in arrays.items()}
        dest = Path(out_dir) / f"{split}.npz"
        write_npz(dest, arrays)
        paths[split] = dest
    return paths


def load_split(path: str | Path, rebuild: str = "delete it and rerun `flowvae prepare` (Snakemake's rule prepare)") -> tuple[np.ndarray, np.ndarray | None]:
    """Read a prepared split: (x uint8 N x C x H x W, labels or None); CorruptFileError names a bad file."""
    arrays = load_npz(path, ("x",), "a prepared split", rebuild)
    return arrays["x"], arrays.get("y")


# ---------------------------------------------------------------- batches

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
