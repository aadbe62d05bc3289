"""Preparing a data set: fetch and verify its raw files, parse them, write one uint8 array file per split.

Prepared files are `<prepared>/<dataset>/<split>.npz` holding `x` (uint8, N x C x H x W) and,
where the source has labels, `y` (int64). Binary data sets store 0/1, grayscale and colour ones 0..255.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowvae.data.download import MIRROR_ENV, DownloadError, fetch, mirror_roots
from flowvae.data.formats import (
    DataFormatError,
    read_amat,
    read_caltech_mat,
    read_cifar_tar,
    read_freyfaces_pickle,
    read_idx,
    read_omniglot_mat,
    seeded_order,
    synthetic_images,
)
from flowvae.files.atomic import write_npz
from flowvae.files.safeload import CorruptFileError, load_npz
from flowvae.spec.datasets import SPLITS, DatasetSpec, RemoteFile


def _check_roles(spec: DatasetSpec, roles: tuple[str, ...]) -> None:
    missing = [r for r in roles if r not in spec.files and r not in spec.unverified_files]
    if missing:
        raise ValueError(f"datasets.{spec.name}.files: missing {missing} for kind {spec.kind!r}")


def _fetch_unverified(spec: DatasetSpec, role: str, raw_dir: Path, mirror: list[Path]) -> Path:
    """Fetch a file of `unverified_files`: by its second-hand checksum, or not at all when it has none."""
    entry = spec.unverified_files[role]
    fix = (
        f"Once you have the file, record its size and sha256 under datasets.{spec.name}.files "
        f"(in place of unverified_files.{role})."
    )
    if entry.checksum is not None:
        # size 0: not known; fetch verifies the checksum and never reads the size
        try:
            return fetch(RemoteFile(entry.path, entry.url, 0, entry.checksum), raw_dir, mirror)
        except DownloadError as exc:
            raise DownloadError(f"{exc}\nparams.yaml knows its checksum only second-hand. {fix}") from None
    attempts = []
    for root in mirror:
        in_mirror = root / entry.path
        state = "present, but params.yaml has no checksum to verify it with" if in_mirror.exists() else "no such file"
        attempts.append(f"{in_mirror}: {state}")
    attempts.append(f"{entry.url}: not downloaded: params.yaml has no checksum to verify it with")
    tried = "\n  ".join(attempts)
    raise DownloadError(
        f"could not fetch {entry.path}; sources tried:\n  {tried}\n"
        f"Download {entry.url} by hand and put it at <mirror>/{entry.path}, then set {MIRROR_ENV}=<mirror> "
        f"(or data.mirror in params.yaml). {fix}"
    )


def _load_splits(spec: DatasetSpec, raw_dir: Path, mirror: list[Path]) -> dict[str, dict[str, np.ndarray]]:
    def get(role: str) -> Path:
        try:
            if role in spec.files:
                return fetch(spec.files[role], raw_dir, mirror)
            return _fetch_unverified(spec, role, raw_dir, mirror)
        except DownloadError as exc:
            raise DownloadError(f"datasets.{spec.name}: {exc}") from None

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
    if spec.kind == "freyfaces_pickle":
        # Sylvester-flows load_freyfaces: np.random.seed(freyseed); shuffle all images; then train | valid | test
        _check_roles(spec, ("pickle",))
        path = get("pickle")
        x = read_freyfaces_pickle(path)
        sizes = [spec.split_sizes[s] for s in SPLITS]
        if sum(sizes) != len(x):
            raise DataFormatError(f"{path}: {len(x)} images, but datasets.{spec.name}.splits add up to {sum(sizes)}")
        x = x[seeded_order(len(x), spec.split_seed)]
        bounds = np.cumsum([0, *sizes])
        return {s: {"x": x[bounds[i] : bounds[i + 1]]} for i, s in enumerate(SPLITS)}
    if spec.kind == "omniglot_mat":
        # Sylvester-flows load_omniglot: shuffle the training images, the last n_valid of them validate
        _check_roles(spec, ("mat",))
        parts = read_omniglot_mat(get("mat"))
        train = parts["train"][seeded_order(len(parts["train"]), spec.split_seed)]
        n_valid = spec.split_sizes["valid"]
        return {"train": {"x": train[:-n_valid]}, "valid": {"x": train[-n_valid:]}, "test": {"x": parts["test"]}}
    if spec.kind == "caltech_mat":
        _check_roles(spec, ("mat",))
        parts = read_caltech_mat(get("mat"))
        return {s: {"x": x, "y": y} for s, (x, y) in parts.items()}
    return {
        s: {"x": synthetic_images(spec.split_sizes[s], spec.shape, seed=i)} for i, s in enumerate(SPLITS)
    }


def prepare(
    spec: DatasetSpec, raw_dir: Path, out_dir: Path, mirror: str | Path | list | None = None, subset: dict | None = None
) -> dict[str, Path]:
    """Fetch, verify and parse a data set; write one uint8 .npz per split (its first `subset[split]`
    images when a subset is given); return their paths."""
    splits = _load_splits(spec, Path(raw_dir), mirror_roots(mirror))
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


def check_split(x: np.ndarray, spec: DatasetSpec, path: str | Path, rebuild: str) -> None:
    """CorruptFileError unless x holds spec's images: uint8 N x C x H x W, values 0/1 for a data set binarized
    once (binarize: fixed), 8-bit values otherwise."""
    binary = spec.binarize == "fixed"
    images = lambda shape: "x".join(str(d) for d in shape)  # noqa: E731
    if x.ndim == 4 and tuple(x.shape[1:]) == tuple(spec.shape) and x.dtype == np.uint8:
        if x.size == 0 or (x.max() <= 1) == binary:
            return
    if x.ndim != 4:
        holds = f"an array of shape {images(x.shape)} ({x.dtype})"
    elif x.dtype != np.uint8:
        holds = f"{images(x.shape[1:])} images with {x.dtype} values"
    else:
        holds = f"{images(x.shape[1:])} images with {'values 0/1' if x.size and x.max() <= 1 else '8-bit values'}"
    expected = f"{images(spec.shape)} images with {'values 0/1' if binary else '8-bit values'}"
    raise CorruptFileError(f"{path} holds {holds}; {spec.name} expects {expected}; {rebuild}")


def load_split(
    path: str | Path,
    rebuild: str = "delete it and rerun `flowvae prepare` (Snakemake's rule prepare)",
    spec: DatasetSpec | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a prepared split: (x uint8 N x C x H x W, labels or None); CorruptFileError names a bad file.

    With the data set's spec, the images must have its shape and value range (0/1 or 8-bit), so that the
    split of another data set copied in its place is named here rather than failing later in training.
    """
    arrays = load_npz(path, ("x",), "a prepared split", rebuild)
    if spec is not None:
        check_split(arrays["x"], spec, path, rebuild)
    return arrays["x"], arrays.get("y")
