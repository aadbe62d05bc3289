"""Checksummed downloads: a local mirror first, then the official URL, never a half-written file."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from flowvae.files.atomic import FILE_MODE
from flowvae.spec.datasets import RemoteFile

MIRROR_ENV = "FLOWVAE_DATA_MIRROR"
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """No source gave a file with the expected checksum."""


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def mirror_root(explicit: str | os.PathLike | None = None) -> Path | None:
    """The configured mirror folder: an explicit setting wins over the environment variable."""
    value = explicit if explicit not in (None, "") else os.environ.get(MIRROR_ENV)
    return Path(value).expanduser() if value else None


def _sources(remote: RemoteFile, mirror: Path | None) -> list[str]:
    sources = []
    if mirror is not None:
        sources.append(str(mirror / remote.path))
    sources.append(remote.url)
    return sources


def _open(source: str, timeout: float):
    if "://" not in source:
        return open(source, "rb"), os.path.getsize(source)
    response = urllib.request.urlopen(source, timeout=timeout)
    length = response.headers.get("Content-Length")
    return response, int(length) if length else None


def _copy_hashing(source: str, tmp: Path, algorithm: str, label: str, timeout: float) -> str:
    h = hashlib.new(algorithm)
    stream, total = _open(source, timeout)
    show = sys.stderr.isatty()
    with stream, open(tmp, "wb") as out, tqdm(
        total=total, unit="B", unit_scale=True, desc=label, disable=not show
    ) as bar:
        for block in iter(lambda: stream.read(_CHUNK), b""):
            h.update(block)
            out.write(block)
            bar.update(len(block))
    return h.hexdigest()


def fetch(remote: RemoteFile, raw_dir: Path, mirror: Path | None = None, timeout: float = 30.0) -> Path:
    """Return raw_dir/remote.path with a verified checksum, taking it from the mirror or the URL.

    The file is written under a temporary name in the same folder and renamed only once its
    checksum matches, so an interrupted or failed fetch never leaves a file that looks complete.
    """
    dest = Path(raw_dir) / remote.path
    if dest.exists() and file_digest(dest, remote.algorithm) == remote.digest:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    attempts = []
    for source in _sources(remote, mirror):
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            actual = _copy_hashing(source, tmp, remote.algorithm, dest.name, timeout)
        except FileNotFoundError:
            attempts.append(f"{source}: no such file")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            attempts.append(f"{source}: {getattr(exc, 'reason', exc)}")
        else:
            if actual == remote.digest:
                os.chmod(tmp, FILE_MODE)
                os.replace(tmp, dest)
                return dest
            attempts.append(
                f"{source}: checksum mismatch, expected {remote.algorithm} {remote.digest}, got {actual}"
            )
        finally:
            tmp.unlink(missing_ok=True)
    tried = "\n  ".join(attempts)
    hint = (
        f"Download {remote.url} by hand and put it at <mirror>/{remote.path}, then set "
        f"{MIRROR_ENV}=<mirror> (or data.mirror in params.yaml)."
    )
    raise DownloadError(f"could not fetch {remote.path}; sources tried:\n  {tried}\n{hint}")

