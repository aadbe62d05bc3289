"""Which code produced a result: the full commit of the flowvae sources, their uncommitted changes, the versions.

`flowvae train` and `flowvae evaluate` refuse to run from a checkout whose package sources (or the params
file, where git tracks it) have uncommitted changes, naming the files, unless given --allow-dirty: then
the run folder keeps the exact diff (source.diff for training, eval_source.diff for evaluation) and
its sha256 is recorded, so that the run can still be rebuilt: check out the commit, `git apply` the diff.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parents[1]  # the flowvae package


class DirtyCheckout(ValueError):
    """The code (or params file) a run would record has uncommitted changes."""


@dataclass(frozen=True)
class SourceState:
    """The commit of the checkout, and what differs from it in the files that decide a result."""

    commit: str  # full SHA, or "unknown" outside a git checkout
    changed: tuple[str, ...] = ()  # repository-relative paths with uncommitted changes (untracked sources included)
    diff: str = ""  # `git diff HEAD` of those files, untracked ones as new files

    @property
    def dirty(self) -> bool:
        return bool(self.changed)

    @property
    def diff_sha256(self) -> str | None:
        return hashlib.sha256(self.diff.encode()).hexdigest() if self.dirty else None


def _git(args: list[str], cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=True).stdout


def source_state(params_file: str | Path | None = None) -> SourceState:
    """The state of the package sources, and of `params_file` where it lies in the same checkout."""
    try:
        root = Path(_git(["rev-parse", "--show-toplevel"], SOURCE_DIR).strip())
        commit = _git(["rev-parse", "HEAD"], root).strip()
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return SourceState("unknown")
    paths = [str(SOURCE_DIR.relative_to(root))]
    if params_file is not None:
        try:
            paths.append(str(Path(params_file).resolve().relative_to(root)))
        except ValueError:  # a params file outside the checkout: the command line names it, git does not track it
            pass
    status = _git(["status", "--porcelain", "--untracked-files=all", "--", *paths], root)
    changed = tuple(sorted(line[3:] for line in status.splitlines() if line.strip() and not line[3:].endswith(".pyc")))
    if not changed:
        return SourceState(commit)
    diff = _git(["diff", "--binary", "HEAD", "--", *paths], root)
    for line in status.splitlines():
        if line.startswith("??") and not line.endswith(".pyc"):
            new = subprocess.run(["git", "diff", "--binary", "--no-index", "/dev/null", line[3:]], cwd=root,
                                 capture_output=True, text=True, timeout=30).stdout
            diff += new
    return SourceState(commit, changed, diff)


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """The versions that the numbers may depend on."""
    import numpy
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}


def refuse_dirty(state: SourceState, command: str) -> None:
    """DirtyCheckout naming the changed files, for a command run without --allow-dirty."""
    if state.dirty:
        shown = ", ".join(state.changed[:8]) + (f" and {len(state.changed) - 8} more" if len(state.changed) > 8 else "")
        raise DirtyCheckout(
            f"uncommitted changes in {shown}: a result must come from committed code. Commit them, or run "
            f"`flowvae {command} --allow-dirty`, which keeps the exact diff in the run folder"
        )


def record(state: SourceState) -> dict:
    """What a run folder records of the code that produced a file: full commit, diff hash, versions."""
    return {"commit": state.commit, "source_diff_sha256": state.diff_sha256, "versions": versions()}
