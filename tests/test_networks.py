"""Encoders and decoders: shapes on MNIST- and CIFAR-sized inputs, weight norm, settings."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from flowvae.models.build import build_variant
from flowvae.models.networks import ResNetDecoder, ResNetEncoder, build_networks
from flowvae.spec.settings import NETWORK_DEFAULTS, NetworkSettings


@pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 32, 32)])
def test_resnet_forward_pass(image_shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    z_dim, context, out_channels = 8, 5, 2 * image_shape[0]
    encoder = ResNetEncoder(image_shape, [16, 32, 32], 450, z_dim, context)
    decoder = ResNetDecoder(image_shape, [16, 32, 32], 450, z_dim, out_channels)
    x = torch.rand(3, *image_shape)
    mu, log_std, h = encoder(x)
    assert mu.shape == log_std.shape == (3, z_dim) and h.shape == (3, context)
    assert encoder.body[-2].in_features == 512  # flattened 4x4x32
    assert log_std.exp().max() < 0.5  # small initial posterior std
    assert decoder(mu).shape == (3, out_channels, *image_shape[1:])


def test_resnet_layers_are_all_weight_normalised() -> None:
    encoder, decoder = build_networks(NetworkSettings.from_params({"kind": "resnet", "z_dim": 4}), (3, 32, 32), 6, 6)
    kinds = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
    layers = [m for net in (encoder, decoder) for m in net.modules() if isinstance(m, kinds)]
    assert len(layers) > 20
    assert all(parametrize.is_parametrized(m, "weight") for m in layers)


def test_mlp_forward_pass() -> None:
    encoder, decoder = build_networks(NetworkSettings.from_params({"kind": "mlp", "hidden": 16, "layers": 3, "z_dim": 4}), (1, 28, 28), 7, 1)
    mu, log_std, h = encoder(torch.rand(2, 1, 28, 28))
    assert mu.shape == log_std.shape == (2, 4) and h.shape == (2, 7)
    assert decoder(mu).shape == (2, 1, 28, 28)
    assert sum(isinstance(m, nn.Linear) for m in encoder.modules()) == 4


def test_net_settings_fill_defaults_and_refuse_unknown_keys() -> None:
    assert NetworkSettings.from_params({"hidden": 8}).layers == 2
    assert NetworkSettings.from_params({"kind": "resnet"}).record()["channels"] == [16, 32, 32]
    assert "hidden" not in NetworkSettings.from_params({"kind": "resnet"}).record()
    with pytest.raises(ValueError, match="hiden"):
        NetworkSettings.from_params({"kind": "mlp", "hiden": 8})
    with pytest.raises(ValueError, match="dense"):
        NetworkSettings.from_params({"kind": "mlp", "dense": 8})
    with pytest.raises(ValueError, match="resnet"):
        NetworkSettings.from_params({"kind": "transformer"})


def test_made_layers_setting_reaches_every_iaf_step() -> None:
    assert NETWORK_DEFAULTS["mlp"]["made_layers"] == NETWORK_DEFAULTS["resnet"]["made_layers"] == 1
    net = {"kind": "mlp", "hidden": 16, "layers": 1, "z_dim": 4, "context_dim": 3}
    one = build_variant("iaf_d2_w16", net, (1, 8, 8), "bernoulli")
    two = build_variant("iaf_d2_w16", {**net, "made_layers": 2}, (1, 8, 8), "bernoulli")
    assert two.settings.made_layers == 2
    assert [len(s.hyper.made.deeper) for s in one.flow.steps] == [0, 0]
    assert [len(s.hyper.made.deeper) for s in two.flow.steps] == [1, 1]
    size = [sum(p.numel() for p in m.flow.parameters()) for m in (one, two)]
    assert size[1] == size[0] + 2 * (16 * 16 + 16)  # one more 16x16 masked layer per step


def _conv(c_in: int, c_out: int, kh: int, kw: int | None = None) -> int:
    """Parameters of one convolution (weight and bias)."""
    return c_out * c_in * kh * (kw or kh) + c_out


def _gated(c_in: int, c_out: int, kh: int, kw: int | None = None) -> int:
    """The Sylvester code's GatedConv2d / GatedConvTranspose2d: two convolutions h and g."""
    return 2 * _conv(c_in, c_out, kh, kw)


def test_gatedconv_osnf4_m8_has_the_sylvester_codes_parameter_count() -> None:
    """models/VAE.py of the Sylvester-flows code, layer by layer, for static MNIST, z = 64, 4 flows, M = 8."""
    z, k, m, feats = 64, 4, 8, 256
    encoder = (_gated(1, 32, 5) + _gated(32, 32, 5) + _gated(32, 64, 5) + _gated(64, 64, 5) + _gated(64, 64, 5)
               + _gated(64, 256, 7))
    q_z = 2 * (feats * z + z)  # q_z_mean, q_z_var
    amortized = sum(feats * n + n for n in (k * m * m, k * m, k * m, k * z * m, k * m))  # amor_d, diag1, diag2, q, b
    decoder = (_gated(z, 64, 7) + _gated(64, 64, 5) + _gated(64, 32, 5) + _gated(32, 32, 5) * 3 + _conv(32, 1, 1))
    model = build_variant("osnf4_m8", {"kind": "gatedconv"}, (1, 28, 28), "bernoulli")
    assert sum(p.numel() for p in model.parameters()) == encoder + q_z + amortized + decoder == 3_683_905


def test_gatedconv_categorical_output_layers_on_frey_faces_shape() -> None:
    z = 64
    model = build_variant("vae", {"kind": "gatedconv"}, (1, 28, 20), "categorical")
    decoder = (_gated(z, 64, 7, 5) + _gated(64, 64, 5) + _gated(64, 32, 5) + _gated(32, 32, 5) * 3
               + _conv(32, 256, 5) + _conv(256, 256, 1))
    assert sum(p.numel() for p in model.decoder.parameters()) == decoder
    x = torch.randint(0, 256, (2, 1, 28, 20)) / 255.0
    params = model.decoder(torch.randn(3, z))
    assert params.shape == (3, 256, 28, 20)
    out = model(x, n_samples=2)
    assert out.log_px_z.shape == (2, 2) and torch.isfinite(out.log_px_z).all()


def test_gated_layers_are_named_as_in_the_sylvester_code() -> None:
    """Each gated layer holds h and g, so a state dict maps onto the code's q_z_nn / p_x_nn layer by layer."""
    model = build_variant("vae", {"kind": "gatedconv"}, (1, 28, 28), "bernoulli")
    names = [n for n in model.state_dict() if n.startswith("encoder.body.0.")]
    assert names == ["encoder.body.0.h.weight", "encoder.body.0.h.bias", "encoder.body.0.g.weight", "encoder.body.0.g.bias"]
    layer = model.encoder.body[1]
    x = torch.randn(2, 32, 14, 14)
    torch.testing.assert_close(layer(x), layer.h(x) * torch.sigmoid(layer.g(x)))
    assert layer.h.stride == (2, 2) and layer.h.weight.shape == (32, 32, 5, 5)


def test_gatedconv_refuses_sizes_it_cannot_mirror() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        build_networks(NetworkSettings.from_params({"kind": "gatedconv"}), (1, 30, 28), 0, 1)
