"""Encoders and decoders: shapes on MNIST- and CIFAR-sized inputs, weight norm, settings."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from flowvae.build import build_model
from flowvae.networks import NET_DEFAULTS, ResNetDecoder, ResNetEncoder, build_networks, net_settings


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
    encoder, decoder = build_networks({"kind": "resnet", "z_dim": 4}, (3, 32, 32), 6, 6)
    kinds = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
    layers = [m for net in (encoder, decoder) for m in net.modules() if isinstance(m, kinds)]
    assert len(layers) > 20
    assert all(parametrize.is_parametrized(m, "weight") for m in layers)


def test_mlp_forward_pass() -> None:
    encoder, decoder = build_networks({"kind": "mlp", "hidden": 16, "layers": 3, "z_dim": 4}, (1, 28, 28), 7, 1)
    mu, log_std, h = encoder(torch.rand(2, 1, 28, 28))
    assert mu.shape == log_std.shape == (2, 4) and h.shape == (2, 7)
    assert decoder(mu).shape == (2, 1, 28, 28)
    assert sum(isinstance(m, nn.Linear) for m in encoder.modules()) == 4


def test_net_settings_fill_defaults_and_refuse_unknown_keys() -> None:
    assert net_settings({"hidden": 8})["layers"] == 2
    assert net_settings({"kind": "resnet"})["channels"] == [16, 32, 32]
    with pytest.raises(ValueError, match="hiden"):
        net_settings({"kind": "mlp", "hiden": 8})
    with pytest.raises(ValueError, match="dense"):
        net_settings({"kind": "mlp", "dense": 8})
    with pytest.raises(ValueError, match="resnet"):
        net_settings({"kind": "transformer"})


def test_made_layers_setting_reaches_every_iaf_step() -> None:
    assert NET_DEFAULTS["mlp"]["made_layers"] == NET_DEFAULTS["resnet"]["made_layers"] == 1
    net = {"kind": "mlp", "hidden": 16, "layers": 1, "z_dim": 4, "context_dim": 3}
    one = build_model("iaf_d2_w16", net, (1, 8, 8), "bernoulli")
    two = build_model("iaf_d2_w16", {**net, "made_layers": 2}, (1, 8, 8), "bernoulli")
    assert two.settings["made_layers"] == 2
    assert [len(s.hyper.made.deeper) for s in one.flow.steps] == [0, 0]
    assert [len(s.hyper.made.deeper) for s in two.flow.steps] == [1, 1]
    size = [sum(p.numel() for p in m.flow.parameters()) for m in (one, two)]
    assert size[1] == size[0] + 2 * (16 * 16 + 16)  # one more 16x16 masked layer per step
