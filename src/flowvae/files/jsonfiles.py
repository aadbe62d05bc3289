"""Reading the JSON files flowvae writes (eval.json, settings.json, timings, train.jsonl), with errors that
name the file, the line where there is one, and the way back. No torch, so the reports can use it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flowvae.files.errors import CorruptFileError


def read_json_object(path: str | os.PathLike[str], remedy: str) -> dict[str, Any]:
    """A JSON file holding one object; CorruptFileError naming the file when it is missing, truncated or not one."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorruptFileError(f"{path} is missing; {remedy}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CorruptFileError(f"{path} is not valid JSON ({exc}); {remedy}") from None
    if not isinstance(value, dict):
        raise CorruptFileError(f"{path} holds a {type(value).__name__}, not a JSON object; {remedy}")
    return value


def read_json_lines(path: str | os.PathLike[str], remedy: str) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file; CorruptFileError naming the file and the line of a malformed one."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as exc:
            raise CorruptFileError(f"{path}, line {number}: not valid JSON ({exc}); {remedy}") from None
    return rows
