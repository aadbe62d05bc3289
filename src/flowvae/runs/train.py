"""Training one run: warm-up, early stopping, EMA, time boxes, a NaN guard; checkpoints by checkpoint.py.

The finished run's folder (spec/layout.py) holds:

- model.safetensors    the kept weights (best validation, or their EMA), with the settings record
                       as metadata (key `flowvae`: JSON with sorted keys);
- settings.json        the same record, readable: {"settings": RunSpec.record(), "best_epoch", "commit" (full SHA),
                       "source_diff_sha256" (null for committed code), "versions"};
- source.diff          only when trained with --allow-dirty: the uncommitted changes, whose sha256 is recorded;
- train.jsonl          one line per epoch, no wall-clock fields (the same bytes for the same run);
- train_curves.csv     its -ELBO, reconstruction and KL columns as CSV, for `dvc plots show` (DVC reads no JSON lines);
- train_timings.json   seconds and images/s per epoch, and train_minutes.

Rerunning the same command after a kill, a time box or a signal continues from the last checkpoint
and, on CPU, ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from flowvae.data.batches import Batches, batches_for
from flowvae.files.atomic import write_json
from flowvae.files.errors import NonFiniteLoss, TimeBoxReached
from flowvae.files.provenance import SourceState, source_state
from flowvae.files.safeload import load_safetensors
from flowvae.models.build import build_model
from flowvae.models.contract import LatentVariableModel
from flowvae.models.objectives import objective
from flowvae.runs.checkpoint import (
    TrainState,
    apply_new_budget,
    new_epoch_sums,
    read_checkpoint,
    rebuild_hint,
    run_metadata,
    save_weights,
    write_checkpoint,
)
from flowvae.runs import distributed
from flowvae.runs.device import pick_device, seed_everything
from flowvae.runs.stopping import Stopper, resume_message, write_finished_run, write_history
from flowvae.runs.inference import has_convolutions
from flowvae.spec.layout import RunFolder
from flowvae.spec.run import RunSpec

CURVE_COLUMNS = ("epoch", "train_neg_elbo", "val_neg_elbo", "train_recon", "val_recon", "train_kl", "val_kl")
TIMINGS_FILE = "train_timings.json"
CHECK_EVERY = 50  # steps between looks at the loss on the host (NaN and divergence guard, progress bar)
# A batch whose KL(q||p) per image exceeds this has diverged: no image of these data sets carries a million nats,
# and the diverged real-NVP posteriors seen reached 1e11 and more. Tabulating such a run would report its collapse.
KL_LIMIT = 1e6


def curves_csv(history: list[dict]) -> str:
    """The CURVE_COLUMNS of a history as CSV, one row per epoch; an absent value is an empty cell."""
    rows = [CURVE_COLUMNS, *([r.get(c) for c in CURVE_COLUMNS] for r in history)]
    return "".join(",".join("" if v is None else str(v) for v in row) + "\n" for row in rows)


_SUM_KEYS = ("loss", "neg_elbo", "recon", "kl")


def make_loss_fn(model: LatentVariableModel, variant, amp: str = "none", compiled: bool = False,
                 net: torch.nn.Module | None = None, ctx: distributed.Context = distributed.SINGLE):
    """f(x, beta) -> (loss to minimise, float64 tensor of loss, -ELBO, recon, KL): one training step's forward.

    amp "bf16" runs it under bfloat16 autocast; `compiled` wraps it in torch.compile. Nothing in it
    waits for the device, so a training step never synchronises with the host. With several processes
    (ctx), x is the global batch: the forward runs `net` (the DDP-wrapped model) on this process's shard,
    its noise cut from the global batch's draw, and the terms are the shard's means.
    """
    net = model if net is None else net
    global_fb = ctx.enabled and model.free_bits > 0 and variant.objective == "elbo"

    def forward_loss(x: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()
        with autocast:
            out = net(x, n_samples=variant.objective_k)
            if global_fb and out.kl_groups is not None:  # free bits of the global batch, not of the shard
                loss = objective(out, variant.objective, beta=beta)
                kl = (out.log_qz - out.log_pz).mean()
                loss.loss = loss.loss + beta * (distributed.global_free_bits(out.kl_groups, model.free_bits, ctx) - kl)
            else:
                loss = objective(out, variant.objective, beta=beta, free_bits=model.free_bits)
        terms = torch.stack([loss.loss.detach(), loss.neg_elbo, loss.recon, loss.kl]).double()
        return loss.loss, terms

    step = torch.compile(forward_loss) if compiled else forward_loss
    if not ctx.enabled:
        return step

    def shard_step(x: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, stop = ctx.shard(x.shape[0])
        with distributed.GlobalDraws(variant.objective_k, start, stop, x.shape[0]):
            return step(x[start:stop], beta)

    return shard_step


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
def validate(model: LatentVariableModel, batches: Batches, seed: int, ctx: distributed.Context = distributed.SINGLE) -> dict[str, float]:
    """Validation -ELBO, reconstruction and KL per image (one posterior sample, beta = 1).

    With several processes each takes its share of every batch (noise cut from the batch's draw) and the
    sums are added over the processes: every process gets the same numbers.
    """
    was_training = model.training
    model.eval()
    device = batches.device
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for x in batches.epoch(0):
            start, stop = ctx.shard(x.shape[0])
            draws = distributed.GlobalDraws(1, start, stop, x.shape[0]) if ctx.enabled else contextlib.nullcontext()
            if stop == start:  # a last batch smaller than the number of processes
                continue
            with draws:
                out = model(x[start:stop], n_samples=1)
            recon = -out.log_px_z
            kl = out.log_qz - out.log_pz
            sums += torch.stack([(recon + kl).sum(), recon.sum(), kl.sum()]).double()
    sums = ctx.sum(sums)
    model.train(was_training)
    neg_elbo, recon, kl = (sums / batches.n_images).tolist()
    return {"neg_elbo": neg_elbo, "recon": recon, "kl": kl}


class Trainer:
    """Trains one run in its folder; `run()` starts or resumes."""

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
        self.spec = spec
        self.record = spec.record()
        self.source = source if source is not None else source_state()  # the CLI refuses a dirty one first
        self.folder = RunFolder(Path(out_dir))
        self.out = self.folder.root
        self.train_settings = spec.train
        if threads is not None:
            torch.set_num_threads(threads)
        self.device = pick_device(device)
        self.ctx = ctx  # several processes: this one's rank; rank 0 alone writes files
        if ctx.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", ctx.local_rank)
        distributed.check_batch(spec.train.batch_size, ctx.world)
        self.checkpoint_seconds = checkpoint_seconds
        self.progress = (sys.stderr.isatty() if progress is None else progress) and ctx.main
        self.on_change = on_change
        self.stopper = Stopper(max_minutes)
        t = self.train_settings
        seed_everything(spec.seed)
        self.train_batches = batches_for(spec, "train", t.batch_size, True, spec.seed, self.device)
        self.valid_batches = batches_for(spec, "valid", t.batch_size, False, spec.seed + 10_000, self.device)
        self.model = build_model(spec).to(self.device)
        if self.device.type == "cpu" and has_convolutions(self.model):
            # bench: 1.13x on the gated-conv VAE, no change on the ResNet VAE and the ladder (CPU, 2 threads)
            self.model.to(memory_format=torch.channels_last)
        self.model.initialize(next(self.train_batches.epoch(0)))  # every process on the same global batch
        # What the step runs: the model, or with several processes the model in DDP (gradients averaged). DDP
        # searches each step's graph for parameters without a gradient only where the model has some (the ladder).
        self.net = self.model if not ctx.enabled else torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=distributed.has_unused_parameters(self.model, next(self.train_batches.epoch(0))[:2]))
        optimizer = torch.optim.Adamax if t.optimizer == "adamax" else torch.optim.Adam
        self.optimizer = optimizer(self.model.parameters(), lr=float(t.lr), betas=tuple(t.betas))
        self.ema = _copy(self.model.state_dict()) if t.ema > 0 else None
        self.state = TrainState()
        self.forward_loss = make_loss_fn(self.model, spec.variant, t.amp, compile_step, net=self.net, ctx=ctx)

    # ------------------------------------------------------------ checkpoints
    def save_checkpoint(self, sums: torch.Tensor | None = None) -> None:
        """Checkpoint the full training state (with the running epoch sums, if given)."""
        if sums is not None:
            self._store_sums(sums)
        if not self.ctx.main:  # the processes hold the same state; rank 0 writes it
            return
        if self.device.type != "cuda":
            rng_cuda = []
        elif self.ctx.enabled:  # every process's generator of its own GPU is in the same state
            rng_cuda = [torch.cuda.get_rng_state(self.device)]
        else:
            rng_cuda = torch.cuda.get_rng_state_all()
        write_checkpoint(self.folder, {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": rng_cuda,
            "state": self.state.__dict__,
            "settings": json.dumps(self.record, sort_keys=True),
        })

    def _read_checkpoint(self) -> tuple[dict | None, list]:
        """read_checkpoint; with several processes rank 0 applies the policy (refuse, or move the old checkpoint
        aside) before the others read what is left, and a refusal stops every process."""
        if not self.ctx.enabled:
            return read_checkpoint(self.folder, self.record, self.on_change, self.device)
        failure = None
        if self.ctx.main:
            try:
                read_checkpoint(self.folder, self.record, self.on_change, self.device)
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the other processes know
                failure = exc
        if self.ctx.agree(failure is not None)[0]:
            raise failure if failure is not None else RuntimeError(f"{self.out}: rank 0 could not resume this run (its message says why)")
        quiet = contextlib.redirect_stderr(io.StringIO()) if not self.ctx.main else contextlib.nullcontext()
        with quiet:  # rank 0 has said what the checkpoint policy did
            return read_checkpoint(self.folder, self.record, "refuse", self.device)

    def load_checkpoint(self) -> bool:
        """Resume from the run's checkpoint if there is one it may continue (see checkpoint.py)."""
        payload, changes = self._read_checkpoint()
        if payload is None:
            return False
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.ema is not None and payload["ema"] is not None:
            self.ema = {k: v.to(self.device) for k, v in payload["ema"].items()}
        torch.set_rng_state(payload["rng_cpu"].cpu())
        if self.device.type == "cuda" and payload["rng_cuda"]:
            if self.ctx.enabled:  # the state of the GPU the run used (its first), on this process's GPU
                torch.cuda.set_rng_state(payload["rng_cuda"][0].cpu(), self.device)
            else:
                torch.cuda.set_rng_state_all([s.cpu() for s in payload["rng_cuda"]])
        self.state = TrainState(**payload["state"])
        if self.ctx.enabled and not self.ctx.main:  # each process adds its own images; rank 0 carries the sums so far
            self.state.epoch_sums.update({k: 0.0 for k in _SUM_KEYS})
        if changes:
            quiet = contextlib.redirect_stderr(io.StringIO()) if not self.ctx.main else contextlib.nullcontext()
            with quiet:
                apply_new_budget(self.folder, self.state, self.train_settings, changes)
        return True


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
        """Copy the device-side running sums (float64, exact as Python floats) into the checkpointable state
        (with several processes: their sum over the processes)."""
        for key, value in zip(_SUM_KEYS, self.ctx.sum(sums).tolist()):
            self.state.epoch_sums[key] = value

    def _check_finite(self, window: list[torch.Tensor], first_step: int) -> None:
        """Raise NonFiniteLoss naming the first step of `window` (terms from first_step on) whose loss is not
        finite or whose KL exceeds KL_LIMIT."""
        if not window:
            return
        terms = self.ctx.mean(torch.stack(window))  # the global batch's means: every process decides alike
        window.clear()
        good = (torch.isfinite(terms).all(1) & (terms[:, 3] <= KL_LIMIT)).tolist()
        if all(good):
            return
        bad = good.index(False)
        step = first_step + bad
        ckpt = self.folder.state
        kept = f"the last good checkpoint is kept in {ckpt}" if ckpt.exists() else "no checkpoint was written yet"
        kl = float(terms[bad, 3])
        what = (f"the KL term exploded ({kl:.3g} nats per image, above {KL_LIMIT:g}): the run diverged"
                if math.isfinite(float(terms[bad, 0])) and math.isfinite(kl) else "the loss is not finite")
        raise NonFiniteLoss(
            f"{self.out}: {what} at epoch {self.state.epoch + 1}, step {step}; {kept}. "
            f"Lower train.lr or lengthen train.lr_warmup_steps, or check the data, then rerun"
        )

    def _warm_up_lr(self, step: int) -> None:
        """The learning rate of the step-th update (from 1): linear from lr/N to lr over train.lr_warmup_steps = N."""
        n = self.train_settings.lr_warmup_steps
        if n > 0 and step <= n + 1:
            for group in self.optimizer.param_groups:
                group["lr"] = float(self.train_settings.lr) * min(1.0, step / n)

    def _stop_now(self, message: str, sums: torch.Tensor | None = None) -> None:
        """Checkpoint, mark the run stopped (for `flowvae status`), and raise TimeBoxReached on every process
        once rank 0 has written both."""
        self.save_checkpoint(sums)
        if self.ctx.main:
            write_json(self.folder.stopped, {"reason": self.stopper.reason})
        self.ctx.barrier()
        raise TimeBoxReached(message)

    def train_epoch(self, started_run: float) -> None:
        """Run (the rest of) one epoch, checkpointing every few minutes; stop early on a time box or signal."""
        s = self.state
        started = last_save = time.perf_counter()
        self.net.train()
        # One running sum per epoch, continued from the checkpoint, so a resumed epoch adds in the same order.
        sums = torch.tensor([s.epoch_sums[k] for k in _SUM_KEYS], dtype=torch.float64, device=self.device)
        window: list[torch.Tensor] = []
        window_start = s.step_in_epoch + 1
        bar = tqdm(total=len(self.train_batches), initial=s.step_in_epoch, desc=f"epoch {s.epoch + 1}", disable=not self.progress, leave=False)
        for x in self.train_batches.epoch(s.epoch, start=s.step_in_epoch):
            beta = torch.tensor(self.beta(s.global_step + 1), device=self.device)
            loss, terms = self.forward_loss(x, beta)
            window.append(terms)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._warm_up_lr(s.global_step + 1)
            self.optimizer.step()
            if self.ema is not None:
                _ema_update(self.ema, self.model, self.train_settings.ema)
            n = x.shape[0]
            sums += terms * (n // self.ctx.world)  # this process's images (an equal shard of the batch)
            s.epoch_sums["n"] += n
            s.step_in_epoch += 1
            s.global_step += 1
            bar.update(1)
            now = time.perf_counter()
            # every process stops, and checkpoints, after the same step
            stop, save = self.ctx.agree(self.stopper.time_is_up(started_run), now - last_save > self.checkpoint_seconds)
            if stop and self.stopper.reason is None:
                self.stopper.reason = "stopped by another training process (signal or time box)"
            if len(window) >= CHECK_EVERY or stop or save:
                self._check_finite(window, window_start)
                window_start = s.step_in_epoch + 1
                bar.set_postfix(neg_elbo=f"{terms[1].item():.2f}")
            if stop or save:
                s.epoch_seconds += now - started
                started = last_save = now
                if stop:
                    bar.close()
                    self._stop_now(
                        f"{self.out}: {self.stopper.reason}; checkpoint written at epoch {s.epoch + 1}, step {s.step_in_epoch}. "
                        "Rerun the same command to continue", sums)
                self.save_checkpoint(sums)
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
        val = validate(self.model, self.valid_batches, self.spec.seed + 20_000, self.ctx)
        improved = val["neg_elbo"] < s.best_score
        if improved:
            if self.ctx.main:
                save_weights(self.eval_weights(), self.folder.best)
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
        s.epoch_sums = new_epoch_sums()
        s.finished = s.budget_spent(self.train_settings)
        self.save_checkpoint()
        if not self.ctx.main:
            return
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
        write_history(self.folder, self.state, curves_csv)

    def run(self) -> dict:
        """Train to the end (resuming if a checkpoint exists) and write the kept weights.

        SIGTERM and SIGUSR1 (a SLURM time limit or preemption) and the time box stop after the current
        step with a checkpoint, raising TimeBoxReached.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        if self.load_checkpoint():
            where = resume_message(self.state)
            if self.ctx.main:
                print(f"{self.out}: {where}", file=sys.stderr, flush=True)
        started_run = time.perf_counter()
        if self.ctx.main:
            self.folder.stopped.unlink(missing_ok=True)
        with self.stopper.catching_signals():
            while not self.state.finished:
                # a signal during validation (on any process); the time box is looked at after each step
                if self.ctx.agree(self.stopper.reason is not None)[0]:
                    self.stopper.reason = self.stopper.reason or "stopped by another training process (signal)"
                    self._stop_now(f"{self.out}: {self.stopper.reason}; checkpoint written at epoch {self.state.epoch}. "
                                   "Rerun the same command to continue")
                self.train_epoch(started_run)
                self.end_epoch()
        self.ctx.barrier()  # rank 0's best weights are on disk
        if not self.ctx.main:
            return {"epochs": self.state.epoch, "best_epoch": self.state.best_epoch, "rank": self.ctx.rank}
        best = load_safetensors(self.folder.best, "the best weights of this run", rebuild_hint(self.folder))
        write_finished_run(self.folder, best, run_metadata(self.spec, self.state.best_epoch, self.source), self.source)
        self.write_history()
        return {
            "epochs": self.state.epoch,
            "best_epoch": self.state.best_epoch,
            "best_val_neg_elbo": self.state.best_score,
            "train_minutes": sum(t["seconds"] for t in self.state.timings) / 60,
        }
