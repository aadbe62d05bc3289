"""The Sylvester-flows data sets: Frey faces (restricted unpickling, seeded split), Omniglot and Caltech 101
Silhouettes (.mat layouts, Fortran-order pixels, inversion), and the clear failure without their files."""

from __future__ import annotations

import copy
import pickle
import pickletools
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import yaml
from flowvae.spec.params import read_params

from flowvae.data import download
from flowvae.data.formats import DataFormatError, read_caltech_mat, read_freyfaces_pickle, read_omniglot_mat, seeded_order
from flowvae.spec.datasets import DatasetSpec
from flowvae.data.prepare import load_split, prepare
from flowvae.data.download import DownloadError
from flowvae.spec.schema import ParamsError, validate_params
from flowvae.files.safeload import CorruptFileError

from conftest import DATA_MIRROR, md5

REPO = Path(__file__).resolve().parents[1]
FREY = DATA_MIRROR / "freyfaces" / "freyfaces.pkl"


@pytest.fixture(scope="module")
def params() -> dict:
    return read_params(REPO / "params.yaml")


def sylvester_shuffle(rows: np.ndarray, seed: int) -> np.ndarray:
    """What the Sylvester-flows code does: np.random.seed(seed); np.random.shuffle(rows) (global state restored)."""
    state = np.random.get_state()
    try:
        rows = rows.copy()
        np.random.seed(seed)
        np.random.shuffle(rows)
        return rows
    finally:
        np.random.set_state(state)


def py2_array_pickle(arr: np.ndarray) -> bytes:
    """A list holding one uint8 array, pickled as Python 2's cPickle protocol 0 writes it (freyfaces.pkl's layout)."""
    n, m = arr.shape
    data = "".join(f"\\x{b:02x}" for b in arr.tobytes())
    return (
        "(lp0\ncnumpy.core.multiarray\n_reconstruct\np1\n(cnumpy\nndarray\np2\n(I0\ntp3\nS'b'\np4\ntp5\nRp6\n"
        f"(I1\n(I{n}\nI{m}\ntp7\ncnumpy\ndtype\np8\n(S'u1'\np9\nI0\nI1\ntp10\nRp11\n"
        "(I3\nS'|'\np12\nNNNI-1\nI-1\nI0\ntp13\nbI00\n"
        f"S'{data}'\np14\ntp15\nba."
    ).encode("ascii")


def mirror_entry(mirror: Path, rel: str, raw: bytes | None = None) -> dict:
    """Write raw bytes at mirror/rel (when given) and return its params file entry."""
    path = mirror / rel
    if raw is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
    return {"path": rel, "url": "http://127.0.0.1:9/none", "size": path.stat().st_size, "md5": md5(path)}


# ---------------------------------------------------------------- Frey faces


def test_freyfaces_py2_protocol0_pickle_parses_to_28x20(tmp_path):
    arr = np.arange(3 * 560, dtype=np.uint64).reshape(3, 560).astype(np.uint8)
    (tmp_path / "f.pkl").write_bytes(py2_array_pickle(arr))
    x = read_freyfaces_pickle(tmp_path / "f.pkl")
    assert x.dtype == np.uint8 and x.shape == (3, 1, 28, 20)
    assert x[1, 0, 0, 0] == arr[1, 0] and x[1, 0, 1, 0] == arr[1, 20] and x[2, 0, 27, 19] == arr[2, 559]
    np.testing.assert_array_equal(x.reshape(3, 560), arr)


@pytest.mark.parametrize(
    "global_line, refused",
    [("cos\nsystem\n", "os.system"), ("cposix\nsystem\n", "posix.system"), ("cbuiltins\neval\n", "builtins.eval"),
     ("cnumpy\nload\n", "numpy.load")],
)
def test_freyfaces_pickle_naming_another_global_is_refused_unexecuted(tmp_path, global_line, refused):
    marker = tmp_path / "executed"
    raw = f"{global_line}(S'touch {marker}'\ntR.".encode()
    pickletools.dis(raw, out=open(tmp_path / "dis.txt", "w"))  # a well-formed pickle: only the unpickler stops it
    (tmp_path / "evil.pkl").write_bytes(raw)
    with pytest.raises(DataFormatError) as err:
        read_freyfaces_pickle(tmp_path / "evil.pkl")
    assert str(tmp_path / "evil.pkl") in str(err.value) and refused in str(err.value)
    assert not marker.exists()


def test_freyfaces_pickle_of_the_wrong_array_is_an_error(tmp_path):
    (tmp_path / "w.pkl").write_bytes(py2_array_pickle(np.zeros((2, 784), dtype=np.uint8)))
    with pytest.raises(DataFormatError, match=r"w\.pkl: expected a uint8 array of N x 560, found uint8 \(2, 784\)"):
        read_freyfaces_pickle(tmp_path / "w.pkl")
    (tmp_path / "d.pkl").write_bytes(pickle.dumps({"a": 1}, protocol=0))
    with pytest.raises(DataFormatError, match=r"d\.pkl: expected a list holding one numpy array, found dict"):
        read_freyfaces_pickle(tmp_path / "d.pkl")


TIB2 = 2**41  # elements of 1 byte: a 2 TiB array


@pytest.mark.parametrize(
    "how, body",
    [
        # _reconstruct(ndarray, (2**41,), 'b'): the placeholder array numpy builds before __setstate__
        ("reconstruct", f"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I{TIB2}\ntS'b'\ntR"),
        # _reconstruct(ndarray, (0,), 'b') then __setstate__((1, (2**41,), dtype('u1'), False, <2 bytes>))
        ("setstate", "cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I0\ntS'b'\ntR"
                     f"(I1\n(I{TIB2}\ntcnumpy\ndtype\n(S'u1'\nI0\nI1\ntR(I3\nS'|'\nNNNI-1\nI-1\nI0\ntbI00\nS'ab'\ntb"),
        # an object array's state is a list: numpy allocates 2**41 pointers before it reads the list
        ("setstate-object", "cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I0\ntS'b'\ntR"
                            f"(I1\n(I{TIB2}\ntcnumpy\ndtype\n(S'O8'\nI0\nI1\ntR(I3\nS'|'\nNNNI-1\nI-1\nI63\ntbI00\n(lI1\natb"),
        # ndarray((2**41,), 'b') called directly
        ("ndarray", f"cnumpy\nndarray\n((I{TIB2}\ntS'b'\ntR"),
    ],
)
def test_freyfaces_pickle_declaring_a_huge_array_is_refused_before_allocating(tmp_path, how, body):
    raw = f"(l{body}a.".encode()
    pickletools.dis(raw, out=open(tmp_path / "dis.txt", "w"))  # well-formed: only the size check stops it
    (tmp_path / "huge.pkl").write_bytes(raw)
    with pytest.raises(DataFormatError) as err:
        read_freyfaces_pickle(tmp_path / "huge.pkl")
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'huge.pkl'}: ") and f"{len(raw)} bytes" in msg, msg


def test_freyfaces_split_is_the_sylvester_codes_shuffle(tmp_path, params):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(30, 560), dtype=np.uint8)
    entry = copy.deepcopy(params["datasets"]["freyfaces"])
    entry["splits"] = {"train": 20, "valid": 6, "test": 4}
    entry["files"]["pickle"] = mirror_entry(tmp_path / "mirror", "freyfaces/freyfaces.pkl", py2_array_pickle(arr))
    paths = prepare(DatasetSpec.from_params("freyfaces", entry), tmp_path / "raw", tmp_path / "prep", tmp_path / "mirror")
    got = {s: load_split(p)[0] for s, p in paths.items()}
    expected = sylvester_shuffle(arr, entry["split_seed"])
    np.testing.assert_array_equal(got["train"].reshape(-1, 560), expected[:20])
    np.testing.assert_array_equal(got["valid"].reshape(-1, 560), expected[20:26])
    np.testing.assert_array_equal(got["test"].reshape(-1, 560), expected[26:])
    assert not np.array_equal(expected, arr) and not np.array_equal(expected, sylvester_shuffle(arr, 321))
    np.testing.assert_array_equal(arr[seeded_order(30, 321)], sylvester_shuffle(arr, 321))

    entry["splits"]["test"] = 3
    with pytest.raises(DataFormatError, match=r"freyfaces\.pkl: 30 images, but datasets\.freyfaces\.splits add up to 29"):
        prepare(DatasetSpec.from_params("freyfaces", entry), tmp_path / "raw", tmp_path / "prep2", tmp_path / "mirror")


@pytest.mark.skipif(not FREY.exists(), reason=f"no Frey faces in the data mirror at {FREY}")
def test_real_freyfaces_prepares_from_the_mirror_as_the_sylvester_code_splits_it(tmp_path, params):
    spec = DatasetSpec.from_params("freyfaces", params["datasets"]["freyfaces"])
    paths = prepare(spec, tmp_path / "raw", tmp_path / "prep", FREY.parents[1])
    got = {s: load_split(p)[0] for s, p in paths.items()}
    assert {s: x.shape for s, x in got.items()} == {
        "train": (1565, 1, 28, 20), "valid": (200, 1, 28, 20), "test": (200, 1, 28, 20)}
    assert seeded_order(1965, 123)[:3].tolist() == [711, 1896, 1021]
    raw = read_freyfaces_pickle(FREY).reshape(1965, 560)
    expected = sylvester_shuffle(raw, 123)
    np.testing.assert_array_equal(np.concatenate([got[s] for s in ("train", "valid", "test")]).reshape(-1, 560), expected)


# ---------------------------------------------------------------- prepared splits read for a run


@pytest.mark.parametrize(
    "dataset, x, holds, expects",
    [
        ("binarized_mnist", np.full((5, 1, 28, 20), 200, np.uint8), "1x28x20 images with 8-bit values",
         "1x28x28 images with values 0/1"),
        ("binarized_mnist", np.full((5, 1, 28, 28), 200, np.uint8), "1x28x28 images with 8-bit values",
         "1x28x28 images with values 0/1"),
        ("mnist_8bit", np.ones((5, 1, 28, 28), np.uint8), "1x28x28 images with values 0/1",
         "1x28x28 images with 8-bit values"),
        ("cifar10", np.full((5, 3, 32, 32), 0.5, np.float32), "3x32x32 images with float32 values",
         "3x32x32 images with 8-bit values"),
        ("cifar10", np.full((5, 3072), 9, np.uint8), "an array of shape 5x3072 (uint8)", "3x32x32 images with 8-bit values"),
    ],
)
def test_a_prepared_split_of_another_data_set_is_named(tmp_path, params, dataset, x, holds, expects):
    path = tmp_path / "data/prepared/smoke" / dataset / "train.npz"
    path.parent.mkdir(parents=True)
    np.savez(path, x=x)
    spec = DatasetSpec.from_params(dataset, params["datasets"][dataset])
    assert load_split(path)[0].shape == x.shape  # without the data set, any array
    with pytest.raises(CorruptFileError) as err:
        load_split(path, spec=spec)
    assert str(err.value).startswith(f"{path} holds {holds}; {dataset} expects {expects}; "), str(err.value)
    assert "flowvae prepare" in str(err.value)


def test_a_prepared_split_of_its_own_data_set_loads(tmp_path, params):
    path = tmp_path / "train.npz"
    np.savez(path, x=np.ones((3, 1, 28, 28), np.uint8), y=np.arange(3))
    x, y = load_split(path, spec=DatasetSpec.from_params("binarized_mnist", params["datasets"]["binarized_mnist"]))
    assert x.shape == (3, 1, 28, 28) and y.tolist() == [0, 1, 2]


def test_a_run_reading_a_replaced_split_names_it(tiny):
    from flowvae.data.batches import split_images

    spec = tiny("vae")
    path = spec.prepared_dir / "train.npz"
    np.savez(path, x=np.full((4, 1, 8, 8), 128, np.uint8))  # 8-bit images where stripes (0/1) belong
    with pytest.raises(CorruptFileError) as err:
        split_images(spec, "train")
    assert str(err.value).startswith(f"{path} holds 1x8x8 images with 8-bit values; stripes expects 1x8x8 images with values 0/1")
    assert "flowvae prepare --profile test --dataset stripes" in str(err.value)


# ---------------------------------------------------------------- Omniglot


def omniglot_columns(images: np.ndarray) -> np.ndarray:
    """784 x N columns as chardata.mat stores them: each 28 x 28 image read column by column."""
    return np.stack([img.reshape(-1, order="F") for img in images], axis=1)


def test_omniglot_mat_columns_are_fortran_order_images(tmp_path):
    train = np.zeros((3, 28, 28))
    train[0, 2, 5] = 1.0   # row 2, column 5: stored at data[5 * 28 + 2, 0]
    train[1, 27, 0] = 0.2  # round(255 * 0.2) = 51
    train[2, 0, 27] = 0.5  # round(127.5) = 128
    test = np.zeros((2, 28, 28))
    test[1, 10, 3] = 1.0
    data, testdata = omniglot_columns(train), omniglot_columns(test)
    assert data.shape == (784, 3) and data[5 * 28 + 2, 0] == 1.0 and data[27, 1] == 0.2
    scipy.io.savemat(tmp_path / "chardata.mat", {"data": data, "testdata": testdata})
    parts = read_omniglot_mat(tmp_path / "chardata.mat")
    x = parts["train"]
    assert x.dtype == np.uint8 and x.shape == (3, 1, 28, 28) and parts["test"].shape == (2, 1, 28, 28)
    expected = np.zeros((3, 1, 28, 28), dtype=np.uint8)
    expected[0, 0, 2, 5], expected[1, 0, 27, 0], expected[2, 0, 0, 27] = 255, 51, 128
    np.testing.assert_array_equal(x, expected)
    assert parts["test"][1, 0, 10, 3] == 255 and parts["test"].sum() == 255
    # the Sylvester-flows code's reshape, read as 28 x 28 images
    sylvester = data.T.reshape((-1, 28, 28)).reshape((-1, 28 * 28), order="F").reshape(-1, 1, 28, 28)
    np.testing.assert_array_equal(x, np.round(sylvester * 255).astype(np.uint8))


def test_omniglot_mat_missing_variable_and_bad_values(tmp_path):
    scipy.io.savemat(tmp_path / "only.mat", {"data": np.zeros((784, 2))})
    with pytest.raises(DataFormatError) as err:
        read_omniglot_mat(tmp_path / "only.mat")
    assert str(tmp_path / "only.mat") in str(err.value) and "'testdata'" in str(err.value)
    scipy.io.savemat(tmp_path / "big.mat", {"data": np.full((784, 2), 2.0), "testdata": np.zeros((784, 1))})
    with pytest.raises(DataFormatError, match=r"big\.mat: variable 'data' has values outside \[0, 1\]"):
        read_omniglot_mat(tmp_path / "big.mat")
    scipy.io.savemat(tmp_path / "rows.mat", {"data": np.zeros((2, 784)), "testdata": np.zeros((784, 1))})
    with pytest.raises(DataFormatError, match=r"rows\.mat: variable 'data' has shape \(2, 784\), expected 784 x N"):
        read_omniglot_mat(tmp_path / "rows.mat")
    for name, raw in (("text.mat", b"not a mat file\n" * 20), ("cut.mat", (tmp_path / "big.mat").read_bytes()[:300])):
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(DataFormatError, match=rf"{name[:-4]}\.mat: not a MATLAB v5 file"):
            read_omniglot_mat(tmp_path / name)


def test_omniglot_validation_is_the_last_images_after_the_seeded_shuffle(tmp_path, params):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=(784, 12)) / 255
    testdata = rng.integers(0, 256, size=(784, 4)) / 255
    mirror = tmp_path / "mirror"
    (mirror / "omniglot").mkdir(parents=True)
    scipy.io.savemat(mirror / "omniglot/chardata.mat", {"data": data, "testdata": testdata})
    entry = copy.deepcopy(params["datasets"]["omniglot"])
    entry["splits"] = {"train": 9, "valid": 3, "test": 4}
    entry.pop("unverified_files")
    entry["files"] = {"mat": mirror_entry(mirror, "omniglot/chardata.mat")}
    paths = prepare(DatasetSpec.from_params("omniglot", entry), tmp_path / "raw", tmp_path / "prep", mirror)
    got = {s: load_split(p)[0] for s, p in paths.items()}
    # Sylvester-flows load_omniglot under --manual_seed split_seed
    train = data.T.reshape((-1, 28, 28)).reshape((-1, 784), order="F")
    train = sylvester_shuffle(train, entry["split_seed"])
    test = testdata.T.reshape((-1, 28, 28)).reshape((-1, 784), order="F")
    np.testing.assert_array_equal(got["train"].reshape(-1, 784), np.round(train[:-3] * 255))
    np.testing.assert_array_equal(got["valid"].reshape(-1, 784), np.round(train[-3:] * 255))
    np.testing.assert_array_equal(got["test"].reshape(-1, 784), np.round(test * 255))


# ---------------------------------------------------------------- Caltech 101 Silhouettes


def caltech_rows(images: np.ndarray) -> np.ndarray:
    """N x 784 rows as the split1 file stores them: 1 = background, each image read column by column."""
    return np.stack([(1 - img).reshape(-1, order="F") for img in images]).astype(np.float64)


def write_caltech(path: Path, skip: str | None = None) -> dict[str, np.ndarray]:
    shapes = {}
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        imgs = np.zeros((n, 28, 28), dtype=np.uint8)
        for k in range(n):
            imgs[k, 2 + k, 5] = 1       # one silhouette pixel per image at (row 2 + k, column 5)
            imgs[k, 20, 10 + k] = 1
        shapes[split] = imgs
    variables = {}
    for split, imgs in shapes.items():
        variables[f"{split}_data"] = caltech_rows(imgs)
        variables[f"{split}_labels"] = np.arange(1, len(imgs) + 1).reshape(-1, 1) + 98  # 99, 100, 101
    variables.pop(skip, None)
    scipy.io.savemat(path, variables)
    return shapes


def test_caltech_mat_is_inverted_fortran_order_images_with_labels(tmp_path):
    shapes = write_caltech(tmp_path / "c.mat")
    raw = scipy.io.loadmat(tmp_path / "c.mat")
    assert raw["train_data"][0, 5 * 28 + 2] == 0 and raw["train_data"][0].sum() == 782  # 0 marks the shape in the file
    parts = read_caltech_mat(tmp_path / "c.mat")
    assert set(parts) == {"train", "valid", "test"}
    x, y = parts["train"]
    assert x.dtype == np.uint8 and x.shape == (3, 1, 28, 28)
    expected = np.zeros((3, 1, 28, 28), dtype=np.uint8)
    expected[0, 0, 2, 5] = expected[0, 0, 20, 10] = 1
    expected[1, 0, 3, 5] = expected[1, 0, 20, 11] = 1
    expected[2, 0, 4, 5] = expected[2, 0, 20, 12] = 1
    np.testing.assert_array_equal(x, expected)
    assert y.dtype == np.int64 and y.tolist() == [98, 99, 100]
    np.testing.assert_array_equal(parts["valid"][0][:, 0], shapes["val"])
    np.testing.assert_array_equal(parts["test"][0][:, 0], shapes["test"])
    # the Sylvester-flows code's expression, read as 28 x 28 images
    sylvester = 1 - raw["train_data"].reshape((-1, 28, 28)).reshape((-1, 784), order="F")
    np.testing.assert_array_equal(x, sylvester.reshape(-1, 1, 28, 28))


def test_caltech_mat_missing_variable_and_grey_values(tmp_path):
    write_caltech(tmp_path / "nolabels.mat", skip="val_labels")
    with pytest.raises(DataFormatError) as err:
        read_caltech_mat(tmp_path / "nolabels.mat")
    assert str(tmp_path / "nolabels.mat") in str(err.value) and "'val_labels'" in str(err.value)
    write_caltech(tmp_path / "grey.mat")
    mat = scipy.io.loadmat(tmp_path / "grey.mat")
    mat["test_data"][0, 0] = 0.5
    scipy.io.savemat(tmp_path / "grey.mat", {k: v for k, v in mat.items() if not k.startswith("__")})
    with pytest.raises(DataFormatError, match=r"grey\.mat: variable 'test_data' has values other than 0 and 1"):
        read_caltech_mat(tmp_path / "grey.mat")


def test_an_unverified_file_with_a_checksum_is_fetched_and_verified_by_it(tmp_path, params):
    mirror = tmp_path / "mirror"
    (mirror / "caltech101").mkdir(parents=True)
    write_caltech(mirror / "caltech101/caltech101_silhouettes_28_split1.mat")
    entry = copy.deepcopy(params["datasets"]["caltech101"])
    entry["splits"] = {"train": 3, "valid": 2, "test": 2}
    entry["unverified_files"]["mat"]["md5"] = md5(mirror / "caltech101/caltech101_silhouettes_28_split1.mat")
    paths = prepare(DatasetSpec.from_params("caltech101", entry), tmp_path / "raw", tmp_path / "prep", mirror)
    x, y = load_split(paths["valid"])
    assert x.shape == (2, 1, 28, 28) and x[1, 0, 3, 5] == 1 and y.tolist() == [98, 99]
    entry["unverified_files"]["mat"]["md5"] = "0" * 32
    with pytest.raises(DownloadError, match="checksum mismatch"):
        prepare(DatasetSpec.from_params("caltech101", entry), tmp_path / "raw2", tmp_path / "prep2", mirror)
    assert not (tmp_path / "prep2").exists()


# ---------------------------------------------------------------- without their files


@pytest.fixture
def offline(monkeypatch):
    """No network: an official URL fails at once, as on these machines."""
    real_open = download._open

    def _open(source, timeout):
        if "://" in source:
            raise urllib.error.URLError("network unreachable (test)")
        return real_open(source, timeout)

    monkeypatch.setattr(download, "_open", _open)


@pytest.mark.parametrize(
    "name, rel, url_line",
    [
        ("omniglot", "omniglot/chardata.mat", "not downloaded: params.yaml has no checksum to verify it with"),
        ("caltech101", "caltech101/caltech101_silhouettes_28_split1.mat", "network unreachable (test)"),
        ("cifar10", "cifar10/cifar-10-python.tar.gz", "network unreachable (test)"),
    ],
)
def test_missing_files_fail_naming_data_set_file_url_and_mirror(tmp_path, params, offline, name, rel, url_line):
    entry = params["datasets"][name]
    url = next(iter((entry.get("files") or entry.get("unverified_files")).values()))["url"]
    (tmp_path / "mirror").mkdir()
    with pytest.raises(DownloadError) as err:
        prepare(DatasetSpec.from_params(name, entry), tmp_path / "raw", tmp_path / "prep", tmp_path / "mirror")
    msg = str(err.value)
    assert msg.startswith(f"datasets.{name}: could not fetch {rel}; sources tried:")
    assert f"{tmp_path / 'mirror' / rel}: no such file" in msg
    assert f"{url}: {url_line}" in msg
    assert f"Download {url} by hand and put it at <mirror>/{rel}" in msg and "FLOWVAE_DATA_MIRROR" in msg
    if name != "cifar10":
        assert f"record its size and sha256 under datasets.{name}.files" in msg
    assert not (tmp_path / "prep").exists()


def test_a_file_without_checksum_is_not_trusted_even_in_the_mirror(tmp_path, params, offline):
    (tmp_path / "mirror/omniglot").mkdir(parents=True)
    scipy.io.savemat(tmp_path / "mirror/omniglot/chardata.mat", {"data": np.zeros((784, 2)), "testdata": np.zeros((784, 1))})
    with pytest.raises(DownloadError, match=r"chardata\.mat: present, but params\.yaml has no checksum to verify it with"):
        prepare(DatasetSpec.from_params("omniglot", params["datasets"]["omniglot"]), tmp_path / "raw", tmp_path / "prep",
                tmp_path / "mirror")
    assert not (tmp_path / "raw").exists() and not (tmp_path / "prep").exists()


# ---------------------------------------------------------------- params


def test_params_entries_validate_and_split_seed_is_required(params):
    validate_params(params)
    assert params["datasets"]["freyfaces"]["likelihood"] == "categorical"
    assert params["datasets"]["freyfaces"]["split_seed"] == 123
    for name, missing in (("freyfaces", "split_seed"), ("omniglot", "split_seed")):
        bad = copy.deepcopy(params)
        del bad["datasets"][name][missing]
        with pytest.raises(ParamsError, match=rf"datasets\.{name}: 'split_seed' is a required property"):
            validate_params(bad)
        with pytest.raises(ValueError, match=rf"datasets\.{name}\.split_seed: required"):
            DatasetSpec.from_params(name, bad["datasets"][name])
    bad = copy.deepcopy(params)
    bad["datasets"]["caltech101"]["unverified_files"]["mat"]["sha256"] = "0" * 64
    with pytest.raises(ParamsError, match=r"datasets\.caltech101\.unverified_files\.mat"):
        validate_params(bad)
    bad = copy.deepcopy(params)
    bad["datasets"]["freyfaces"]["split_seed"] = -1
    with pytest.raises(ParamsError, match=r"datasets\.freyfaces\.split_seed"):
        validate_params(bad)
