"""Inference gaps (Cremer, Li & Duvenaud 2018): the ELBO of the amortized posterior q, of the best posterior q* of
the same family for each image, and log p(x) by AIS.

L[q*] per image: start from the encoder's output for the image, the base Gaussian's mean and log-std and the
context h that parametrises the family's flow (planar u, w, b; real-NVP and IAF context; Sylvester Q, R, b),
and maximise a Monte Carlo ELBO over these per-image parameters with Adam, the model's weights fixed.

Settings (GapSettings, also `flowvae gaps` options): Adam, lr 3e-3, 16 reparameterised samples per step; every
`check_every` = 50 steps the ELBO of every image is evaluated on one fixed set of `eval_samples` = 256 noise draws
per image (the same draws for L[q], every check and the final value); an image has converged when its best value
on that set has not risen by more than `tol` = 0.01 nats over `patience` = 4 checks (200 steps), and the
optimisation of a batch stops when all its images have converged, or after `max_steps` = 2000. L[q*] is the
best check's value (the start counts as a check), so L[q*] >= L[q] on the evaluation noise by construction.

approximation gap = log p(x) - L[q*];  amortization gap = L[q*] - L[q].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowvae.models.contract import LatentVariableModel

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class GapSettings:
    """The per-image optimisation of L[q*]."""

    max_steps: int = 2000
    lr: float = 3e-3
    samples: int = 16  # reparameterised samples per Adam step
    eval_samples: int = 256  # fixed noise draws per image for L[q], the checks and L[q*]
    check_every: int = 50
    patience: int = 4  # checks without a rise above tol: converged
    tol: float = 0.01  # nats
    eval_chunk: int = 64  # evaluation samples per decoder pass

    def __post_init__(self) -> None:
        for key in ("max_steps", "samples", "eval_samples", "check_every", "patience", "eval_chunk"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"gap setting {key} must be a positive integer, not {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"gap setting lr must be positive, not {self.lr!r}")
        if not self.tol >= 0:
            raise ValueError(f"gap setting tol must be >= 0, not {self.tol!r}")

    def record(self) -> dict:
        return asdict(self)


def _check_family(model: LatentVariableModel) -> None:
    from flowvae.models.vae import VAE

    if not isinstance(model, VAE):
        raise NotImplementedError(
            f"inference gaps need a VAE whose posterior is an encoder-parametrised Gaussian and flow; "
            f"{model.variant.name} ({model.variant.family} family) has none (the ladder's posterior is hierarchical, "
            "a pixel flow has no latent)"
        )


def elbo_samples(model: LatentVariableModel, x: Tensor, mu: Tensor, log_std: Tensor, h: Tensor, eps: Tensor) -> Tensor:
    """log p(x, z) - log q(z|x) (S, B) at z = q's sample for base noise eps (S, B, D), q given by (mu, log_std, h)."""
    z, log_q = model.posterior(eps, mu, log_std, h)
    S, B = eps.shape[:2]
    params = model.decoder(z.reshape(-1, model.latent_dim))
    log_px_z = model.likelihood.log_prob(params.reshape(S, B, *params.shape[1:]), x)
    log_pz = -0.5 * (z.pow(2).sum(-1) + model.latent_dim * _LOG_2PI)
    return log_px_z + log_pz - log_q


def _fixed_elbo(model, x, mu, log_std, h, noise: Tensor, chunk: int) -> Tensor:
    """The ELBO (B,) float64 averaged over fixed noise (K, B, D), in chunks."""
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for start in range(0, noise.shape[0], chunk):
            total += elbo_samples(model, x, mu, log_std, h, noise[start : start + chunk]).double().sum(0)
    return total / noise.shape[0]


def optimise_local(model: LatentVariableModel, x: Tensor, settings: GapSettings = GapSettings(),
                   generator: torch.Generator | None = None) -> dict:
    """L[q] and L[q*] (B,) float64 per image of x, and the step at which each converged (max_steps: did not).

    The model's weights stay as they are (their gradients are not taken).
    """
    _check_family(model)
    s = settings
    with torch.no_grad():
        mu0, log_std0, h0 = model.encoder(x)
    B, D = mu0.shape
    noise = torch.randn((s.eval_samples, B, D), generator=generator, dtype=mu0.dtype, device=mu0.device)
    params = [t.detach().clone().requires_grad_(True) for t in (mu0, log_std0, h0)]
    start = _fixed_elbo(model, x, *params, noise, s.eval_chunk)
    best = start.clone()
    best_params = [t.detach().clone() for t in params]
    last_rise = torch.zeros(B, dtype=torch.long, device=x.device)  # the check at which each image last rose by > tol
    reference = start.clone()  # the value that a rise is measured from
    converged_at = torch.full((B,), s.max_steps, dtype=torch.long)
    opt = torch.optim.Adam(params, lr=s.lr)
    check = 0
    for step in range(1, s.max_steps + 1):
        eps = torch.randn((s.samples, B, D), generator=generator, dtype=mu0.dtype, device=mu0.device)
        with torch.enable_grad():
            loss = -elbo_samples(model, x, *params, eps).mean(0).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        if step % s.check_every and step != s.max_steps:
            continue
        check += 1
        value = _fixed_elbo(model, x, *params, noise, s.eval_chunk)
        value = torch.nan_to_num(value, nan=-math.inf)
        better = value > best
        for kept, current in zip(best_params, params):
            kept[better] = current.detach()[better]
        best = torch.where(better, value, best)
        rose = best > reference + s.tol
        reference = torch.where(rose, best, reference)
        last_rise = torch.where(rose, torch.full_like(last_rise, check), last_rise)
        done = (check - last_rise) >= s.patience
        newly = done.cpu() & (converged_at == s.max_steps)
        converged_at[newly] = step
        if bool(done.all()):
            break
    return {"elbo_amortized": start.cpu(), "elbo_optimised": best.cpu(), "converged_step": converged_at,
            "best_params": best_params}


def inference_gaps(spec, run_dir, n_images: int, settings: GapSettings = GapSettings(), ais_settings=None,
                   batch_size: int = 25, device: str | None = None, threads: int | None = None, out: str | Path | None = None,
                   source=None) -> dict:
    """Per-image L[q], L[q*] and AIS log p(x) on a seeded random subset of n_images test images of a trained run.

    Writes `out` (default: the run folder's gaps.json) and the .npz beside it (index, elbo_amortized,
    elbo_optimised, ais_log_px, converged_step; float64 nats); returns the JSON's dict: the mean amortization and
    approximation gaps with standard errors, and every setting used.
    """
    from flowvae.files.atomic import write_json, write_npz
    from flowvae.runs.ais import _se, ais_settings_record, load_trained, model_ais, resolve_initial, test_images
    from flowvae.runs.device import pick_device

    if n_images < 1:
        raise ValueError(f"--images must be a positive number of test images, not {n_images!r}")
    if threads is not None:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    a = ais_settings or spec.eval.ais
    model = load_trained(spec, run_dir, dev)
    _check_family(model)
    initial = resolve_initial(model, a.initial)
    index, x, n_test = test_images(spec, dev, n_images)
    generator = torch.Generator(device=dev).manual_seed(spec.seed + 70_000)
    parts = {"elbo_amortized": [], "elbo_optimised": [], "converged_step": []}
    for start in range(0, x.shape[0], batch_size):
        r = optimise_local(model, x[start : start + batch_size], settings, generator)
        for key in parts:
            parts[key].append(r[key])
    arrays = {key: torch.cat(v) for key, v in parts.items()}
    ais = model_ais(model, x, a.T, a.L, a.S, a.schedule, a.sigmoid_radius, initial, a.step_size, a.target_accept,
                    a.batch_size, generator)
    log_px = ais["log_px"].double()
    amortization = arrays["elbo_optimised"] - arrays["elbo_amortized"]
    approximation = log_px - arrays["elbo_optimised"]
    from flowvae.files import provenance
    from flowvae.files.provenance import source_state

    result = {
        "profile": spec.profile, "dataset": spec.dataset_name, "model": spec.variant.name, "seed": spec.seed,
        "code_version": spec.code_version, **provenance.record(source if source is not None else source_state()),
        "n_images": int(len(index)), "n_test": int(n_test),
        "elbo_amortized": float(arrays["elbo_amortized"].mean()), "elbo_optimised": float(arrays["elbo_optimised"].mean()),
        "ais_log_px": float(log_px.mean()),
        "amortization_gap": float(amortization.mean()), "amortization_gap_se": _se(amortization),
        "approximation_gap": float(approximation.mean()), "approximation_gap_se": _se(approximation),
        "images_not_converged": int((arrays["converged_step"] >= settings.max_steps).sum()),
        "optimisation": {**settings.record(), "optimiser": "adam", "parameters": "encoder outputs: mu, log_std, flow context h"},
        "ais": ais_settings_record(a, initial),
    }
    out = Path(out) if out else Path(run_dir) / "gaps.json"
    write_npz(out.with_suffix(".npz"), {
        "index": index.astype(np.int64), "elbo_amortized": arrays["elbo_amortized"].numpy(),
        "elbo_optimised": arrays["elbo_optimised"].numpy(), "ais_log_px": log_px.numpy(),
        "converged_step": arrays["converged_step"].numpy().astype(np.int64),
    }, compress=True)
    write_json(out, result)
    return result
