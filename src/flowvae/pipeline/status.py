"""Progress of a build, read from the run folders and the Snakemake logs: which runs are pending, preparing (their
data set), training, stopped, trained, evaluating or evaluated.

`flowvae status` prints one line per run and a totals line, e.g.

    binarized_mnist/iaf_d8_w1920/seed0  training   epoch 7/15  33 s/epoch  ETA <= 4 min  val -ELBO 96.12
    binarized_mnist/vae/seed0           evaluated  -log p(x) 90.52

A run is "preparing" while the prepare log of its data set moves and the prepared files are not all there, and
"evaluating" while its evaluation log, newer than its model, moved within 10 minutes. A run is "training" while its checkpoint, its train_timings.json or its Snakemake log moved within
max(3 mean epochs, 10 minutes), and "stopped" when it has a checkpoint but nothing moved for longer (killed
or time-boxed: rerunning the build resumes it). An ETA is the remaining epochs at the mean seconds per
epoch so far; with early stopping (patience > 0) it is an upper bound, shown as "<=".

Without --profile, `flowvae status` follows the build in progress: the profile whose run folders under results/
were written last (else the params file's `profile`), named on its first line.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from flowvae.pipeline.plan import Run, all_runs, table_names, table_runs
from flowvae.spec.layout import RunFolder, prepared_files, run_dir, train_log
from flowvae.spec.params import profile_settings
from flowvae.spec.run import RunSpec

STATES = ("pending", "preparing", "training", "stopped", "trained", "evaluating", "evaluated")
IN_PROGRESS = ("preparing", "training", "evaluating")
IDLE_POLLS = 3  # --watch ends when nothing was in progress for this many polls in a row
STALE_AFTER_EPOCHS = 3  # a run is stopped when nothing moved for this many mean epochs...
STALE_AFTER_MIN_SECONDS = 600.0  # ...and at least this long


@dataclass(frozen=True)
class RunStatus:
    """Where one run stands; the numbers are None where the run's files do not tell them yet."""

    run: Run
    state: str  # one of STATES
    epochs_done: int = 0
    epochs_target: int = 0
    seconds_per_epoch: float | None = None
    eta_seconds: float | None = None  # training left (0 once trained); an upper bound when early_stopping
    best_val_neg_elbo: float | None = None
    neg_log_px: float | None = None
    early_stopping: bool = False
    idle_seconds: float | None = None  # since its files last moved (training and stopped runs)
    seconds_spent: float = 0.0  # training and evaluation so far (train_timings.json, eval_timings.json)
    stop_reason: str | None = None  # why the trainer last stopped early (time box, signal), from its checkpoint folder
    unreadable: tuple[str, ...] = ()  # files of the run that exist but could not be read (malformed, half-written)

    @property
    def label(self) -> str:
        return f"{self.run.dataset}/{self.run.model}/seed{self.run.seed}"


class _Reader:
    """Reads a run's JSON files, tolerating any malformed one and remembering which were."""

    def __init__(self) -> None:
        self.unreadable: list[str] = []

    def json(self, path: Path) -> dict:
        """A JSON object file's content; {} if it is missing, and also if it is malformed (then noted)."""
        try:
            value = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            value = None
        if not isinstance(value, dict):
            self.unreadable.append(str(path))
            return {}
        return value

    def number(self, value, path: Path) -> float | None:
        """A finite number from a file's field, or None (noting the file) if it is not one."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if math.isfinite(number):
            return number
        if str(path) not in self.unreadable:
            self.unreadable.append(str(path))
        return None


def _best_val_neg_elbo(path: Path) -> float | None:
    """The lowest validation -ELBO in a train.jsonl, skipping lines that do not parse."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    values = []
    for line in lines:
        try:
            value = float(json.loads(line)["val_neg_elbo"])
        except (ValueError, KeyError, TypeError):
            continue
        if math.isfinite(value):
            values.append(value)
    return min(values, default=None)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def run_status(params: dict, profile: str, run: Run, root: str | Path = ".", now: float | None = None) -> RunStatus:
    """The status of one run from its folder under root (now: the current time, for tests)."""
    now = time.time() if now is None else now
    folder = RunFolder(run_dir(profile, run.dataset, run.model, run.seed, Path(root) / "results"))
    settings = RunSpec.resolve(params, profile, run.dataset, run.model, run.seed).train
    read = _Reader()
    timings = read.json(folder.timings)
    listed = timings.get("epochs") if isinstance(timings.get("epochs"), list) else []
    epochs = [(read.number(e.get("epoch"), folder.timings), read.number(e.get("seconds"), folder.timings))
              for e in listed if isinstance(e, dict)]
    epochs = [(int(epoch), seconds) for epoch, seconds in epochs if epoch is not None and seconds is not None]
    done = max((epoch for epoch, _ in epochs), default=0)
    per_epoch = sum(seconds for _, seconds in epochs) / len(epochs) if epochs else None
    eval_timings = read.json(folder.eval_timings)
    eval_seconds = read.number(eval_timings.get("eval_seconds", 0.0), folder.eval_timings) or 0.0
    spent = sum(seconds for _, seconds in epochs) + eval_seconds
    evaluation = read.json(folder.eval)
    neg_log_px = read.number(evaluation.get("neg_log_px"), folder.eval) if evaluation else None
    stopped = read.json(folder.stopped)
    common = dict(
        seconds_spent=spent,
        run=run,
        epochs_done=done,
        epochs_target=settings.epochs,
        seconds_per_epoch=per_epoch,
        best_val_neg_elbo=_best_val_neg_elbo(folder.history),
        early_stopping=settings.patience > 0,
        unreadable=tuple(read.unreadable),
    )

    if evaluation:
        return RunStatus(state="evaluated", eta_seconds=0.0, neg_log_px=neg_log_px, **common)
    if folder.model.exists():
        log = _mtime(Path(root) / "logs" / "evaluate" / profile / run.dataset / run.model / f"seed{run.seed}.log")
        evaluating = log is not None and log >= (_mtime(folder.model) or 0.0) and now - log <= STALE_AFTER_MIN_SECONDS
        return RunStatus(state="evaluating" if evaluating else "trained", eta_seconds=0.0, **common)

    if not folder.root.is_dir():  # the trainer makes the folder as it starts
        log = _mtime(Path(root) / "logs" / "prepare" / profile / f"{run.dataset}.log")
        missing = any(not (Path(root) / f).is_file() for f in prepared_files(params, profile, run.dataset))
        preparing = log is not None and missing and now - log <= STALE_AFTER_MIN_SECONDS
        return RunStatus(state="preparing" if preparing else "pending", **common)
    checkpoint = _mtime(folder.state)
    epoch_end = _mtime(folder.timings)
    log = _mtime(train_log(profile, run.dataset, run.model, run.seed, root))
    moved = [t for t in (checkpoint, epoch_end, log) if t is not None]
    stale_after = max(STALE_AFTER_EPOCHS * (per_epoch or 0.0), STALE_AFTER_MIN_SECONDS)
    idle = now - max(moved) if moved else None
    # The trainer leaves checkpoint/stopped.json when it stops early (exit 75); a rerun removes it as it starts.
    stopped_at = _mtime(folder.stopped) if stopped else None
    if stopped_at is not None and stopped_at >= max([t for t in (checkpoint, epoch_end) if t is not None], default=0.0) - 1.0:
        state = "stopped"
        common["stop_reason"] = str(stopped.get("reason") or "stopped early")
    elif idle is not None and idle <= stale_after:
        state = "training"  # also before its first checkpoint, while its log moves
    elif checkpoint is not None or epoch_end is not None:
        state = "stopped"
    else:
        return RunStatus(state="pending", **common)

    eta = None
    if per_epoch is not None:
        eta = max(settings.epochs - done, 0) * per_epoch
        if state == "training" and epoch_end is not None:  # less the part of the current epoch already run
            eta = max(eta - min(now - epoch_end, per_epoch), 0.0)
    return RunStatus(state=state, eta_seconds=eta, idle_seconds=idle, **common)


def format_duration(seconds: float) -> str:
    """45 s, 4 min, 2 h 05 min (minutes rounded up)."""
    if seconds < 60:
        return f"{math.ceil(seconds)} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _eta(seconds: float, upper_bound: bool) -> str:
    return ("<= " if upper_bound else "~ ") + format_duration(seconds)


def format_line(status: RunStatus, width: int = 0) -> str:
    """One run's line: label, state, and what its files tell about it."""
    parts = [status.label.ljust(width), status.state.ljust(max(map(len, STATES)))]
    if status.state == "evaluated" and status.neg_log_px is not None:
        parts.append(f"-log p(x) {status.neg_log_px:.2f}")
    elif status.state != "pending":
        parts.append(f"epoch {status.epochs_done}/{status.epochs_target}")
        if status.state in ("training", "stopped"):
            if status.seconds_per_epoch is not None:
                spe = status.seconds_per_epoch
                parts.append(f"{spe:.0f} s/epoch" if spe >= 10 else f"{spe:.1f} s/epoch")
            if status.eta_seconds is not None:
                parts.append("ETA " + _eta(status.eta_seconds, status.early_stopping))
        if status.best_val_neg_elbo is not None:
            parts.append(f"val -ELBO {status.best_val_neg_elbo:.2f}")
        if status.state == "stopped" and status.stop_reason:
            parts.append(f"{status.stop_reason}, rerun to resume")
        elif status.state == "stopped" and status.idle_seconds is not None:
            parts.append(f"idle {format_duration(status.idle_seconds)}, rerun to resume")
    if status.unreadable:
        parts.append(f"(unreadable: {', '.join(status.unreadable)})")
    return "  ".join(parts).rstrip()


def format_totals(statuses: list[RunStatus]) -> str:
    """Counts per state and the training left, summed over the runs that can be estimated."""
    counts = Counter(s.state for s in statuses)
    noun = "run" if len(statuses) == 1 else "runs"
    text = f"{len(statuses)} {noun}: " + ", ".join(f"{counts[state]} {state}" for state in STATES if counts[state])
    unfinished = [s for s in statuses if s.state in ("training", "stopped")]
    estimated = [s for s in unfinished if s.eta_seconds is not None]
    if estimated:
        upper = any(s.early_stopping for s in estimated)
        text += f"; training left {_eta(sum(s.eta_seconds for s in estimated), upper)}"
    not_estimated = []
    if len(estimated) < len(unfinished):
        not_estimated.append(f"{len(unfinished) - len(estimated)} without a finished epoch")
    if counts["pending"]:
        not_estimated.append("pending runs")
    if not_estimated:
        text += f" ({' and '.join(not_estimated)} not estimated)"
    spent = sum(s.seconds_spent for s in statuses)
    if spent:
        text += f"; spent {format_duration(spent)} training and evaluating (summed over the runs)"
    return text


def format_status(statuses: list[RunStatus]) -> str:
    """One line per run, then the totals line."""
    width = max((len(s.label) for s in statuses), default=0)
    return "\n".join([*(format_line(s, width) for s in statuses), format_totals(statuses)])


def selected_runs(params: dict, tables: list[str] | None = None) -> list[Run]:
    """The runs of the named tables (ValueError for an unknown one), or every run of every table and figure."""
    if not tables:
        return all_runs(params)
    known = table_names(params)
    unknown = [t for t in tables if t not in known]
    if unknown:
        raise ValueError(f"--table: {', '.join(map(repr, unknown))} is not one of {known}")
    return sorted({run for table in tables for run in table_runs(params, table)})


def latest_profile(params: dict, root: str | Path = ".") -> str | None:
    """The profile whose run folders under results/ were written last (a folder's time moves as files land in it)."""
    times = {}
    for profile in params["profiles"]:
        stamps = [_mtime(p) for p in (Path(root) / "results" / profile).glob("*/*/seed*")]
        stamps = [t for t in stamps if t is not None]
        if stamps:
            times[profile] = max(stamps)
    return max(times, key=times.get) if times else None


def choose_profile(params: dict, profile: str | None, root: str | Path = ".") -> tuple[str, str]:
    """The profile to show and why: --profile, else the build last written under results/, else the active one."""
    if profile:
        return profile, "--profile"
    latest = latest_profile(params, root)
    if latest:
        return latest, f"its run folders under results/{latest} were written last; --profile to choose"
    return params["profile"], "the active profile, set in profile.yaml"


def follow(params: dict, profile: str, tables: list[str] | None, root: str | Path = ".", watch: float | None = None,
           why: str | None = None) -> int:
    """Print the status once, or every `watch` seconds until every selected run is evaluated or nothing is in
    progress for IDLE_POLLS polls in a row (`flowvae status`)."""
    profile_settings(params, profile)  # a clear error for an unknown profile
    runs = selected_runs(params, tables)
    idle_polls = 0
    try:
        while True:
            statuses = [run_status(params, profile, r, root=root) for r in runs]
            stamp = f"{time.strftime('%H:%M:%S')}  " if watch else ""
            print(f"{stamp}profile {profile}" + (f" ({why})" if why else ""))
            print(format_status(statuses), flush=True)
            if not watch or all(s.state == "evaluated" for s in statuses):
                return 0
            idle_polls = 0 if any(s.state in IN_PROGRESS for s in statuses) else idle_polls + 1
            if idle_polls >= IDLE_POLLS:
                print(f"nothing of this selection moved for {IDLE_POLLS} polls: the build is not running it, or it has finished")
                return 0
            print(flush=True)
            time.sleep(watch)
    except KeyboardInterrupt:
        return 0
