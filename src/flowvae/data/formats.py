"""Raw data formats: IDX, Larochelle .amat, the CIFAR-10 python tarball, the Frey faces pickle, the
Omniglot and Caltech 101 Silhouettes .mat files, and the synthetic stand-in images.

Data sets whose split is a seeded shuffle (Frey faces, Omniglot's validation set) draw it from
`np.random.RandomState(split_seed)`, the generator `np.random.seed` sets, so that the split equals the
one the Sylvester-flows code (van den Berg et al. 2018, utils/load_data.py) makes with that seed.
"""

from __future__ import annotations

import gzip
import io
import math
import operator
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np


class DataFormatError(ValueError):
    """A raw file does not have the layout its format promises."""


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
    canonical = _canonical_amat(Path(path).read_bytes(), width)
    if canonical is not None:
        return canonical
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


def _canonical_amat(data: bytes, width: int) -> np.ndarray | None:
    """The images of an .amat file laid out as the published ones are (each line `width` single-digit 0/1 values
    separated by one space, ending in a newline), read as one array; None for any other layout (read_amat's line by line
    reading then names the line at fault)."""
    line = 2 * width
    if not data or len(data) % line:
        return None
    chars = np.frombuffer(data, dtype=np.uint8).reshape(-1, line)
    digits, gaps = chars[:, 0::2], chars[:, 1::2]
    if (gaps[:, :-1] != ord(" ")).any() or (gaps[:, -1] != ord("\n")).any() or ((digits != ord("0")) & (digits != ord("1"))).any():
        return None
    return (digits - ord("0")).astype(np.uint8)


def _declared_bytes(shape, dtype) -> int | None:
    """The bytes an array of this shape and dtype needs (Python integers: no overflow); None if numpy will refuse them."""
    try:
        dims = (shape,) if not isinstance(shape, (tuple, list)) else tuple(shape)
        return math.prod(operator.index(d) for d in dims) * np.dtype(dtype).itemsize
    except (TypeError, ValueError):
        return None


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and builtins but refuses any other global.

    A protocol-0 pickle of an array written by Python 2 (Frey faces) names only numpy.core.multiarray's
    _reconstruct, numpy.ndarray and numpy.dtype; its array bytes are a str that encoding='latin1' turns
    back into bytes.

    Every array the pickle builds must fit in the pickle's own bytes (`limit`): its data is stored there.
    The shape and dtype of `ndarray(...)`, `_reconstruct(...)` and `__setstate__` are checked against it
    before numpy allocates anything, so a pickle that asks for terabytes fails with DataFormatError naming
    `name`. Object arrays are refused: data files hold numbers.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # protocol-2 pickles store array bytes through it
    }

    def __init__(self, file, *, name: str | Path, limit: int, **kwargs):
        super().__init__(file, **kwargs)
        unpickler = self

        def check(shape, dtype) -> None:
            need = _declared_bytes(shape, dtype)
            if need is None:
                return  # not a shape and dtype numpy accepts: it refuses them itself, allocating nothing
            if need > limit:
                raise DataFormatError(
                    f"{name}: the pickle declares an array of shape {shape} and dtype {np.dtype(dtype)} "
                    f"({need} bytes), more than its own {limit} bytes can hold; refused before allocating"
                )
            if np.dtype(dtype).hasobject:
                raise DataFormatError(f"{name}: the pickle asks for an array of Python objects; data files hold numbers")

        class CheckedArray(np.ndarray):
            """ndarray whose construction and __setstate__ check the declared size first (made plain after loading)."""

            def __new__(cls, shape, dtype=float, *args, **kw):
                check(shape, dtype)
                return np.ndarray.__new__(cls, shape, dtype, *args, **kw)

            def __setstate__(self, state):
                if isinstance(state, tuple) and len(state) >= 4:
                    shape, dtype = (state[1], state[2]) if len(state) == 5 else (state[0], state[1])
                    check(shape, dtype)
                return np.ndarray.__setstate__(self, state)

        def reconstruct(subtype, shape, dtype):
            check(shape, dtype)
            return unpickler._reconstruct(subtype, shape, dtype)

        self._array_class, self._checked_reconstruct = CheckedArray, reconstruct

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        found = super().find_class(module, name)
        if name == "ndarray":
            return self._array_class
        if name == "_reconstruct":
            self._reconstruct = found
            return self._checked_reconstruct
        return found

    def load(self):
        return _plain_arrays(super().load())


def _plain_arrays(obj):
    """obj with the unpickler's checked arrays turned into plain ndarrays (in lists, tuples and dict values)."""
    if isinstance(obj, np.ndarray):
        return obj.view(np.ndarray)
    if isinstance(obj, list):
        return [_plain_arrays(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain_arrays(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _plain_arrays(v) for k, v in obj.items()}
    return obj


def read_cifar_tar(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the CIFAR-10 python tarball: {'train': (x, y) of 50k, 'test': (x, y) of 10k}, x as N x 3 x 32 x 32."""
    members = {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch"}
    batches: dict[str, dict] = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            base = Path(member.name).name
            if base in members and member.isfile():
                raw = tar.extractfile(member).read()
                batches[base] = _NumpyOnlyUnpickler(
                    io.BytesIO(raw), name=f"{path}:{member.name}", limit=len(raw), encoding="bytes"
                ).load()
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
            obj = _NumpyOnlyUnpickler(f, name=path, limit=os.fstat(f.fileno()).st_size, encoding="latin1").load()
        except DataFormatError:
            raise
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
