"""Annealed importance sampling (AIS) of log p(x), and bidirectional Monte Carlo (BDMC) to check it.

The core works against a small interface, `AISTarget`: for B images at once, log p(z), log p(x_b|z), and an
initial distribution q_b(z) to sample from and evaluate. `ModelTarget` adapts a trained
LatentVariableModel; tests use analytic toy targets.

Path: the geometric path f_t(z) = q(z)^(1-beta_t) [p(z) p(x|z)]^beta_t, beta_0 = 0 < ... < beta_T = 1, from
the normalised initial distribution q (the encoder's Gaussian, or the prior) to the unnormalised posterior,
whose normaliser is p(x).

Schedule (`schedule`): "sigmoid", as Wu et al. 2017 ("On the quantitative analysis of decoder-based generative
models", and Grosse's BDMC code): beta_t = (s(t) - s(0)) / (s(T) - s(0)), s(t) = sigmoid(r (2t/T - 1)) with
r = 4. It takes small steps at both ends: near beta = 0, where a small beta already multiplies a log-likelihood
of hundreds of nats, and near beta = 1, where the posterior is narrowest; "linear" for comparison.

Chain: z_0 ~ q; for t = 1..T: log w += (beta_t - beta_{t-1}) (log p(z) + log p(x|z) - log q(z)) at the
current z (in float64), then, for t < T, one HMC transition leaving f_t invariant: momentum ~ N(0, I),
L leapfrog steps of a size drawn per chain and transition uniformly from eps_b [0.5, 1.5] (eps_b one per image,
shared by its S chains; the random size avoids trajectories that return near where they started, Neal 2011,
"MCMC using Hamiltonian dynamics", 5.4.2.2), Metropolis accept/reject. After each
transition log eps_b moves by 0.5 (a_b - target_accept), a_b the acceptance rate of the image's S chains in that
transition, towards `target_accept` (default 0.65, near the optimal rate of HMC: Beskos et al. 2013, Neal 2011),
eps_b clipped to [1e-4, 2]; 10 transitions at beta_0 before the path tune eps_b from its start value (they leave
the exact samples of q exact). Wu et al.'s code adapts by factors 1.02 / 0.98 per transition, which takes
over a hundred transitions to change eps ten-fold: too slow for schedules of a few hundred temperatures. The estimate of each image is
log (1/S sum_s w_s): a stochastic lower bound of log p(x) (E[w] = p(x), Jensen). Each transition costs L
evaluations of log p(x|z) and its gradient per chain (the gradient at the start is kept from the previous
transition's end, its components stored separately so that any beta can use it).

The step-size adaptation uses acceptance rates of earlier transitions only, so each transition still leaves
f_t invariant; the estimator is then unbiased up to the dependence of later kernels on earlier states,
which is how Wu et al. run it and negligible in practice (the tests check against exact values).

Reverse AIS runs the same chain from beta = 1 down to 0, started at an exact posterior sample; its weights
estimate 1 / p(x), so -log (1/S sum_s w_s) is a stochastic upper bound. BDMC (Grosse et al. 2015) simulates
(z, x) from the model, where z is an exact posterior sample of x, and brackets log p(x) by the two: their
gap bounds the error of forward AIS with the same settings on data like the simulated data.

Latents have shape (S, B, D): S chains of each of B images; the hierarchical latents of the ladder VAE are
its rungs' maps flattened and concatenated (LadderVAE.split_latents).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from flowvae.models.contract import LatentVariableModel
from flowvae.models.likelihoods import Likelihood

STEP_MIN, STEP_MAX = 1e-4, 2.0
ADAPT_GAIN = 0.5  # log eps_b += gain * (acceptance rate of image b's chains - target) after every transition
WARMUP = 10  # transitions at the initial distribution that only tune the step size
STEP_JITTER = 0.5  # each chain's step size is drawn uniformly from eps_b * [1 - jitter, 1 + jitter] per transition
_LOG_2PI = math.log(2.0 * math.pi)


def schedule(T: int, kind: str = "sigmoid", radius: float = 4.0) -> np.ndarray:
    """beta_0 = 0, ..., beta_T = 1 (float64, T + 1 values) for T intermediate distributions."""
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"AIS needs T >= 1 intermediate distributions, not {T!r}")
    if kind == "linear":
        return np.linspace(0.0, 1.0, T + 1)
    if kind == "sigmoid":
        if not radius > 0:
            raise ValueError(f"the sigmoid schedule's radius must be positive, not {radius!r}")
        s = 1.0 / (1.0 + np.exp(-np.linspace(-radius, radius, T + 1)))
        betas = (s - s[0]) / (s[-1] - s[0])
        betas[0], betas[-1] = 0.0, 1.0
        return betas
    raise ValueError(f"unknown AIS schedule {kind!r}; expected sigmoid or linear")


def log_mean_exp(log_w: Tensor, dim: int = 0) -> Tensor:
    """log (1/n sum exp) along dim, in float64."""
    log_w = log_w.double()
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


class AISTarget:
    """B unnormalised posteriors p(z) p(x_b|z) over z in R^dim, each with a normalised initial distribution q_b(z).

    Every method takes or returns latents of shape (S, B, dim) and log-densities of shape (S, B).
    `initial_is_prior`: q_b is p(z) itself (then log_initial is never called: the path needs log p(z) only).
    """

    n_images: int
    dim: int
    initial_is_prior: bool = False

    def log_joint_terms(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(log p(z), log p(x|z)); one pass where a model computes both together."""
        return self.log_prior(z), self.log_likelihood(z)

    def log_prior(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def log_likelihood(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def sample_initial(self, n_chains: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def log_initial(self, z: Tensor) -> Tensor:
        raise NotImplementedError


@dataclass
class _State:
    """A batch of chains with the log-density terms at z and their gradients, kept separately so any beta can use them."""

    z: Tensor
    log_q: Tensor
    log_joint: Tensor
    grad_q: Tensor
    grad_joint: Tensor

    def log_f(self, beta: float) -> Tensor:
        return (1.0 - beta) * self.log_q + beta * self.log_joint

    def grad_f(self, beta: float) -> Tensor:
        return (1.0 - beta) * self.grad_q + beta * self.grad_joint

    def select(self, keep: Tensor, other: "_State") -> "_State":
        """Where keep (S, B) is True this state's chains, else other's."""
        k = keep.unsqueeze(-1)
        return _State(
            torch.where(k, self.z, other.z), torch.where(keep, self.log_q, other.log_q),
            torch.where(keep, self.log_joint, other.log_joint), torch.where(k, self.grad_q, other.grad_q),
            torch.where(k, self.grad_joint, other.grad_joint),
        )


def _evaluate(target: AISTarget, z: Tensor) -> _State:
    """Log-densities and their gradients at z (no graph kept)."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        log_prior, log_lik = target.log_joint_terms(z)
        log_joint = log_prior + log_lik
        if target.initial_is_prior:
            grad_prior = torch.autograd.grad(log_prior.sum(), z, retain_graph=True, allow_unused=True)[0]
            grad_lik = torch.autograd.grad(log_lik.sum(), z, allow_unused=True)[0]
            grad_prior = torch.zeros_like(z) if grad_prior is None else grad_prior
            grad_lik = torch.zeros_like(z) if grad_lik is None else grad_lik
            log_q, grad_q, grad_joint = log_prior, grad_prior, grad_prior + grad_lik
        else:
            log_q = target.log_initial(z)
            grad_q = torch.autograd.grad(log_q.sum(), z, retain_graph=True, allow_unused=True)[0]
            grad_joint = torch.autograd.grad(log_joint.sum(), z, allow_unused=True)[0]
            grad_q = torch.zeros_like(z) if grad_q is None else grad_q
            grad_joint = torch.zeros_like(z) if grad_joint is None else grad_joint
    return _State(z.detach(), log_q.detach(), log_joint.detach(), grad_q.detach(), grad_joint.detach())


def hmc_step(target: AISTarget, state: _State, beta: float, step: Tensor, n_leapfrog: int,
             generator: torch.Generator | None = None) -> tuple[_State, Tensor]:
    """One HMC transition leaving f_beta invariant; step (B,) per image. Returns the new state and acceptances (S, B)."""
    S, B, _ = state.z.shape
    jitter = torch.rand((S, B, 1), generator=generator, dtype=torch.float64, device=state.z.device)
    eps = (step.view(1, -1, 1) * (1.0 + STEP_JITTER * (2.0 * jitter - 1.0))).to(state.z.dtype)
    p0 = torch.randn(state.z.shape, generator=generator, dtype=state.z.dtype, device=state.z.device)
    p = p0 + 0.5 * eps * state.grad_f(beta)
    new = state
    for i in range(n_leapfrog):
        new = _evaluate(target, new.z + eps * p)
        p = p + (eps if i < n_leapfrog - 1 else 0.5 * eps) * new.grad_f(beta)
    log_accept = (new.log_f(beta) - 0.5 * p.pow(2).sum(-1)) - (state.log_f(beta) - 0.5 * p0.pow(2).sum(-1))
    log_accept = torch.nan_to_num(log_accept.double(), nan=-math.inf)
    u = torch.rand(log_accept.shape, generator=generator, dtype=torch.float64, device=log_accept.device)
    finite = torch.isfinite(new.log_joint) & torch.isfinite(new.log_q)
    accept = (torch.log(u) < log_accept) & finite
    return new.select(accept, state), accept


@dataclass
class AISResult:
    """log_w (S, B) float64; the per-image estimate log_px (B,) = log-mean-exp over chains (forward: log p(x);
    reverse: -log p(x)'s estimate is its negative, see `reverse_ais`); the chains' last z; acceptance rate and
    final step size per image; likelihood-gradient evaluations per chain."""

    log_w: Tensor
    z: Tensor
    accept_rate: Tensor
    step_size: Tensor
    gradient_evaluations: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def log_px(self) -> Tensor:
        return log_mean_exp(self.log_w, 0)


def anneal(target: AISTarget, betas: np.ndarray | list[float], n_leapfrog: int, z: Tensor, step_size: float = 0.05,
           target_accept: float = 0.65, generator: torch.Generator | None = None, warmup: int = WARMUP) -> AISResult:
    """Run chains from z (S, B, dim) along betas (in the order given: increasing for forward AIS, decreasing for reverse).

    log w = sum_k (betas[k] - betas[k-1]) (log p(z) + log p(x|z) - log q(z)) at the state before the transition at
    betas[k] (none after the last). `warmup` transitions at betas[0] first tune the step size only.
    """
    betas = [float(b) for b in betas]
    if len(betas) < 2:
        raise ValueError("AIS needs at least two inverse temperatures (T >= 1)")
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept must be in (0, 1), not {target_accept!r}")
    if n_leapfrog < 1:
        raise ValueError(f"HMC needs at least one leapfrog step, not {n_leapfrog!r}")
    if z.dim() != 3 or z.shape[1] != target.n_images or z.shape[2] != target.dim:
        raise ValueError(f"chains must have shape (S, {target.n_images}, {target.dim}), not {tuple(z.shape)}")
    S, B, _ = z.shape
    device = z.device
    state = _evaluate(target, z)
    evaluations = 1
    log_w = torch.zeros(S, B, dtype=torch.float64, device=device)
    step = torch.full((B,), float(step_size), dtype=torch.float64, device=device)
    accepted = torch.zeros(B, dtype=torch.float64, device=device)
    transitions = 0

    def adapt(step: Tensor, rate: Tensor) -> Tensor:
        return (step * torch.exp(ADAPT_GAIN * (rate - target_accept))).clamp(STEP_MIN, STEP_MAX)

    for _ in range(warmup):  # at betas[0]: the chains keep their distribution there, only the step size changes
        state, accept = hmc_step(target, state, betas[0], step, n_leapfrog, generator)
        evaluations += n_leapfrog
        step = adapt(step, accept.double().mean(0))
    for k in range(1, len(betas)):
        log_w += (betas[k] - betas[k - 1]) * (state.log_joint.double() - state.log_q.double())
        if k == len(betas) - 1:
            break
        state, accept = hmc_step(target, state, betas[k], step, n_leapfrog, generator)
        evaluations += n_leapfrog
        rate = accept.double().mean(0)
        accepted += rate
        transitions += 1
        step = adapt(step, rate)
    rate = accepted / max(transitions, 1)
    return AISResult(log_w.cpu(), state.z, rate.cpu(), step.cpu(), evaluations)


def forward_ais(target: AISTarget, T: int, n_leapfrog: int, n_chains: int, kind: str = "sigmoid", radius: float = 4.0,
                step_size: float = 0.05, target_accept: float = 0.65, generator: torch.Generator | None = None) -> AISResult:
    """Forward AIS from the target's initial distribution; result.log_px is a stochastic lower bound of log p(x) per image."""
    if n_chains < 1:
        raise ValueError(f"AIS needs at least one chain per image, not {n_chains!r}")
    z = target.sample_initial(n_chains, generator).detach()
    return anneal(target, schedule(T, kind, radius), n_leapfrog, z, step_size, target_accept, generator)


def reverse_ais(target: AISTarget, z_exact: Tensor, T: int, n_leapfrog: int, n_chains: int, kind: str = "sigmoid",
                radius: float = 4.0, step_size: float = 0.05, target_accept: float = 0.65,
                generator: torch.Generator | None = None) -> AISResult:
    """Reverse AIS from exact posterior samples z_exact (B, dim), S chains each; result.extra['upper'] (B,) is a stochastic
    upper bound of log p(x): -log-mean-exp of the reverse log-weights, which estimate -log p(x)."""
    if z_exact.dim() != 2:
        raise ValueError(f"z_exact must have shape (B, dim), not {tuple(z_exact.shape)}")
    z = z_exact.detach().unsqueeze(0).expand(n_chains, -1, -1).contiguous()
    result = anneal(target, schedule(T, kind, radius)[::-1], n_leapfrog, z, step_size, target_accept, generator)
    result.extra["upper"] = -log_mean_exp(result.log_w, 0)
    return result


# --- the adapter from the project's models -------------------------------------------------------------------


def _normal_log_prob(z: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    return -0.5 * (((z - mean) * torch.exp(-log_std)).pow(2) + _LOG_2PI) - log_std


MOMENT_DRAWS = 64  # posterior draws per image whose mean and sd make the 'moments' initial distribution


def resolve_initial(model: LatentVariableModel, initial: str) -> str:
    """'encoder', 'moments' or 'prior' for a model; auto: the encoder's Gaussian for the diagonal family (it is q), the
    moments of the flow posterior for the flow families (their base Gaussian can lie far from q), the prior for the ladder."""
    family = model.variant.family
    if model.exact_likelihood:
        raise NotImplementedError(f"AIS needs a latent-variable model; {model.variant.name} ({family}) is a flow with an exact log p(x)")
    if initial not in ("auto", "encoder", "moments", "prior"):
        raise ValueError(f"unknown AIS initial distribution {initial!r}; expected auto, encoder, moments or prior")
    has_encoder_gaussian = family != "resvae"
    if initial == "auto":
        return "prior" if not has_encoder_gaussian else "encoder" if family == "vae" else "moments"
    if initial in ("encoder", "moments") and not has_encoder_gaussian:
        raise NotImplementedError(
            f"AIS from the encoder is not available for the {family} family ({model.variant.name}): its posterior is "
            "hierarchical, with no density at arbitrary latents; use initial: prior (or auto)"
        )
    return initial


class ModelTarget(AISTarget):
    """The posteriors of a trained LatentVariableModel for a batch of images x (B, C, H, W).

    VAE families (every posterior flow): prior N(0, I), p(x|z) from the decoder; initial 'encoder' is the
    encoder's base Gaussian N(mu(x), diag sigma(x)^2) (for the diagonal family exactly q(z|x); for flow families
    the flow's base, the same network that amortizes the flow), 'moments' the diagonal Gaussian with the mean and
    sd of MOMENT_DRAWS draws from the full q(z|x) (flow included: a normalised start near q where the flow's own
    density cannot be evaluated at arbitrary z), 'prior' the prior. The ladder (resvae): the
    latents of every rung concatenated, the hierarchical prior p(z_i | z_>i) and p(x|z) from one top-down
    pass with the latents given; its initial distribution is the prior (ancestral sampling).
    """

    def __init__(self, model: LatentVariableModel, x: Tensor, initial: str = "auto") -> None:
        self.model = model
        self.x = x
        self.n_images = x.shape[0]
        self.dim = int(model.latent_dim)
        self.initial = resolve_initial(model, initial)
        self.initial_is_prior = self.initial == "prior"
        self.ladder = model.variant.family == "resvae"
        if self.initial == "encoder":
            with torch.no_grad():
                mu, log_std, _ = model.encoder(x)
            self.mu, self.log_std = mu.detach(), log_std.detach()
        elif self.initial == "moments":
            with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                torch.manual_seed(0)  # the same start for the same images, whatever ran before
                z = model(x, n_samples=MOMENT_DRAWS).z.double()
            self.mu = z.mean(0).to(x.dtype)
            self.log_std = z.std(0).clamp_min(1e-3).log().to(x.dtype)

    def _log_lik(self, params: Tensor, S: int) -> Tensor:
        return self.model.likelihood.log_prob(params.reshape(S, self.n_images, *params.shape[1:]), self.x)

    def log_joint_terms(self, z: Tensor) -> tuple[Tensor, Tensor]:
        S = z.shape[0]
        flat = z.reshape(-1, self.dim)
        if self.ladder:
            log_prior, params = ladder_prior_and_params(self.model, flat)
            return log_prior.view(S, self.n_images), self._log_lik(params, S)
        log_prior = -0.5 * (z.pow(2).sum(-1) + self.dim * _LOG_2PI)
        return log_prior, self._log_lik(self.model.decoder(flat), S)

    def log_prior(self, z: Tensor) -> Tensor:
        return self.log_joint_terms(z)[0]

    def log_likelihood(self, z: Tensor) -> Tensor:
        return self.log_joint_terms(z)[1]

    def sample_initial(self, n_chains: int, generator: torch.Generator | None = None) -> Tensor:
        if self.initial_is_prior:
            return sample_prior(self.model, n_chains * self.n_images, generator).view(n_chains, self.n_images, self.dim)
        eps = torch.randn((n_chains, *self.mu.shape), generator=generator, dtype=self.mu.dtype, device=self.mu.device)
        return self.mu + self.log_std.exp() * eps

    def log_initial(self, z: Tensor) -> Tensor:
        if self.initial == "prior":
            return self.log_prior(z)
        return _normal_log_prob(z, self.mu, self.log_std).sum(-1)


def ladder_prior_and_params(model: LatentVariableModel, z: Tensor) -> tuple[Tensor, Tensor]:
    """log p(z) = sum_i log p(z_i | z_>i) (n,) and the likelihood parameters of the ladder VAE for latents z (n, D).

    The top-down pass of models/ladder.py (TopDown.forward) with the latents given, keeping the prior terms
    that the pass computes only for posterior samples there.
    """
    dec = model.decoder
    zs = model.split_latents(z)
    h = dec.start(z.shape[0])
    log_prior = z.new_zeros(z.shape[0])
    for i in reversed(range(len(dec.rungs))):
        rung = dec.rungs[i]
        p_mean, p_log_std, _, _, _, d = (t.to(z.dtype) for t in rung.features(h))
        log_prior = log_prior + _normal_log_prob(zs[i], p_mean, p_log_std).sum((1, 2, 3))
        h = rung.merge(h, zs[i], d)
    loc = dec.out(F.elu(h)) + dec.offset
    params = loc if dec.log_scale is None else torch.cat([loc, dec.log_scale.expand_as(loc)], dim=1)
    return log_prior, params


@torch.no_grad()
def sample_prior(model: LatentVariableModel, n: int, generator: torch.Generator | None = None) -> Tensor:
    """n latents (n, D) from the model's prior (ancestral for the ladder)."""
    p = next(model.parameters())
    if model.variant.family == "resvae":
        noise = [torch.randn((n, *s), generator=generator, dtype=p.dtype, device=p.device) for s in model.z_shapes]
        zs = model.decoder(noise)[1]
        return torch.cat([t.flatten(1) for t in zs], dim=1)
    return torch.randn((n, model.latent_dim), generator=generator, dtype=p.dtype, device=p.device)


def sample_likelihood(likelihood: Likelihood, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """x ~ p(x | params): 0/1 pixels (Bernoulli) or k/255 (discretized logistic, categorical)."""
    name = likelihood.name
    if name == "bernoulli":
        u = torch.rand(params.shape, generator=generator, dtype=params.dtype, device=params.device)
        return (u < torch.sigmoid(params)).to(params.dtype)
    if name == "discretized_logistic":
        mu, log_scale = likelihood.split(params)
        u = torch.rand(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device).clamp(1e-6, 1 - 1e-6)
        value = mu + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
        return torch.round(value.clamp(0.0, 1.0) * 255.0) / 255.0
    if name == "categorical":
        logits = likelihood.logits(params)  # (n, C, 256, H, W)
        g = -torch.log(-torch.log(torch.rand(logits.shape, generator=generator, dtype=logits.dtype,
                                             device=logits.device).clamp(1e-12, 1 - 1e-12)))
        return (logits + g).argmax(-3).to(params.dtype) / 255.0
    raise NotImplementedError(f"sampling from the {name} likelihood is not implemented")


@torch.no_grad()
def simulate(model: LatentVariableModel, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(z, x): n latents from the prior and an image from p(x|z) for each; z is an exact sample of p(z|x)."""
    z = sample_prior(model, n, generator)
    if model.variant.family == "resvae":
        params = ladder_prior_and_params(model, z)[1]
    else:
        params = model.decoder(z)
    return z, sample_likelihood(model.likelihood, params, generator)


def bdmc(model: LatentVariableModel, n_images: int, T: int, n_leapfrog: int, n_chains: int, kind: str = "sigmoid",
         radius: float = 4.0, initial: str = "auto", step_size: float = 0.05, target_accept: float = 0.65,
         batch_size: int = 25, seed: int = 0) -> dict:
    """BDMC on n_images simulated from the model: forward AIS (lower) and reverse AIS from the simulating z (upper).

    Returns per-image arrays (float64) lower, upper and the mean gap upper - lower with its standard error.
    """
    if n_images < 1:
        raise ValueError(f"BDMC needs at least one simulated image, not {n_images!r}")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    z, x = simulate(model, n_images, generator)
    lower, upper, acc_f, acc_r = [], [], [], []
    for start in range(0, n_images, batch_size):
        xb, zb = x[start : start + batch_size], z[start : start + batch_size]
        target = ModelTarget(model, xb, initial)
        fwd = forward_ais(target, T, n_leapfrog, n_chains, kind, radius, step_size, target_accept, generator)
        rev = reverse_ais(target, zb, T, n_leapfrog, n_chains, kind, radius, step_size, target_accept, generator)
        lower.append(fwd.log_px)
        upper.append(rev.extra["upper"])
        acc_f.append(fwd.accept_rate)
        acc_r.append(rev.accept_rate)
    lower_t, upper_t = torch.cat(lower), torch.cat(upper)
    gap = upper_t - lower_t
    return {
        "lower": lower_t.numpy(), "upper": upper_t.numpy(),
        "mean_lower": float(lower_t.mean()), "mean_upper": float(upper_t.mean()),
        "gap": float(gap.mean()), "gap_se": _se(gap),
        "accept_rate_forward": float(torch.cat(acc_f).mean()), "accept_rate_reverse": float(torch.cat(acc_r).mean()),
        "initial": resolve_initial(model, initial),
    }


def _se(values: Tensor) -> float:
    n = values.numel()
    return float(values.double().std(unbiased=True) / math.sqrt(n)) if n > 1 else 0.0


def model_ais(model: LatentVariableModel, x: Tensor, T: int, n_leapfrog: int, n_chains: int, kind: str = "sigmoid",
              radius: float = 4.0, initial: str = "auto", step_size: float = 0.05, target_accept: float = 0.65,
              batch_size: int = 25, generator: torch.Generator | None = None) -> dict:
    """Forward AIS of log p(x) for images x (N, C, H, W) in batches: per-image log_px (float64), acceptance rate
    and final step size, and the likelihood-gradient evaluations per chain."""
    log_px, acc, steps = [], [], []
    evaluations = 0
    for start in range(0, x.shape[0], batch_size):
        target = ModelTarget(model, x[start : start + batch_size], initial)
        r = forward_ais(target, T, n_leapfrog, n_chains, kind, radius, step_size, target_accept, generator)
        log_px.append(r.log_px)
        acc.append(r.accept_rate)
        steps.append(r.step_size)
        evaluations = r.gradient_evaluations
    return {"log_px": torch.cat(log_px), "accept_rate": torch.cat(acc), "step_size": torch.cat(steps),
            "gradient_evaluations_per_chain": evaluations}


# --- a trained run: `flowvae evaluate --estimator ais`, `flowvae bdmc` ----------------------------------------


def frozen_for_ais(model: LatentVariableModel) -> LatentVariableModel:
    """The model for AIS: weight norm folded, eval mode, parameters without gradients (only z needs them).

    No bfloat16 or compiled decoder: AIS differentiates the decoder and runs thousands of steps on it.
    """
    from flowvae.runs.inference import prepare_for_inference

    prepare_for_inference(model, channels_last=True)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def test_images(spec, device, images: int) -> tuple[np.ndarray, Tensor, int]:
    """(indices, images, n_test): the seeded random subset of `images` test images (0: all) that evaluate.seeded_subset
    picks, binarized exactly as the importance-sampled evaluation sees them (same batches, same seed)."""
    from flowvae.data.batches import batches_for
    from flowvae.runs.evaluate import seeded_subset

    test = batches_for(spec, "test", spec.eval.batch_size, False, spec.seed + 30_000, device)
    mask = seeded_subset(test.n_images, images if images > 0 else test.n_images)
    index = np.flatnonzero(mask)
    chosen, seen = [], 0
    for x in test.epoch(0):
        keep = torch.from_numpy(mask[seen : seen + x.shape[0]]).to(x.device)
        if bool(keep.any()):
            chosen.append(x[keep])
        seen += x.shape[0]
    return index, torch.cat(chosen), test.n_images


def load_trained(spec, run_dir, device) -> LatentVariableModel:
    """The trained model of a run folder, checked against params.yaml as `flowvae evaluate` checks it, ready for AIS."""
    from flowvae.models.build import build_model
    from flowvae.runs.checkpoint import load_weights
    from flowvae.runs.evaluate import check_recorded
    from flowvae.spec.layout import RunFolder

    folder = RunFolder(Path(run_dir))
    if not folder.model.exists():
        raise FileNotFoundError(f"{folder.model} is missing: train the run first (`flowvae train ...`)")
    check_recorded(spec, folder)
    model = build_model(spec).to(device)
    load_weights(model, folder.model)
    return frozen_for_ais(model)


def spec_of_folder(params_file, run_dir):
    """The RunSpec of a run folder: its settings record, with params.yaml's evaluation settings and data location."""
    from flowvae.files.errors import CorruptFileError
    from flowvae.files.jsonfiles import read_json_object
    from flowvae.spec.layout import RunFolder, prepared_dir
    from flowvae.spec.params import load_params, profile_settings
    from flowvae.spec.run import RunSpec
    from flowvae.spec.settings import EvalSettings, Resources

    folder = RunFolder(Path(run_dir))
    remedy = "a run folder of a finished `flowvae train` holds it"
    record = read_json_object(folder.settings, remedy)
    if "settings" not in record:
        raise CorruptFileError(f"{folder.settings} holds no settings record; {remedy}")
    params = load_params(params_file)
    settings = record["settings"]
    if settings["profile"] not in params["profiles"]:
        raise ValueError(f"{run_dir} is a run of profile {settings['profile']!r}, which {params_file} does not define")
    block = profile_settings(params, settings["profile"])
    return RunSpec.from_record(settings, EvalSettings.from_params({**block["eval"], "ais": block.get("ais")}), Resources.from_params(block["resources"]),
                               prepared_dir(params, settings["profile"], settings["dataset"]))


def ais_settings_record(s, initial: str) -> dict:
    """The settings of an AIS run as recorded in its JSON (the initial distribution resolved)."""
    return {**s.record(), "initial": initial, "initial_requested": s.initial, "step_jitter": STEP_JITTER,
            "step_size_range": [STEP_MIN, STEP_MAX], "adapt_gain": ADAPT_GAIN, "warmup_transitions": WARMUP}


def evaluate_ais(spec, run_dir, threads: int | None = None, device: str | None = None, source=None, settings=None) -> dict:
    """AIS of log p(x) on a seeded subset of the test images of a trained run; writes ais.json, ais_per_image.npz
    (index: positions in the test split, neg_log_px float64 nats, accept_rate) and ais_timings.json; returns ais.json's dict.

    ais.json: profile, dataset, model, seed, code provenance, estimator, settings (T, L, S, schedule, initial, ...),
    n_images, n_test, neg_log_px and neg_log_px_se (mean and standard error over the images), accept_rate,
    gradient_evaluations_per_chain, and bits_per_dim (null for binary data). No wall-clock field: ais_timings.json.
    """
    import time

    from flowvae.files import provenance
    from flowvae.files.atomic import write_json, write_npz
    from flowvae.files.provenance import source_state
    from flowvae.runs.device import pick_device
    from flowvae.spec.layout import RunFolder

    folder = RunFolder(Path(run_dir))
    source = source if source is not None else source_state()
    if threads is not None:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    s = settings or spec.eval.ais
    model = load_trained(spec, folder.root, dev)
    initial = resolve_initial(model, s.initial)
    index, x, n_test = test_images(spec, dev, s.images)
    generator = torch.Generator(device=dev).manual_seed(spec.seed + 60_000)
    start = time.perf_counter()
    r = model_ais(model, x, s.T, s.L, s.S, s.schedule, s.sigmoid_radius, initial, s.step_size, s.target_accept,
                  s.batch_size, generator)
    seconds = time.perf_counter() - start
    neg = (-r["log_px"]).double()
    result = {
        "profile": spec.profile, "dataset": spec.dataset_name, "data_source": spec.dataset.name,
        "model": spec.variant.name, "seed": spec.seed, "code_version": spec.code_version,
        **provenance.record(source),
        "estimator": "annealed importance sampling",
        "settings": ais_settings_record(s, initial),
        "n_images": int(neg.numel()), "n_test": int(n_test),
        "neg_log_px": float(neg.mean()), "neg_log_px_se": _se(neg),
        "accept_rate": float(r["accept_rate"].mean()),
        "gradient_evaluations_per_chain": int(r["gradient_evaluations_per_chain"]),
        "bits_per_dim": None,
    }
    if model.likelihood.eight_bit:
        scale = math.prod(spec.image_shape) * math.log(2)
        result["bits_per_dim"] = {"neg_log_px": result["neg_log_px"] / scale}
    write_npz(folder.ais_per_image, {"index": index.astype(np.int64), "neg_log_px": neg.numpy(),
                                     "accept_rate": r["accept_rate"].double().numpy()}, compress=True)
    evaluations = neg.numel() * s.S * r["gradient_evaluations_per_chain"]
    write_json(folder.ais_timings, {"ais_seconds": seconds, "ais_gradient_evaluations_per_s": evaluations / seconds,
                                    "ais_seconds_per_image": seconds / max(neg.numel(), 1)})
    write_json(folder.ais, result)
    return result
