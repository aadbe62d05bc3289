"""Training one run: warm-up, early stopping, EMA, resumable checkpoints, time boxes, a NaN guard.

A run's folder holds, while it trains, `checkpoint/state.pt` (model, optimiser, EMA, RNG state,
epoch and step, best score, patience, history and the settings record; loadable with
weights_only=True) and `checkpoint/best.safetensors`. The finished run adds:

- model.safetensors    the kept weights (best validation, or their EMA), with the settings record
                       as metadata (key `flowvae`: JSON with sorted keys);
- settings.json        the same record, readable: {"settings": run_settings(), "commit", "best_epoch"};
- train.jsonl          one line per epoch, no wall-clock fields (the same bytes for the same run);
- train_curves.csv     its -ELBO, reconstruction and KL columns as CSV, for `dvc plots show` (DVC reads no JSON lines);
- train_timings.json   seconds and images/s per epoch, and train_minutes.

Rerunning the same command after a kill, a time box or a signal continues from the last checkpoint
and, on CPU, ends with the same weights as an uninterrupted run. If params.yaml changed since the
checkpoint: a change of train.epochs or train.patience only extends (or ends) the run; any other
change refuses (on_change="refuse") or moves the old checkpoint to checkpoint.replaced/ and starts
over (on_change="restart", what the Snakemake rules and DVC stages use).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from flowvae.atomic import atomic_path, write_json, write_text
from flowvae.build import build_model
from flowvae.config import RunConfig
from flowvae.data import Batches, load_split
from flowvae.inference import has_convolutions
from flowvae.model import LatentVariableModel
from flowvae.objectives import objective
from flowvae.provenance import code_commit
from flowvae.safeload import METADATA_KEY, CorruptFileError, load_safetensors, load_state
from flowvae.errors import NonFiniteLoss, SettingsChanged, TimeBoxReached
from flowvae.settings import TrainSettings, describe_diff, diff_settings

STATE_FILE = "checkpoint/state.pt"
BEST_FILE = "checkpoint/best.safetensors"
MODEL_FILE = "model.safetensors"
SETTINGS_FILE = "settings.json"
HISTORY_FILE = "train.jsonl"
CURVES_FILE = "train_curves.csv"
CURVE_COLUMNS = ("epoch", "train_neg_elbo", "val_neg_elbo", "train_recon", "val_recon", "train_kl", "val_kl")
TIMINGS_FILE = "train_timings.json"
CHECK_EVERY = 50  # steps between looks at the loss on the host (NaN guard, progress bar)


def curves_csv(history: list[dict]) -> str:
    """The CURVE_COLUMNS of a history as CSV, one row per epoch; an absent value is an empty cell."""
    rows = [CURVE_COLUMNS, *([r.get(c) for c in CURVE_COLUMNS] for r in history)]
    return "".join(",".join("" if v is None else str(v) for v in row) + "\n" for row in rows)


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present (or as requested), else CPU; ValueError when CUDA is asked for and absent."""
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise ValueError(f"--device: {requested!r} is not a device; use cpu or cuda") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: this torch build or machine has no CUDA device; use --device cpu")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_model(cfg: RunConfig) -> LatentVariableModel:
    """The model of a run, built from its resolved network settings."""
    return build_model(cfg.variant, cfg.network, cfg.image_shape, cfg.likelihood)


def split_images(cfg: RunConfig, split: str) -> np.ndarray:
    """A prepared split, cut to the profile's subset size if it has one."""
    path = cfg.prepared_dir / f"{split}.npz"
    rebuild = f"delete it and run `flowvae prepare --profile {cfg.profile} --dataset {cfg.dataset_name}` (Snakemake's rule prepare)"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `flowvae prepare --profile {cfg.profile} --dataset {cfg.dataset_name}` first")
    x, _ = load_split(path, rebuild)
    n = cfg.subset.get(split)
    return x[:n] if n else x


def batches_for(cfg: RunConfig, split: str, batch_size: int, shuffle: bool, seed: int, device="cpu") -> Batches:
    """Batches of a split with the data set's binarization, resident on `device`."""
    return Batches(split_images(cfg, split), batch_size, cfg.dataset.binarize, shuffle=shuffle, seed=seed, device=device)


def run_metadata(cfg: RunConfig, best_epoch: int) -> dict:
    """What a finished run records about itself (settings.json and the model's metadata)."""
    return {"settings": cfg.record, "commit": code_commit(), "best_epoch": int(best_epoch)}


def save_weights(state: dict[str, torch.Tensor], dest: Path, metadata: dict | None = None) -> None:
    """Write a safetensors file atomically; metadata is stored as one JSON entry, so the bytes are reproducible."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    meta = {METADATA_KEY: json.dumps(metadata, sort_keys=True)} if metadata is not None else None
    with atomic_path(dest) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_weights(model: torch.nn.Module, path: Path, rebuild: str = "delete it and retrain the run (`flowvae train ...`)") -> None:
    """Load safetensors weights into a model (no code is executed)."""
    model.load_state_dict(load_safetensors(path, "a flowvae weights file", rebuild))


@dataclass
class TrainState:
    """What a checkpoint holds besides the tensors of model, optimiser and EMA."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # batches done in the current epoch
    global_step: int = 0
    best_score: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    epoch_sums: dict = field(default_factory=lambda: {"loss": 0.0, "neg_elbo": 0.0, "recon": 0.0, "kl": 0.0, "n": 0})
    epoch_seconds: float = 0.0
    history: list = field(default_factory=list)
    timings: list = field(default_factory=list)
    finished: bool = False


_SUM_KEYS = ("loss", "neg_elbo", "recon", "kl")


def make_loss_fn(model: LatentVariableModel, variant, amp: str = "none", compiled: bool = False):
    """f(x, beta) -> (loss to minimise, float64 tensor of loss, -ELBO, recon, KL): one training step's forward.

    amp "bf16" runs it under bfloat16 autocast; `compiled` wraps it in torch.compile. Nothing in it
    waits for the device, so a training step never synchronises with the host.
    """

    def forward_loss(x: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()
        with autocast:
            out = model(x, n_samples=variant.objective_k)
            loss = objective(out, variant.objective, beta=beta, free_bits=model.free_bits)
        terms = torch.stack([loss.loss.detach(), loss.neg_elbo, loss.recon, loss.kl]).double()
        return loss.loss, terms

    return torch.compile(forward_loss) if compiled else forward_loss


def _ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                ema[name].mul_(decay).add_(value, alpha=1 - decay)
            else:
                ema[name].copy_(value)


def _copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


@torch.no_grad()
def validate(model: LatentVariableModel, batches: Batches, seed: int) -> dict[str, float]:
    """Validation -ELBO, reconstruction and KL per image (one posterior sample, beta = 1)."""
    was_training = model.training
    model.eval()
    device = batches.device
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for x in batches.epoch(0):
            out = model(x, n_samples=1)
            recon = -out.log_px_z
            kl = out.log_qz - out.log_pz
            sums += torch.stack([(recon + kl).sum(), recon.sum(), kl.sum()]).double()
    model.train(was_training)
    neg_elbo, recon, kl = (sums / batches.n_images).tolist()
    return {"neg_elbo": neg_elbo, "recon": recon, "kl": kl}


class Trainer:
    """Trains one run in its folder; `run()` starts or resumes."""

    def __init__(
        self,
        cfg: RunConfig,
        out_dir: str | Path,
        threads: int | None = None,
        device: str | None = None,
        checkpoint_seconds: float = 300.0,
        progress: bool | None = None,
        on_change: str = "refuse",
        max_minutes: float | None = None,
        compile_step: bool = False,
    ) -> None:
        if on_change not in ("refuse", "restart"):
            raise ValueError(f"on_change must be refuse or restart, not {on_change!r}")
        self.cfg = cfg
        self.out = Path(out_dir)
        self.train_settings: TrainSettings = cfg.train
        if threads is not None:
            torch.set_num_threads(threads)
        self.device = pick_device(device)
        self.checkpoint_seconds = checkpoint_seconds
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.on_change = on_change
        self.max_seconds = None if max_minutes is None else 60.0 * max_minutes
        self.stop_reason: str | None = None
        t = self.train_settings
        seed_everything(cfg.seed)
        self.train_batches = batches_for(cfg, "train", t.batch_size, True, cfg.seed, self.device)
        self.valid_batches = batches_for(cfg, "valid", t.batch_size, False, cfg.seed + 10_000, self.device)
        self.model = make_model(cfg).to(self.device)
        if self.device.type == "cpu" and has_convolutions(self.model):
            # bench: 1.13x on the gated-conv VAE, no change on the ResNet VAE and the ladder (CPU, 2 threads)
            self.model.to(memory_format=torch.channels_last)
        self.model.initialize(next(self.train_batches.epoch(0)))
        optimizer = torch.optim.Adamax if t.optimizer == "adamax" else torch.optim.Adam
        self.optimizer = optimizer(self.model.parameters(), lr=float(t.lr), betas=tuple(t.betas))
        self.ema = _copy(self.model.state_dict()) if t.ema > 0 else None
        self.state = TrainState()
        self.forward_loss = make_loss_fn(self.model, cfg.variant, t.amp, compile_step)

    # ------------------------------------------------------------ checkpoints
    def save_checkpoint(self, sums: torch.Tensor | None = None) -> None:
        """Write the full training state atomically (with the running epoch sums, if given)."""
        if sums is not None:
            self._store_sums(sums)
        payload = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "state": self.state.__dict__,
            "settings": json.dumps(self.cfg.record, sort_keys=True),
        }
        with atomic_path(self.out / STATE_FILE) as tmp:
            torch.save(payload, tmp)

    def _rebuild_hint(self) -> str:
        return f"delete {self.out / 'checkpoint'} to train the run from the start"

    def load_checkpoint(self) -> bool:
        """Resume from the run's checkpoint if there is one (see the module doc for changed settings)."""
        path = self.out / STATE_FILE
        if not path.exists():
            return False
        payload = load_state(path, self.device, "a flowvae training checkpoint", self._rebuild_hint())
        missing = [k for k in ("model", "optimizer", "state", "rng_cpu") if k not in payload]
        if missing:
            raise CorruptFileError(f"{path} is corrupt or not a flowvae training checkpoint (it lacks {missing}); {self._rebuild_hint()}")
        recorded = json.loads(payload.get("settings") or "{}")
        changes = diff_settings(recorded, self.cfg.record)
        blocking = [c for c in changes if c[0] not in {f"train.{k}" for k in TrainSettings.EXTENDABLE}]
        if blocking:
            message = (
                f"{self.out}: params.yaml now gives this run other settings than its checkpoint was trained with: "
                f"{describe_diff(blocking)}"
            )
            if self.on_change == "refuse":
                raise SettingsChanged(
                    f"{message}. Restore those settings to continue it, or start it over with `--on-change restart` "
                    f"(the old checkpoint is kept in {self.out / 'checkpoint.replaced'})"
                )
            self._set_aside(message)
            return False
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.ema is not None and payload["ema"] is not None:
            self.ema = {k: v.to(self.device) for k, v in payload["ema"].items()}
        torch.set_rng_state(payload["rng_cpu"].cpu())
        if self.device.type == "cuda" and payload["rng_cuda"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in payload["rng_cuda"]])
        self.state = TrainState(**payload["state"])
        if changes:
            self._extend(changes)
        return True

    def _set_aside(self, message: str) -> None:
        """Move the stale checkpoint to checkpoint.replaced/ (replacing an older one) and say so."""
        aside = self.out / "checkpoint.replaced"
        shutil.rmtree(aside, ignore_errors=True)
        (self.out / "checkpoint").rename(aside)
        print(f"{message}; starting over (the old checkpoint is in {aside})", file=sys.stderr, flush=True)

    def _extend(self, changes: list) -> None:
        """Apply a new epochs or patience budget to a resumed run, and say what it does."""
        s, t = self.state, self.train_settings
        was_finished = s.finished
        s.finished = s.step_in_epoch == 0 and self._budget_spent()
        if was_finished and not s.finished:
            action = f"extending the finished run from epoch {s.epoch}"
        elif s.finished:
            action = f"the run is complete under the new budget at epoch {s.epoch} (best epoch {s.best_epoch})"
        else:
            action = f"continuing at epoch {s.epoch + 1} with the new budget"
        print(f"{self.out}: {describe_diff(changes)}: {action} (epochs {t.epochs}, patience {t.patience})", file=sys.stderr, flush=True)

    def _budget_spent(self) -> bool:
        s, t = self.state, self.train_settings
        return s.epoch >= t.epochs or bool(t.patience and s.bad_epochs >= t.patience)

    def eval_weights(self) -> dict[str, torch.Tensor]:
        """The weights used for validation and evaluation: EMA when enabled."""
        return self.ema if self.ema is not None else self.model.state_dict()

    # ------------------------------------------------------------ the loop
    def beta(self, step: int) -> float:
        """KL weight of the step-th update (from 1): linear from 0 to 1 over the warm-up epochs."""
        warmup = float(self.train_settings.warmup_epochs)
        if warmup <= 0:
            return 1.0
        return min(1.0, step / (warmup * len(self.train_batches)))

    def _store_sums(self, sums: torch.Tensor) -> None:
        """Copy the device-side running sums (float64, exact as Python floats) into the checkpointable state."""
        for key, value in zip(_SUM_KEYS, sums.tolist()):
            self.state.epoch_sums[key] = value

    def _check_finite(self, window: list[torch.Tensor], first_step: int) -> None:
        """Raise NonFiniteLoss naming the first step of `window` (losses from first_step on) that is not finite."""
        if not window:
            return
        finite = torch.isfinite(torch.stack(window)).tolist()
        window.clear()
        if all(finite):
            return
        step = first_step + finite.index(False)
        ckpt = self.out / STATE_FILE
        kept = f"the last good checkpoint is kept in {ckpt}" if ckpt.exists() else "no checkpoint was written yet"
        raise NonFiniteLoss(
            f"{self.out}: the loss is not finite at epoch {self.state.epoch + 1}, step {step}; {kept}. "
            f"Lower train.lr, or check the data, then rerun"
        )

    def _should_stop(self, started_run: float) -> bool:
        if self.stop_reason is None and self.max_seconds is not None and time.perf_counter() - started_run > self.max_seconds:
            self.stop_reason = f"time box of {self.max_seconds / 60:g} minutes reached"
        return self.stop_reason is not None

    def train_epoch(self, started_run: float) -> None:
        """Run (the rest of) one epoch, checkpointing every few minutes; stop early on a time box or signal."""
        s = self.state
        started = last_save = time.perf_counter()
        self.model.train()
        # One running sum per epoch, continued from the checkpoint, so a resumed epoch adds in the same order.
        sums = torch.tensor([s.epoch_sums[k] for k in _SUM_KEYS], dtype=torch.float64, device=self.device)
        window: list[torch.Tensor] = []
        window_start = s.step_in_epoch + 1
        bar = tqdm(total=len(self.train_batches), initial=s.step_in_epoch, desc=f"epoch {s.epoch + 1}", disable=not self.progress, leave=False)
        for x in self.train_batches.epoch(s.epoch, start=s.step_in_epoch):
            beta = torch.tensor(self.beta(s.global_step + 1), device=self.device)
            loss, terms = self.forward_loss(x, beta)
            window.append(terms[0])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.ema is not None:
                _ema_update(self.ema, self.model, self.train_settings.ema)
            n = x.shape[0]
            sums += terms * n
            s.epoch_sums["n"] += n
            s.step_in_epoch += 1
            s.global_step += 1
            bar.update(1)
            now = time.perf_counter()
            stop = self._should_stop(started_run)
            if len(window) >= CHECK_EVERY or stop or now - last_save > self.checkpoint_seconds:
                self._check_finite(window, window_start)
                window_start = s.step_in_epoch + 1
                bar.set_postfix(neg_elbo=f"{terms[1].item():.2f}")
            if stop or now - last_save > self.checkpoint_seconds:
                s.epoch_seconds += now - started
                started = last_save = now
                self.save_checkpoint(sums)
                if stop:
                    bar.close()
                    raise TimeBoxReached(
                        f"{self.out}: {self.stop_reason}; checkpoint written at epoch {s.epoch + 1}, step {s.step_in_epoch}. "
                        "Rerun the same command to continue"
                    )
        bar.close()
        self._check_finite(window, window_start)
        self._store_sums(sums)
        s.epoch_seconds += time.perf_counter() - started

    def end_epoch(self) -> None:
        """Validate, keep the best weights, log the epoch, and checkpoint."""
        s = self.state
        live = None
        if self.ema is not None:  # validate the EMA weights, then put the live ones back
            live = _copy(self.model.state_dict())
            self.model.load_state_dict(self.ema)
        val = validate(self.model, self.valid_batches, self.cfg.seed + 20_000)
        improved = val["neg_elbo"] < s.best_score
        if improved:
            save_weights(self.eval_weights(), self.out / BEST_FILE)
            s.best_score, s.best_epoch, s.bad_epochs = val["neg_elbo"], s.epoch + 1, 0
        else:
            s.bad_epochs += 1
        if live is not None:
            self.model.load_state_dict(live)
        sums = s.epoch_sums
        n = max(sums["n"], 1)
        record = {
            "epoch": s.epoch + 1,
            "step": s.global_step,
            "train_loss": sums["loss"] / n,
            "train_neg_elbo": sums["neg_elbo"] / n,
            "train_recon": sums["recon"] / n,
            "train_kl": sums["kl"] / n,
            "val_neg_elbo": val["neg_elbo"],
            "val_recon": val["recon"],
            "val_kl": val["kl"],
            "beta": self.beta(s.global_step),
            "lr": self.optimizer.param_groups[0]["lr"],
            "best": improved,
        }
        s.history.append(record)
        s.timings.append({"epoch": s.epoch + 1, "seconds": s.epoch_seconds, "images_per_s": sums["n"] / max(s.epoch_seconds, 1e-9)})
        s.epoch += 1
        s.step_in_epoch = 0
        s.epoch_seconds = 0.0
        s.epoch_sums = {"loss": 0.0, "neg_elbo": 0.0, "recon": 0.0, "kl": 0.0, "n": 0}
        s.finished = self._budget_spent()
        self.save_checkpoint()
        self.write_history()
        if not self.progress:
            t = s.timings[-1]
            print(
                f"{self.out}: epoch {record['epoch']}/{self.train_settings.epochs} train -ELBO {record['train_neg_elbo']:.3f} "
                f"val -ELBO {val['neg_elbo']:.3f} ({t['seconds']:.1f} s, {t['images_per_s']:.0f} img/s)",
                file=sys.stderr,
                flush=True,
            )

    def write_history(self) -> None:
        """train.jsonl, train_curves.csv and train_timings.json from the checkpointed history, written atomically."""
        write_text(self.out / HISTORY_FILE, "".join(json.dumps(r) + "\n" for r in self.state.history))
        write_text(self.out / CURVES_FILE, curves_csv(self.state.history))
        minutes = (sum(t["seconds"] for t in self.state.timings) + self.state.epoch_seconds) / 60
        write_json(self.out / TIMINGS_FILE, {"train_minutes": minutes, "epochs": self.state.timings})

    def _on_signal(self, signum, frame) -> None:
        self.stop_reason = f"{signal.Signals(signum).name} received"

    def run(self) -> dict:
        """Train to the end (resuming if a checkpoint exists) and write the kept weights.

        SIGTERM and SIGUSR1 (a SLURM time limit or preemption) and the time box stop after the current
        step with a checkpoint, raising TimeBoxReached.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        if self.load_checkpoint():
            s = self.state
            print(f"{self.out}: resuming from checkpoint at epoch {s.epoch + 1}, step {s.step_in_epoch}", file=sys.stderr, flush=True)
        started_run = time.perf_counter()
        handlers = {}
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: no handlers
                break
        try:
            while not self.state.finished:
                if self.stop_reason is not None:  # a signal during validation; the time box is looked at after each step
                    self.save_checkpoint()
                    raise TimeBoxReached(f"{self.out}: {self.stop_reason}; checkpoint written at epoch {self.state.epoch}. Rerun the same command to continue")
                self.train_epoch(started_run)
                self.end_epoch()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        best = load_safetensors(self.out / BEST_FILE, "the best weights of this run", self._rebuild_hint())
        metadata = run_metadata(self.cfg, self.state.best_epoch)
        save_weights(best, self.out / MODEL_FILE, metadata=metadata)
        write_json(self.out / SETTINGS_FILE, metadata)
        self.write_history()
        return {
            "epochs": self.state.epoch,
            "best_epoch": self.state.best_epoch,
            "best_val_neg_elbo": self.state.best_score,
            "train_minutes": sum(t["seconds"] for t in self.state.timings) / 60,
        }
