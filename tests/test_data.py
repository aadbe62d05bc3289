"""Data: raw formats, checksums, the mirror-then-official order, atomic writes, splits, batches."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from flowvae.spec.params import read_params

from flowvae.data import formats as data
from flowvae.data import download
from flowvae.data.batches import Batches
from flowvae.spec.datasets import DatasetSpec
from flowvae.data.prepare import load_split, prepare
from flowvae.data.formats import read_amat, read_cifar_tar, read_idx
from flowvae.data.download import DownloadError, fetch
from flowvae.spec.datasets import RemoteFile

from conftest import DATA_MIRROR, md5, write_amat, write_idx

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = DATA_MIRROR


def write_cifar(path: Path, n_per_batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    made = {}
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            x = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
            y = list(rng.integers(0, 10, size=n_per_batch))
            made[name] = x
            raw = pickle.dumps({b"data": x, b"labels": [int(v) for v in y]}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return made


def md5_of(raw: bytes) -> str:
    return hashlib.md5(raw).hexdigest()


def remote(path: str, file: Path, url: str = "http://127.0.0.1:9/none") -> RemoteFile:
    return RemoteFile(path, url, file.stat().st_size, f"md5:{md5(file)}")


def test_idx_roundtrip_and_bad_magic(tmp_path):
    arr = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    write_idx(tmp_path / "a.gz", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(data.DataFormatError, match="magic"):
        read_idx(tmp_path / "bad")


def test_idx_truncated_is_an_error(tmp_path):
    arr = np.zeros((3, 4), dtype=np.uint8)
    header = bytes([0, 0, 0x08, 2]) + struct.pack(">2I", 3, 4)
    (tmp_path / "t").write_bytes(header + arr.tobytes()[:-1])
    with pytest.raises(data.DataFormatError, match="promises 12 bytes"):
        read_idx(tmp_path / "t")


def test_amat_parse_and_line_error(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 2, size=(5, 784))
    write_amat(tmp_path / "x.amat", arr)
    np.testing.assert_array_equal(read_amat(tmp_path / "x.amat"), arr)
    (tmp_path / "y.amat").write_text("0 1\n")
    with pytest.raises(data.DataFormatError, match="line 1: 2 values"):
        read_amat(tmp_path / "y.amat")
    # other layouts than the published one's read the same, line by line
    (tmp_path / "z.amat").write_text("".join("  ".join(str(int(v)) for v in row) + " \r\n" for row in arr))
    np.testing.assert_array_equal(read_amat(tmp_path / "z.amat"), arr)
    bad = (tmp_path / "x.amat").read_bytes()
    (tmp_path / "b.amat").write_bytes(bad[:2 * 784 * 3 + 4] + b"2" + bad[2 * 784 * 3 + 5:])  # line 4, a value 2
    with pytest.raises(data.DataFormatError, match="values other than 0 and 1"):
        read_amat(tmp_path / "b.amat")


def test_cifar_tar_parse(tmp_path):
    made = write_cifar(tmp_path / "c.tar.gz", 4, np.random.default_rng(1))
    parts = read_cifar_tar(tmp_path / "c.tar.gz")
    assert parts["train"][0].shape == (20, 3, 32, 32)
    assert parts["test"][0].shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(parts["test"][0].reshape(4, -1), made["test_batch"])


def test_cifar_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    with tarfile.open(tmp_path / "e.tar.gz", "w:gz") as tar:
        raw = pickle.dumps({b"data": Evil()})
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_cifar_tar(tmp_path / "e.tar.gz")


def test_fetch_prefers_mirror_and_verifies(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "d").mkdir(parents=True)
    (mirror / "d" / "f.bin").write_bytes(b"hello world")
    spec = remote("d/f.bin", mirror / "d" / "f.bin")
    out = fetch(spec, tmp_path / "raw", mirror)
    assert out.read_bytes() == b"hello world"
    assert [p.name for p in out.parent.iterdir()] == ["f.bin"]


def test_fetch_falls_back_to_official_url(tmp_path):
    official = tmp_path / "official.bin"
    official.write_bytes(b"payload")
    spec = RemoteFile("d/f.bin", official.as_uri(), 7, f"md5:{md5(official)}")
    out = fetch(spec, tmp_path / "raw", tmp_path / "empty-mirror")
    assert out.read_bytes() == b"payload"


def test_checksum_mismatch_names_file_sources_and_digests(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "d").mkdir(parents=True)
    good = tmp_path / "good.bin"
    good.write_bytes(b"the real bytes")
    (mirror / "d" / "f.bin").write_bytes(b"the real bytez")
    spec = RemoteFile("d/f.bin", "http://127.0.0.1:9/f.bin", 14, f"md5:{md5(good)}")
    with pytest.raises(DownloadError) as err:
        fetch(spec, tmp_path / "raw", mirror)
    msg = str(err.value)
    assert "d/f.bin" in msg
    assert str(mirror / "d" / "f.bin") in msg and "http://127.0.0.1:9/f.bin" in msg
    assert md5(good) in msg and md5(mirror / "d" / "f.bin") in msg
    assert not (tmp_path / "raw" / "d" / "f.bin").exists()
    assert list((tmp_path / "raw" / "d").iterdir()) == []


def mirrored_file(tmp_path, size: int):
    """A mirror holding d/f.bin of `size` bytes, and its RemoteFile."""
    mirror = tmp_path / "mirror"
    (mirror / "d").mkdir(parents=True)
    (mirror / "d" / "f.bin").write_bytes(b"x" * size)
    return mirror, remote("d/f.bin", mirror / "d" / "f.bin")


def test_interrupted_download_leaves_nothing(tmp_path, monkeypatch):
    mirror, spec = mirrored_file(tmp_path, 5_000_000)
    real_open = download._open

    class Breaks:
        def __init__(self, stream):
            self.stream, self.calls = stream, 0

        def read(self, n):
            self.calls += 1
            if self.calls > 2:
                raise KeyboardInterrupt
            return self.stream.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.stream.close()

    monkeypatch.setattr(download, "_open", lambda s, t: (Breaks(real_open(s, t)[0]), None))
    with pytest.raises(KeyboardInterrupt):
        fetch(spec, tmp_path / "raw", mirror)
    assert list((tmp_path / "raw" / "d").iterdir()) == []
    monkeypatch.setattr(download, "_open", real_open)
    assert fetch(spec, tmp_path / "raw", mirror).stat().st_size == 5_000_000


def test_no_source_names_url_and_how_to_supply(tmp_path, monkeypatch):
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    spec = RemoteFile("c/archive.tar.gz", "http://127.0.0.1:9/archive.tar.gz", 1, "md5:" + "0" * 32)
    with pytest.raises(DownloadError, match=r"http://127.0.0.1:9/archive.tar.gz[\s\S]*FLOWVAE_DATA_MIRROR"):
        fetch(spec, tmp_path / "raw", download.mirror_roots())


# ---------------------------------------------------------------- downloads capped at the declared size


class _Server:
    """A loopback HTTP server. /flood sends 64 MiB with no Content-Length (endless to a client that expects 1000
    bytes; bounded so that a regression fails the test instead of filling the disk), /forever streams paced bytes
    until the client goes away, /lying says Content-Length 5000, /ok serves `body`."""

    def __init__(self, body: bytes):
        import http.server
        import threading

        self.body, self.sent = body, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                if self.path == "/ok":
                    self.send_header("Content-Length", str(len(outer.body)))
                    self.end_headers()
                    self.wfile.write(outer.body)
                    return
                limit = {"/flood": 64 << 20, "/lying": 5000}.get(self.path)
                if self.path == "/lying":
                    self.send_header("Content-Length", "5000")
                self.end_headers()
                block = b"x" * 65536
                try:
                    while limit is None or outer.sent < limit:
                        self.wfile.write(block)
                        outer.sent += len(block)
                        if limit is None:
                            time.sleep(0.005)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server(b"0123456789")
    yield s
    s.close()


def test_a_server_that_streams_forever_stops_at_the_declared_size(tmp_path, server):
    spec = RemoteFile("d/f.bin", f"{server.url}/flood", 1000, "md5:" + md5_of(b"x" * 1000))
    with pytest.raises(DownloadError) as err:
        fetch(spec, tmp_path / "raw", None)
    msg = str(err.value)
    assert "d/f.bin" in msg and f"{server.url}/flood" in msg and "1000 bytes" in msg
    assert "more than" in msg
    assert list((tmp_path / "raw" / "d").iterdir()) == []
    assert server.sent < 32 << 20  # the client hung up long before the end


def test_a_content_length_other_than_the_declared_size_fails_before_reading(tmp_path, server):
    spec = RemoteFile("d/f.bin", f"{server.url}/lying", 10, "md5:" + md5_of(b"0123456789"))
    with pytest.raises(DownloadError) as err:
        fetch(spec, tmp_path / "raw", None)
    msg = str(err.value)
    assert f"{server.url}/lying" in msg and "Content-Length" in msg and "5000" in msg and "10 bytes" in msg
    assert list((tmp_path / "raw" / "d").iterdir()) == []


def test_a_mirror_file_of_another_size_is_refused_and_the_url_tried(tmp_path, server):
    mirror = tmp_path / "mirror"
    (mirror / "d").mkdir(parents=True)
    (mirror / "d" / "f.bin").write_bytes(b"0123456789 and more")
    spec = RemoteFile("d/f.bin", f"{server.url}/ok", 10, "md5:" + md5_of(b"0123456789"))
    assert fetch(spec, tmp_path / "raw", mirror).read_bytes() == b"0123456789"


def test_stale_part_files_of_killed_runs_are_removed_on_the_next_try(tmp_path, server):
    import fcntl

    folder = tmp_path / "raw" / "d"
    folder.mkdir(parents=True)
    stale = folder / ".f.bin.k1ll3d__.part"
    stale.write_bytes(b"x" * 4096)
    live = folder / ".f.bin.l1v3____.part"  # a fetch running now holds a lock on its file: kept
    live.write_bytes(b"y")
    other = folder / ".g.bin.k1ll3d__.part"  # another file's: left for its own next try
    other.write_bytes(b"z")
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        spec = RemoteFile("d/f.bin", f"{server.url}/ok", 10, "md5:" + md5_of(b"0123456789"))
        assert fetch(spec, tmp_path / "raw", None).read_bytes() == b"0123456789"
    assert sorted(p.name for p in folder.iterdir()) == sorted(["f.bin", live.name, other.name])


def test_sigterm_during_a_download_removes_the_partial_file(tmp_path, server):
    import signal
    import subprocess
    import sys

    script = (
        "import sys; from pathlib import Path\n"
        "from flowvae.data.download import fetch\n"
        "from flowvae.spec.datasets import RemoteFile\n"
        "fetch(RemoteFile('d/f.bin', sys.argv[1], 10**12, 'md5:' + '0' * 32), Path(sys.argv[2]))\n"
    )
    folder = tmp_path / "raw" / "d"
    child = subprocess.Popen([sys.executable, "-c", script, f"{server.url}/forever", str(tmp_path / "raw")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            parts = list(folder.glob("*.part")) if folder.exists() else []
            if parts and parts[0].stat().st_size > 1_000_000:
                break
            assert child.poll() is None, child.communicate()
            time.sleep(0.05)
        else:
            pytest.fail("the download never started")
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 128 + signal.SIGTERM, err
    assert "d/f.bin" in err.decode()
    assert list(folder.iterdir()) == []


def test_disk_full_while_writing_a_download_says_so(tmp_path, monkeypatch):
    import errno

    mirror, spec = mirrored_file(tmp_path, 3_000_000)
    real_create = download._create_part

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, block):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(download, "_create_part", lambda dest: (lambda t, f: (t, Full(f)))(*real_create(dest)))
    with pytest.raises(DownloadError) as err:
        fetch(spec, tmp_path / "raw", mirror)
    assert f"disk full while writing {tmp_path / 'raw' / 'd' / 'f.bin'}" in str(err.value)
    assert list((tmp_path / "raw" / "d").iterdir()) == []


def make_mnist_mirror(root: Path, n_train: int, n_test: int) -> dict:
    rng = np.random.default_rng(0)
    (root / "mnist").mkdir(parents=True)
    write_idx(root / "mnist/train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(root / "mnist/train-labels-idx1-ubyte.gz", rng.integers(0, 10, n_train))
    write_idx(root / "mnist/t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(root / "mnist/t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n_test))
    files = {}
    for role, name in [
        ("train_images", "train-images-idx3-ubyte.gz"),
        ("train_labels", "train-labels-idx1-ubyte.gz"),
        ("test_images", "t10k-images-idx3-ubyte.gz"),
        ("test_labels", "t10k-labels-idx1-ubyte.gz"),
    ]:
        p = root / "mnist" / name
        files[role] = {"path": f"mnist/{name}", "url": f"http://127.0.0.1:9/{name}", "size": p.stat().st_size, "md5": md5(p)}
    return files


def test_prepare_idx_splits_and_digits(tmp_path):
    files = make_mnist_mirror(tmp_path / "mirror", 60, 20)
    entry = {"kind": "idx", "binarize": "dynamic", "shape": [1, 28, 28], "splits": {"train": 50, "valid": 10, "test": 20}, "files": files}
    paths = prepare(DatasetSpec.from_params("m", entry), tmp_path / "raw", tmp_path / "prep", tmp_path / "mirror")
    sizes = {s: load_split(p)[0].shape for s, p in paths.items()}
    assert sizes == {"train": (50, 1, 28, 28), "valid": (10, 1, 28, 28), "test": (20, 1, 28, 28)}
    x_all = read_idx(tmp_path / "mirror/mnist/train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(load_split(paths["valid"])[0][:, 0], x_all[-10:])
    entry["digits"] = [0, 1]
    paths = prepare(DatasetSpec.from_params("m4", entry), tmp_path / "raw", tmp_path / "prep4", tmp_path / "mirror")
    assert set(np.unique(load_split(paths["train"])[1])) <= {0, 1}


def test_prepare_amat_keeps_order_and_bad_byte_leaves_no_prepared_file(tmp_path):
    mirror = tmp_path / "mirror" / "b"
    mirror.mkdir(parents=True)
    rng = np.random.default_rng(3)
    arrays = {s: rng.integers(0, 2, (n, 784)) for s, n in [("train", 6), ("valid", 2), ("test", 3)]}
    files = {}
    for s, arr in arrays.items():
        write_amat(mirror / f"{s}.amat", arr)
        p = mirror / f"{s}.amat"
        files[s] = {"path": f"b/{s}.amat", "url": f"http://127.0.0.1:9/{s}", "size": p.stat().st_size, "md5": md5(p)}
    entry = {"kind": "amat", "binarize": "fixed", "shape": [1, 28, 28], "splits": {"train": 6, "valid": 2, "test": 3}, "files": files}
    spec = DatasetSpec.from_params("b", entry)
    paths = prepare(spec, tmp_path / "raw", tmp_path / "prep", tmp_path / "mirror")
    np.testing.assert_array_equal(load_split(paths["test"])[0].reshape(3, -1), arrays["test"])

    raw = bytearray((mirror / "valid.amat").read_bytes())
    raw[0] = ord("1") if raw[0] == ord("0") else ord("0")
    (mirror / "valid.amat").write_bytes(bytes(raw))
    with pytest.raises(DownloadError, match="checksum mismatch"):
        prepare(spec, tmp_path / "raw2", tmp_path / "prep2", tmp_path / "mirror")
    assert not (tmp_path / "prep2").exists() or not any((tmp_path / "prep2").iterdir())


def test_prepare_cifar_splits(tmp_path):
    (tmp_path / "mirror" / "c").mkdir(parents=True)
    write_cifar(tmp_path / "mirror/c/a.tar.gz", 4, np.random.default_rng(2))
    archive = tmp_path / "mirror/c/a.tar.gz"
    files = {"archive": {"path": "c/a.tar.gz", "url": "http://127.0.0.1:9/a", "size": archive.stat().st_size, "md5": md5(archive)}}
    entry = {"kind": "cifar_python", "shape": [3, 32, 32], "splits": {"train": 15, "valid": 5, "test": 4}, "files": files}
    paths = prepare(DatasetSpec.from_params("c", entry), tmp_path / "raw", tmp_path / "prep", tmp_path / "mirror")
    assert {s: len(load_split(p)[0]) for s, p in paths.items()} == {"train": 15, "valid": 5, "test": 4}


def test_dynamic_binarization_fresh_per_batch_and_seeded():
    x = np.full((64, 1, 4, 4), 128, dtype=np.uint8)
    a = list(Batches(x, 16, binarize="dynamic", shuffle=False, seed=0).epoch(0))
    b = list(Batches(x, 16, binarize="dynamic", shuffle=False, seed=0).epoch(0))
    c = list(Batches(x, 16, binarize="dynamic", shuffle=False, seed=1).epoch(0))
    again = list(Batches(x, 16, binarize="dynamic", shuffle=False, seed=0).epoch(1))
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[0], a[1])  # the same pixels, a fresh sample in each batch
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], again[0])
    assert set(torch.unique(a[0]).tolist()) == {0.0, 1.0}
    assert abs(torch.cat(a).mean().item() - 128 / 255) < 0.05


def test_batches_resume_mid_epoch_and_scale():
    x = np.arange(10 * 3, dtype=np.uint8).reshape(10, 3, 1, 1)
    full = list(Batches(x, 3, seed=5).epoch(2))
    resumed = list(Batches(x, 3, seed=5).epoch(2, start=2))
    assert all(torch.equal(p, q) for p, q in zip(full[2:], resumed))
    assert len(full) == 4 and sum(len(b) for b in full) == 10
    assert torch.cat(full).max().item() == pytest.approx(29 / 255)
    first_pixels = torch.cat(full)[:, 0, 0, 0].mul(255).round().tolist()
    assert first_pixels != list(range(0, 30, 3)) and sorted(first_pixels) == list(range(0, 30, 3))


@pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"no data mirror at {SHARED_DATA}")
def test_shared_mirror_files_match_params_checksums():
    params = read_params(REPO / "params.yaml")
    checked = set()
    for entry in params["datasets"].values():
        for f in (entry.get("files") or {}).values():
            spec = RemoteFile.from_params(f)
            path = SHARED_DATA / spec.path
            if path.exists():
                assert path.stat().st_size == spec.size, spec.path
                assert download.file_digest(path, spec.algorithm) == spec.digest, spec.path
                checked.add(spec.path)
    assert len(checked) == 8
