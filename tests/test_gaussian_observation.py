"""log p(x) under a Gaussian observation model by AIS (runs/gaussian_observation.py), against exact values of linear models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import add_gray_dataset, tiny_params

from flowvae.files.atomic import write_json, write_text
from flowvae.files.provenance import SourceState
from flowvae.models.build import build_variant
from flowvae.runs import ais
from flowvae.runs.checkpoint import run_metadata, save_weights
from flowvae.runs.gaussian_observation import (
    AIS_SEED, ais_log_px, evaluate_decoder, evaluate_gan, gaussian_observation_log_px, select_sigma,
)
from flowvae.spec.layout import RunFolder
from flowvae.spec.run import RunSpec
from flowvae.spec.settings import AISSettings

SHAPE = (1, 2, 3)  # six pixels


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread beats two contending ones


def linear_mean(seed: int, latent_dim: int, shape: tuple[int, int, int], scale: float):
    """mean(z) = W z + b (float64) with b around 0.5, and W, b."""
    g = torch.Generator().manual_seed(seed)
    pixels = math.prod(shape)
    W = scale * torch.randn(pixels, latent_dim, generator=g, dtype=torch.float64)
    b = 0.5 + 0.1 * torch.randn(pixels, generator=g, dtype=torch.float64)
    return (lambda z: (z @ W.T + b).view(-1, *shape)), W, b


def exact_log_px(W: torch.Tensor, b: torch.Tensor, sigma: float, x: torch.Tensor) -> torch.Tensor:
    """log N(x; b, W W^T + sigma^2 I) of flattened images x."""
    cov = W @ W.T + sigma**2 * torch.eye(W.shape[0], dtype=W.dtype)
    return torch.distributions.MultivariateNormal(b, cov).log_prob(x.flatten(1))


def simulate(W: torch.Tensor, b: torch.Tensor, sigma: float, n: int, seed: int) -> torch.Tensor:
    """n images from the linear model, flattened, float64."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, W.shape[1], generator=g, dtype=torch.float64)
    return z @ W.T + b + sigma * torch.randn(n, W.shape[0], generator=g, dtype=torch.float64)


def test_ais_matches_the_exact_marginal_of_a_linear_generator_for_two_sigmas():
    mean, W, b = linear_mean(0, 2, SHAPE, 0.3)
    settings = AISSettings(T=1000, L=2, S=256, batch_size=6)
    for sigma in (0.1, 0.2):
        x = simulate(W, b, sigma, 6, seed=int(100 * sigma))
        r = ais_log_px(mean, 2, x.view(6, *SHAPE), sigma, settings, torch.Generator().manual_seed(1))
        error = r.log_px_unit - exact_log_px(W, b, sigma, x)
        assert error.abs().max() < 0.08, (sigma, error)


def test_eight_bit_scale_adds_d_log_256_to_the_unit_scale_value_of_the_dequantized_image():
    mean, W, b = linear_mean(1, 2, SHAPE, 0.3)
    sigma = 0.2
    k = torch.round(simulate(W, b, sigma, 6, seed=5).clamp(0, 1) * 255)
    r = gaussian_observation_log_px(mean, 2, (k / 255).view(6, *SHAPE), sigma, AISSettings(T=1000, L=2, S=256, batch_size=6),
                                    torch.Generator().manual_seed(2))
    assert torch.equal(torch.floor(r.x.flatten(1) * 256), k)  # x = (k + u) / 256 with u in [0, 1)
    assert not torch.equal(r.x.flatten(1), (k + 0.5) / 256)  # u is random, not the bin's centre
    exact_unit = exact_log_px(W, b, sigma, r.x)
    d = math.prod(SHAPE)
    assert torch.allclose(-r.log_px, -r.log_px_unit + d * math.log(256), atol=1e-9)
    assert (-r.log_px - (-exact_unit + d * math.log(256))).abs().max() < 0.08


@pytest.mark.parametrize("sigma_true", [0.06, 0.12])
def test_sigma_selection_picks_the_sigma_that_generated_the_data(sigma_true):
    shape = (1, 4, 4)
    mean, W, b = linear_mean(3, 2, shape, 0.1)
    x = simulate(W, b, sigma_true, 24, seed=7).clamp(0, 1 - 1e-9)
    images = torch.floor(x * 256) / 255  # 8-bit images k / 255 whose dequantizations lie near x
    grid = (0.03, 0.06, 0.12, 0.24)
    sigma, rows = select_sigma(mean, 2, images.view(24, *shape), grid, AISSettings(T=100, L=2, S=16, batch_size=24),
                               torch.Generator().manual_seed(4))
    assert sigma == sigma_true
    assert [row["sigma"] for row in rows] == list(grid)
    assert min(rows, key=lambda row: row["neg_log_px_valid"])["sigma"] == sigma_true
    with pytest.raises(ValueError, match="positive"):
        select_sigma(mean, 2, images.view(24, *shape), (0.1, 0.0), AISSettings(T=2), torch.Generator())


def gan_run(tmp_path, source: SourceState, model: str = "gan") -> tuple[RunSpec, RunFolder, torch.nn.Module]:
    """A tiny untrained GAN (or another model) on 8-bit 4x4 images, saved as a finished run folder is (weights,
    settings.json, train.jsonl)."""
    params = tiny_params(tmp_path)
    add_gray_dataset(params, tmp_path, "gray", (1, 4, 4), "discretized_logistic", (32, 16, 16))
    profile = params["profiles"]["test"]
    profile["gan"] = {"latent_dim": 3, "generator_hidden": [8, 8], "discriminator_hidden": [8]}
    profile["ais"] = {"T": 6, "L": 2, "S": 4, "images": 8, "batch_size": 4}
    spec = RunSpec.resolve(params, "test", "gray", model, 0)
    folder = RunFolder(tmp_path / "run")
    torch.manual_seed(0)
    gan = build_variant(model, spec.network, spec.image_shape, spec.likelihood)
    metadata = run_metadata(spec, 2, source)
    save_weights(gan.state_dict(), folder.model, metadata)
    write_json(folder.settings, metadata)
    write_text(folder.history, "".join(json.dumps({"epoch": e, "d_loss": 1.0, "g_loss": 1.0}) + "\n" for e in (1, 2)))
    return spec, folder, gan


def test_evaluate_gan_writes_eval_json_with_sigma_grid_scale_and_provenance(tmp_path):
    source = SourceState("0" * 40)
    spec, folder, gan = gan_run(tmp_path, source)
    before = {p.name for p in folder.root.iterdir()}
    ev = evaluate_gan(spec, folder.root, threads=1, device="cpu", source=source, sigma_grid=(0.1, 0.3), grid_T=3, grid_images=8)
    assert json.loads(folder.eval.read_text()) == ev
    assert ev["model"] == "gan" and ev["estimator"] == "ais_gaussian_observation" and ev["dataset"] == "gray"
    assert ev["commit"] == "0" * 40 and ev["source_diff_sha256"] is None and ev["train_commit"] == "0" * 40
    assert set(ev["versions"]) == {"python", "torch", "numpy"} and ev["device"] == "cpu"
    assert ev["sigma"] in (0.1, 0.3)
    assert [row["sigma"] for row in ev["sigma_grid"]] == [0.1, 0.3]
    assert ev["sigma"] == min(ev["sigma_grid"], key=lambda row: row["neg_log_px_valid"])["sigma"]
    assert ev["sigma_selection"]["n_images"] == 8 and ev["sigma_selection"]["ais"]["T"] == 3
    assert {k: ev["ais"][k] for k in ("T", "L", "S", "images")} == {"T": 6, "L": 2, "S": 4, "images": 8}
    assert ev["ais"]["initial"] == "prior"
    d = 16
    assert ev["n_images"] == 8 and ev["n_test"] == 16 and ev["latent_dim"] == 3 and ev["epochs"] == 2
    assert ev["n_params"] == 3 * 8 + 8 + 8 * 8 + 8 + 2 * 8 + 8 * d + d and ev["n_params_of"] == "generator"
    assert math.isfinite(ev["neg_log_px"]) and ev["neg_log_px_se"] > 0
    assert ev["bits_per_dim"]["neg_log_px"] == pytest.approx(ev["neg_log_px"] / (d * math.log(2)))
    assert ev["neg_log_px_unit_scale"] == pytest.approx(ev["neg_log_px"] - d * math.log(256))
    per_image = np.load(folder.per_image)
    assert per_image["gaussian_obs_neg_log_px"].mean() == pytest.approx(ev["neg_log_px"])
    index, images, _ = ais.test_images(spec, "cpu", 8)  # the images `--estimator ais` evaluates
    assert np.array_equal(per_image["index"], index)
    # AIS of the generator in eval mode (batch norm's running statistics, not those of the S * B latents)
    again = gaussian_observation_log_px(gan.generator.eval().mean_image, 3, images, ev["sigma"], spec.eval.ais,
                                        torch.Generator().manual_seed(spec.seed + AIS_SEED))
    assert np.allclose(-again.log_px.numpy(), per_image["gaussian_obs_neg_log_px"])
    samples = np.load(folder.samples)
    assert samples["prior_samples"].shape == (64, 1, 4, 4) and samples["prior_samples"].dtype == np.float32
    assert samples["originals"].shape == (16, 1, 4, 4)
    assert 0 <= samples["prior_samples"].min() and samples["prior_samples"].max() <= 1
    timings = json.loads(folder.eval_timings.read_text())
    assert timings["eval_seconds"] > 0 and not any("seconds" in k for k in ev)
    after = {p.name for p in folder.root.iterdir()}
    assert after - before == {"eval.json", "metrics.json", "eval_timings.json", "samples.npz", "per_image.npz"}  # nothing temporary
    folder.model.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        evaluate_gan(spec, folder.root, device="cpu", source=source)


def test_evaluate_decoder_applies_the_gan_evaluation_to_a_vae_decoder_mean_and_refuses_other_families(tmp_path):
    source = SourceState("0" * 40)
    spec, folder, vae = gan_run(tmp_path, source, model="vae")
    r = evaluate_decoder(spec, folder.root, threads=1, device="cpu", source=source, sigma_grid=(0.1, 0.3), grid_T=3, grid_images=8)
    assert json.loads((folder.root / "gaussian_obs.json").read_text()) == r
    assert r["model"] == "vae" and r["estimator"] == "ais_gaussian_observation" and r["commit"] == "0" * 40
    assert r["sigma"] == min(r["sigma_grid"], key=lambda row: row["neg_log_px_valid"])["sigma"]
    assert "discretized_logistic mean image" in r["mean_of"] and r["seconds"]["ais_seconds"] > 0
    per_image = np.load(folder.root / "gaussian_obs.npz")
    assert per_image["gaussian_obs_neg_log_px"].mean() == pytest.approx(r["neg_log_px"], abs=1e-9)
    index, images, _ = ais.test_images(spec, "cpu", 8)
    assert np.array_equal(per_image["index"], index)
    again = gaussian_observation_log_px(vae.eval().decode_mean, vae.latent_dim, images, r["sigma"], spec.eval.ais,
                                        torch.Generator().manual_seed(spec.seed + AIS_SEED))
    assert np.allclose(-again.log_px.numpy(), per_image["gaussian_obs_neg_log_px"])
    assert not folder.eval.exists()  # beside eval.json, never in its place

    spec, folder, _ = gan_run(tmp_path / "gan", source)
    with pytest.raises(ValueError, match="gan family is not one"):
        evaluate_decoder(spec, folder.root, device="cpu", source=source)
