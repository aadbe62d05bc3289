"""Evaluation: importance sampling against the ELBO and against quadrature, objectives, active units."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import quadrature_log_px

from flowvae.runs.evaluate import LogMeanExp, active_units, curve_points, evaluate, importance_sample, is_curve
from flowvae.models.objectives import free_bits_kl, objective
from flowvae.data.batches import batches_for
from flowvae.models.build import build_model
from flowvae.runs.train import Trainer
from flowvae.models.contract import VAEOutput


@pytest.fixture
def trained(tiny, tmp_path):
    cfg = tiny("vae", epochs=3)
    out = tmp_path / "run"
    Trainer(cfg, out).run()
    return cfg, out


def test_per_image_values_are_saved_and_average_to_eval_json(trained):
    cfg, out = trained
    metrics = evaluate(cfg, out)
    first = (out / "per_image.npz").read_bytes()
    with np.load(out / "per_image.npz") as f:
        assert f["neg_log_px"].dtype == f["neg_elbo"].dtype == np.float64
        assert f["neg_log_px"].shape == f["neg_elbo"].shape == (metrics["n_test"],)
        assert abs(f["neg_log_px"].mean() - metrics["neg_log_px"]) < 1e-9
        assert abs(f["neg_elbo"].mean() - metrics["neg_elbo"]) < 1e-9
        assert (f["neg_elbo"] >= f["neg_log_px"] - 1e-9).mean() > 0.5  # the ELBO bounds IS-K from below on most images
    evaluate(cfg, out)
    assert (out / "per_image.npz").read_bytes() == first  # byte-reproducible like eval.json
    # metrics.json: the named numbers `dvc metrics show` lists, copied from eval.json
    headline = json.loads((out / "metrics.json").read_text())
    assert set(headline) == {"neg_elbo", "neg_log_px", "neg_log_px_se", "gap", "active_units", "K"}
    assert all(headline[k] == metrics[k] for k in headline)


def test_evaluate_writes_eval_json_and_samples(trained):
    cfg, out = trained
    metrics = evaluate(cfg, out)
    on_disk = json.loads((out / "eval.json").read_text())
    assert on_disk == metrics
    assert metrics["n_test"] == 32 and metrics["K"] == 16
    assert metrics["gap"] == pytest.approx(metrics["neg_elbo"] - metrics["neg_log_px"])
    assert metrics["neg_elbo"] == pytest.approx(metrics["recon"] + metrics["kl"])
    assert 0 < metrics["ess_fraction"] <= 1
    assert metrics["bits_per_dim"] is None
    assert [p["K"] for p in metrics["is_curve"]] == [1, 4, 16]
    with np.load(out / "samples.npz") as f:
        assert f["originals"].shape == f["reconstructions"].shape == (16, 1, 8, 8)
        assert f["prior_samples"].shape[1:] == (1, 8, 8)
        assert f["interpolations"].shape[:2] == (4, 8)


def test_is_estimate_is_above_elbo_and_tightens_with_k(trained):
    cfg, out = trained
    model = build_model(cfg)
    from flowvae.runs.checkpoint import load_weights

    load_weights(model, out / "model.safetensors")
    model.eval()
    test = batches_for(cfg, "test", 32, False, 0)
    torch.manual_seed(0)
    r = importance_sample(model, test, K=2048, device=torch.device("cpu"), max_batch=8192, curve_images=np.ones(32, dtype=bool))
    curve = {p["K"]: p["neg_log_px"] for p in is_curve(r["curve_log_w"], [1, 16, 256])}
    neg_elbo = float(-r["elbo"].mean())
    assert curve[1] == pytest.approx(neg_elbo)  # one sample per block is the ELBO itself
    assert curve[256] < curve[16] < curve[1]
    assert float(-r["log_px"].mean()) <= neg_elbo


def test_is_agrees_with_quadrature_for_a_2d_latent(tiny):
    cfg = tiny("vae", network={"kind": "mlp", "hidden": 16, "layers": 1, "z_dim": 2, "context_dim": 4})
    torch.manual_seed(1)
    model = build_model(cfg).double().eval()
    x = next(batches_for(cfg, "test", 4, False, 0).epoch(0)).double()
    exact = quadrature_log_px(model, x, 7.0, 561)
    with torch.no_grad():
        torch.manual_seed(2)
        acc = LogMeanExp(x.shape[0])
        for _ in range(10):
            out = model(x, n_samples=5000)
            acc.add(out.log_px_z + out.log_pz - out.log_qz)
    assert torch.allclose(acc.log_mean(), exact, atol=0.05), (acc.log_mean(), exact)


def test_iwae_with_one_sample_equals_elbo():
    torch.manual_seed(0)
    out = VAEOutput(
        log_px_z=torch.randn(1, 7) - 50, log_pz=torch.randn(1, 7) - 3, log_qz=torch.randn(1, 7), z=torch.randn(1, 7, 2), mu=torch.zeros(7, 2)
    )
    assert objective(out, "iwae").loss.item() == pytest.approx(objective(out, "elbo").loss.item(), rel=1e-6)
    out5 = VAEOutput(
        log_px_z=torch.randn(5, 7) - 50, log_pz=torch.randn(5, 7) - 3, log_qz=torch.randn(5, 7), z=torch.randn(5, 7, 2), mu=torch.zeros(7, 2)
    )
    assert objective(out5, "iwae").loss.item() < objective(out5, "elbo").loss.item()


def test_free_bits_floor_per_group():
    kl = torch.tensor([0.01, 0.5, 2.0]).expand(3, 4, 3)
    assert free_bits_kl(kl, 0.1).item() == pytest.approx(0.1 + 0.5 + 2.0)
    assert free_bits_kl(kl, 1.0).item() == pytest.approx(1.0 + 1.0 + 2.0)


def test_active_units_on_a_constructed_case():
    torch.manual_seed(0)
    n, k = 2000, 4
    signal = torch.zeros(n, 5)
    signal[:, 0] = torch.randn(n)  # Var 1: active
    signal[:, 1] = 0.2 * torch.randn(n)  # Var 0.04: active
    signal[:, 2] = 0.05 * torch.randn(n)  # Var 0.0025: inactive
    within = torch.ones(n, 5)  # posterior variance 1 around each mean: sample means are noisy
    samples = signal[None] + within.sqrt()[None] * torch.randn(k, n, 5)
    mean_z = samples.mean(0)
    var_z = samples.var(0, unbiased=True)
    assert active_units(mean_z, var_z, k) == 2
    assert active_units(mean_z, torch.zeros_like(var_z), k) == 5  # without the noise correction every unit looks active


def test_running_log_mean_exp_matches_direct_computation():
    torch.manual_seed(0)
    log_w = torch.randn(100, 3, dtype=torch.float64) * 30
    acc = LogMeanExp(3)
    for chunk in log_w.split(7):
        acc.add(chunk)
    direct = torch.logsumexp(log_w, 0) - math.log(100)
    assert torch.allclose(acc.log_mean(), direct)
    w = torch.exp(log_w - log_w.max(0).values)
    assert torch.allclose(acc.ess(), w.sum(0) ** 2 / (w**2).sum(0))


@pytest.mark.parametrize("net", [{"kind": "resnet", "channels": [4, 4, 4], "dense": 16, "z_dim": 2, "context_dim": 8}])
def test_inference_preparation_does_not_change_the_estimate(net):
    from flowvae.runs.inference import prepare_for_inference
    from flowvae.models.build import build_variant

    torch.manual_seed(0)
    model = build_variant("iaf_d1_w8", net, (1, 28, 28), "bernoulli").eval()
    x = (torch.rand(3, 1, 28, 28) < 0.3).float()
    torch.manual_seed(1)
    with torch.no_grad():
        before = model(x, n_samples=5)
    prepare_for_inference(model)
    torch.manual_seed(1)
    with torch.no_grad():
        after = model(x, n_samples=5)
    assert torch.allclose(before.log_px_z, after.log_px_z, atol=1e-3)
    assert torch.allclose(before.log_qz, after.log_qz, atol=1e-4)


def test_the_2d_manifold_decodes_the_normal_quantiles(tiny):
    from flowvae.runs.evaluate import figure_arrays, manifold

    cfg = tiny("iaf_d1_w8", network={"kind": "mlp", "hidden": 16, "layers": 1, "z_dim": 2, "context_dim": 4})
    model = build_model(cfg).eval()
    arrays = manifold(model, n=5)
    q = arrays["manifold_quantiles"]
    assert q == pytest.approx([-1.2816, -0.5244, 0.0, 0.5244, 1.2816], abs=1e-4)  # Phi^-1(0.1, 0.3, ..., 0.9)
    assert arrays["manifold"].shape == (5, 5, *cfg.image_shape)
    with torch.no_grad():  # row i, column j decodes z = (q[j], q[i])
        expected = model.decode_mean(torch.tensor([[q[3], q[1]]], dtype=torch.float32))[0]
    assert torch.allclose(torch.from_numpy(arrays["manifold"][1, 3]), expected)
    assert not np.allclose(arrays["manifold"][0, 0], arrays["manifold"][4, 4])
    x = next(batches_for(cfg, "test", 4, False, 0).epoch(0))
    assert "manifold" in figure_arrays(model, x, seed=0)
    wide = tiny("vae", network={"kind": "mlp", "hidden": 16, "layers": 1, "z_dim": 3, "context_dim": 4})
    assert "manifold" not in figure_arrays(build_model(wide).eval(), x, seed=0)


def test_late_improvement_measures_the_last_fifth_of_the_epochs():
    from flowvae.runs.evaluate import late_improvement

    history = [{"val_neg_elbo": v} for v in (100.0, 95.0, 93.0, 92.5, 92.4, 92.3, 92.0, 91.9, 90.0, 89.0)]
    assert late_improvement(history) == pytest.approx(91.9 - 89.0)  # best of the first 8 minus best of all 10
    assert late_improvement(history[:4]) is None
    flat = [{"val_neg_elbo": 90.0}] * 10
    assert late_improvement(flat) == 0.0



def test_curve_images_are_a_seeded_random_sample_named_in_eval_json(trained):
    from flowvae.runs.evaluate import seeded_subset

    cfg, out = trained
    first = seeded_subset(1000, 100)
    assert first.sum() == 100 and (seeded_subset(1000, 100) == first).all()  # the same images for every run
    assert first[:100].sum() < 30  # not the first images: a test file sorted by digit would give one digit
    metrics = evaluate(cfg, out)
    assert metrics["is_curve_images"] == 8  # the tiny profile's is_curve_points


def test_the_is_curve_runs_to_the_k_the_tables_print():
    assert curve_points([1, 4, 16, 64, 128], 1000) == [1, 4, 16, 64, 128, 1000]  # 8-bit MNIST in the quick profile
    assert curve_points([1, 4, 16, 64, 128], 128) == [1, 4, 16, 64, 128]
    assert curve_points([1, 10, 100, 1000, 5000], 128) == [1, 10, 100, 128]  # no point beyond the samples drawn
    assert curve_points([], 16) == [16]
