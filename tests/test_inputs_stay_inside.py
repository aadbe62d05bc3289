"""Inputs stay inside the project: file paths inside data.raw_dir and the mirror, names that are plain names,
a mirror that is a local folder."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from flowvae.spec.params import read_params

from flowvae.data.download import MIRROR_ENV, DownloadError, fetch, mirror_roots
from flowvae.data.prepare import load_split, prepare
from flowvae.spec.datasets import DatasetSpec, RemoteFile
from flowvae.spec.schema import ParamsError, validate_params

from conftest import md5, write_amat

REPO = Path(__file__).resolve().parents[1]
ESCAPING_PATHS = [
    "../../x/binarized_mnist_valid.amat",
    "binarized_mnist/../../x/binarized_mnist_valid.amat",
    "/tmp/x/binarized_mnist_valid.amat",
    "..",
    ".",
    "binarized_mnist/./binarized_mnist_valid.amat",
]


@pytest.fixture(scope="module")
def params() -> dict:
    return read_params(REPO / "params.yaml")


def schema_error(params: dict, mutate) -> str:
    bad = copy.deepcopy(params)
    mutate(bad)
    with pytest.raises(ParamsError) as err:
        validate_params(bad)
    msg = str(err.value)
    assert msg.count("\n") == 0, msg  # one error, one line
    return msg


# ---------------------------------------------------------------- file paths


@pytest.mark.parametrize("path", ESCAPING_PATHS)
def test_the_schema_refuses_file_paths_that_leave_the_mirror_and_raw_folder(params, path):
    def in_files(p):
        p["datasets"]["binarized_mnist"]["files"]["valid"]["path"] = path

    def in_unverified(p):
        p["datasets"]["omniglot"]["unverified_files"]["mat"]["path"] = path

    msg = schema_error(params, in_files)
    assert "datasets.binarized_mnist.files.valid.path" in msg and repr(path) in msg and "relative" in msg
    msg = schema_error(params, in_unverified)
    assert "datasets.omniglot.unverified_files.mat.path" in msg and repr(path) in msg
    entry = copy.deepcopy(params["datasets"]["binarized_mnist"])
    entry["files"]["valid"]["path"] = path
    with pytest.raises(ValueError, match="relative"):
        DatasetSpec.from_params("binarized_mnist", entry)


def test_ordinary_file_paths_still_validate(params):
    good = copy.deepcopy(params)
    good["datasets"]["binarized_mnist"]["files"]["valid"]["path"] = "binarized_mnist/..valid/.binarized mnist.amat"
    validate_params(good)


def test_fetch_never_writes_outside_the_raw_folder(tmp_path):
    raw = tmp_path / "project" / "data" / "raw"
    mirror = tmp_path / "mirror"
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f.bin").write_bytes(b"payload")  # mirror/../x/f.bin
    spec = RemoteFile("../x/f.bin", "http://127.0.0.1:9/f.bin", 7, f"md5:{md5(tmp_path / 'x' / 'f.bin')}")
    with pytest.raises(DownloadError) as err:
        fetch(spec, raw, mirror)
    assert "../x/f.bin" in str(err.value) and f"outside the raw folder {raw.resolve()}" in str(err.value)
    assert not (tmp_path / "project" / "data" / "x").exists()


def test_fetch_refuses_an_absolute_path(tmp_path):
    outside = tmp_path / "elsewhere" / "f.bin"
    outside.parent.mkdir()
    outside.write_bytes(b"payload")
    spec = RemoteFile(str(outside), "http://127.0.0.1:9/f.bin", 7, f"md5:{md5(outside)}")
    with pytest.raises(DownloadError) as err:
        fetch(spec, tmp_path / "raw", tmp_path / "mirror")
    assert str(outside) in str(err.value) and "outside the raw folder" in str(err.value)


@pytest.mark.parametrize("link", ["file", "folder"])
def test_a_mirror_symlink_pointing_out_of_the_mirror_is_refused(tmp_path, link):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "f.bin").write_bytes(b"payload")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    if link == "file":
        (mirror / "d").mkdir()
        (mirror / "d" / "f.bin").symlink_to(secret / "f.bin")
    else:
        (mirror / "d").symlink_to(secret)
    spec = RemoteFile("d/f.bin", "http://127.0.0.1:9/f.bin", 7, f"md5:{md5(secret / 'f.bin')}")
    with pytest.raises(DownloadError) as err:
        fetch(spec, tmp_path / "raw", mirror)
    msg = str(err.value)
    assert f"{mirror / 'd' / 'f.bin'}: " in msg and f"outside the mirror {mirror.resolve()}: refused" in msg
    if link == "file":
        assert "a symbolic link to" in msg
    assert not (tmp_path / "raw" / "d" / "f.bin").exists()


def test_a_symlink_inside_the_mirror_is_followed(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "store").mkdir(parents=True)
    (mirror / "store" / "f.bin").write_bytes(b"payload")
    (mirror / "d").mkdir()
    (mirror / "d" / "f.bin").symlink_to(mirror / "store" / "f.bin")
    spec = RemoteFile("d/f.bin", "http://127.0.0.1:9/f.bin", 7, f"md5:{md5(mirror / 'store' / 'f.bin')}")
    assert fetch(spec, tmp_path / "raw", mirror).read_bytes() == b"payload"


# ---------------------------------------------------------------- names


EVIL = "../../../../tmp/evilds"


@pytest.mark.parametrize(
    "section, add",
    [
        ("datasets", lambda p, name: p["datasets"].__setitem__(name, copy.deepcopy(p["datasets"]["binarized_mnist"]))),
        ("profiles", lambda p, name: p["profiles"].__setitem__(name, copy.deepcopy(p["profiles"]["smoke"]))),
        ("tables", lambda p, name: p["tables"].__setitem__(name, copy.deepcopy(p["tables"]["table1"]))),
        ("summaries", lambda p, name: p["summaries"].__setitem__(name, {"tables": ["table1"]})),
        ("budgets", lambda p, name: p["budgets"].__setitem__(name, copy.deepcopy(next(iter(p["budgets"].values()))))),
    ],
)
@pytest.mark.parametrize("name", [EVIL, "a/b", "with space", "new\nline", "trailing\n", ""])
def test_names_that_become_paths_must_be_plain(params, section, add, name):
    msg = schema_error(params, lambda p: add(p, name))
    assert msg.startswith(f"params.yaml: {section}: name {name!r} ")


def test_plain_names_with_dashes_and_underscores_validate(params):
    good = copy.deepcopy(params)
    good["datasets"]["my-data_2"] = copy.deepcopy(good["datasets"]["binarized_mnist"])
    good["profiles"]["cpu-small_1"] = copy.deepcopy(good["profiles"]["smoke"])
    validate_params(good)


# ---------------------------------------------------------------- the mirror setting


def test_a_file_url_mirror_is_its_folder(tmp_path, monkeypatch):
    mirror = tmp_path / "my mirror"
    (mirror / "b").mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = {}
    for split, n in (("train", 4), ("valid", 2), ("test", 2)):
        path = mirror / "b" / f"{split}.amat"
        write_amat(path, rng.integers(0, 2, (n, 784)))
        files[split] = {"path": f"b/{split}.amat", "url": "http://127.0.0.1:9/x", "size": path.stat().st_size, "md5": md5(path)}
    assert mirror_roots(mirror.as_uri()) == [mirror]
    assert mirror_roots("file://localhost" + str(mirror)) == [mirror]
    monkeypatch.setenv(MIRROR_ENV, mirror.as_uri())
    assert mirror_roots() == [mirror]
    entry = {"kind": "amat", "binarize": "fixed", "shape": [1, 28, 28], "splits": {"train": 4, "valid": 2, "test": 2}, "files": files}
    paths = prepare(DatasetSpec.from_params("b", entry), tmp_path / "raw", tmp_path / "prep", mirror.as_uri())
    assert load_split(paths["valid"])[0].shape == (2, 1, 28, 28)


@pytest.mark.parametrize("url", ["http://example.org/data", "https://example.org/data", "s3://bucket/data", "file://otherhost/data"])
def test_a_mirror_that_is_another_url_is_refused(params, monkeypatch, url):
    with pytest.raises(ValueError, match=r"^data\.mirror: .*(URL|host)") as err:
        mirror_roots(url)
    assert repr(url) in str(err.value)
    monkeypatch.setenv(MIRROR_ENV, url)
    with pytest.raises(ValueError, match=rf"^{MIRROR_ENV}: "):
        mirror_roots()
    if not url.startswith("file://"):
        msg = schema_error(params, lambda p: p["data"].update(mirror=url))
        assert msg.startswith(f"params.yaml: data.mirror: {url!r} ")


def test_a_folder_or_file_url_mirror_validates(params):
    for value in ("/srv/mirror", "../shared/data", "file:///srv/mirror", None):
        good = copy.deepcopy(params)
        good["data"]["mirror"] = value
        validate_params(good)


def test_several_mirrors_are_tried_in_order_and_a_file_url_serves_a_local_file(tmp_path, monkeypatch):
    first, second, elsewhere = tmp_path / "mnist mirror", tmp_path / "fashion", tmp_path / "downloads"
    for folder in (first, second, elsewhere):
        folder.mkdir()
    (first / "a.bin").write_bytes(b"from the first")
    (second / "a.bin").write_bytes(b"from the second")
    (second / "b.bin").write_bytes(b"only in the second")
    (elsewhere / "c.bin").write_bytes(b"a local download")
    monkeypatch.setenv(MIRROR_ENV, f"{first.as_uri()}:{second}")
    assert mirror_roots() == [first, second]
    assert mirror_roots([str(second), first.as_uri()]) == [second, first]

    def remote(path: str, data: bytes, url: str = "http://127.0.0.1:9/x") -> RemoteFile:
        return RemoteFile(path, url, len(data), "md5:" + hashlib.md5(data).hexdigest())

    raw = tmp_path / "raw"
    assert fetch(remote("a.bin", b"from the first"), raw, mirror_roots()).read_bytes() == b"from the first"
    assert fetch(remote("b.bin", b"only in the second"), raw, mirror_roots()).read_bytes() == b"only in the second"
    url = (elsewhere / "c.bin").as_uri()
    assert fetch(remote("c.bin", b"a local download", url), raw, mirror_roots()).read_bytes() == b"a local download"
    with pytest.raises(DownloadError) as err:
        fetch(remote("d.bin", b"nowhere"), raw, mirror_roots())
    assert str(first / "d.bin") in str(err.value) and str(second / "d.bin") in str(err.value)
