"""Training the GAN of models/gan.py: one discriminator step, then one generator step, per batch; checkpoints by
checkpoint.py, in the same files as runs/train.py's Trainer.

The finished run's folder holds what Trainer writes (spec/layout.py TRAIN_OUTPUTS):

- model.safetensors    both networks' weights after the last epoch (keys generator.*, discriminator.*), with the
                       settings record as metadata;
- settings.json        the same record, readable, with best_epoch = the last epoch (a GAN has no validation score);
- source.diff          only when trained with --allow-dirty;
- train.jsonl          one line per epoch: the epoch's mean D and G losses and D's mean probability of "real" on the
                       real and on the generated images, weighted by batch size; no wall-clock fields;
- train_curves.csv     the same columns as CSV, for `dvc plots show`;
- train_timings.json   seconds and images/s per epoch, and train_minutes.

The latent draws z and the noisy labels come from one torch.Generator, the discriminator's dropout masks from torch's
global RNG; the checkpoint holds both states, so rerunning the same command after a kill, a time box or a signal
continues and, on CPU, ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from flowvae.data.batches import batches_for
from flowvae.files.atomic import write_json
from flowvae.files.errors import NonFiniteLoss, TimeBoxReached
from flowvae.files.provenance import SourceState, source_state
from flowvae.models.build import build_model
from flowvae.models.gan import GAN, train_step
from flowvae.runs import distributed
from flowvae.runs.checkpoint import TrainState, apply_new_budget, read_checkpoint, run_metadata, write_checkpoint
from flowvae.runs.device import pick_device, seed_everything
from flowvae.runs.stopping import Stopper, resume_message, write_finished_run, write_history
from flowvae.spec.layout import RunFolder
from flowvae.spec.run import RunSpec
from flowvae.spec.settings import TrainSettings

CURVE_COLUMNS = ("epoch", "d_loss", "g_loss", "d_real", "d_fake")
_SUM_KEYS = CURVE_COLUMNS[1:]
NOISE_SEED_OFFSET = 30_000  # the z and label generator's seed is spec.seed + this: a stream apart from the global RNG's
# train settings of the VAE trainer that the GAN does not have; each must keep its neutral value
_NOT_FOR_GANS = {
    "warmup_epochs": (0, "the KL warm-up: a GAN has no KL term"),
    "lr_warmup_steps": (0, "the learning-rate warm-up: not implemented for the GAN, whose template has none"),
    "patience": (0, "early stopping on the validation -ELBO: a GAN has no validation score"),
    "ema": (0.0, "an EMA of the weights: not implemented for the GAN"),
    "amp": ("none", "autocast: not implemented for the GAN"),
}


def check_train_settings(t: TrainSettings) -> None:
    """ValueError naming every train setting the GAN trainer cannot honour (optimizer must be adam)."""
    problems = []
    if t.optimizer != "adam":
        problems.append(f"train.optimizer is {t.optimizer!r}: the GAN trains with Adam (the template's); set it to adam")
    for key, (neutral, what) in _NOT_FOR_GANS.items():
        if getattr(t, key) != neutral:
            problems.append(f"train.{key} is {getattr(t, key)!r} ({what}); set it to {neutral!r}")
    if problems:
        raise ValueError("the GAN's train settings: " + "; ".join(problems))


def new_gan_sums() -> dict:
    return {**{k: 0.0 for k in _SUM_KEYS}, "n": 0}


def curves_csv(history: list[dict]) -> str:
    """The CURVE_COLUMNS of a history as CSV, one row per epoch."""
    rows = [CURVE_COLUMNS, *([r[c] for c in CURVE_COLUMNS] for r in history)]
    return "".join(",".join(str(v) for v in row) + "\n" for row in rows)


class GANTrainer:
    """Trains one GAN run in its folder; `run()` starts or resumes. Takes Trainer's arguments (compile_step is
    ignored: the MLPs are small) and runs in one process only."""

    def __init__(
        self,
        spec: RunSpec,
        out_dir: str | Path,
        threads: int | None = None,
        device: str | None = None,
        checkpoint_seconds: float = 300.0,
        progress: bool | None = None,
        on_change: str = "refuse",
        max_minutes: float | None = None,
        compile_step: bool = False,
        source: SourceState | None = None,
        ctx: distributed.Context = distributed.SINGLE,
    ) -> None:
        if on_change not in ("refuse", "restart"):
            raise ValueError(f"on_change must be refuse or restart, not {on_change!r}")
        if ctx.world > 1:
            raise ValueError(f"{out_dir}: data-parallel GAN training is not supported; train it in one process (--nproc 1)")
        check_train_settings(spec.train)
        self.spec = spec
        self.record = spec.record()
        self.source = source if source is not None else source_state()
        self.folder = RunFolder(Path(out_dir))
        self.out = self.folder.root
        self.train_settings = t = spec.train
        if threads is not None:
            torch.set_num_threads(threads)
        self.device = pick_device(device)
        self.checkpoint_seconds = checkpoint_seconds
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.on_change = on_change
        self.stopper = Stopper(max_minutes)
        seed_everything(spec.seed)
        self.train_batches = batches_for(spec, "train", t.batch_size, True, spec.seed, self.device)
        self.model: GAN = build_model(spec).to(self.device)
        self.noise = torch.Generator(device=self.device).manual_seed(spec.seed + NOISE_SEED_OFFSET)
        betas = tuple(t.betas)
        self.opt_g = torch.optim.Adam(self.model.generator.parameters(), lr=float(t.lr), betas=betas)
        self.opt_d = torch.optim.Adam(self.model.discriminator.parameters(), lr=float(t.lr), betas=betas)
        self.state = TrainState(epoch_sums=new_gan_sums())

    # ------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        """Checkpoint the full training state, the running epoch sums included."""
        write_checkpoint(self.folder, {
            "model": self.model.state_dict(),
            "optimizer": {"generator": self.opt_g.state_dict(), "discriminator": self.opt_d.state_dict()},
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "rng_noise": self.noise.get_state(),
            "state": self.state.__dict__,
            "settings": json.dumps(self.record, sort_keys=True),
        })

    def load_checkpoint(self) -> bool:
        """Resume from the run's checkpoint if there is one it may continue (see checkpoint.py)."""
        payload, changes = read_checkpoint(self.folder, self.record, self.on_change, self.device)
        if payload is None:
            return False
        self.model.load_state_dict(payload["model"])
        self.opt_g.load_state_dict(payload["optimizer"]["generator"])
        self.opt_d.load_state_dict(payload["optimizer"]["discriminator"])
        torch.set_rng_state(payload["rng_cpu"].cpu())
        if self.device.type == "cuda" and payload["rng_cuda"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in payload["rng_cuda"]])
        self.noise.set_state(payload["rng_noise"].cpu())
        self.state = TrainState(**payload["state"])
        if changes:
            apply_new_budget(self.folder, self.state, self.train_settings, changes)
        return True

    # ------------------------------------------------------------ the loop
    def _check_finite(self, out: dict[str, float], step: int) -> None:
        """Raise NonFiniteLoss naming the epoch and step whose D or G loss is NaN or infinite."""
        bad = [k for k in ("d_loss", "g_loss") if not math.isfinite(out[k])]
        if not bad:
            return
        ckpt = self.folder.state
        kept = f"the last good checkpoint is kept in {ckpt}" if ckpt.exists() else "no checkpoint was written yet"
        raise NonFiniteLoss(
            f"{self.out}: the loss ({' and '.join(bad)}) is not finite at epoch {self.state.epoch + 1}, step {step}; {kept}. "
            "Lower train.lr, or check the data, then rerun"
        )

    def _stop_now(self, message: str) -> None:
        """Checkpoint, mark the run stopped (for `flowvae status`), and raise TimeBoxReached."""
        self.save_checkpoint()
        write_json(self.folder.stopped, {"reason": self.stopper.reason})
        raise TimeBoxReached(message)

    def train_epoch(self, started_run: float) -> None:
        """Run (the rest of) one epoch, checkpointing every checkpoint_seconds; stop early on a time box or signal."""
        s = self.state
        sums = s.epoch_sums
        started = last_save = time.perf_counter()
        bar = tqdm(total=len(self.train_batches), initial=s.step_in_epoch, desc=f"epoch {s.epoch + 1}",
                   disable=not self.progress, leave=False)
        for x in self.train_batches.epoch(s.epoch, start=s.step_in_epoch):
            out = train_step(self.model.generator, self.model.discriminator, self.opt_g, self.opt_d, x, self.spec.network,
                             self.noise)
            self._check_finite(out, s.step_in_epoch + 1)
            n = x.shape[0]
            for key in _SUM_KEYS:  # Python floats in a fixed order: a resumed epoch adds up to the same bits
                sums[key] += out[key] * n
            sums["n"] += n
            s.step_in_epoch += 1
            s.global_step += 1
            bar.update(1)
            bar.set_postfix(d_loss=f"{out['d_loss']:.3f}", g_loss=f"{out['g_loss']:.3f}")
            now = time.perf_counter()
            stop = self.stopper.time_is_up(started_run)
            if stop or now - last_save > self.checkpoint_seconds:
                s.epoch_seconds += now - started
                started = last_save = now
                if stop:
                    bar.close()
                    self._stop_now(f"{self.out}: {self.stopper.reason}; checkpoint written at epoch {s.epoch + 1}, "
                                   f"step {s.step_in_epoch}. Rerun the same command to continue")
                self.save_checkpoint()
        bar.close()
        s.epoch_seconds += time.perf_counter() - started

    def end_epoch(self) -> None:
        """Log the epoch's means and timings, and checkpoint."""
        s = self.state
        sums = s.epoch_sums
        n = max(sums["n"], 1)
        record = {"epoch": s.epoch + 1, "step": s.global_step, **{k: sums[k] / n for k in _SUM_KEYS}}
        s.history.append(record)
        images_per_s = sums["n"] / max(s.epoch_seconds, 1e-9)
        s.timings.append({"epoch": s.epoch + 1, "seconds": s.epoch_seconds, "images_per_s": images_per_s})
        s.epoch += 1
        s.step_in_epoch = 0
        s.epoch_seconds = 0.0
        s.epoch_sums = new_gan_sums()
        s.finished = s.budget_spent(self.train_settings)
        self.save_checkpoint()
        self.write_history()
        if not self.progress:
            t = s.timings[-1]
            print(
                f"{self.out}: epoch {record['epoch']}/{self.train_settings.epochs} D loss {record['d_loss']:.3f} "
                f"G loss {record['g_loss']:.3f} D(real) {record['d_real']:.3f} D(fake) {record['d_fake']:.3f} "
                f"({t['seconds']:.1f} s, {t['images_per_s']:.0f} img/s)",
                file=sys.stderr,
                flush=True,
            )

    def write_history(self) -> None:
        write_history(self.folder, self.state, curves_csv)

    def run(self) -> dict:
        """Train to the end (resuming if a checkpoint exists) and write the weights and records.

        SIGTERM and SIGUSR1 (a SLURM time limit or preemption) and the time box stop after the current
        step with a checkpoint, raising TimeBoxReached.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        if self.load_checkpoint():
            where = resume_message(self.state)
            print(f"{self.out}: {where}", file=sys.stderr, flush=True)
        started_run = time.perf_counter()
        self.folder.stopped.unlink(missing_ok=True)
        with self.stopper.catching_signals():
            while not self.state.finished:
                if self.stopper.reason is not None:  # a signal between epochs
                    self._stop_now(f"{self.out}: {self.stopper.reason}; checkpoint written at epoch {self.state.epoch}. "
                                   "Rerun the same command to continue")
                self.train_epoch(started_run)
                self.end_epoch()
        write_finished_run(self.folder, self.model.state_dict(), run_metadata(self.spec, self.state.epoch, self.source), self.source)
        self.write_history()
        last = self.state.history[-1]
        return {
            "epochs": self.state.epoch,
            "train_minutes": sum(t["seconds"] for t in self.state.timings) / 60,
            **{k: last[k] for k in _SUM_KEYS},
        }
