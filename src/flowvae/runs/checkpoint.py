"""A run's checkpoint and weight files, and the policy for resuming after params.yaml changed.

`checkpoint/state.pt` holds model, optimiser, EMA, RNG state, TrainState and the settings record
(loadable with weights_only=True). When a checkpoint's record differs from the run's record now:
a change of train.epochs or train.patience only extends (or ends) the run; any other change refuses
(on_change="refuse") or moves the old checkpoint to checkpoint.replaced/ and starts over
(on_change="restart", what the Snakemake rules and DVC stages use).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from flowvae.files.atomic import atomic_path
from flowvae.files.errors import SettingsChanged
from flowvae.files import provenance
from flowvae.files.provenance import SourceState
from flowvae.files.safeload import METADATA_KEY, CorruptFileError, load_safetensors, load_state
from flowvae.spec.layout import RunFolder
from flowvae.spec.run import RunSpec
from flowvae.spec.settings import TrainSettings, describe_diff, diff_settings

EXTENDABLE = {f"train.{k}" for k in TrainSettings.EXTENDABLE}


@dataclass
class TrainState:
    """What a checkpoint holds besides the tensors of model, optimiser and EMA."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # batches done in the current epoch
    global_step: int = 0
    best_score: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    epoch_sums: dict = field(default_factory=lambda: new_epoch_sums())
    epoch_seconds: float = 0.0
    history: list = field(default_factory=list)
    timings: list = field(default_factory=list)
    finished: bool = False

    def budget_spent(self, t: TrainSettings) -> bool:
        """Whether the epochs or the patience of `t` are used up."""
        return self.epoch >= t.epochs or bool(t.patience and self.bad_epochs >= t.patience)


def new_epoch_sums() -> dict:
    return {"loss": 0.0, "neg_elbo": 0.0, "recon": 0.0, "kl": 0.0, "n": 0}


def run_metadata(spec: RunSpec, best_epoch: int, source: SourceState) -> dict:
    """What a finished run records about itself (settings.json and the model's metadata): its settings record,
    the best epoch, and the code that trained it (full commit, the hash of its uncommitted diff, versions)."""
    return {"settings": spec.record(), "best_epoch": int(best_epoch), **provenance.record(source)}


def save_weights(state: dict[str, torch.Tensor], dest: Path, metadata: dict | None = None) -> None:
    """Write a safetensors file atomically; metadata is stored as one JSON entry, so the bytes are reproducible."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    meta = {METADATA_KEY: json.dumps(metadata, sort_keys=True)} if metadata is not None else None
    with atomic_path(dest) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_weights(model: torch.nn.Module, path: Path, rebuild: str = "delete it and retrain the run (`flowvae train ...`)") -> None:
    """Load safetensors weights into a model (no code is executed)."""
    model.load_state_dict(load_safetensors(path, "a flowvae weights file", rebuild))


def rebuild_hint(folder: RunFolder) -> str:
    return f"delete {folder.checkpoint} to train the run from the start"


def write_checkpoint(folder: RunFolder, payload: dict) -> None:
    """Write the full training state atomically."""
    with atomic_path(folder.state) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(folder: RunFolder, record: dict, on_change: str, device: torch.device) -> tuple[dict | None, list]:
    """The checkpoint to resume from and its extendable changes (epochs, patience), or (None, []) to start afresh.

    A checkpoint trained with other settings than `record` (besides the extendable ones) raises
    SettingsChanged (on_change "refuse") or is moved to checkpoint.replaced/ (on_change "restart").
    """
    path = folder.state
    if not path.exists():
        return None, []
    payload = load_state(path, device, "a flowvae training checkpoint", rebuild_hint(folder))
    missing = [k for k in ("model", "optimizer", "state", "rng_cpu") if k not in payload]
    if missing:
        raise CorruptFileError(f"{path} is corrupt or not a flowvae training checkpoint (it lacks {missing}); {rebuild_hint(folder)}")
    changes = diff_settings(json.loads(payload.get("settings") or "{}"), record)
    blocking = [c for c in changes if c[0] not in EXTENDABLE]
    if not changes:
        return payload, changes
    if blocking:
        message = f"{folder.root}: params.yaml now gives this run other settings than its checkpoint was trained with: {describe_diff(blocking)}"
    else:
        beyond = trained_beyond(TrainState(**payload["state"]), TrainSettings.from_params(record["train"]))
        if beyond is None:
            return payload, changes
        message = f"{folder.root}: {describe_diff(changes)}: {beyond}, so its weights are not those of the new budget"
    if on_change == "refuse":
        raise SettingsChanged(
            f"{message}. Restore those settings to continue it, or start it over with `--on-change restart` "
            f"(the old checkpoint is kept in {folder.replaced})"
        )
    shutil.rmtree(folder.replaced, ignore_errors=True)
    folder.checkpoint.rename(folder.replaced)
    print(f"{message}; starting over (the old checkpoint is in {folder.replaced})", file=sys.stderr, flush=True)
    return None, []


def stop_epoch(history: list[dict], t: TrainSettings) -> int:
    """The epoch after which a run with budget `t` stops, given its validation history ("best" flags)."""
    bad = 0
    for epoch, row in enumerate(history, start=1):
        bad = 0 if row.get("best") else bad + 1
        if epoch >= t.epochs or (t.patience and bad >= t.patience):
            return epoch
    return t.epochs


def trained_beyond(state: TrainState, t: TrainSettings) -> str | None:
    """Why a checkpoint holds more training than budget `t` allows (epochs lowered, patience tightened), or None."""
    stop = stop_epoch(state.history, t)
    if state.epoch > stop or (state.epoch == stop and state.step_in_epoch > 0):
        done = f"{state.epoch} epochs" + (f" and {state.step_in_epoch} steps" if state.step_in_epoch else "")
        return f"the checkpoint holds {done}, but this budget stops after epoch {stop}"
    return None


def apply_new_budget(folder: RunFolder, state: TrainState, t: TrainSettings, changes: list) -> None:
    """Apply a new epochs or patience budget to a resumed run, and say what it does."""
    was_finished = state.finished
    state.finished = state.step_in_epoch == 0 and state.budget_spent(t)
    if was_finished and not state.finished:
        action = f"extending the finished run from epoch {state.epoch}"
    elif state.finished:
        action = f"the run is complete under the new budget at epoch {state.epoch} (best epoch {state.best_epoch})"
    else:
        action = f"continuing at epoch {state.epoch + 1} with the new budget"
    print(f"{folder.root}: {describe_diff(changes)}: {action} (epochs {t.epochs}, patience {t.patience})", file=sys.stderr, flush=True)
