"""The pixel-space real NVP: invertibility, every log|det| against autograd, a density that sums to one
over the 8-bit bins, bits/dim of a known density, and a run through train and evaluate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from flowvae.models.build import build_variant
from flowvae.models.pixelflow import Coupling, MultiScaleFlow, RealNVPDensity, Scale, squeeze, unsqueeze
from flowvae.spec.variants import parse_variant

torch.set_default_dtype(torch.float32)


def _perturb(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Random non-zero weights everywhere (the output layers start at zero: an identity flow)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module


def _model(name: str, shape, channels: int = 4, dtype=torch.float64) -> RealNVPDensity:
    return build_variant(name, {"channels": channels}, shape, "discretized_logistic").to(dtype)


def _jacobian_log_det(f, x: torch.Tensor) -> torch.Tensor:
    """log|det J| of x (1, ...) -> f(x) flattened, by autograd."""
    jac = torch.autograd.functional.jacobian(lambda v: f(v.view_as(x)).flatten(), x.flatten())
    return torch.linalg.slogdet(jac)[1]


def test_squeeze_is_inverted_by_unsqueeze():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float64).view(2, 3, 4, 6)
    assert squeeze(x).shape == (2, 12, 2, 3)
    assert torch.equal(unsqueeze(squeeze(x)), x)
    assert torch.equal(squeeze(x)[0, :4, 0, 0], torch.tensor([0.0, 1, 6, 7]))  # one 2x2 block into 4 channels


@pytest.mark.parametrize("checker, parity", [(True, 0), (True, 1), (False, 0), (False, 1)])
def test_coupling_log_det_against_autograd(checker, parity):
    layer = _perturb(Coupling(4, (4, 4), checker, parity, hidden=6, blocks=1).double())
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    y, log_det = layer(x)
    assert log_det.item() == pytest.approx(_jacobian_log_det(lambda v: layer(v)[0], x).item(), abs=1e-8)
    assert abs(log_det.item()) > 0.01  # a non-trivial Jacobian
    assert torch.allclose(layer.inverse(y), x, atol=1e-10)


@pytest.mark.parametrize("last", [False, True])
def test_scale_log_det_against_autograd(last):
    scale = _perturb(Scale((2, 4, 4), last, hidden=6, blocks=1).double(), seed=1)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)

    def flat(v):
        on, out, _ = scale(v)
        return on.flatten() if out is None else torch.cat([out.flatten(), on.flatten()])

    on, out, log_det = scale(x)
    assert log_det.item() == pytest.approx(_jacobian_log_det(flat, x).item(), abs=1e-8)
    assert torch.allclose(scale.inverse(on, out), x, atol=1e-10)


@pytest.mark.parametrize("shape, scales", [((1, 4, 4), 2), ((3, 4, 4), 3), ((1, 6, 2), 2)])
def test_multiscale_log_det_against_autograd_and_invertible(shape, scales):
    flow = _perturb(MultiScaleFlow(shape, scales, hidden=6, blocks=2).double(), seed=2)
    x = torch.randn(1, *shape, dtype=torch.float64)
    z, log_det = flow(x)
    assert z.shape == (1, math.prod(shape))
    assert log_det.item() == pytest.approx(_jacobian_log_det(lambda v: flow(v)[0], x).item(), abs=1e-6)
    assert torch.allclose(flow.inverse(z), x, atol=1e-10)


def test_invertible_to_1e_5_in_float32_on_mnist_shapes():
    model = _perturb(_model("realnvp_s3_b2", (1, 28, 28), channels=8, dtype=torch.float32), scale=0.05, seed=3)
    logits = torch.randn(8, 1, 28, 28) * 2
    z, _ = model.flow(logits)
    assert (model.flow.inverse(z) - logits).abs().max().item() < 1e-5
    x = torch.randint(0, 256, (8, 1, 28, 28)).float() / 255
    assert torch.equal(model.reconstruct(x), x)  # decode(encode(x)) gives back the 8-bit image


def test_the_logit_transform_log_det_against_autograd():
    model = _model("realnvp_s1_b1", (1, 2, 3))
    x = torch.randint(0, 256, (1, 1, 2, 3)).double() / 255
    noise = torch.rand(1, 1, 2, 3, dtype=torch.float64)
    _, log_det = model._to_logits(x, noise)
    # d logits / d noise = d logits / d (k + u): the Jacobian with respect to the 8-bit scale
    assert log_det.item() == pytest.approx(_jacobian_log_det(lambda u: model._to_logits(x, u)[0], noise).item(), abs=1e-9)


def test_the_density_over_8_bit_images_is_the_flow_density_over_the_logit_range():
    """Two pixels. The flow's density integrates to one over the logit plane, and the dequantized
    density summed over the 256^2 bins (each bin integrated over u) is the flow's mass over the image
    of the pixel range, (logit alpha, inf)^2 (the logit transform reaches only that part of the plane)."""
    model = _perturb(_model("realnvp_s1_b1", (1, 1, 2), channels=4), scale=0.4, seed=4)
    with torch.no_grad():
        model.flow.norm.loc.fill_(-2.5)  # much of the mass below logit(alpha), outside the pixel range
    a = math.log(0.05 / 0.95)  # logit(alpha)
    h = 0.06
    s = a + (torch.arange(-400, 600, dtype=torch.float64) + 0.5) * h  # cell edges at logit(alpha)
    s1, s2 = torch.meshgrid(s, s, indexing="ij")
    logits = torch.stack([s1, s2], -1).reshape(-1, 1, 1, 2)
    with torch.no_grad():
        z, log_det = model.flow(logits)
        log_q = -0.5 * (z.pow(2).sum(1) + 2 * math.log(2 * math.pi)) + log_det
    cells = log_q.exp() * h * h
    assert cells.sum().item() == pytest.approx(1.0, abs=2e-3)
    in_range = ((logits[:, 0, 0, 0] > a) & (logits[:, 0, 0, 1] > a))
    expected = cells[in_range].sum().item()

    m = 2  # midpoint rule with m x m points per bin
    k = torch.arange(256, dtype=torch.float64)
    u = (torch.arange(m, dtype=torch.float64) + 0.5) / m
    k1, k2, u1, u2 = torch.meshgrid(k, k, u, u, indexing="ij")
    x = torch.stack([k1, k2], -1).reshape(-1, 1, 1, 2) / 255
    noise = torch.stack([u1, u2], -1).reshape(-1, 1, 1, 2)
    with torch.no_grad():
        log_p = torch.cat([model.log_density(xc, nc)[0] for xc, nc in zip(x.split(65536), noise.split(65536))])
    total = torch.logsumexp(log_p, 0).exp().item() / m**2
    assert 0.5 < expected < 0.99  # this flow puts real mass outside the pixel range
    assert total == pytest.approx(expected, abs=3e-3)


def _expected_log_p_identity(k: np.ndarray, alpha: float, n: int = 20001) -> np.ndarray:
    """E_u log p(k + u) per pixel for the identity flow (logits ~ N(0, 1)), by a midpoint rule in numpy."""
    u = (np.arange(n) + 0.5) / n
    p = alpha + (1 - alpha) * (k[..., None] + u) / 256
    s = np.log(p) - np.log1p(-p)
    log_density = -0.5 * s**2 - 0.5 * np.log(2 * np.pi) + np.log(1 - alpha) - np.log(256) - np.log(p) - np.log1p(-p)
    return log_density.mean(-1)


def test_bits_per_dim_of_the_identity_flow_match_a_direct_computation():
    model = _model("realnvp_s1_b2", (1, 2, 2))  # zero output layers: every coupling is the identity
    k = np.array([[3, 17], [128, 200]])  # inside the range, where the density is nearly flat within a bin
    x = torch.from_numpy(k).double().view(1, 1, 2, 2) / 255
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(x, n_samples=20000)
    ours = out.log_px_z.mean().item()
    expected = _expected_log_p_identity(k.astype(np.float64), 0.05).sum()
    se = out.log_px_z.std().item() / math.sqrt(20000)
    assert ours == pytest.approx(expected, abs=4 * se + 1e-6)
    assert torch.equal(out.log_pz, torch.zeros_like(out.log_pz)) and torch.equal(out.log_qz, out.log_pz)
    # just below log P(k), the normal mass between the logits of the bin's edges (Jensen)
    from statistics import NormalDist

    logit = lambda v: math.log((0.05 + 0.95 * v / 256) / (1 - 0.05 - 0.95 * v / 256)) if v < 256 else math.inf  # noqa: E731
    log_bins = sum(math.log(NormalDist().cdf(logit(kk + 1)) - NormalDist().cdf(logit(kk))) for kk in k.flatten())
    assert log_bins - 0.01 < ours < log_bins


def test_variant_name_and_a_clear_error_for_a_shape_it_cannot_squeeze():
    v = parse_variant("realnvp_s2_b4")
    assert (v.family, v.steps, v.width) == ("realnvp", 2, 4)
    with pytest.raises(ValueError, match="unknown model variant"):
        parse_variant("realnvp_s2_b4_iwae5")
    with pytest.raises(ValueError, match=r"scale 3 has an odd side \(7x7\)"):
        _model("realnvp_s4_b1", (1, 28, 28))
    with pytest.raises(ValueError, match="8-bit images"):
        build_variant("realnvp_s2_b1", {}, (1, 28, 28), "bernoulli")


def test_a_pixel_flow_trains_and_evaluates_through_the_same_commands(tmp_path):
    from conftest import add_gray_dataset, tiny_params
    from flowvae.spec.run import RunSpec
    from flowvae.runs.evaluate import evaluate
    from flowvae.runs.train import Trainer

    params = tiny_params(tmp_path, epochs=2)
    add_gray_dataset(params, tmp_path, "gray", (1, 8, 8), "discretized_logistic", (128, 32, 32))
    params["profiles"]["test"]["pixel_flow"] = {"channels": 8}
    cfg = RunSpec.resolve(params, "test", "gray", "realnvp_s2_b1", 0)
    out = tmp_path / "run"
    Trainer(cfg, out).run()
    history = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert history[-1]["val_neg_elbo"] < history[0]["val_neg_elbo"]
    metrics = evaluate(cfg, out)
    assert metrics["estimator"] == "exact" and metrics["K"] == 1
    assert metrics["active_units"] is None and metrics["gap"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["bits_per_dim"]["neg_log_px"] == pytest.approx(metrics["neg_log_px"] / (64 * math.log(2)))
    assert json.loads((out / "eval.json").read_text())["estimator"] == "exact"
    with np.load(out / "samples.npz") as samples:
        assert samples["prior_samples"].shape[1:] == (1, 8, 8)
        assert np.allclose(samples["reconstructions"], samples["originals"])


def test_the_top_of_the_pixel_range_stays_finite_in_float32():
    model = _model("realnvp_s1_b1", (1, 1, 2), dtype=torch.float32)
    x = torch.ones(1, 1, 1, 2)  # k = 255
    noise = torch.full_like(x, 1 - 2**-24)  # the largest value torch.rand gives
    logits, log_det = model._to_logits(x, noise)
    assert torch.isfinite(logits).all() and torch.isfinite(log_det).all()
    assert logits.min().item() > 15  # logit of 1 - (1 - alpha) 2^-24 / 256


def test_the_input_layer_starts_from_the_first_batch_statistics():
    model = _model("realnvp_s2_b1", (1, 4, 4), dtype=torch.float32)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (64, 1, 4, 4)).float() / 255
    before = -model(x).log_px_z.mean().item()
    model.initialize(x)
    logits = model._to_logits(x, torch.rand_like(x))[0]
    z = (logits - model.flow.norm.loc) * torch.exp(-model.flow.norm.log_scale)
    assert z.mean().abs().item() < 0.2 and (z.std() - 1).abs().item() < 0.2
    assert -model(x).log_px_z.mean().item() < before  # a better start than the identity
