"""Inference preparation for both model kinds: weight-norm folding, channels_last, compiled and bfloat16 decoders."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parametrize

from flowvae.models.build import build_variant
from flowvae.runs.inference import BFloat16Decoder, fold_weight_norm, has_convolutions, prepare_for_inference
from flowvae.models.ladder import LadderVAE, WNConv2d, autoregressive_mask
from flowvae.models.contract import VAEOutput

LADDER = {"channels": 8, "z_channels": 2}
SHAPE = (3, 8, 8)


@pytest.fixture(autouse=True)
def seed():
    """Fix the seed of every test."""
    torch.manual_seed(0)


def images(n: int) -> torch.Tensor:
    """Random 8-bit images k/255 of SHAPE."""
    return torch.randint(0, 256, (n, *SHAPE)) / 255


def ladder(posterior: str = "iaf") -> tuple[LadderVAE, torch.Tensor]:
    """A tiny initialised two-rung ladder and the batch it was initialised on."""
    m = build_variant(f"resvae_r2_{posterior}", LADDER, SHAPE, "discretized_logistic")
    x = images(4)
    m.initialize(x)
    return m.eval(), x


@torch.no_grad()
def run(m: LadderVAE, x: torch.Tensor, n_samples: int = 3, seed: int = 1) -> VAEOutput:
    """One forward pass with fixed noise."""
    torch.manual_seed(seed)
    return m(x, n_samples=n_samples)


def assert_outputs_close(a: VAEOutput, b: VAEOutput, atol: float, rtol: float) -> None:
    for name in ("log_px_z", "log_pz", "log_qz", "z", "kl_groups"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=atol, rtol=rtol, msg=name)


def test_has_convolutions_recognises_every_convolutional_model() -> None:
    assert has_convolutions(ladder()[0])  # weight-normalised WNConv2d only
    assert has_convolutions(build_variant("vae", {"kind": "resnet", "z_dim": 4}, (1, 28, 28), "bernoulli"))
    assert not has_convolutions(build_variant("vae", {"kind": "mlp", "z_dim": 4}, (1, 28, 28), "bernoulli"))


@pytest.mark.parametrize("transpose", [False, True])
def test_folded_wn_conv_computes_the_same_function(transpose: bool) -> None:
    degrees = torch.arange(4)
    mask = None if transpose else autoregressive_mask(degrees, degrees, 3, strict=False)
    conv = WNConv2d(4, 4, stride=2 if transpose else 1, transpose=transpose, mask=mask)
    with torch.no_grad():
        conv.g.normal_()
        conv.bias.normal_()
    x = torch.randn(2, 4, 5, 5)
    before = conv(x)
    conv.fold()
    assert conv.folded is not None and "folded" not in conv.state_dict()
    torch.testing.assert_close(conv(x), before, atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        conv.v.mul_(2.0).add_(1.0)  # a folded convolution no longer reads v
    torch.testing.assert_close(conv(x), before, atol=1e-6, rtol=1e-6)


def test_prepare_folds_the_ladders_weight_norm_and_keeps_its_outputs() -> None:
    m, x = ladder()
    eager = run(m, x)
    prepare_for_inference(m, channels_last=False)
    convs = [c for c in m.modules() if isinstance(c, WNConv2d)]
    assert convs and all(c.folded is not None for c in convs)
    assert_outputs_close(run(m, x), eager, atol=1e-5, rtol=1e-5)


def test_prepare_folds_torch_weight_norm_of_the_resnet_vae() -> None:
    m = build_variant("iaf_d1_w8", {"kind": "resnet", "z_dim": 4, "context_dim": 4}, (1, 28, 28), "bernoulli").eval()
    x = (torch.rand(2, 1, 28, 28) > 0.5).float()
    eager = run(m, x)
    fold_weight_norm(m)
    assert not any(parametrize.is_parametrized(layer) for layer in m.modules())
    assert_outputs_close(run(m, x), eager, atol=1e-4, rtol=1e-5)


def test_ladder_runs_channels_last_with_the_same_outputs() -> None:
    m, x = ladder()
    eager = run(m, x)
    prepare_for_inference(m)
    assert m.encoder.stem.folded.is_contiguous(memory_format=torch.channels_last)
    assert m.decoder.flows[0].hyper.conv_in.folded.is_contiguous(memory_format=torch.channels_last)
    assert_outputs_close(run(m, x), eager, atol=1e-4, rtol=1e-4)


def test_ladder_forward_goes_through_the_compiled_decoder() -> None:
    """Compiling `decoder` compiles the ladder's whole top-down pass, the part that runs on all S*B samples."""
    from torch._dynamo.utils import counters

    m, x = ladder()
    eager = run(m, x)
    graphs = counters["stats"]["unique_graphs"]
    prepare_for_inference(m, compile_decoder=True)
    calls = []
    m.decoder.register_forward_hook(lambda module, args, out: calls.append(args[0][0].shape[0]))
    compiled = run(m, x)
    assert calls == [3 * 4] and counters["stats"]["unique_graphs"] > graphs
    assert_outputs_close(compiled, eager, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("posterior", ["gauss", "iaf"])
def test_ladder_with_a_bfloat16_decoder(posterior: str) -> None:
    """Within 1 nat per image of float32 in every term (values of about 1000 nats), returned in float32."""
    m, x = ladder(posterior)
    reference = run(m, x)
    prepare_for_inference(m, decoder_bf16=True)
    assert isinstance(m.decoder, BFloat16Decoder)
    out = run(m, x)
    assert out.log_px_z.dtype == out.log_qz.dtype == out.z.dtype == torch.float32
    assert_outputs_close(out, reference, atol=1.0, rtol=0.0)
    assert (out.log_px_z - reference.log_px_z).abs().max() > 0  # bfloat16 did run
    with torch.no_grad():
        samples = m.sample(2)
        assert samples.dtype == torch.float32 and m.decode_mean(m.encode_mean(x)).shape == x.shape


def test_vae_with_a_bfloat16_decoder() -> None:
    m = build_variant("iaf_d1_w8", {"kind": "mlp", "hidden": 16, "layers": 1, "z_dim": 4}, (1, 8, 8), "bernoulli")
    x = (torch.rand(3, 1, 8, 8) > 0.5).float()
    reference = run(m, x)
    prepare_for_inference(m, decoder_bf16=True)
    out = run(m, x)
    assert out.log_px_z.dtype == torch.float32
    torch.testing.assert_close(out.log_px_z, reference.log_px_z, atol=0.5, rtol=0.0)
