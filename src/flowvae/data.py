"""Data sets: parse the raw files, write one uint8 array file per split, and serve torch batches.

Prepared files are `<prepared>/<dataset>/<split>.npz` holding `x` (uint8, N x C x H x W) and,
where the source has labels, `y` (int64). Binary data sets store 0/1, grayscale and colour ones 0..255.
Data sets whose split is a seeded shuffle (Frey faces, Omniglot's validation set) draw it from
`np.random.RandomState(split_seed)`, the generator `np.random.seed` sets, so that the split equals the
one the Sylvester-flows code (van den Berg et al. 2018, utils/load_data.py) makes with that seed.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flowvae.atomic import write_npz
from flowvae.safeload import load_npz
from flowvae.download import MIRROR_ENV, DownloadError, RemoteFile, fetch, mirror_root

SPLITS = ("train", "valid", "test")
KINDS = ("amat", "idx", "cifar_python", "synthetic", "freyfaces_pickle", "omniglot_mat", "caltech_mat")
SEEDED_KINDS = ("freyfaces_pickle", "omniglot_mat")  # kinds whose split is a seeded shuffle: split_seed required


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
    """Unpickler that rebuilds numpy arrays and builtins but refuses any other global.

    A protocol-0 pickle of an array written by Python 2 (Frey faces) names only numpy.core.multiarray's
    _reconstruct, numpy.ndarray and numpy.dtype; its array bytes are a str that encoding='latin1' turns
    back into bytes.
    """

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


FREY_SHAPE = (28, 20)


def read_freyfaces_pickle(path: Path) -> np.ndarray:
    """Read freyfaces.pkl (a Python-2 pickle of a list holding one uint8 array of 1965 x 560) as N x 1 x 28 x 20.

    Only numpy's array reconstruction is allowed in the pickle: any other global is refused before it
    is imported, and the refusal is a DataFormatError naming the file and the global.
    """
    with open(path, "rb") as f:
        try:
            obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as exc:
            raise DataFormatError(f"{path}: {exc}") from None
        except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
            raise DataFormatError(f"{path}: not a readable pickle of a numpy array ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, (list, tuple)) or not obj or not isinstance(obj[0], np.ndarray):
        raise DataFormatError(f"{path}: expected a list holding one numpy array, found {type(obj).__name__}")
    x = obj[0]
    h, w = FREY_SHAPE
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != h * w:
        raise DataFormatError(f"{path}: expected a uint8 array of N x {h * w}, found {x.dtype} {x.shape}")
    return np.ascontiguousarray(x).reshape(-1, 1, h, w)


def seeded_order(n: int, seed: int) -> np.ndarray:
    """The order `np.random.seed(seed); np.random.shuffle(rows)` puts n rows in (legacy RandomState)."""
    if seed is None or int(seed) < 0:
        raise ValueError(f"split seed must be a non-negative integer, not {seed!r}")
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    return order


def read_mat(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named variables of a MATLAB v5 file (scipy.io.loadmat); DataFormatError names a missing one."""
    from scipy.io import loadmat  # imported here: only the .mat data sets need scipy
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(path, variable_names=list(names))
    except (MatReadError, ValueError, TypeError, NotImplementedError, OSError) as exc:  # not MAT, truncated, v7.3
        raise DataFormatError(f"{path}: not a MATLAB v5 file that scipy.io.loadmat can read ({exc})") from None
    missing = [n for n in names if n not in mat]
    if missing:
        raise DataFormatError(f"{path}: no variable {', '.join(repr(n) for n in missing)} in the MATLAB file")
    return {n: np.asarray(mat[n]) for n in names}


def _fortran_images(rows: np.ndarray) -> np.ndarray:
    """N x 784 rows, each a 28 x 28 image stored column by column, as N x 1 x 28 x 28.

    The same as the Sylvester-flows code's `rows.reshape((-1, 28, 28)).reshape((-1, 784), order='F')`
    read as 28 x 28 images in C order, i.e. each image is its row reshaped in Fortran order.
    """
    return rows.reshape(-1, 28, 28).reshape(-1, 28 * 28, order="F").reshape(-1, 1, 28, 28)


def read_omniglot_mat(path: Path) -> dict[str, np.ndarray]:
    """Read the IWAE chardata.mat: {'train': 24345, 'test': 8070 images}, uint8 round(255 x), N x 1 x 28 x 28.

    `data` and `testdata` hold one image per column (784 x N, floats in [0, 1]), pixels in Fortran order.
    """
    mat = read_mat(path, ("data", "testdata"))
    out = {}
    for split, name in (("train", "data"), ("test", "testdata")):
        x = mat[name]
        if x.ndim != 2 or x.shape[0] != 784:
            raise DataFormatError(f"{path}: variable {name!r} has shape {x.shape}, expected 784 x N")
        x = np.asarray(x, dtype=np.float64)
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise DataFormatError(f"{path}: variable {name!r} has values outside [0, 1]")
        out[split] = _fortran_images(np.round(x.T * 255).astype(np.uint8))
    return out


def read_caltech_mat(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read caltech101_silhouettes_28_split1.mat: {split: (x 0/1 uint8 N x 1 x 28 x 28, labels 0..100 int64)}.

    Rows of `train_data`, `val_data`, `test_data` are images in Fortran order with 1 = background;
    as in the Sylvester-flows code they are inverted (1 - x) so that 1 marks the silhouette.
    The file's labels count from 1; they are stored from 0.
    """
    names = {"train": "train", "valid": "val", "test": "test"}
    mat = read_mat(path, tuple(f"{n}_{kind}" for n in names.values() for kind in ("data", "labels")))
    out = {}
    for split, n in names.items():
        x, y = mat[f"{n}_data"], mat[f"{n}_labels"]
        if x.ndim != 2 or x.shape[1] != 784:
            raise DataFormatError(f"{path}: variable '{n}_data' has shape {x.shape}, expected N x 784")
        if not np.isin(x, (0, 1)).all():
            raise DataFormatError(f"{path}: variable '{n}_data' has values other than 0 and 1")
        y = y.reshape(-1)
        if len(y) != len(x):
            raise DataFormatError(f"{path}: variable '{n}_labels' has {len(y)} labels for {len(x)} images")
        out[split] = (_fortran_images(1 - x.astype(np.uint8)), y.astype(np.int64) - 1)
    return out


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
class UnverifiedFile:
    """A file params.yaml names without a first-hand size and checksum (`datasets.<name>.unverified_files`).

    With a (second-hand) checksum it is fetched and verified like any other file; without one it is
    never fetched nor trusted, and preparing its data set fails with a message saying what to add.
    """

    path: str
    url: str
    checksum: str | None = None  # "md5:<hex>" or "sha256:<hex>"

    @classmethod
    def from_params(cls, entry: dict) -> "UnverifiedFile":
        algorithms = [a for a in ("sha256", "md5") if a in entry]
        if len(algorithms) > 1:
            raise ValueError(f"data file {entry.get('path')!r}: give at most one of sha256 or md5")
        checksum = f"{algorithms[0]}:{entry[algorithms[0]]}" if algorithms else None
        return cls(entry["path"], entry["url"], checksum)


@dataclass(frozen=True)
class DatasetSpec:
    """A data set as params.yaml describes it."""

    name: str
    kind: str  # one of KINDS
    binarize: str  # none | fixed | dynamic: how batches are served
    shape: tuple[int, int, int]
    files: dict[str, RemoteFile]
    split_sizes: dict[str, int]
    digits: tuple[int, ...] = ()  # keep only these labels (idx data sets)
    split_seed: int | None = None  # the seeded shuffle of SEEDED_KINDS
    unverified_files: dict[str, UnverifiedFile] = field(default_factory=dict)

    @classmethod
    def from_params(cls, name: str, entry: dict) -> "DatasetSpec":
        """Build from params.yaml `datasets.<name>`."""
        kind = entry.get("kind")
        if kind not in KINDS:
            raise ValueError(f"datasets.{name}.kind: {kind!r} is not one of {KINDS}")
        files = {role: RemoteFile.from_params(f) for role, f in (entry.get("files") or {}).items()}
        unverified = {role: UnverifiedFile.from_params(f) for role, f in (entry.get("unverified_files") or {}).items()}
        both = sorted(files.keys() & unverified.keys())
        if both:
            raise ValueError(f"datasets.{name}: {both} listed under both files and unverified_files")
        split_seed = entry.get("split_seed")
        if kind in SEEDED_KINDS and split_seed is None:
            raise ValueError(f"datasets.{name}.split_seed: required for kind {kind!r} (its split is a seeded shuffle)")
        return cls(
            name=name,
            kind=kind,
            binarize=entry.get("binarize", "none"),
            shape=tuple(entry["shape"]),
            files=files,
            split_sizes={k: int(v) for k, v in entry["splits"].items()},
            digits=tuple(entry.get("digits", ())),
            split_seed=None if split_seed is None else int(split_seed),
            unverified_files=unverified,
        )


def _check_roles(spec: DatasetSpec, roles: tuple[str, ...]) -> None:
    missing = [r for r in roles if r not in spec.files and r not in spec.unverified_files]
    if missing:
        raise ValueError(f"datasets.{spec.name}.files: missing {missing} for kind {spec.kind!r}")


def _fetch_unverified(spec: DatasetSpec, role: str, raw_dir: Path, mirror: Path | None) -> Path:
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
    if mirror is not None:
        in_mirror = mirror / entry.path
        state = "present, but params.yaml has no checksum to verify it with" if in_mirror.exists() else "no such file"
        attempts.append(f"{in_mirror}: {state}")
    attempts.append(f"{entry.url}: not downloaded: params.yaml has no checksum to verify it with")
    tried = "\n  ".join(attempts)
    raise DownloadError(
        f"could not fetch {entry.path}; sources tried:\n  {tried}\n"
        f"Download {entry.url} by hand and put it at <mirror>/{entry.path}, then set {MIRROR_ENV}=<mirror> "
        f"(or data.mirror in params.yaml). {fix}"
    )


def _load_splits(spec: DatasetSpec, raw_dir: Path, mirror: Path | None) -> dict[str, dict[str, np.ndarray]]:
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
