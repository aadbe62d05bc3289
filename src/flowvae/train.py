"""Training one run: warm-up, early stopping, EMA, resumable checkpoints, a NaN guard.

A run's folder holds, while it trains, `checkpoint/state.pt` (model, optimiser, EMA, RNG state,
epoch and step, best score, patience, history; loadable with weights_only=True) and
`checkpoint/best.safetensors`. The finished run adds `model.safetensors` (the kept weights) and
`train.jsonl` (one line per epoch). Rerunning the same command after a kill continues from the
last checkpoint and, on CPU, ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from flowvae.atomic import atomic_path, write_text
from flowvae.config import RunConfig
from flowvae.data import Batches, load_split
from flowvae.objectives import objective
from flowvae.vae import build_model

STATE_FILE = "checkpoint/state.pt"
BEST_FILE = "checkpoint/best.safetensors"
MODEL_FILE = "model.safetensors"
HISTORY_FILE = "train.jsonl"


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present (or as requested), else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_model(cfg: RunConfig) -> torch.nn.Module:
    """The model of a run, as params.yaml describes it."""
    net = dict(cfg.network)
    if cfg.variant.family == "resvae":
        net = dict(cfg.ladder)
    return build_model(cfg.variant, net, cfg.image_shape, cfg.likelihood)


def split_images(cfg: RunConfig, split: str) -> np.ndarray:
    """A prepared split, cut to the profile's subset size if it has one."""
    path = cfg.prepared_dir / f"{split}.npz"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: run `flowvae prepare --profile {cfg.profile} --dataset {cfg.dataset_name}` first"
        )
    x, _ = load_split(path)
    n = cfg.subset.get(split)
    return x[:n] if n else x


def batches_for(cfg: RunConfig, split: str, batch_size: int, shuffle: bool, seed: int) -> Batches:
    """Batches of a split with the data set's binarization."""
    return Batches(split_images(cfg, split), batch_size, cfg.dataset.binarize, shuffle=shuffle, seed=seed)


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
    finished: bool = False


def _ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                ema[name].mul_(decay).add_(value, alpha=1 - decay)
            else:
                ema[name].copy_(value)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def save_weights(state: dict[str, torch.Tensor], dest: Path, metadata: dict | None = None) -> None:
    """Write a safetensors file atomically."""
    with atomic_path(dest) as tmp:
        save_file(_contiguous(state), str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights into a model (no code is executed)."""
    model.load_state_dict(load_file(str(path)))


@torch.no_grad()
def validate(model: torch.nn.Module, batches: Batches, seed: int) -> dict[str, float]:
    """Validation -ELBO, reconstruction and KL per image (one posterior sample, beta = 1)."""
    was_training = model.training
    model.eval()
    sums = {"neg_elbo": 0.0, "recon": 0.0, "kl": 0.0}
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for x in batches.epoch(0):
            out = model(x.to(device), n_samples=1)
            recon = -out.log_px_z
            kl = out.log_qz - out.log_pz
            sums["neg_elbo"] += (recon + kl).sum().item()
            sums["recon"] += recon.sum().item()
            sums["kl"] += kl.sum().item()
    model.train(was_training)
    return {k: v / batches.n_images for k, v in sums.items()}


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
    ) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.settings = cfg.settings
        if threads:
            torch.set_num_threads(threads)
        self.device = pick_device(device)
        self.checkpoint_seconds = checkpoint_seconds
        self.progress = sys.stderr.isatty() if progress is None else progress
        seed_everything(cfg.seed)
        self.train_batches = batches_for(cfg, "train", self.settings["batch_size"], True, cfg.seed)
        self.valid_batches = batches_for(cfg, "valid", self.settings["batch_size"], False, cfg.seed + 10_000)
        self.model = make_model(cfg).to(self.device)
        if hasattr(self.model, "initialize"):
            first = next(self.train_batches.epoch(0))
            self.model.initialize(first.to(self.device))
        lr = float(self.settings["lr"])
        name = self.settings.get("optimizer", "adamax")
        if name not in ("adamax", "adam"):
            raise ValueError(f"profiles.{cfg.profile}.optimizer: {name!r} is not adamax or adam")
        opt_class = torch.optim.Adamax if name == "adamax" else torch.optim.Adam
        self.optimizer = opt_class(self.model.parameters(), lr=lr)
        self.ema_decay = float(self.settings.get("ema") or 0.0)
        self.ema = _contiguous(self.model.state_dict()) if self.ema_decay > 0 else None
        self.state = TrainState()

    # ------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        """Write the full training state atomically."""
        payload = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "state": self.state.__dict__,
        }
        with atomic_path(self.out / STATE_FILE) as tmp:
            torch.save(payload, tmp)

    def load_checkpoint(self) -> bool:
        """Resume from the run's checkpoint if there is one."""
        path = self.out / STATE_FILE
        if not path.exists():
            return False
        payload = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.ema is not None and payload["ema"] is not None:
            self.ema = {k: v.to(self.device) for k, v in payload["ema"].items()}
        torch.set_rng_state(payload["rng_cpu"].cpu())
        if self.device.type == "cuda" and payload["rng_cuda"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in payload["rng_cuda"]])
        self.state = TrainState(**payload["state"])
        return True

    def eval_weights(self) -> dict[str, torch.Tensor]:
        """The weights used for validation and evaluation: EMA when enabled."""
        return self.ema if self.ema is not None else self.model.state_dict()

    # ------------------------------------------------------------ the loop
    def beta(self, step: int) -> float:
        """KL weight of the step-th update (from 1): linear from 0 to 1 over the warm-up epochs."""
        warmup = float(self.settings.get("warmup_epochs") or 0)
        if warmup <= 0:
            return 1.0
        return min(1.0, step / (warmup * len(self.train_batches)))

    def train_epoch(self) -> None:
        """Run (the rest of) one epoch, checkpointing every few minutes."""
        s, v = self.state, self.cfg.variant
        free_bits = float(self.model.net.get("free_bits", 0.0)) if v.family == "resvae" else 0.0
        started = time.perf_counter()
        last_save = started
        self.model.train()
        bar = tqdm(
            total=len(self.train_batches),
            initial=s.step_in_epoch,
            desc=f"epoch {s.epoch + 1}",
            disable=not self.progress,
            leave=False,
        )
        for x in self.train_batches.epoch(s.epoch, start=s.step_in_epoch):
            x = x.to(self.device, non_blocking=True)
            out = self.model(x, n_samples=v.objective_k)
            loss = objective(out, v.objective, beta=self.beta(s.global_step + 1), free_bits=free_bits)
            if not torch.isfinite(loss.loss):
                raise NonFiniteLoss(
                    f"{self.out}: loss is {loss.loss.item()} at epoch {s.epoch + 1}, step {s.step_in_epoch + 1}; "
                    f"the last good checkpoint is kept in {self.out / STATE_FILE}"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.loss.backward()
            self.optimizer.step()
            if self.ema is not None:
                _ema_update(self.ema, self.model, self.ema_decay)
            n = x.shape[0]
            sums = s.epoch_sums
            sums["loss"] += loss.loss.item() * n
            sums["neg_elbo"] += loss.neg_elbo.item() * n
            sums["recon"] += loss.recon.item() * n
            sums["kl"] += loss.kl.item() * n
            sums["n"] += n
            s.step_in_epoch += 1
            s.global_step += 1
            bar.update(1)
            bar.set_postfix(neg_elbo=f"{loss.neg_elbo.item():.2f}")
            now = time.perf_counter()
            if now - last_save > self.checkpoint_seconds:
                s.epoch_seconds += now - started
                started = last_save = now
                self.save_checkpoint()
        bar.close()
        s.epoch_seconds += time.perf_counter() - started

    def end_epoch(self) -> None:
        """Validate, keep the best weights, log the epoch, and checkpoint."""
        s = self.state
        live = None
        if self.ema is not None:  # validate the EMA weights, then put the live ones back
            live = _contiguous(self.model.state_dict())
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
            "seconds": s.epoch_seconds,
            "images_per_s": sums["n"] / max(s.epoch_seconds, 1e-9),
            "best": improved,
        }
        s.history.append(record)
        s.epoch += 1
        s.step_in_epoch = 0
        s.epoch_seconds = 0.0
        s.epoch_sums = {"loss": 0.0, "neg_elbo": 0.0, "recon": 0.0, "kl": 0.0, "n": 0}
        patience = int(self.settings.get("patience") or 0)
        if s.epoch >= int(self.settings["epochs"]) or (patience and s.bad_epochs >= patience):
            s.finished = True
        self.save_checkpoint()
        self.write_history()
        if not self.progress:
            print(
                f"{self.out}: epoch {record['epoch']} train -ELBO {record['train_neg_elbo']:.3f} "
                f"val -ELBO {val['neg_elbo']:.3f} ({record['seconds']:.1f} s, {record['images_per_s']:.0f} img/s)",
                file=sys.stderr,
                flush=True,
            )

    def write_history(self) -> None:
        """train.jsonl from the checkpointed history, written atomically."""
        write_text(self.out / HISTORY_FILE, "".join(json.dumps(r) + "\n" for r in self.state.history))

    def run(self) -> dict:
        """Train to the end (resuming if a checkpoint exists) and write the kept weights."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.load_checkpoint():
            s = self.state
            print(f"{self.out}: resuming from checkpoint at epoch {s.epoch + 1}, step {s.step_in_epoch}", file=sys.stderr, flush=True)
        while not self.state.finished:
            self.train_epoch()
            self.end_epoch()
        best = load_file(str(self.out / BEST_FILE))
        save_weights(
            best,
            self.out / MODEL_FILE,
            metadata={"model": self.cfg.variant.name, "best_epoch": self.state.best_epoch},
        )
        self.write_history()
        return {
            "epochs": self.state.epoch,
            "best_epoch": self.state.best_epoch,
            "best_val_neg_elbo": self.state.best_score,
            "train_minutes": sum(r["seconds"] for r in self.state.history) / 60,
        }
