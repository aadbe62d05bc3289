"""Encoders x -> (mu, log_std, h) and decoders z -> likelihood parameters.

mlp: `layers` dense ELU layers of `hidden` units each way.
resnet (the IAF paper's MNIST/CIFAR networks): three stride-2 3x3 ResNet blocks with
`channels` (16, 32, 32), each followed by a stride-1 block, flattened (28x28 inputs are
zero-padded to 32x32, giving 4x4x32 = 512), a dense ELU layer of `dense` units, then the
heads; the decoder mirrors it with transposed convolutions; every layer weight-normalised.
gatedconv (van den Berg et al. 2018, the Sylvester-flows code): five 5x5 gated convolutions with
32, 32, 64, 64, 64 channels (strides 1, 2, 1, 2, 1, padding 2) and a sixth of 256 channels whose
kernel spans the remaining H/4 x W/4 map; the decoder mirrors it with gated transposed convolutions
(64, 64, 32, 32, 32, 32) and ends in a 1x1 convolution for Bernoulli and discretized logistic data,
or a 5x5 convolution of 256 channels and a 1x1 one of 256 logits per channel for categorical data.
A gated layer computes h * sigmoid(g) from two convolutions of the same shape.
Their settings, with the posterior flow's sizes, are spec.settings.NetworkSettings.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from flowvae.spec.settings import NetworkSettings

_INITIAL_LOG_STD = -2.0  # resnet encoder: q0 starts with std about 0.14


def _split_head(out: Tensor, z_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """(mu, log_std, h) from the encoder's last layer."""
    return out[:, :z_dim], out[:, z_dim : 2 * z_dim], out[:, 2 * z_dim :]


class MLPEncoder(nn.Module):
    """Dense ELU encoder: x -> (mu, log_std, h)."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: int, layers: int, z_dim: int, context_size: int):
        super().__init__()
        self.z_dim = z_dim
        sizes = [math.prod(image_shape)] + [hidden] * layers
        self.body = nn.Sequential(
            nn.Flatten(), *[m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.ELU())]
        )
        self.head = nn.Linear(sizes[-1], 2 * z_dim + context_size)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Posterior base parameters and context for a batch (B, C, H, W)."""
        return _split_head(self.head(self.body(x)), self.z_dim)


class MLPDecoder(nn.Module):
    """Dense ELU decoder: z (N, D) -> parameters (N, out_channels, H, W)."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: int, layers: int, z_dim: int, out_channels: int):
        super().__init__()
        _, height, width = image_shape
        self.out_shape = (out_channels, height, width)
        sizes = [z_dim] + [hidden] * layers
        self.body = nn.Sequential(*[m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.ELU())])
        self.head = nn.Linear(sizes[-1], math.prod(self.out_shape))

    def forward(self, z: Tensor) -> Tensor:
        """Likelihood parameters for latents z."""
        return self.head(self.body(z)).view(-1, *self.out_shape)


def _wn(layer: nn.Module) -> nn.Module:
    """Weight-normalise a layer over its output units."""
    return weight_norm(layer, dim=1 if isinstance(layer, nn.ConvTranspose2d) else 0)


class ResBlock(nn.Module):
    """elu(skip(x) + conv(elu(conv(x)))), 3x3 kernels; resample is 'none', 'down' or 'up' (by 2)."""

    def __init__(self, c_in: int, c_out: int, resample: str = "none") -> None:
        super().__init__()
        if resample == "down":
            self.conv1 = _wn(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1))
            self.skip = _wn(nn.Conv2d(c_in, c_out, 1, stride=2))
        elif resample == "up":
            self.conv1 = _wn(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1))
            self.skip = _wn(nn.ConvTranspose2d(c_in, c_out, 2, stride=2))
        elif resample == "none":
            self.conv1 = _wn(nn.Conv2d(c_in, c_out, 3, padding=1))
            self.skip = nn.Identity() if c_in == c_out else _wn(nn.Conv2d(c_in, c_out, 1))
        else:
            raise ValueError(f"resample must be 'none', 'down' or 'up', not {resample!r}")
        self.conv2 = _wn(nn.Conv2d(c_out, c_out, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        """Residual update."""
        return F.elu(self.skip(x) + self.conv2(F.elu(self.conv1(x))))


def _padding(image_shape: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """Zero padding (left, right, top, bottom) that makes H and W multiples of 8."""
    _, height, width = image_shape
    ph, pw = -height % 8, -width % 8
    return (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)


class ResNetEncoder(nn.Module):
    """ResNet encoder: x -> (mu, log_std, h), with a small initial posterior std."""

    def __init__(
        self, image_shape: tuple[int, int, int], channels: list[int], dense: int, z_dim: int, context_size: int
    ):
        super().__init__()
        self.z_dim = z_dim
        self.pad = _padding(image_shape)
        c_in, height, width = image_shape
        blocks: list[nn.Module] = []
        for c in channels:
            blocks += [ResBlock(c_in, c, "down"), ResBlock(c, c)]
            c_in = c
        scale = 2 ** len(channels)
        flat = c_in * ((height + self.pad[2] + self.pad[3]) // scale) * ((width + self.pad[0] + self.pad[1]) // scale)
        self.body = nn.Sequential(*blocks, nn.Flatten(), _wn(nn.Linear(flat, dense)), nn.ELU())
        self.head = _wn(nn.Linear(dense, 2 * z_dim + context_size))
        with torch.no_grad():
            self.head.parametrizations.weight.original0[z_dim : 2 * z_dim] *= 0.1
            self.head.bias[z_dim : 2 * z_dim] = _INITIAL_LOG_STD

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Posterior base parameters and context for a batch (B, C, H, W)."""
        return _split_head(self.head(self.body(F.pad(x, self.pad))), self.z_dim)


class ResNetDecoder(nn.Module):
    """Mirror of ResNetEncoder: z (N, D) -> parameters (N, out_channels, H, W)."""

    def __init__(
        self, image_shape: tuple[int, int, int], channels: list[int], dense: int, z_dim: int, out_channels: int
    ):
        super().__init__()
        _, height, width = image_shape
        self.pad = _padding(image_shape)
        self.image_hw = (height, width)
        scale = 2 ** len(channels)
        self.grid = (
            channels[-1],
            (height + self.pad[2] + self.pad[3]) // scale,
            (width + self.pad[0] + self.pad[1]) // scale,
        )
        rev = list(channels[::-1])
        blocks: list[nn.Module] = []
        for c, c_next in zip(rev, rev[1:] + rev[-1:]):
            blocks += [ResBlock(c, c), ResBlock(c, c_next, "up")]
        self.dense = nn.Sequential(
            _wn(nn.Linear(z_dim, dense)), nn.ELU(), _wn(nn.Linear(dense, math.prod(self.grid))), nn.ELU()
        )
        self.body = nn.Sequential(*blocks, _wn(nn.Conv2d(rev[-1], out_channels, 3, padding=1)))

    def forward(self, z: Tensor) -> Tensor:
        """Likelihood parameters for latents z, cropped to the image size."""
        out = self.body(self.dense(z).view(-1, *self.grid))
        left, _, top, _ = self.pad
        return out[:, :, top : top + self.image_hw[0], left : left + self.image_hw[1]]


class GatedConv2d(nn.Module):
    """h(x) * sigmoid(g(x)) for two convolutions (or transposed convolutions) h and g of the same shape.

    Kept as two layers, as the Sylvester code has them: one convolution of twice the channels, split
    afterwards, measured slower on a CPU (python -m flowvae.bench --only gatedconv).
    """

    def __init__(self, c_in: int, c_out: int, kernel, stride: int, padding: int, output_padding: int = 0,
                 transposed: bool = False) -> None:
        super().__init__()
        if transposed:
            self.h, self.g = (nn.ConvTranspose2d(c_in, c_out, kernel, stride, padding, output_padding) for _ in range(2))
        else:
            self.h, self.g = (nn.Conv2d(c_in, c_out, kernel, stride, padding) for _ in range(2))

    def forward(self, x: Tensor) -> Tensor:
        """The gated output."""
        return self.h(x) * torch.sigmoid(self.g(x))


GATED_CHANNELS = (32, 32, 64, 64, 64)
GATED_STRIDES = (1, 2, 1, 2, 1)
GATED_FEATURES = 256


def _gated_grid(image_shape: tuple[int, int, int]) -> tuple[int, int]:
    """The H/4 x W/4 map the last gated convolution spans; ValueError unless H and W are multiples of 4."""
    _, height, width = image_shape
    if height % 4 or width % 4:
        raise ValueError(f"gatedconv networks need image height and width divisible by 4, not {height}x{width}")
    return height // 4, width // 4


class GatedConvEncoder(nn.Module):
    """The Sylvester-flows encoder: gated convolutions to 256 features, then one linear head."""

    def __init__(self, image_shape: tuple[int, int, int], z_dim: int, context_size: int) -> None:
        super().__init__()
        self.z_dim = z_dim
        layers: list[nn.Module] = []
        c_in = image_shape[0]
        for c, stride in zip(GATED_CHANNELS, GATED_STRIDES):
            layers.append(GatedConv2d(c_in, c, 5, stride, 2))
            c_in = c
        layers += [GatedConv2d(c_in, GATED_FEATURES, _gated_grid(image_shape), 1, 0), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(GATED_FEATURES, 2 * z_dim + context_size)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Posterior base parameters and context for a batch (B, C, H, W)."""
        return _split_head(self.head(self.body(x)), self.z_dim)


class GatedConvDecoder(nn.Module):
    """The Sylvester-flows decoder: z as a 1x1 map through gated transposed convolutions, then the output layers."""

    def __init__(self, image_shape: tuple[int, int, int], z_dim: int, out_channels: int, categorical: bool) -> None:
        super().__init__()
        self.z_dim = z_dim
        channels = (64, 64, 32, 32, 32, 32)
        strides = (1, 1, 2, 1, 2, 1)
        layers: list[nn.Module] = [GatedConv2d(z_dim, channels[0], _gated_grid(image_shape), 1, 0, transposed=True)]
        for c_in, c, stride in zip(channels, channels[1:], strides[1:]):
            layers.append(GatedConv2d(c_in, c, 5, stride, 2, output_padding=stride - 1, transposed=True))
        if categorical:
            layers += [nn.Conv2d(channels[-1], GATED_FEATURES, 5, 1, 2), nn.Conv2d(GATED_FEATURES, out_channels, 1)]
        else:
            layers.append(nn.Conv2d(channels[-1], out_channels, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """Likelihood parameters for latents z."""
        return self.body(z.reshape(-1, self.z_dim, 1, 1))


def build_networks(
    s: NetworkSettings, image_shape: tuple[int, int, int], context_size: int, out_channels: int,
    categorical: bool = False,
) -> tuple[nn.Module, nn.Module]:
    """Encoder and decoder for the network settings `s`; `categorical` selects the gated-conv decoder's
    output layers for 256-way categorical data."""
    if s.kind == "gatedconv":
        return (
            GatedConvEncoder(image_shape, s.z_dim, context_size),
            GatedConvDecoder(image_shape, s.z_dim, out_channels, categorical),
        )
    if s.kind == "mlp":
        return (
            MLPEncoder(image_shape, s.hidden, s.layers, s.z_dim, context_size),
            MLPDecoder(image_shape, s.hidden, s.layers, s.z_dim, out_channels),
        )
    channels = list(s.channels)
    return (
        ResNetEncoder(image_shape, channels, s.dense, s.z_dim, context_size),
        ResNetDecoder(image_shape, channels, s.dense, s.z_dim, out_channels),
    )
