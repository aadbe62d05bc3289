"""log p(x) of a GAN, or of a VAE's decoder, by annealed importance sampling under a Gaussian observation model (Wu et al. 2017, "On the
quantitative analysis of decoder-based generative models").

Model: p(x) = ∫ N(x; G(z), σ² I) N(z; 0, I) dz for images x in [0, 1]^D, G(z) the generator's image in [0, 1]^D and one
standard deviation σ (in [0, 1] units) for all pixels. Any decoder mean works the same way (`mean`: latents (N, latent_dim)
-> images (N, C, H, W)): evaluate_gan evaluates a GAN's generator (its eval.json), evaluate_decoder a VAE's decode_mean
under the same model for comparison (gaussian_obs.json and gaussian_obs.npz beside its eval.json, `flowvae gaussian-obs`).

Data: 8-bit images k (given as k / 255, as the data pipeline gives them) are dequantized once, x = (k + u) / 256 with
u ~ U[0, 1)^D seeded, as Wu et al.'s code (experiments/run.py) adds U[0, 1) / 256 to MNIST. The Gaussian's mass outside
[0, 1]^D is not renormalised, as there.

Scale: -log p is reported in nats per image on the 8-bit scale, the density of k + u on [0, 256)^D:
log p_[0,256)(k + u) = log p_[0,1](x) - D log 256, and bits/dim = -log p_[0,256)(k + u) / (D ln 2). E_u log p(k + u) is a
lower bound of the log-probability of the 8-bit image k, which is what the pixel real NVP reports (models/pixelflow.py),
so the numbers compare with the discretized likelihoods. Wu et al.'s tables give log p_[0,1](x) (eval.json's
neg_log_px_unit_scale).

σ: chosen from a grid on a seeded subset of validation images by cheap AIS (fewer temperatures; the same dequantization
and random numbers for every σ): the σ with the highest mean log p. Wu et al. fit the observation variance on
validation data; their code's `sigma` is the variance (0.025 for the 10-d GAN, 0.01 for the 50-d one: σ ≈ 0.16, 0.10).
A cheap AIS underestimates log p most for small σ (the narrowest posteriors), so the grid leans to larger σ, if at all.

AIS (runs/ais.py): from the prior, as Wu et al. anneal, with the profile's settings (eval.ais: T, L, S, images,
batch_size, ...; its `initial` is not used) on the seeded test subset that `flowvae evaluate --estimator ais` uses.
The generator runs in eval mode (batch norm with its running statistics), its parameters frozen.

eval.json (nats per image on the 8-bit scale unless said otherwise):
  profile, dataset, data_source, model, seed, code_version, commit, source_diff_sha256, versions, train_commit,
  train_source_diff_sha256, device                 as evaluate.py's eval.json
  estimator                                       "ais_gaussian_observation"
  observation_model                               the model and scale in words
  neg_log_px, neg_log_px_se                       mean and standard error over the test images of -log p(k + u)
  neg_log_px_unit_scale                           the same mean of -log p_[0,1](x) (Wu et al.'s scale)
  bits_per_dim                                    {neg_log_px}
  sigma, sigma_grid                               the chosen σ, and [{sigma, neg_log_px_valid}] of the grid
  sigma_selection                                 split, n_images and the AIS settings of the grid
  ais                                             the AIS settings of the test evaluation (runs/ais.py's record)
  accept_rate, gradient_evaluations_per_chain     of the test evaluation
  n_images, n_test                                test images evaluated, images in the test split
  n_params, n_params_of                           trainable parameters of the generator only ("generator")
  latent_dim, epochs                              epochs: lines of train.jsonl
No wall-clock field: eval_timings.json. per_image.npz: index (positions in the test split) and gaussian_obs_neg_log_px
(float64) of the evaluated images: not named neg_log_px, so that no table pairs it with another model's log-likelihood
on other images and another observation model. samples.npz: prior_samples (eval.prior_samples generated images, 64 by
default) and originals (16 test images), float32.

gaussian_obs.json of a VAE: the same identity and fields from `estimator` to `gradient_evaluations_per_chain`, with
mean_of (which mean image) and seconds (eval_timings.json's fields); gaussian_obs.npz as the GAN's per_image.npz.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from flowvae.runs.ais import AISTarget, forward_ais
from flowvae.spec.metrics import GAUSSIAN_OBS_ESTIMATOR
from flowvae.spec.settings import AISSettings

ESTIMATOR = GAUSSIAN_OBS_ESTIMATOR
SIGMA_GRID = (0.01, 0.02, 0.05, 0.07, 0.1, 0.15, 0.2)  # σ in [0, 1] units; 0.07, 0.1, 0.15: near Wu et al.'s choices
GRID_IMAGES = 100  # validation images of the σ grid
GRID_T_DIVISOR = 5  # the grid's AIS runs T // 5 temperatures (at least 1)
SIGMA_SEED, AIS_SEED, FIGURE_SEED = 70_000, 60_000, 40_000  # added to the run's seed
LOG_256 = math.log(256.0)
_LOG_2PI = math.log(2.0 * math.pi)

MeanFn = Callable[[Tensor], Tensor]


class GaussianObservationTarget(AISTarget):
    """p(z) = N(0, I), p(x|z) = N(x; mean(z), σ² I) for B images x (B, C, H, W); the initial distribution is the prior.

    Each evaluation passes all S * B latents through `mean` at once.
    """

    initial_is_prior = True

    def __init__(self, mean: MeanFn, x: Tensor, latent_dim: int, sigma: float) -> None:
        if not sigma > 0:
            raise ValueError(f"the observation standard deviation must be positive, not {sigma!r}")
        self.mean, self.x, self.sigma = mean, x, float(sigma)
        self.n_images, self.dim = x.shape[0], int(latent_dim)
        self.log_norm = -x[0].numel() * (math.log(self.sigma) + 0.5 * _LOG_2PI)

    def log_prior(self, z: Tensor) -> Tensor:
        return -0.5 * (z.pow(2).sum(-1) + self.dim * _LOG_2PI)

    def log_likelihood(self, z: Tensor) -> Tensor:
        S = z.shape[0]
        mu = self.mean(z.reshape(S * self.n_images, self.dim)).reshape(S, *self.x.shape)
        return self.log_norm - 0.5 * (self.x - mu).pow(2).flatten(2).sum(-1) / self.sigma**2

    def sample_initial(self, n_chains: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn((n_chains, self.n_images, self.dim), generator=generator, dtype=self.x.dtype, device=self.x.device)

    def log_initial(self, z: Tensor) -> Tensor:
        return self.log_prior(z)


@dataclass
class GaussianLogPx:
    """AIS under the Gaussian observation model: log_px_unit (N,) float64, log p_[0,1](x) of the dequantized images x;
    accept_rate and final step_size per image; likelihood-gradient evaluations per chain."""

    log_px_unit: Tensor
    x: Tensor
    accept_rate: Tensor
    step_size: Tensor
    gradient_evaluations: int

    @property
    def log_px(self) -> Tensor:
        """log p of k + u on [0, 256)^D, the 8-bit scale (nats per image)."""
        return self.log_px_unit - self.x[0].numel() * LOG_256


def dequantize(images01_8bit: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """x = (k + u) / 256, u ~ U[0, 1) per pixel, for 8-bit images k given as k / 255; ValueError for other values."""
    scaled = images01_8bit.double() * 255.0
    k = torch.round(scaled)
    if images01_8bit.numel() and ((scaled - k).abs().max() > 1e-3 or k.min() < 0 or k.max() > 255):
        raise ValueError("dequantization needs 8-bit images k / 255 with integers k in [0, 255]")
    device = generator.device if generator is not None else k.device
    u = torch.rand(k.shape, generator=generator, dtype=torch.float64, device=device).to(k.device)
    return ((k + u) / 256.0).to(images01_8bit.dtype)


def ais_log_px(mean: MeanFn, latent_dim: int, x: Tensor, sigma: float, settings: AISSettings,
               generator: torch.Generator | None = None) -> GaussianLogPx:
    """Forward AIS of log p_[0,1](x) for continuous images x (N, C, H, W), settings.batch_size images at a time."""
    s = settings
    log_px, accept, steps = [], [], []
    evaluations = 0
    for start in range(0, x.shape[0], s.batch_size):
        target = GaussianObservationTarget(mean, x[start : start + s.batch_size], latent_dim, sigma)
        r = forward_ais(target, s.T, s.L, s.S, s.schedule, s.sigmoid_radius, s.step_size, s.target_accept, generator)
        log_px.append(r.log_px)
        accept.append(r.accept_rate)
        steps.append(r.step_size)
        evaluations = r.gradient_evaluations
    return GaussianLogPx(torch.cat(log_px), x, torch.cat(accept), torch.cat(steps), evaluations)


def gaussian_observation_log_px(mean: MeanFn, latent_dim: int, images01_8bit: Tensor, sigma: float, settings: AISSettings,
                                generator: torch.Generator | None = None) -> GaussianLogPx:
    """Dequantize 8-bit images (k / 255) with `generator`, then AIS; result.log_px: per-image log p on the 8-bit scale."""
    return ais_log_px(mean, latent_dim, dequantize(images01_8bit, generator), sigma, settings, generator)


def select_sigma(mean: MeanFn, latent_dim: int, images01_8bit: Tensor, grid: Sequence[float], settings: AISSettings,
                 generator: torch.Generator) -> tuple[float, list[dict]]:
    """The σ of `grid` with the highest mean AIS log p over the images, and the rows [{sigma, neg_log_px_valid}]
    (nats, 8-bit scale). One dequantization, and the same random numbers for every σ."""
    if not grid or not all(sigma > 0 for sigma in grid):
        raise ValueError(f"the σ grid must list positive standard deviations, not {list(grid)!r}")
    x = dequantize(images01_8bit, generator)
    state = generator.get_state()
    rows = []
    for sigma in grid:
        generator.set_state(state)
        r = ais_log_px(mean, latent_dim, x, float(sigma), settings, generator)
        rows.append({"sigma": float(sigma), "neg_log_px_valid": float(-r.log_px.mean())})
    best = min(rows, key=lambda row: row["neg_log_px_valid"])
    return best["sigma"], rows


def seeded_images(spec, split: str, count: int, device: torch.device) -> tuple[np.ndarray, Tensor, int]:
    """(indices, images k / 255, images in the split): the seeded subset of `count` images (0: all) of a split, by
    evaluate.seeded_subset; on the test split the images that ais.test_images picks."""
    from flowvae.data.batches import split_images
    from flowvae.runs.evaluate import seeded_subset

    x = split_images(spec, split)
    index = np.flatnonzero(seeded_subset(len(x), count if count > 0 else len(x)))
    return index, torch.from_numpy(x[index]).to(device).float() / 255.0, len(x)


def frozen_generator(generator: nn.Module) -> nn.Module:
    """The generator in eval mode (batch norm with its running statistics), parameters without gradients."""
    generator.eval()
    for p in generator.parameters():
        p.requires_grad_(False)
    return generator


@dataclass
class GaussianObservationRecord:
    """The Gaussian-observation evaluation of a decoder mean: eval.json's fields from `estimator` on, the evaluated
    test images' indices and float64 -log p on the 8-bit scale, and the wall-clock seconds of σ's choice and the AIS."""

    fields: dict
    index: np.ndarray
    neg_log_px: Tensor
    timings: dict


def evaluate_mean(spec, mean: MeanFn, latent_dim: int, dev: torch.device, max_batch: int | None = None,
                  sigma_grid: Sequence[float] = SIGMA_GRID, grid_T: int | None = None,
                  grid_images: int = GRID_IMAGES) -> GaussianObservationRecord:
    """σ on validation images, then AIS of log p on the seeded test subset, for any decoder mean of a run.

    max_batch: latents per decoder pass (S chains times the images of an AIS batch; default: eval.ais's batch_size
    images). grid_T: temperatures of the σ grid's AIS (default ais.T // 5).
    """
    from flowvae.runs.ais import ais_settings_record
    from flowvae.runs.evaluate import standard_error

    s = spec.eval.ais
    if max_batch:
        s = dataclasses.replace(s, batch_size=max(1, min(s.batch_size, max_batch // s.S)))
    grid_settings = dataclasses.replace(s, T=grid_T or max(1, s.T // GRID_T_DIVISOR), images=grid_images)
    _, valid, _ = seeded_images(spec, "valid", grid_images, dev)
    index, test, n_test = seeded_images(spec, "test", s.images, dev)

    start = time.perf_counter()
    sigma, rows = select_sigma(mean, latent_dim, valid, sigma_grid, grid_settings,
                               torch.Generator(device=dev).manual_seed(spec.seed + SIGMA_SEED))
    selected = time.perf_counter()
    r = gaussian_observation_log_px(mean, latent_dim, test, sigma, s, torch.Generator(device=dev).manual_seed(spec.seed + AIS_SEED))
    end = time.perf_counter()

    neg = (-r.log_px).double().cpu()
    d = math.prod(spec.image_shape)
    fields = {
        "estimator": ESTIMATOR,
        "observation_model": "x = (k + u) / 256, u ~ U[0, 1); p(x) = ∫ N(x; G(z), sigma^2 I) N(z; 0, I) dz; "
                             "-log p of k + u on [0, 256)^D in nats per image (-log p(x) + D log 256)",
        "n_images": int(neg.numel()),
        "n_test": int(n_test),
        "neg_log_px": float(neg.mean()),
        "neg_log_px_se": standard_error(neg),
        "neg_log_px_unit_scale": float(neg.mean()) - d * LOG_256,
        "bits_per_dim": {"neg_log_px": float(neg.mean()) / (d * math.log(2.0))},
        "sigma": sigma,
        "sigma_grid": rows,
        "sigma_selection": {"split": "valid", "n_images": int(valid.shape[0]),
                            "ais": ais_settings_record(grid_settings, "prior")},
        "ais": ais_settings_record(s, "prior"),
        "accept_rate": float(r.accept_rate.mean()),
        "gradient_evaluations_per_chain": int(r.gradient_evaluations),
    }
    evaluations = neg.numel() * s.S * r.gradient_evaluations
    timings = {"eval_seconds": end - start, "sigma_selection_seconds": selected - start, "ais_seconds": end - selected,
               "ais_gradient_evaluations_per_s": evaluations / (end - selected)}
    return GaussianObservationRecord(fields, index.astype(np.int64), neg, timings)


def _eight_bit(spec) -> None:
    from flowvae.models.likelihoods import get_likelihood

    if not get_likelihood(spec.likelihood).eight_bit:
        raise ValueError(f"{spec.dataset_name} is not an 8-bit data set (likelihood {spec.likelihood}): the Gaussian "
                         "observation model is defined on dequantized 8-bit images")


def evaluate_gan(spec, run_dir: str | Path, threads: int | None = None, device: str | None = None,
                 max_batch: int | None = None, source=None, sigma_grid: Sequence[float] = SIGMA_GRID,
                 grid_T: int | None = None, grid_images: int = GRID_IMAGES) -> dict:
    """Evaluate a trained GAN run (evaluate_mean of its generator); write eval.json, eval_timings.json, per_image.npz
    and samples.npz; return eval.json's dict. `source`: as for evaluate.evaluate."""
    from flowvae.files.atomic import write_json, write_npz, write_text
    from flowvae.files.jsonfiles import read_json_lines
    from flowvae.files.provenance import source_state
    from flowvae.models.build import build_model, count_parameters
    from flowvae.runs.checkpoint import load_weights
    from flowvae.runs.device import pick_device
    from flowvae.runs.evaluate import check_recorded, evaluation_identity, headline_metrics
    from flowvae.spec.layout import RunFolder

    folder = RunFolder(Path(run_dir))
    source = source if source is not None else source_state()
    if threads is not None:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    _eight_bit(spec)
    if not folder.model.exists():
        raise FileNotFoundError(f"{folder.model} is missing: train the run first (`flowvae train ...`)")
    recorded = check_recorded(spec, folder)
    gan = build_model(spec).to(dev)
    load_weights(gan, folder.model)
    n_params = count_parameters(gan.generator)
    generator = frozen_generator(gan.generator)
    history = read_json_lines(folder.history, "delete the run folder and train the run again")
    r = evaluate_mean(spec, generator.mean_image, gan.latent_dim, dev, max_batch, sigma_grid, grid_T, grid_images)
    metrics = {
        **evaluation_identity(spec, source, recorded, dev),
        **r.fields,
        "n_params": n_params,
        "n_params_of": "generator",
        "latent_dim": int(gan.latent_dim),
        "epochs": len(history),
    }
    shown = seeded_images(spec, "test", 16, dev)[1]
    arrays = {"prior_samples": gan.sample(spec.eval.prior_samples, torch.Generator().manual_seed(spec.seed + FIGURE_SEED)).cpu().numpy(),
              "originals": shown.cpu().numpy()}
    if source.dirty:
        write_text(folder.eval_source_diff, source.diff)
    else:
        folder.eval_source_diff.unlink(missing_ok=True)
    write_npz(folder.samples, {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}, compress=True)
    write_npz(folder.per_image, {"index": r.index, "gaussian_obs_neg_log_px": r.neg_log_px.numpy()}, compress=True)
    write_json(folder.eval_timings, r.timings)
    write_json(folder.metrics, headline_metrics(metrics))
    write_json(folder.eval, metrics)
    return metrics


def evaluate_decoder(spec, run_dir: str | Path, threads: int | None = None, device: str | None = None,
                     max_batch: int | None = None, source=None, sigma_grid: Sequence[float] = SIGMA_GRID,
                     grid_T: int | None = None, grid_images: int = GRID_IMAGES) -> dict:
    """The GAN's evaluation applied to a trained VAE's decoder mean (its likelihood's mean image), for comparison with the
    GAN on one scale: writes gaussian_obs.json (eval.json's identity and the fields of evaluate_mean, with seconds) and
    gaussian_obs.npz (index, gaussian_obs_neg_log_px) into the run folder; returns the json's dict.

    Only the latent-variable VAEs with one latent vector (the posterior families built by models/vae.py) qualify; the
    ResNet VAE's latents are several stacked maps, a density model has no decoder and the GAN's own evaluation is this one.
    """
    from flowvae.files.atomic import write_json, write_npz
    from flowvae.files.provenance import source_state
    from flowvae.runs.ais import load_trained
    from flowvae.runs.device import pick_device
    from flowvae.runs.evaluate import check_recorded, evaluation_identity
    from flowvae.spec.families import FLOW_VAE
    from flowvae.spec.layout import GAUSSIAN_OBS_FILE, GAUSSIAN_OBS_PER_IMAGE_FILE, RunFolder

    if spec.family.builder != FLOW_VAE:
        raise ValueError(f"{spec.variant.name}: the Gaussian-observation evaluation of a decoder needs a VAE with one latent "
                         f"vector (families built by {FLOW_VAE}); the {spec.family.name} family is not one")
    _eight_bit(spec)
    source = source if source is not None else source_state()
    if threads is not None:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    model = load_trained(spec, run_dir, dev)
    recorded = check_recorded(spec, RunFolder(Path(run_dir)))
    r = evaluate_mean(spec, model.decode_mean, model.latent_dim, dev, max_batch, sigma_grid, grid_T, grid_images)
    result = {**evaluation_identity(spec, source, recorded, dev), **r.fields,
              "mean_of": f"the decoder's {spec.likelihood} mean image", "seconds": r.timings}
    write_npz(Path(run_dir) / GAUSSIAN_OBS_PER_IMAGE_FILE,
              {"index": r.index, "gaussian_obs_neg_log_px": r.neg_log_px.numpy()}, compress=True)
    write_json(Path(run_dir) / GAUSSIAN_OBS_FILE, result)
    return result
