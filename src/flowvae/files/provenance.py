"""Which code produced a result: the git commit of the flowvae sources."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parents[1]  # the flowvae package


@lru_cache(maxsize=1)
def code_commit() -> str:
    """The commit of the checkout holding this package (+dirty when its src/ has changes), or 'unknown'."""
    try:
        run = dict(capture_output=True, text=True, cwd=SOURCE_DIR, timeout=10)
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=True, **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "."], **run).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return "unknown"
