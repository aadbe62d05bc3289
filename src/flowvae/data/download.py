"""Checksummed downloads: a local mirror first, then the official URL, never a half-written file.

A download is written to `.<name>.<random>.part` beside its destination, read no further than the size
params.yaml declares (plus one byte, to tell a longer file), and renamed only once its checksum matches.
The partial file is removed on every way out, SIGTERM included; one left by a killed run (no live fetch
holds its lock) is removed by the next fetch of that file. Paths stay inside the raw folder and the mirror.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from flowvae.files.atomic import FILE_MODE
from flowvae.spec.datasets import RemoteFile

MIRROR_ENV = "FLOWVAE_DATA_MIRROR"
_CHUNK = 1 << 20
_DISK_FULL = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded"}


class DownloadError(RuntimeError):
    """No source gave a file with the expected checksum."""


class _SourceFailed(Exception):
    """One source did not give the file (wrong size, too long, too short); the next source is tried."""


class _Terminated(BaseException):
    """SIGTERM arrived during a fetch: raised by the handler so that the partial file is removed."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def mirror_roots(explicit: str | os.PathLike | list | None = None) -> list[Path]:
    """The configured mirror folders, tried in order: an explicit setting (data.mirror: a folder or a list of them)
    wins over the environment variable (one folder, or several joined by os.pathsep, ':' on Linux).

    A `file://` URL names a local folder; any other URL is refused (a mirror is a folder, not a server).
    """
    if isinstance(explicit, (list, tuple)):
        return [_mirror_folder(os.fspath(v), f"data.mirror[{i}]") for i, v in enumerate(explicit) if v not in (None, "")]
    if explicit not in (None, ""):
        return [_mirror_folder(os.fspath(explicit), "data.mirror")]
    value = os.environ.get(MIRROR_ENV) or ""
    # os.pathsep separates folders, except the colon of a file:// URL
    return [_mirror_folder(v, MIRROR_ENV) for v in re.split(rf"{re.escape(os.pathsep)}(?!//)", value) if v]


def _mirror_folder(value: str, where: str) -> Path:
    """One mirror folder from a path or a file:// URL."""
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme.lower() == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{where}: {value!r} is a file:// URL of another host; give a folder of this machine")
        return Path(urllib.request.url2pathname(parsed.path))
    if "://" in value:
        raise ValueError(
            f"{where}: {value!r} is a URL; the mirror is a local folder (a path or a file:// URL) "
            f"holding the files under their params.yaml paths"
        )
    return Path(value).expanduser()


def _as_mirrors(mirrors: Path | list[Path] | None) -> list[Path]:
    if mirrors is None:
        return []
    return [Path(m) for m in mirrors] if isinstance(mirrors, (list, tuple)) else [Path(mirrors)]


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _open(source: str, timeout: float):
    if "://" not in source:
        return open(source, "rb"), os.path.getsize(source)
    response = urllib.request.urlopen(source, timeout=timeout)
    length = response.headers.get("Content-Length")
    try:
        return response, int(length) if length else None
    except ValueError:
        response.close()
        raise _SourceFailed(f"unreadable Content-Length {length!r}") from None


def _create_part(dest: Path):
    """A new `.<name>.<random>.part` beside dest, open for writing and locked while this fetch runs."""
    while True:
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while a cleaner holds it, about to delete it
        try:
            if os.path.samestat(os.fstat(fd), os.stat(name)):
                return Path(name), os.fdopen(fd, "wb")
        except FileNotFoundError:
            pass
        os.close(fd)  # a cleaner took the name between mkstemp and flock: make another


def _remove_stale_parts(dest: Path) -> None:
    """Delete the partial files of dest that no running fetch holds (left by killed runs)."""
    if not dest.parent.is_dir():
        return
    for part in dest.parent.glob(f".{glob.escape(dest.name)}.*.part"):
        try:
            fd = os.open(part, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live fetch holds it
            os.close(fd)
            continue
        try:
            part.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            os.close(fd)


@contextmanager
def _sigterm_raises() -> Iterator[object]:
    """While a fetch runs in the main thread, SIGTERM raises _Terminated (so `finally` blocks run).

    Yields the handler it replaced (restored on exit); None where nothing was installed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    old = signal.getsignal(signal.SIGTERM)
    if old == signal.SIG_IGN:
        yield None
        return

    def handler(signum, frame):
        raise _Terminated(signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield old
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)


def _copy_hashing(source: str, out, remote: RemoteFile, label: str, timeout: float) -> str:
    """Copy source into out, hashing it; no more than the declared size (+1 byte) is read."""
    h = hashlib.new(remote.algorithm)
    declared = remote.size if remote.size > 0 else None
    stream, total = _open(source, timeout)
    with stream:
        if declared is not None and total is not None and total != declared:
            what = "has" if "://" not in source else "announces (Content-Length)"
            raise _SourceFailed(
                f"{what} {total} bytes, but params.yaml declares {declared} bytes for {remote.path}; not read"
            )
        show = sys.stderr.isatty()
        done = 0
        with tqdm(total=declared or total, unit="B", unit_scale=True, desc=label, disable=not show) as bar:
            while True:
                want = _CHUNK if declared is None else min(_CHUNK, declared + 1 - done)
                block = stream.read(want) if want > 0 else b""
                if not block:
                    break
                done += len(block)
                if declared is not None and done > declared:
                    raise _SourceFailed(
                        f"sent more than the {declared} bytes params.yaml declares for {remote.path}; stopped reading"
                    )
                h.update(block)
                out.write(block)
                bar.update(len(block))
    if declared is not None and done < declared:
        raise _SourceFailed(f"ended after {done} of the {declared} bytes params.yaml declares for {remote.path}")
    return h.hexdigest()


def _disk_full(exc: OSError, dest: Path, source: str | None = None) -> DownloadError:
    try:
        free = f"{shutil.disk_usage(dest.parent).free} bytes free there"
    except OSError:
        free = "free space unknown"
    return DownloadError(
        f"{_DISK_FULL[exc.errno]} while writing {dest} ({f'from {source}; ' if source else ''}{free}); free some space and rerun "
        f"(the partial file was removed)"
    )


def fetch(remote: RemoteFile, raw_dir: Path, mirror: Path | list[Path] | None = None, timeout: float = 30.0) -> Path:
    """Return raw_dir/remote.path with a verified checksum, taking it from the first mirror that has it, or the URL
    (http(s), or file:// for a file of this machine).

    The file is written under a temporary name in the same folder and renamed only once its
    checksum matches, so an interrupted or failed fetch never leaves a file that looks complete.
    The destination must lie inside raw_dir and a mirror file inside the mirror, symbolic links resolved.
    """
    raw_dir = Path(raw_dir)
    dest = raw_dir / remote.path
    raw_root, resolved = raw_dir.resolve(), dest.resolve()
    if not _inside(resolved, raw_root) or resolved == raw_root:
        raise DownloadError(
            f"could not fetch {remote.path}: it would be written to {resolved}, outside the raw folder {raw_root}; "
            f"data file paths in params.yaml are relative, without '..'"
        )
    _remove_stale_parts(dest)
    if dest.exists() and (remote.size <= 0 or dest.stat().st_size == remote.size) \
            and file_digest(dest, remote.algorithm) == remote.digest:
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise _disk_full(exc, dest) from None
        raise
    attempts = []
    sources = [(str(root / remote.path), root) for root in _as_mirrors(mirror)] + [(remote.url, None)]
    with _sigterm_raises() as previous:
        try:
            for source, root in sources:
                if root is not None:
                    refused = _outside_mirror(Path(source), root)
                    if refused:
                        attempts.append(f"{source}: {refused}")
                        continue
                tmp = None
                try:
                    tmp, out = _create_part(dest)
                    with out:
                        actual = _copy_hashing(source, out, remote, dest.name, timeout)
                except FileNotFoundError:
                    if tmp is None:
                        raise
                    attempts.append(f"{source}: no such file")
                except _SourceFailed as exc:
                    attempts.append(f"{source}: {exc}")
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
                        raise _disk_full(exc, dest, source) from None
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
                    if tmp is not None:
                        tmp.unlink(missing_ok=True)
        except _Terminated as exc:
            stopped = f"fetch of {remote.path} stopped by signal {exc.signum}; its partial file was removed"
            if callable(previous):  # the program's own handler decides what SIGTERM does
                signal.signal(signal.SIGTERM, previous)
                previous(exc.signum, None)
                raise DownloadError(stopped) from None
            print(f"flowvae: {stopped}", file=sys.stderr)
            raise SystemExit(128 + exc.signum) from None
    tried = "\n  ".join(attempts)
    hint = (
        f"Download {remote.url} by hand and put it at <mirror>/{remote.path}, then set "
        f"{MIRROR_ENV}=<mirror> (or data.mirror in params.yaml)."
    )
    raise DownloadError(f"could not fetch {remote.path}; sources tried:\n  {tried}\n{hint}")


def _outside_mirror(source: Path, mirror: Path) -> str | None:
    """Why a mirror file is refused (it resolves outside the mirror), or None."""
    root, real = mirror.resolve(), source.resolve()
    if _inside(real, root):
        return None
    if source.is_symlink():
        return f"a symbolic link to {real}, outside the mirror {root}: refused"
    return f"resolves to {real}, outside the mirror {root}: refused"
