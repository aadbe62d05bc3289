"""What every trainer shares around its loop: stopping on a signal or a time box, and the files of a run.

`Stopper` records why a training should stop after its current step: SIGTERM or SIGUSR1 (a SLURM time limit
or preemption), caught while `catching_signals()` is active, or the time box `max_minutes` spent.
`write_history` and `write_finished_run` write the run folder's records (spec/layout.py) atomically.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable, Iterator

import torch

from flowvae.files.atomic import write_json, write_text
from flowvae.files.provenance import SourceState
from flowvae.runs.checkpoint import TrainState, save_weights
from flowvae.spec.layout import RunFolder

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Stopper:
    """Why the training should stop now (None: it should not)."""

    def __init__(self, max_minutes: float | None) -> None:
        self.max_seconds = None if max_minutes is None else 60.0 * max_minutes
        self.reason: str | None = None

    def time_is_up(self, started: float) -> bool:
        """True once a signal arrived or the time box since `started` (time.perf_counter) is spent."""
        if self.reason is None and self.max_seconds is not None and time.perf_counter() - started > self.max_seconds:
            self.reason = f"time box of {self.max_seconds / 60:g} minutes reached"
        return self.reason is not None

    @contextlib.contextmanager
    def catching_signals(self) -> Iterator[None]:
        """While active, STOP_SIGNALS set the reason instead of ending the process; the old handlers come back after."""
        handlers = {}

        def on_signal(signum, frame) -> None:
            self.reason = f"{signal.Signals(signum).name} received"

        for sig in STOP_SIGNALS:
            try:
                handlers[sig] = signal.signal(sig, on_signal)
            except ValueError:  # not the main thread: no handlers
                break
        try:
            yield
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


def resume_message(state: TrainState) -> str:
    """What a rerun does with the checkpoint it found."""
    if state.finished:
        return f"the run finished at epoch {state.epoch}; writing its outputs from the checkpoint"
    return f"resuming from checkpoint at epoch {state.epoch + 1}, step {state.step_in_epoch}"


def write_history(folder: RunFolder, state: TrainState, curves_csv: Callable[[list[dict]], str]) -> None:
    """train.jsonl, train_curves.csv and train_timings.json from the checkpointed history, written atomically."""
    write_text(folder.history, "".join(json.dumps(r) + "\n" for r in state.history))
    write_text(folder.curves, curves_csv(state.history))
    minutes = (sum(t["seconds"] for t in state.timings) + state.epoch_seconds) / 60
    write_json(folder.timings, {"train_minutes": minutes, "epochs": state.timings})


def write_finished_run(folder: RunFolder, weights: dict[str, torch.Tensor], metadata: dict, source: SourceState) -> None:
    """The kept weights (with the settings record as metadata), settings.json, and source.diff for dirty code."""
    if source.dirty:
        write_text(folder.source_diff, source.diff)
    else:
        folder.source_diff.unlink(missing_ok=True)
    save_weights(weights, folder.model, metadata=metadata)
    write_json(folder.settings, metadata)
