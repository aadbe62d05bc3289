"""`flowvae verify RUN_DIR`: retrain a run from its own settings record, evaluate it, compare the bytes.

The run is rebuilt in a temporary folder by the code it records (its commit, plus its source.diff
when it was trained from uncommitted code). When that is not the code running now, verify checks
the recorded commit out into a temporary git worktree, applies the diff, and runs itself there.
`epochs` checks only the first epochs against the recorded train.jsonl, so that a long run can be
spot-checked in minutes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flowvae.files.errors import CorruptFileError
from flowvae.files.jsonfiles import read_json_lines, read_json_object
from flowvae.files.provenance import SOURCE_DIR, SourceState, source_state
from flowvae.spec.layout import EVAL_FILE, HISTORY_FILE, MODEL_FILE, RunFolder, prepared_dir
from flowvae.spec.params import profile_settings
from flowvae.spec.run import RunSpec
from flowvae.spec.settings import EvalSettings, Resources

COMPARED = (MODEL_FILE, HISTORY_FILE, EVAL_FILE)


@dataclass(frozen=True)
class Verdict:
    """What verify found: identical, or where the rebuilt run first departs from the recorded one."""

    identical: bool
    lines: tuple[str, ...]

    def text(self) -> str:
        return "\n".join(self.lines)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "(missing)"


def first_difference(recorded: list[dict], rebuilt: list[dict]) -> str | None:
    """'epoch E: validation -ELBO X recorded, Y rebuilt (+D)' for the first epoch that differs, or None."""
    for old, new in zip(recorded, rebuilt):
        if old != new:
            a, b = old.get("val_neg_elbo"), new.get("val_neg_elbo")
            if isinstance(a, float) and isinstance(b, float) and a != b:
                return f"epoch {old.get('epoch')}: validation -ELBO {a!r} recorded, {b!r} rebuilt ({b - a:+.6g})"
            keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            return f"epoch {old.get('epoch')}: {', '.join(keys)} differ"
    if len(recorded) != len(rebuilt):
        return f"{len(recorded)} epochs recorded, {len(rebuilt)} rebuilt"
    return None


def _runs_the_recorded_code(record: dict, here: SourceState) -> bool:
    return here.commit == record.get("commit") and here.diff_sha256 == record.get("source_diff_sha256")


def verify(params_file: str | Path, run_dir: str | Path, epochs: int | None = None, threads: int | None = None) -> Verdict:
    """Rebuild the run in `run_dir` from its settings record and compare (see the module doc).

    params.yaml gives only what the record does not hold: the evaluation settings and where prepared data lie.
    """
    from flowvae.spec.params import load_params

    folder = RunFolder(Path(run_dir))
    remedy = "a run folder of a finished `flowvae train` holds it"
    record = read_json_object(folder.settings, remedy)
    if "settings" not in record:
        raise CorruptFileError(f"{folder.settings} holds no settings record; {remedy}")
    here = source_state()
    if not _runs_the_recorded_code(record, here):
        return _verify_elsewhere(record, folder, params_file, epochs, threads)
    params = load_params(params_file)
    settings = record["settings"]
    block = profile_settings(params, settings["profile"])
    spec = RunSpec.from_record(settings, EvalSettings.from_params({**block["eval"], "ais": block.get("ais")}), Resources.from_params(block["resources"]),
                               prepared_dir(params, settings["profile"], settings["dataset"]))
    if epochs is not None:
        spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, epochs=min(epochs, spec.train.epochs)))
    threads = threads or spec.resources.threads  # as `flowvae train` and `flowvae evaluate` default: float sums depend on it
    from flowvae.runs.evaluate import evaluate
    from flowvae.runs.train import Trainer

    with tempfile.TemporaryDirectory(prefix="flowvae-verify-") as tmp:
        rebuilt = RunFolder(Path(tmp))
        Trainer(spec, rebuilt.root, threads=threads, progress=False, source=here).run()
        recorded_history = read_json_lines(folder.history, remedy)
        new_history = read_json_lines(rebuilt.history, "verify's own rebuild")
        if epochs is not None:
            differs = first_difference(recorded_history[: len(new_history)], new_history)
            head = f"{folder.root}: first {len(new_history)} epochs"
            return Verdict(differs is None, (f"{head}: identical" if differs is None else f"{head}: {differs}",))
        evaluate(spec, rebuilt.root, threads=threads, source=here)
        lines, identical = [], True
        for name in COMPARED:
            a, b = _sha256(folder / name), _sha256(rebuilt / name)
            identical &= a == b
            lines.append(f"  {name}: {'identical' if a == b else 'DIFFERS'} (sha256 {a[:16]} recorded, {b[:16]} rebuilt)")
        differs = first_difference(recorded_history, new_history)
        verdict = "identical" if identical else "differs" + (f": {differs}" if differs else " (every epoch's history agrees)")
        return Verdict(identical, (f"{folder.root}: {verdict}", *lines))


def _verify_elsewhere(record: dict, folder: RunFolder, params_file: str | Path, epochs: int | None, threads: int | None) -> Verdict:
    """Run verify in a temporary worktree at the recorded commit, with the recorded diff applied."""
    commit = record.get("commit")
    if not commit or commit == "unknown":
        raise CorruptFileError(f"{folder.settings} records no commit, so the code that trained it cannot be rebuilt")
    repo = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=SOURCE_DIR, capture_output=True, text=True,
                               check=True).stdout.strip())
    with tempfile.TemporaryDirectory(prefix="flowvae-verify-code-") as tmp:
        worktree = Path(tmp) / "code"
        git = ["git", "-C", str(repo)]
        subprocess.run([*git, "worktree", "add", "--detach", "-q", str(worktree), commit], check=True, capture_output=True, text=True)
        try:
            if record.get("source_diff_sha256"):
                diff = folder.source_diff
                if _sha256(diff) != record["source_diff_sha256"]:
                    raise CorruptFileError(f"{diff} is missing or does not have the sha256 {folder.settings} records")
                subprocess.run(["git", "-C", str(worktree), "apply", str(diff.resolve())], check=True, capture_output=True, text=True)
            package_root = worktree / SOURCE_DIR.parent.relative_to(repo)
            command = [sys.executable, "-m", "flowvae.cli", "verify", "--params", str(Path(params_file).resolve()),
                       str(folder.root.resolve())]
            command += ["--epochs", str(epochs)] if epochs is not None else []
            command += ["--threads", str(threads)] if threads is not None else []
            env = {**os.environ, "PYTHONPATH": str(package_root), "FLOWVAE_ALLOW_DIRTY": "1"}
            result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=os.getcwd())
            if "invalid choice: 'verify'" in result.stderr:
                raise CorruptFileError(f"{folder.root} was trained at {commit}, which predates `flowvae verify`")
            lines = tuple((result.stdout + (result.stderr if result.returncode else "")).strip().splitlines())
            return Verdict(result.returncode == 0, (f"(run by the recorded code, {commit[:12]}, in a temporary worktree)", *lines))
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(worktree)], capture_output=True)
