"""PixelCNN and gated PixelCNN: the autoregressive property checked by gradients, probabilities that sum to one
over every image of a toy model, sampling on cropped rows equal to sampling on whole images, and a run
through train and evaluate."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from flowvae.models.build import build_variant
from flowvae.models.pixelcnn import MaskedConv2d

VARIANTS = ["pixelcnn_l2_c12", "pixelcnn_l2_c12_gated"]


def _perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return model.double()


def _model(name: str, shape, likelihood: str = "bernoulli", first_kernel: int = 5, kernel: int = 3):
    return _perturb(build_variant(name, {"first_kernel": first_kernel, "kernel": kernel}, shape, likelihood))


def _dependencies(f, x: torch.Tensor, out_channels_per_input: int) -> torch.Tensor:
    """dep[c, i, j, c2, i2, j2]: whether output subpixel (c, i, j) has a non-zero gradient with respect to input (c2, i2, j2)."""
    _, c, h, w = x.shape
    deps = torch.zeros(c, h, w, c, h, w, dtype=torch.bool)
    for ch, i, j in itertools.product(range(c), range(h), range(w)):
        xi = x.clone().requires_grad_(True)
        out = f(xi)[0, ch * out_channels_per_input : (ch + 1) * out_channels_per_input, i, j].sum()
        (grad,) = torch.autograd.grad(out, xi)
        deps[ch, i, j] = grad[0] != 0
    return deps


def _before(c: int, h: int, w: int, strict: bool) -> torch.Tensor:
    """allowed[c, i, j, c2, i2, j2]: input (c2, i2, j2) comes before output (c, i, j) (strict) or is it (not strict)."""
    order = torch.arange(h * w).view(1, h, w) * c + torch.arange(c).view(c, 1, 1)
    a, b = order.view(c, h, w, 1, 1, 1), order.view(1, 1, 1, c, h, w)
    return b < a if strict else b <= a


@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_a_masked_convolution_sees_only_earlier_pixels(mask_type):
    torch.manual_seed(0)
    conv = MaskedConv2d(3, 6, (5, 5), mask_type, image_channels=3).double()
    x = torch.rand(1, 3, 5, 5, dtype=torch.float64)
    deps = _dependencies(conv, x, 2)
    # Output group c sees earlier pixels, and at its own pixel channels < c (A) or <= c (B).
    allowed = _before(3, 5, 5, strict=mask_type == "A")
    assert not (deps & ~allowed).any()
    assert deps[:, 2, 2, :, 1, 1].all()  # a pixel up-left inside the kernel is seen
    assert deps[2, 2, 2, 1, 2, 2] and (deps[1, 2, 2, 1, 2, 2].item() == (mask_type == "B"))


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_output_depends_only_on_earlier_subpixels(name, channels):
    likelihood = "bernoulli" if channels == 1 else "categorical"
    model = _model(name.replace("c12", "c12" if channels == 1 else "c18"), (channels, 6, 6), likelihood, first_kernel=3)
    x = torch.rand(1, channels, 6, 6, dtype=torch.float64)
    deps = _dependencies(model.logits, x, model.outputs_per_channel)
    assert not (deps & ~_before(channels, 6, 6, strict=True)).any()
    # Pixel (3, 3) sees its left neighbour and the pixel above it.
    assert deps[0, 3, 3, 0, 3, 2] and deps[0, 3, 3, 0, 2, 3]
    if channels == 3:
        assert deps[2, 3, 3, 0, 3, 3] and deps[2, 3, 3, 1, 3, 3]  # B sees R and G of its own pixel
    # With 3x3 kernels throughout, the plain stack cannot see the pixel one row up and two columns right (its blind
    # spot, van den Oord et al. 2016b, Fig. 1); the gated stacks can.
    assert deps[0, 5, 3, 0, 4, 5].item() == ("gated" in name)


@pytest.mark.parametrize("name", VARIANTS)
def test_the_probabilities_of_all_binary_2x2_images_sum_to_one(name):
    model = _model(name, (1, 2, 2))
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64).view(16, 1, 2, 2)
    total = torch.logsumexp(model(images).log_px_z[0], 0)
    assert total.item() == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("name", VARIANTS)
def test_the_probabilities_of_all_8bit_1x2_images_sum_to_one(name):
    model = _model(name, (1, 1, 2), "discretized_logistic")
    k = torch.arange(256, dtype=torch.float64) / 255
    images = torch.stack(torch.meshgrid(k, k, indexing="ij"), -1).reshape(-1, 1, 1, 2)
    total = torch.logsumexp(model.log_prob(images), 0)
    assert total.item() == pytest.approx(0.0, abs=1e-9)


def _sample_on_whole_images(model, n: int, generator: torch.Generator) -> torch.Tensor:
    c, h, w = model.image_shape
    x = torch.zeros(n, c, h, w, dtype=torch.float64)
    k = model.outputs_per_channel
    for i, j, ch in itertools.product(range(h), range(w), range(c)):
        x[:, ch, i, j] = model._draw(model.logits(x)[:, ch * k : (ch + 1) * k, i, j], generator)
    return x


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("likelihood", ["bernoulli", "categorical"])
def test_sampling_on_the_receptive_window_equals_sampling_on_whole_images(name, likelihood):
    model = _model(name, (1, 9, 11), likelihood, first_kernel=3)
    assert model.stack.rows_above < 8 and 2 * model.stack.cols_around + 1 < 11  # rows and columns are cropped
    fast = model.sample(5, generator=torch.Generator().manual_seed(3))
    slow = _sample_on_whole_images(model, 5, torch.Generator().manual_seed(3))
    assert torch.equal(fast, slow)
    assert 0 < fast.mean() < 1


def test_the_builder_names_what_it_cannot_model():
    with pytest.raises(ValueError, match="multiple of 2 x 3 image channels"):
        build_variant("pixelcnn_l2_c8", {}, (3, 4, 4), "categorical")
    with pytest.raises(ValueError, match="first_kernel must be odd"):
        build_variant("pixelcnn_l2_c8", {"first_kernel": 4}, (1, 4, 4), "bernoulli")


@pytest.mark.parametrize("name", ["pixelcnn_l2_c16_gated"])
def test_a_pixelcnn_trains_and_evaluates_through_the_same_commands(tmp_path, name):
    from conftest import add_gray_dataset, tiny_params
    from flowvae.runs.evaluate import evaluate
    from flowvae.runs.train import Trainer
    from flowvae.spec.run import RunSpec

    params = tiny_params(tmp_path, epochs=2)
    add_gray_dataset(params, tmp_path, "gray", (1, 6, 6), "discretized_logistic", (128, 32, 32))
    for dataset in ("stripes", "gray"):
        spec = RunSpec.resolve(params, "test", dataset, name, 0)
        out = tmp_path / dataset
        Trainer(spec, out).run()
        history = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
        assert history[-1]["val_neg_elbo"] < history[0]["val_neg_elbo"]
        metrics = evaluate(spec, out)
        assert metrics["estimator"] == "exact" and metrics["K"] == 1 and metrics["latent_dim"] == 0
        assert metrics["active_units"] is None and metrics["gap"] == pytest.approx(0.0, abs=1e-9)
        with np.load(out / "samples.npz") as samples:
            assert samples["prior_samples"].shape[1:] == spec.image_shape
            levels = samples["prior_samples"] * (1 if dataset == "stripes" else 255)
            assert np.allclose(levels, np.round(levels), atol=1e-4)  # binary, or 8-bit levels k/255
            assert "interpolations" not in samples
    assert metrics["bits_per_dim"]["neg_log_px"] == pytest.approx(metrics["neg_log_px"] / (36 * math.log(2)))
