"""Evaluation on the test split: importance-sampled log p(x), ELBO terms and diagnostics.

eval.json (all values in nats per image unless said otherwise):
  profile, dataset, model, seed, device           what was evaluated, where
  code_version                                    params.yaml's code_version the run was trained under
  commit, source_diff_sha256, versions            the code that evaluated it: full commit, the sha256 of its uncommitted
                                                  diff (null for committed code; the diff is eval_source.diff beside it),
                                                  python, torch and numpy versions
  train_commit, train_source_diff_sha256          the same of the code that trained it (from the model's record)
  data_source                                     the data set actually used (differs from dataset only for a profile's stand-in)
  n_test, K                                       test images, importance samples per image
  estimator                                       "importance sampling", or "exact" for a flow used as a density model
                                                  (realnvp_s*_b*: log p of one uniform dequantization per test image, K = 1)
  epochs, best_epoch, n_params, latent_dim        n_params counts the trainable parameters as trained (before folding)
  late_improvement                                how much the best validation -ELBO fell during the last 20% of the
                                                  epochs (nats; null under 5 epochs): a run still improving has not converged
  neg_elbo, neg_elbo_se, recon, kl                -ELBO = recon + kl, averaged over the K samples
  neg_log_px, neg_log_px_se                       -log p(x) by importance sampling: mean and standard error over test images
  gap                                             neg_elbo - neg_log_px
  active_units                                    null for exact models; else units with Cov_x(E_q[z_u]) > 0.01 (Burda et al. 2016), over the
                                                  first images whose latents fit a 20M-value budget (all, for MLP latents)
  ess_fraction                                    mean over images of ESS / K of the importance weights
  bits_per_dim                                    null, or {neg_elbo, neg_log_px} in bits/dim for 8-bit images
  is_curve, is_curve_images                       [{K, neg_log_px}] on a seeded random sample of is_curve_images test images
                                                  (the same for every run of a data set), averaged over disjoint blocks of K samples
eval.json has no wall-clock field: the same run evaluated twice on one machine gives the same bytes.
eval_timings.json beside it: eval_seconds, is_samples_per_s.
per_image.npz beside it: neg_log_px and neg_elbo (float64, nats) of every test image in the test split's order,
whose means are eval.json's; byte-reproducible like it. Tables take paired differences from them.
samples.npz beside it: originals, reconstructions, prior_samples, interpolations and, for a 2-D
latent, manifold and manifold_quantiles (decoded means over a grid of latents at normal quantiles),
grid_x, grid_y, prior_logp and posterior_logq (log-densities on a grid over [-4, 4]^2) for a few test images,
and per image posterior_x, posterior_y, posterior_logq_local (its log-density on a grid of its own, over the
square holding its mass) and posterior_mu (the encoder's mean, the flow's base); interpolations run between
the posteriors' latents at eps = 0 (encode_mean); byte-reproducible like eval.json.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from flowvae.data.batches import Batches, batches_for
from flowvae.files.atomic import write_json, write_npz, write_text
from flowvae.files.errors import SettingsChanged
from flowvae.files import provenance
from flowvae.files.provenance import SourceState, source_state
from flowvae.files.errors import CorruptFileError
from flowvae.files.jsonfiles import read_json_lines, read_json_object
from flowvae.files.safeload import read_metadata
from flowvae.models.build import build_model, count_parameters
from flowvae.models.contract import LatentVariableModel
from flowvae.models.likelihoods import get_likelihood
from flowvae.models.objectives import log_weights
from flowvae.runs.checkpoint import load_weights
from flowvae.runs.device import pick_device
from flowvae.runs.inference import has_convolutions, prepare_for_inference
from flowvae.spec.layout import RunFolder
from flowvae.spec.run import RunSpec
from flowvae.spec.settings import describe_diff, diff_settings

ACTIVE_UNIT_THRESHOLD = 0.01
LATENT_MOMENT_BUDGET = 20_000_000  # float64 values kept per moment for active units (160 MB)


class LogMeanExp:
    """Running log-mean-exp over chunks of log-weights, in float64, per image."""

    def __init__(self, n: int) -> None:
        self.log_sum = torch.full((n,), -math.inf, dtype=torch.float64)
        self.log_sum_sq = torch.full((n,), -math.inf, dtype=torch.float64)
        self.count = 0

    def add(self, log_w: torch.Tensor) -> None:
        """Add a chunk of log-weights of shape (S, n)."""
        log_w = log_w.detach().to("cpu", torch.float64)
        self.log_sum = torch.logaddexp(self.log_sum, torch.logsumexp(log_w, 0))
        self.log_sum_sq = torch.logaddexp(self.log_sum_sq, torch.logsumexp(2 * log_w, 0))
        self.count += log_w.shape[0]

    def log_mean(self) -> torch.Tensor:
        """log (1/K sum_k w_k) per image."""
        return self.log_sum - math.log(self.count)

    def ess(self) -> torch.Tensor:
        """Effective sample size (sum w)^2 / sum w^2 per image."""
        return torch.exp(2 * self.log_sum - self.log_sum_sq)


def active_units(mean_z: torch.Tensor, var_z: torch.Tensor, n_samples: int, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Count units with Cov_x(E_q[z_u]) > threshold.

    mean_z (N, D) is the Monte Carlo mean of K posterior samples per image and var_z (N, D) their
    unbiased within-image variance; Var_x(mean) overstates Cov_x(E_q[z]) by E_x[Var_q(z)]/K,
    which is subtracted so that the count does not depend on K.
    """
    mean_z = mean_z.double()
    between = mean_z.var(dim=0, unbiased=True)
    noise = var_z.double().mean(dim=0) / n_samples if n_samples > 1 else torch.zeros_like(between)
    return int(((between - noise) > threshold).sum().item())


def standard_error(values: torch.Tensor) -> float:
    """Standard error of the mean."""
    n = values.numel()
    return float(values.double().std(unbiased=True) / math.sqrt(n)) if n > 1 else 0.0


@torch.no_grad()
def importance_sample(model, batches, K: int, device: torch.device, max_batch: int, curve_images: np.ndarray | None = None) -> dict:
    """Per-image log p(x) estimates, ELBO terms, ESS, latent moments, and the raw log-weights of the images that
    `curve_images` (a boolean mask over the test images) selects."""
    log_px, elbo, recon, ess, mean_z, var_z, curve = [], [], [], [], [], [], []
    seen = 0
    moment_points = None  # images whose latent moments are kept: all that fit the budget
    for x in batches.epoch(0):
        x = x.to(device)
        b = x.shape[0]
        chunk = max(1, min(K, max_batch // b))
        acc = LogMeanExp(b)
        sums = {"elbo": torch.zeros(b, dtype=torch.float64), "recon": torch.zeros(b, dtype=torch.float64)}
        z_sum = z_sq = None
        raw = []
        if moment_points is None:
            moment_points = max(1, LATENT_MOMENT_BUDGET // max(1, model.latent_dim))
        keep = max(0, min(b, moment_points - seen))
        done = 0
        while done < K:
            s = min(chunk, K - done)
            out = model(x, n_samples=s)
            lw = log_weights(out).double().cpu()
            acc.add(lw)
            sums["elbo"] += lw.sum(0)
            sums["recon"] += (-out.log_px_z).double().cpu().sum(0)
            if keep:
                z = out.z[:, :keep].flatten(2).double().cpu()
                z_sum = z.sum(0) if z_sum is None else z_sum + z.sum(0)
                z_sq = (z**2).sum(0) if z_sq is None else z_sq + (z**2).sum(0)
            selected = None if curve_images is None else torch.from_numpy(curve_images[seen : seen + b])
            if selected is not None and bool(selected.any()):
                raw.append(lw[:, selected])
            done += s
        log_px.append(acc.log_mean())
        elbo.append(sums["elbo"] / K)
        recon.append(sums["recon"] / K)
        ess.append(acc.ess() / K)
        if keep:
            m = z_sum / K
            mean_z.append(m)
            var_z.append((z_sq - K * m**2) / max(K - 1, 1))
        if raw:
            curve.append(torch.cat(raw, 0))
        seen += b
    result = {
        "log_px": torch.cat(log_px),
        "elbo": torch.cat(elbo),
        "recon": torch.cat(recon),
        "ess_fraction": torch.cat(ess),
        "mean_z": torch.cat(mean_z),
        "var_z": torch.cat(var_z),
    }
    result["curve_log_w"] = torch.cat(curve, 1) if curve else torch.zeros(K, 0, dtype=torch.float64)
    return result


def curve_points(curve_K, K: int) -> list[int]:
    """The sample counts of the IS-vs-K curve: the profile's curve_K up to K, and K itself (the estimate the tables
    print), so that the curve shows whether it had flattened where the tables read it."""
    return sorted({int(k) for k in curve_K if 0 < int(k) < K} | {K})


def is_curve(log_w: torch.Tensor, ks: list[int]) -> list[dict]:
    """-log p(x) estimated with k samples, for each k, from log-weights (K, n).

    Each k's estimate averages over the floor(K/k) disjoint blocks of k samples and over the
    images, so that the curve shows the expected bound at each k rather than one noisy draw.
    """
    points = []
    total = log_w.shape[0]
    for k in sorted(set(int(k) for k in ks if 0 < k <= total)):
        blocks = log_w[: (total // k) * k].reshape(total // k, k, -1)
        est = torch.logsumexp(blocks, 1) - math.log(k)
        points.append({"K": k, "neg_log_px": float(-est.mean())})
    return points


@torch.no_grad()
def manifold(model, n: int = 15, device="cpu") -> dict:
    """The learnt 2-D data manifold: decoded means over an n x n grid of latents at the standard normal's
    quantiles (i + 0.5) / n, as in Kingma & Welling (2014), Fig. 4; manifold[i, j] decodes z = (q[j], q[i])."""
    q = torch.distributions.Normal(0.0, 1.0).icdf((torch.arange(n, dtype=torch.float64) + 0.5) / n).float().to(device)
    z1, z2 = torch.meshgrid(q, q, indexing="xy")
    images = model.decode_mean(torch.stack([z1, z2], -1).reshape(n * n, 2))
    return {"manifold": images.reshape(n, n, *images.shape[1:]).cpu().numpy(), "manifold_quantiles": q.cpu().numpy()}


@torch.no_grad()
def figure_arrays(model, x: torch.Tensor, seed: int, n_prior: int = 64, n_interp: int = 4, steps: int = 8) -> dict:
    """Small arrays for the figures: reconstructions, prior samples, interpolations, 2-D densities."""
    device = x.device
    torch.manual_seed(seed)
    arrays = {
        "originals": x.cpu().numpy(),
        "reconstructions": model.reconstruct(x).cpu().numpy(),
        "prior_samples": model.sample(n_prior).cpu().numpy(),
    }
    n = min(n_interp, x.shape[0] // 2) if model.latent_dim else 0  # an autoregressive model has no latent to interpolate
    if n:
        za, zb = model.encode_mean(x[:n]), model.encode_mean(x[n : 2 * n])
        t = torch.linspace(0, 1, steps, device=device).view(1, steps, 1)
        z = (1 - t) * za[:, None] + t * zb[:, None]
        images = model.decode_mean(z.reshape(n * steps, -1))
        arrays["interpolations"] = images.reshape(n, steps, *images.shape[1:]).cpu().numpy()
    if model.latent_dim == 2:
        arrays.update(manifold(model, device=device))
    if model.latent_dim == 2 and model.has_posterior_density:
        g = torch.linspace(-4, 4, 101, device=device)
        gx, gy = torch.meshgrid(g, g, indexing="xy")
        grid = torch.stack([gx, gy], -1).reshape(-1, 1, 2)
        points = x[: min(4, x.shape[0])]
        logq = [model.log_q(grid, points[i : i + 1]).reshape(101, 101) for i in range(points.shape[0])]
        arrays["grid_x"] = g.cpu().numpy()
        arrays["grid_y"] = g.cpu().numpy()
        arrays["posterior_logq"] = torch.stack(logq).cpu().numpy()
        arrays["prior_logp"] = (-0.5 * (grid.pow(2).sum(-1) + 2 * math.log(2 * math.pi))).reshape(101, 101).cpu().numpy()
        # Each posterior again on a 101 x 101 grid of its own, over the square holding 99.9% of its mass on the grid
        # above (whose 0.08 steps draw a posterior of sd 0.05 as a dot), and the encoder's (base) means: the figure
        # zooms to each posterior. No random draws: the same bytes for the same model.
        from flowvae.report.figure_scales import mass_box

        coarse = g.cpu().numpy().astype(np.float64)
        local_x, local_y, local_logq = [], [], []
        for i, lq in enumerate(logq):
            lq = lq.cpu().numpy().astype(np.float64)
            x0, x1, y0, y1 = mass_box(coarse, coarse, np.exp(lq - lq.max()), mass=0.999, margin=0.25)
            lx, ly = torch.linspace(x0, x1, 101, device=device), torch.linspace(y0, y1, 101, device=device)
            lgx, lgy = torch.meshgrid(lx, ly, indexing="xy")
            local_logq.append(model.log_q(torch.stack([lgx, lgy], -1).reshape(-1, 1, 2), points[i : i + 1]).reshape(101, 101))
            local_x.append(lx)
            local_y.append(ly)
        arrays["posterior_x"] = torch.stack(local_x).cpu().numpy()
        arrays["posterior_y"] = torch.stack(local_y).cpu().numpy()
        arrays["posterior_logq_local"] = torch.stack(local_logq).cpu().numpy()
        arrays["posterior_mu"] = model.base_mean(points).cpu().numpy()
    return {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}


LATE_FRACTION = 0.2  # the last fifth of the epochs


SUBSET_SEED = 50_000  # the same images for every run of a data set, so that their curves compare


def seeded_subset(n_images: int, count: int) -> np.ndarray:
    """A seeded random sample of `count` test images, as a boolean mask in test order: test files may be sorted by digit."""
    mask = np.zeros(n_images, dtype=bool)
    mask[np.random.default_rng(SUBSET_SEED).choice(n_images, size=min(count, n_images), replace=False)] = True
    return mask


def late_improvement(history: list[dict]) -> float | None:
    """The best validation -ELBO before the last 20% of the epochs minus the best over all of them (None under 5 epochs)."""
    values = [float(h["val_neg_elbo"]) for h in history]
    if len(values) < 5:
        return None
    cut = len(values) - max(1, round(LATE_FRACTION * len(values)))
    return min(values[:cut]) - min(values)


def check_recorded(spec: RunSpec, folder: RunFolder) -> dict:
    """Refuse a run whose files disagree with each other or with params.yaml.

    SettingsChanged when the model was trained with other settings than params.yaml gives it now, or
    holds weights from beyond its recorded budget; CorruptFileError when settings.json is not the
    record the model file carries.
    """
    command = f"flowvae train --profile {spec.profile} --dataset {spec.dataset_name} --model {spec.variant.name} --seed {spec.seed}"
    rebuild = f"retrain it: `{command} --on-change restart`"
    recorded = read_metadata(folder.model, "a trained flowvae model", rebuild)
    changes = diff_settings(recorded.get("settings"), spec.record())
    if changes:
        raise SettingsChanged(
            f"{folder.model} was trained with other settings than params.yaml gives this run now: "
            f"{describe_diff(changes)}. Its numbers would not match params.yaml; {rebuild} (Snakemake and DVC rerun it)"
        )
    if int(recorded.get("best_epoch", 0)) > spec.train.epochs:
        raise SettingsChanged(
            f"{folder.model} holds the weights of epoch {recorded['best_epoch']}, beyond the {spec.train.epochs} epochs "
            f"its settings record; delete {folder.root} and {rebuild}"
        )
    remake = f"delete it and rerun `{command}` (Snakemake reruns it), which writes it again"
    written = read_json_object(folder.settings, remake)
    if written != recorded:
        raise CorruptFileError(
            f"{folder.settings} does not hold the settings record that {folder.model} carries "
            f"({describe_diff(diff_settings(recorded, written))}); {remake}"
        )
    return recorded


def evaluation_identity(spec: RunSpec, source: SourceState, recorded: dict, device: torch.device) -> dict:
    """The fields that open every eval.json: which run, from which code, trained by which code, on which device."""
    return {
        "profile": spec.profile,
        "dataset": spec.dataset_name,
        "data_source": spec.dataset.name,
        "model": spec.variant.name,
        "seed": spec.seed,
        "code_version": spec.code_version,
        **provenance.record(source),
        "train_commit": recorded.get("commit"),
        "train_source_diff_sha256": recorded.get("source_diff_sha256"),
        "device": device.type,
    }


def evaluate(
    spec: RunSpec, run_dir: str | Path, threads: int | None = None, device: str | None = None,
    max_batch: int | None = None, source: SourceState | None = None,
) -> dict:
    """Evaluate a trained run on the test split; write eval.json, eval_timings.json and samples.npz; return the metrics.

    `source`: the state of the evaluating code (default: read from git; the CLI refuses a dirty one first).
    """
    folder = RunFolder(Path(run_dir))
    source = source if source is not None else source_state()
    if threads is not None:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    if not folder.model.exists():
        raise FileNotFoundError(f"{folder.model} is missing: train the run first (`flowvae train ...`)")
    recorded = check_recorded(spec, folder)
    model: LatentVariableModel = build_model(spec).to(dev)
    load_weights(model, folder.model)
    n_params = count_parameters(model)
    settings = spec.eval
    prepare_for_inference(model, compile_decoder=settings.compile, decoder_bf16=settings.decoder_bf16)
    K = 1 if model.exact_likelihood else spec.eval_K  # a flow's log p(x) needs no importance sampling
    test = batches_for(spec, "test", settings.batch_size, False, spec.seed + 30_000, dev)
    history = read_json_lines(folder.history, f"delete it and rerun the run's training (it resumes from its checkpoint and writes {folder.history.name} again)")
    torch.manual_seed(spec.seed + 40_000)
    d = int(np.prod(spec.image_shape))
    if max_batch is None:
        max_batch = settings.max_batch or (2_000 if has_convolutions(model) else 20_000)
    start = time.perf_counter()
    curve_images = seeded_subset(test.n_images, settings.is_curve_points)
    r = importance_sample(model, test, K, dev, max_batch, curve_images)
    seconds = time.perf_counter() - start
    neg_log_px = -r["log_px"]
    neg_elbo = -r["elbo"]
    metrics = {
        **evaluation_identity(spec, source, recorded, dev),
        "n_test": int(neg_log_px.numel()),
        "K": K,
        "estimator": "exact" if model.exact_likelihood else "importance sampling",
        "epochs": len(history),
        "best_epoch": int(max((h["epoch"] for h in history if h.get("best")), default=0)),
        "late_improvement": late_improvement(history),
        "n_params": n_params,
        "latent_dim": int(r["mean_z"].shape[1]),
        "neg_elbo": float(neg_elbo.mean()),
        "neg_elbo_se": standard_error(neg_elbo),
        "recon": float(r["recon"].mean()),
        "kl": float((neg_elbo - r["recon"]).mean()),
        "neg_log_px": float(neg_log_px.mean()),
        "neg_log_px_se": standard_error(neg_log_px),
        "gap": float((neg_elbo - neg_log_px).mean()),
        "active_units": None if model.exact_likelihood else active_units(r["mean_z"], r["var_z"], K),
        "ess_fraction": float(r["ess_fraction"].mean()),
        "bits_per_dim": None,
        "is_curve": is_curve(r["curve_log_w"], curve_points(settings.curve_K, K)),
        "is_curve_images": int(curve_images.sum()),
    }
    if get_likelihood(spec.likelihood).eight_bit:
        scale = d * math.log(2)
        metrics["bits_per_dim"] = {"neg_elbo": metrics["neg_elbo"] / scale, "neg_log_px": metrics["neg_log_px"] / scale}
    spread = np.flatnonzero(seeded_subset(test.n_images, 16))
    shown = Batches(test.x[spread].cpu().numpy(), len(spread), test.binarize, shuffle=False, seed=spec.seed, device=dev)
    arrays = figure_arrays(model, next(shown.epoch(0)), spec.seed, n_prior=settings.prior_samples)
    if source.dirty:
        write_text(folder.eval_source_diff, source.diff)
    else:
        folder.eval_source_diff.unlink(missing_ok=True)
    write_npz(folder.samples, arrays, compress=True)
    write_npz(folder.per_image, {"neg_log_px": neg_log_px.numpy(), "neg_elbo": neg_elbo.numpy()}, compress=True)
    write_json(folder.eval_timings, {"eval_seconds": seconds, "is_samples_per_s": neg_log_px.numel() * K / seconds})
    write_json(folder.metrics, headline_metrics(metrics))
    write_json(folder.eval, metrics)
    return metrics


# eval.json's numbers that metrics.json repeats (for `dvc metrics show` and `dvc metrics diff`), where a run has them
HEADLINE = ("neg_elbo", "neg_log_px", "neg_log_px_se", "gap", "active_units", "K")


def headline_metrics(metrics: dict) -> dict:
    """metrics.json: a few named numbers of an eval.json, bits_per_dim's -log p(x) as `bits_per_dim`."""
    numbers = {k: metrics[k] for k in HEADLINE if isinstance(metrics.get(k), (int, float))}
    if isinstance(metrics.get("bits_per_dim"), dict):
        numbers["bits_per_dim"] = metrics["bits_per_dim"]["neg_log_px"]
    return numbers
