"""Loading the files flowvae writes without executing code, with errors that name the file and the way back.

A file that is truncated, replaced or not what its name says raises CorruptFileError: it names the
file, says what is wrong with it, and how to rebuild it. Nothing here suggests loading unsafely.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import SafetensorError, safe_open

from flowvae.files.errors import CorruptFileError

if TYPE_CHECKING:
    import torch

METADATA_KEY = "flowvae"  # the one safetensors metadata entry: a JSON document with sorted keys


def _fail(path: Path, what: str, reason: str, rebuild: str) -> CorruptFileError:
    return CorruptFileError(f"{path} is corrupt or not {what} ({reason}); {rebuild}")


def load_npz(path: str | Path, names: tuple[str, ...], what: str, rebuild: str) -> dict[str, np.ndarray]:
    """The arrays of a .npz file that must hold `names` (others optional), never unpickling anything."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [n for n in names if n not in f.files]
            if missing:
                raise _fail(path, what, f"it has no array {missing[0]!r}", rebuild)
            return {n: f[n] for n in f.files}
    except FileNotFoundError:
        raise
    except CorruptFileError:
        raise
    except zipfile.BadZipFile:
        raise _fail(path, what, "not a complete .npz archive", rebuild) from None
    except ValueError as exc:
        reason = "it holds object arrays, which flowvae never loads" if "pickle" in str(exc) else "unreadable array data"
        raise _fail(path, what, reason, rebuild) from None
    except (OSError, EOFError, KeyError) as exc:
        raise _fail(path, what, f"unreadable: {type(exc).__name__}", rebuild) from None


def load_state(path: str | Path, map_location: Any, what: str, rebuild: str) -> dict:
    """A torch.save'd state dict, loaded with weights_only=True."""
    import torch  # here, not above: the commands that only read arrays and metadata start without torch's seconds

    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        reason = "it holds objects other than tensors and plain values" if isinstance(exc, pickle.UnpicklingError) else "unreadable"
        raise _fail(path, what, reason, rebuild) from None
    if not isinstance(state, dict):
        raise _fail(path, what, f"it holds a {type(state).__name__}, not a state dict", rebuild)
    return state


def load_safetensors(path: str | Path, what: str, rebuild: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; {rebuild}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError):
        raise _fail(path, what, "not a valid safetensors file", rebuild) from None


def read_metadata(path: str | Path, what: str, rebuild: str) -> dict:
    """The JSON document stored under the `flowvae` metadata key of a safetensors file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; {rebuild}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError):
        raise _fail(path, what, "not a valid safetensors file", rebuild) from None
    if METADATA_KEY not in meta:
        raise _fail(path, what, "it records no settings (written by an older flowvae or another program)", rebuild)
    try:
        return json.loads(meta[METADATA_KEY])
    except json.JSONDecodeError:
        raise _fail(path, what, "its settings record is not valid JSON", rebuild) from None
