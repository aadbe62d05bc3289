"""AIS, BDMC and inference gaps (runs/ais.py, runs/gaps.py) against exact values on models the tests make."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import quadrature_log_px

from flowvae.data.batches import batches_for
from flowvae.models.build import build_model, build_variant
from flowvae.runs.ais import (
    AISTarget, ModelTarget, forward_ais, frozen_for_ais, reverse_ais, schedule, simulate,
)
from flowvae.report.tables import build_table
from flowvae.runs.gaps import GapSettings, optimise_local
from flowvae.spec.metrics import metric
from flowvae.spec.settings import AISSettings


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread beats two contending ones


class LinearGaussian(AISTarget):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, sigma^2 I): log p(x) = log N(x; b, W W^T + sigma^2 I). Initial: the prior."""

    initial_is_prior = True

    def __init__(self, W: torch.Tensor, b: torch.Tensor, sigma: float, x: torch.Tensor) -> None:
        self.W, self.b, self.sigma, self.x = W, b, sigma, x
        self.n_images, self.dim = x.shape[0], W.shape[1]

    def log_prior(self, z):
        return -0.5 * (z.pow(2).sum(-1) + self.dim * math.log(2 * math.pi))

    def log_likelihood(self, z):
        r = (self.x - (z @ self.W.T + self.b)) / self.sigma
        return -0.5 * (r.pow(2).sum(-1) + self.x.shape[-1] * math.log(2 * math.pi * self.sigma**2))

    def sample_initial(self, n_chains, generator=None):
        return torch.randn((n_chains, self.n_images, self.dim), generator=generator, dtype=self.x.dtype)

    def posterior(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact posterior's means (B, dim) and marginal standard deviations (dim,)."""
        cov = torch.linalg.inv(torch.eye(self.dim, dtype=self.W.dtype) + self.W.T @ self.W / self.sigma**2)
        return ((self.x - self.b) @ self.W / self.sigma**2) @ cov, cov.diagonal().sqrt()

    def exact(self) -> torch.Tensor:
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.W.shape[0], dtype=self.W.dtype)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(self.x)


class EncoderLike(LinearGaussian):
    """The same model with the initial distribution an encoder would give: a diagonal Gaussian whose mean is half a
    posterior standard deviation off and whose standard deviations are 1.3 times the posterior's."""

    initial_is_prior = False

    def __init__(self, *args) -> None:
        super().__init__(*args)
        mean, std = self.posterior()
        self.mean, self.std = mean + 0.5 * std, 1.3 * std

    def sample_initial(self, n_chains, generator=None):
        eps = torch.randn((n_chains, self.n_images, self.dim), generator=generator, dtype=self.x.dtype)
        return self.mean + self.std * eps

    def log_initial(self, z):
        return torch.distributions.Normal(self.mean, self.std).log_prob(z).sum(-1)


def linear_gaussian(seed: int, images: int = 8, dim: int = 3, pixels: int = 10, sigma: float = 1.0, scale: float = 0.5):
    """A linear-Gaussian model, data simulated from it, and the simulating latents (exact posterior samples)."""
    g = torch.Generator().manual_seed(seed)
    W = scale * torch.randn(pixels, dim, generator=g, dtype=torch.float64)
    b = torch.randn(pixels, generator=g, dtype=torch.float64)
    z = torch.randn(images, dim, generator=g, dtype=torch.float64)
    x = z @ W.T + b + sigma * torch.randn(images, pixels, generator=g, dtype=torch.float64)
    return LinearGaussian(W, b, sigma, x), z


def test_sigmoid_schedule_runs_from_0_to_1_with_small_steps_at_both_ends():
    betas = schedule(100)
    assert betas.shape == (101,) and betas[0] == 0.0 and betas[-1] == 1.0
    steps = np.diff(betas)
    assert (steps > 0).all()
    assert steps[0] < steps[50] / 5 and steps[-1] < steps[50] / 5
    assert np.allclose(schedule(4, "linear"), [0, 0.25, 0.5, 0.75, 1])
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="T >= 1"):
            schedule(bad)
    with pytest.raises(ValueError, match="unknown AIS schedule"):
        schedule(10, "cosine")


def test_ais_is_within_0_02_nats_of_the_exact_log_px_and_bdmc_brackets_it():
    target, z = linear_gaussian(0)
    exact = target.exact()
    g = torch.Generator().manual_seed(1)
    encoder_like = EncoderLike(target.W, target.b, target.sigma, target.x)
    fwd = forward_ais(encoder_like, 1000, 2, 128, generator=g)
    assert (fwd.log_px - exact).abs().max() < 0.02, fwd.log_px - exact
    assert 0.55 < float(fwd.accept_rate.mean()) < 0.75  # the step size was adapted towards 0.65
    # BDMC on 64 simulated images with a short schedule and two chains, so that the bounds differ clearly from the truth
    target, z = linear_gaussian(1, images=64)
    exact = target.exact()
    lower = forward_ais(target, 5, 5, 2, generator=g).log_px
    upper = reverse_ais(target, z, 5, 5, 2, generator=g).extra["upper"]
    assert lower.mean() < exact.mean() < upper.mean(), (lower.mean(), exact.mean(), upper.mean())
    assert (upper - lower).mean() > 0.3


def test_more_temperatures_do_not_make_the_estimate_worse():
    target, _ = linear_gaussian(2, images=16, dim=4, pixels=16, sigma=0.5, scale=1.0)
    exact = target.exact()
    errors, ses = [], []
    for i, T in enumerate((5, 50, 400)):
        est = forward_ais(target, T, 5, 32, generator=torch.Generator().manual_seed(10 + i)).log_px
        diff = exact - est  # AIS is a stochastic lower bound: the error is its bias
        errors.append(float(diff.mean()))
        ses.append(float(diff.std() / math.sqrt(diff.numel())))
    assert errors[0] > 1.0  # a handful of temperatures is far off here
    for k in range(1, len(errors)):
        assert errors[k] <= errors[k - 1] + 2 * math.hypot(ses[k], ses[k - 1]), (errors, ses)
    assert abs(errors[-1]) < 0.5


def test_ais_agrees_with_quadrature_on_a_2d_latent_decoder_where_a_poor_proposal_does_not(tiny):
    cfg = tiny("vae", network={"kind": "mlp", "hidden": 16, "layers": 1, "z_dim": 2, "context_dim": 4})
    torch.manual_seed(1)
    model = frozen_for_ais(build_model(cfg).double())
    x = next(batches_for(cfg, "test", 4, False, 0).epoch(0)).double()
    exact = quadrature_log_px(model, x, 6.0, 301)
    with torch.no_grad():
        # importance sampling from a deliberately poor proposal: N(2.5, 0.2^2) in each coordinate
        proposal = torch.distributions.Normal(torch.full((2,), 2.5, dtype=torch.float64), 0.2)
        zq = proposal.sample((2000,)).unsqueeze(1)
        log_w = (model.likelihood.log_prob(model.decoder(zq.reshape(-1, 2)).reshape(2000, 1, *x.shape[1:]), x)
                 - 0.5 * (zq**2).sum(-1) - math.log(2 * math.pi) - proposal.log_prob(zq).sum(-1))
        poor = torch.logsumexp(log_w, 0) - math.log(2000)
    assert ((poor - exact).abs() > 1.0).all(), (poor, exact)
    for initial in ("encoder", "prior"):
        r = forward_ais(ModelTarget(model, x, initial), 300, 3, 64, generator=torch.Generator().manual_seed(3))
        assert (r.log_px - exact).abs().max() < 0.05, (initial, r.log_px - exact)


def test_the_moments_start_of_a_flow_posterior_is_its_draws_mean_and_sd_and_ais_from_it_is_exact(tiny):
    cfg = tiny("nf2", network={"kind": "mlp", "hidden": 16, "layers": 1, "z_dim": 2, "context_dim": 4})
    torch.manual_seed(1)
    model = build_model(cfg).double()
    with torch.no_grad():  # a flow that moves its base: random non-zero flow parameters
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model = frozen_for_ais(model)
    x = next(batches_for(cfg, "test", 4, False, 0).epoch(0)).double()
    target = ModelTarget(model, x, "auto")
    assert target.initial == "moments"
    torch.manual_seed(123)  # the start does not depend on the global random state
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        z = model(x, n_samples=64).z
    assert torch.allclose(target.mu, z.mean(0)) and torch.allclose(target.log_std, z.std(0).log())
    encoder_mu = model.encoder(x)[0]
    assert (target.mu - encoder_mu).abs().max() > 0.05  # the flow moved the posterior away from its base
    exact = quadrature_log_px(model, x, 6.0, 301)
    r = forward_ais(target, 1000, 3, 64, generator=torch.Generator().manual_seed(3))
    # This perturbed flow's posteriors are harder than the trained VAE's above: AIS from the encoder's base or the prior
    # lands within 0.1 nats of quadrature here too; a wrongly normalised start would be off by nats.
    assert (r.log_px - exact).abs().max() < 0.15, r.log_px - exact


@pytest.mark.parametrize("name", ["vae", "nf2", "iaf_d1_w8", "resvae_r2_gauss", "resvae_r2_iaf"])
def test_the_adapter_gives_the_models_own_joint_density_at_its_posterior_samples(name):
    torch.manual_seed(0)
    if name.startswith("resvae"):
        shape, settings, lik = (3, 8, 8), {"channels": 8, "z_channels": 2}, "discretized_logistic"
        x = torch.randint(0, 256, (3, *shape)).float() / 255
    else:
        shape, settings, lik = (1, 8, 8), {"kind": "mlp", "hidden": 16, "layers": 1, "z_dim": 3, "context_dim": 4}, "bernoulli"
        x = torch.randint(0, 2, (3, *shape)).float()
    model = build_variant(name, settings, shape, lik)
    model.initialize(x)
    model = frozen_for_ais(model.double())
    x = x.double()
    with torch.no_grad():
        out = model(x, n_samples=2)
    target = ModelTarget(model, x, "auto")
    log_prior, log_lik = target.log_joint_terms(out.z)
    assert torch.allclose(log_prior, out.log_pz, atol=1e-8) and torch.allclose(log_lik, out.log_px_z, atol=1e-8)
    assert target.initial == ("prior" if name.startswith("resvae") else "encoder" if name == "vae" else "moments")
    z, xs = simulate(model, 2, torch.Generator().manual_seed(0))
    assert z.shape == (2, model.latent_dim) and xs.shape == (2, *shape)
    r = forward_ais(ModelTarget(model, xs, "auto"), 3, 2, 2, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(r.log_w).all()
    if name.startswith("resvae"):
        with pytest.raises(NotImplementedError, match="resvae family"):
            ModelTarget(model, x, "encoder")


@pytest.mark.parametrize("name", ["vae", "nf2"])
def test_the_per_image_optimisation_never_lowers_the_elbo_of_its_start(tiny, name):
    cfg = tiny(name)
    torch.manual_seed(0)
    model = frozen_for_ais(build_model(cfg))  # untrained: the encoder is far from the best posterior
    x = next(batches_for(cfg, "test", 6, False, 0).epoch(0))
    settings = GapSettings(max_steps=150, lr=3e-2, samples=4, eval_samples=64, check_every=25, patience=2)
    r = optimise_local(model, x, settings, torch.Generator().manual_seed(0))
    assert (r["elbo_optimised"] >= r["elbo_amortized"]).all()
    assert (r["elbo_optimised"] - r["elbo_amortized"]).mean() > 0.5
    assert (r["converged_step"] <= settings.max_steps).all()


def test_bad_settings_are_refused_with_the_key_named():
    with pytest.raises(ValueError, match="schedule"):
        AISSettings.from_params({"schedule": "cosine"})
    with pytest.raises(ValueError, match="target_accept"):
        AISSettings.from_params({"target_accept": 1.5})
    with pytest.raises(ValueError, match="ais setting T"):
        AISSettings.from_params({"T": 0})
    with pytest.raises(ValueError, match="unknown"):
        AISSettings.from_params({"temperatures": 10})
    with pytest.raises(ValueError, match="lr"):
        GapSettings(lr=0.0)
    target, _ = linear_gaussian(0)
    with pytest.raises(ValueError, match="shape"):
        from flowvae.runs.ais import anneal

        anneal(target, schedule(3), 2, torch.zeros(4, 3, 3, dtype=torch.float64))


def test_evaluate_with_ais_writes_its_files_and_the_tables_read_them(tiny, tmp_path):
    from flowvae.files.provenance import SourceState
    from flowvae.report.inputs import load_eval
    from flowvae.runs.ais import evaluate_ais
    from flowvae.runs.evaluate import evaluate
    from flowvae.runs.gaps import inference_gaps
    from flowvae.runs.train import Trainer

    cfg = tiny("vae", epochs=1, eval={"K": 16, "batch_size": 16}, ais={"T": 20, "L": 2, "S": 4, "images": 6, "batch_size": 4})
    run = tmp_path / "run"
    Trainer(cfg, run).run()
    source = SourceState(commit="0" * 40)
    evaluate(cfg, run, source=source)
    result = evaluate_ais(cfg, run, source=source)
    written = json.loads((run / "ais.json").read_text())
    assert written == result
    assert written["settings"]["T"] == 20 and written["settings"]["initial"] == "encoder" and written["n_images"] == 6
    with np.load(run / "ais_per_image.npz") as arrays:
        index, values = arrays["index"], arrays["neg_log_px"]
    assert values.dtype == np.float64 and len(index) == 6 and len(set(index.tolist())) == 6
    assert math.isclose(values.mean(), written["neg_log_px"], rel_tol=1e-12)
    ev = load_eval(run / "eval.json")
    assert metric("ais_neg_log_px").get(ev) == written["neg_log_px"]
    with np.load(run / "per_image.npz") as arrays:
        is_values = arrays["neg_log_px"][index]
    assert math.isclose(metric("is_bias").get(ev), float((is_values - values).mean()), rel_tol=1e-9)
    assert metric("is_bias_nats").get(ev) == metric("is_bias").get(ev)
    md, _ = build_table("table1", {"dataset": cfg.dataset_name, "rows": [{"model": "vae"}],
                                   "metrics": ["neg_log_px", "ais_neg_log_px", "is_bias"]}, [ev], None, {})
    assert ("AIS columns (the VAE rows): annealed importance sampling (Neal 2001) of -log p(x) on 6 seeded test images "
            "(T = 20 temperatures on a sigmoid schedule, 4 chains of HMC with 2 leapfrog steps, from the encoder's Gaussian") in md
    gaps = inference_gaps(cfg, run, 4, GapSettings(max_steps=20, check_every=10, eval_samples=16, samples=2), out=tmp_path / "g.json")
    assert gaps["n_images"] == 4 and gaps["amortization_gap"] >= 0
    with np.load(tmp_path / "g.npz") as arrays:
        assert set(arrays.files) >= {"index", "elbo_amortized", "elbo_optimised", "ais_log_px"}
        assert len(arrays["index"]) == 4 and np.isfinite(arrays["ais_log_px"]).all()
        assert (arrays["elbo_optimised"] >= arrays["elbo_amortized"]).all()
        per_image = {k: arrays[k] for k in ("elbo_amortized", "elbo_optimised", "ais_log_px")}

    # Beside eval.json, gaps.json gives the inference-gap table its columns, each the mean of the per-image values.

    (run / "gaps.json").write_text((tmp_path / "g.json").read_text())
    ev = load_eval(run / "eval.json")
    assert "source_diff_sha256" in ev["gaps"] and len(ev["gaps"]["commit"]) == 40  # recorded like eval.json
    assert metric("neg_elbo_q").get(ev) == pytest.approx(-per_image["elbo_amortized"].mean(), abs=1e-9)
    assert metric("neg_elbo_q_star").get(ev) == pytest.approx(-per_image["elbo_optimised"].mean(), abs=1e-9)
    approximation = per_image["ais_log_px"] - per_image["elbo_optimised"]
    assert metric("approximation_gap").get(ev) == pytest.approx(approximation.mean(), abs=1e-9)
    assert metric("approximation_gap").se(ev) == pytest.approx(approximation.std(ddof=1) / 2, rel=1e-6)
    assert metric("amortization_gap").get(ev) + metric("approximation_gap").get(ev) == pytest.approx(
        metric("gaps_ais_neg_log_px").get(ev) * -1 - per_image["elbo_amortized"].mean(), abs=1e-9)
