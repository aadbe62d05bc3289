"""Atomic file writes: write under a temporary name in the same folder, then rename.

Every file gets the mode an ordinary new file would (0666 less the umask), and writers that can
be byte-reproducible are: JSON with sorted keys where order carries no meaning, .npz archives with
fixed timestamps.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from flowvae.files.errors import WriteFailed

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


_STORAGE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)  # what a write can hit that reading cannot


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free:,} bytes free there"
    except OSError:
        return "free space unknown"


def write_failed(dest: Path, exc: BaseException) -> WriteFailed:
    """The error for a failed write of dest: disk full, or the cause as the system gave it, with the free space."""
    causes = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large", errno.EROFS: "read-only file system"}
    if isinstance(exc, OSError) and exc.errno in causes:
        cause = causes[exc.errno]
    else:
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return WriteFailed(f"could not write {dest}: {cause} ({_free_space(dest.parent)}); free some space and rerun (nothing was left half-written)")


@contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside dest; on success rename it to dest, on failure delete it.

    A failed write (an OSError, or torch.save's RuntimeError from its archive writer) becomes WriteFailed
    naming dest and the cause, disk full included.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix + ".tmp", dir=dest.parent)
        os.close(fd)
    except OSError as exc:
        raise write_failed(dest, exc) from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, FILE_MODE)  # after writing: some writers replace the file they are given
        os.replace(tmp_path, dest)
    except OSError as exc:
        if exc.errno not in _STORAGE_ERRORS:
            raise
        raise write_failed(dest, exc) from exc
    except RuntimeError as exc:
        if "inline_container" not in str(exc):  # torch's archive writer: "[enforce fail at inline_container.cc...]"
            raise
        raise write_failed(dest, exc) from exc
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(dest: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(dest: str | os.PathLike, obj) -> None:
    """Write a JSON file atomically, indented and with a trailing newline."""
    write_text(dest, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_npz(dest: str | os.PathLike, arrays: Mapping[str, np.ndarray], compress: bool = False) -> None:
    """Write arrays as an .npz (np.load reads it) atomically, with the same bytes for the same arrays."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with atomic_path(dest) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=method) as archive:
            for name, array in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
                info.compress_type = method
                info.external_attr = 0o644 << 16
                with archive.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
