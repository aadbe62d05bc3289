"""Real NVP on pixels (Dinh et al. 2017): a flow used directly as a density model of 8-bit images.

x (k/255) -> dequantize y = (k + u) / 256, u ~ U[0, 1) -> logit(alpha + (1 - alpha) y) -> multi-scale
coupling flow -> z ~ N(0, I). log P(k) >= E_u log p(k + u), the density of the dequantized image on
[0, 256)^D, with every Jacobian (dequantization scale, logit, couplings) accounted for (Sec. 4.1), so
-log p in nats per image and bits/dim compare with the discretized likelihoods of the VAEs.

Each scale but the last: 3 checkerboard couplings, a squeeze, 3 channel-wise couplings, then half
of the channels are factored out as latents; the last scale: 4 checkerboard couplings (Sec. 3.6).
Departures from the paper: no batch normalisation in the s/t networks; in the flow, one affine layer
per input value, set from the first training batch (PixelNorm), stands in for it; plain 3x3
convolutions in the s/t ResNets. The scale is s = scale * tanh(raw), as in the paper.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from flowvae.models.likelihoods import Likelihood, get_likelihood
from flowvae.models.contract import LatentVariableModel, VAEOutput
from flowvae.spec.settings import PixelFlowSettings
from flowvae.spec.variants import Variant

_LOG_2PI = math.log(2.0 * math.pi)
BINS = 256
class UniformDequantization(Likelihood):
    """The observation model of a pixel flow: 8-bit values k, dequantized as k + U[0, 1).

    The flow computes log p itself (RealNVPDensity.forward); this object names the model in
    descriptions and maps the flow's images to [0, 1].
    """

    name = "uniform_dequantization"
    params_per_channel = 1

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError("a pixel flow's log p(x) comes from the flow (RealNVPDensity.forward)")

    def mean(self, params: Tensor) -> Tensor:
        """Flow outputs are images in [0, 1] already."""
        return params.clamp(0.0, 1.0)


def checkerboard(shape: tuple[int, int], parity: int, device=None) -> Tensor:
    """A (1, 1, H, W) mask of ones where (h + w + parity) is even."""
    h = torch.arange(shape[0], device=device).view(-1, 1)
    w = torch.arange(shape[1], device=device).view(1, -1)
    return ((h + w + parity) % 2 == 0).float().view(1, 1, *shape)


def squeeze(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2): each 2x2 block becomes 4 channels."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze(x: Tensor) -> Tensor:
    """The inverse of squeeze."""
    b, c, h, w = x.shape
    x = x.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, 2 * h, 2 * w)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class ResNet(nn.Module):
    """The s/t network of a coupling: 3x3 convolutions with `blocks` residual blocks; its output layer starts at zero."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.inp = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.blocks = nn.Sequential(*(ResidualBlock(hidden) for _ in range(blocks)))
        self.out = nn.Conv2d(hidden, out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.blocks(self.inp(x))))


class PixelNorm(nn.Module):
    """z = (x - loc) exp(-log_scale) with a loc and scale per input value (C, H, W), set from the first
    training batch by `initialize`; it stands in for the paper's batch normalisation of the flow's input."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, *shape))
        self.log_scale = nn.Parameter(torch.zeros(1, *shape))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Standardise x (B, C, H, W) per value."""
        self.loc.copy_(x.mean(0, keepdim=True))
        self.log_scale.copy_(torch.log(x.std(0, keepdim=True) + 1e-3))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_det = -self.log_scale.sum().expand(x.shape[0])
        return (x - self.loc) * torch.exp(-self.log_scale), log_det

    def inverse(self, z: Tensor) -> Tensor:
        return z * torch.exp(self.log_scale) + self.loc


class Coupling(nn.Module):
    """An affine coupling: y = x_a, x_b * exp(s(x_a)) + t(x_a), with s = scale * tanh(raw) (Sec. 3.3-3.4).

    `checkerboard`: x_a are the pixels where the mask is one (the mask alternates with `parity`);
    otherwise channel-wise: x_a is the first half of the channels (parity 0) or the second (parity 1).
    """

    def __init__(self, channels: int, spatial: tuple[int, int], checkerboard_mask: bool, parity: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.checkerboard_mask = checkerboard_mask
        self.parity = parity
        if checkerboard_mask:
            self.register_buffer("mask", checkerboard(spatial, parity), persistent=False)
            self.net = ResNet(channels, 2 * channels, hidden, blocks)
        else:
            self.net = ResNet(channels // 2, channels, hidden, blocks)
        self.scale = nn.Parameter(torch.ones(1, channels if checkerboard_mask else channels // 2, 1, 1))

    def _scale_shift(self, condition: Tensor) -> tuple[Tensor, Tensor]:
        raw, shift = self.net(condition).chunk(2, dim=1)
        return self.scale * torch.tanh(raw), shift

    def _halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a, b = x.chunk(2, dim=1)
        return (a, b) if self.parity == 0 else (b, a)

    def _join(self, kept: Tensor, changed: Tensor) -> Tensor:
        return torch.cat([kept, changed] if self.parity == 0 else [changed, kept], dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """y and log|det dy/dx| per image."""
        if self.checkerboard_mask:
            s, t = self._scale_shift(x * self.mask)
            s, t = s * (1 - self.mask), t * (1 - self.mask)
            return x * torch.exp(s) + t, s.flatten(1).sum(1)
        kept, other = self._halves(x)
        s, t = self._scale_shift(kept)
        return self._join(kept, other * torch.exp(s) + t), s.flatten(1).sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        if self.checkerboard_mask:
            s, t = self._scale_shift(y * self.mask)
            s, t = s * (1 - self.mask), t * (1 - self.mask)
            return (y - t) * torch.exp(-s)
        kept, other = self._halves(y)
        s, t = self._scale_shift(kept)
        return self._join(kept, (other - t) * torch.exp(-s))


class Scale(nn.Module):
    """One scale of the multi-scale architecture, on (C, H, W) inputs."""

    def __init__(self, shape: tuple[int, int, int], last: bool, hidden: int, blocks: int) -> None:
        super().__init__()
        c, h, w = shape
        self.last = last
        n_checker = 4 if last else 3
        self.checker = nn.ModuleList(Coupling(c, (h, w), True, i % 2, hidden, blocks) for i in range(n_checker))
        self.channel = nn.ModuleList(
            [] if last else [Coupling(4 * c, (h // 2, w // 2), False, i % 2, hidden, blocks) for i in range(3)]
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """(the part that goes on to the next scale, the factored-out latent, log|det|)."""
        log_det = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for layer in self.checker:
            x, ld = layer(x)
            log_det = log_det + ld
        if self.last:
            return x, None, log_det
        x = squeeze(x)
        for layer in self.channel:
            x, ld = layer(x)
            log_det = log_det + ld
        out, on = x.chunk(2, dim=1)
        return on, out, log_det

    def inverse(self, on: Tensor, out: Tensor | None) -> Tensor:
        x = on
        if not self.last:
            x = torch.cat([out, on], dim=1)
            for layer in reversed(self.channel):
                x = layer.inverse(x)
            x = unsqueeze(x)
        for layer in reversed(self.checker):
            x = layer.inverse(x)
        return x


def scale_shapes(image_shape: tuple[int, int, int], scales: int) -> list[tuple[int, int, int]]:
    """The input shape of each scale; ValueError if a squeeze meets an odd side."""
    c, h, w = image_shape
    shapes = []
    for i in range(scales):
        shapes.append((c, h, w))
        if i < scales - 1:
            if h % 2 or w % 2:
                raise ValueError(
                    f"real NVP with {scales} scales on images {tuple(image_shape)}: scale {i + 1} has an odd side "
                    f"({h}x{w}) and cannot be squeezed; use fewer scales"
                )
            c, h, w = 2 * c, h // 2, w // 2
    return shapes


class MultiScaleFlow(nn.Module):
    """x (B, C, H, W) <-> the latents of every scale, flattened into z (B, C*H*W)."""

    def __init__(self, image_shape: tuple[int, int, int], scales: int, hidden: int, blocks: int) -> None:
        super().__init__()
        shapes = scale_shapes(image_shape, scales)
        self.norm = PixelNorm(image_shape)
        self.scales = nn.ModuleList(Scale(s, i == scales - 1, hidden, blocks) for i, s in enumerate(shapes))
        self.out_shapes = [(2 * c, h // 2, w // 2) for c, h, w in shapes[:-1]] + [shapes[-1]]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """z (B, D) and log|det dz/dx| per image."""
        x, log_det = self.norm(x)
        parts = []
        for scale in self.scales:
            x, out, ld = scale(x)
            log_det = log_det + ld
            parts.append((x if out is None else out).flatten(1))
        return torch.cat(parts, 1), log_det

    def inverse(self, z: Tensor) -> Tensor:
        sizes = [math.prod(s) for s in self.out_shapes]
        parts = [p.reshape(-1, *s) for p, s in zip(z.split(sizes, dim=1), self.out_shapes)]
        x = self.scales[-1].inverse(parts[-1], None)
        for scale, out in zip(reversed(self.scales[:-1]), reversed(parts[:-1])):
            x = scale.inverse(x, out)
        return self.norm.inverse(x)


class RealNVPDensity(LatentVariableModel):
    """A multi-scale real NVP over dequantized, logit-transformed 8-bit images.

    forward(x, S) returns S dequantizations per image, each with its exact log p in log_px_z (nats per
    image, on the 8-bit scale) and zero prior and posterior terms, so the ELBO objective and its
    -ELBO are -log p. The latent z is the flow's output, D = C*H*W.
    """

    exact_likelihood = True

    def __init__(self, variant: Variant, settings: PixelFlowSettings, image_shape: tuple[int, int, int]) -> None:
        super().__init__(variant, settings, UniformDequantization(), image_shape)
        self.alpha = float(settings.logit_alpha)
        self.latent_dim = math.prod(image_shape)
        self.flow = MultiScaleFlow(tuple(image_shape), variant.steps, settings.channels, variant.width)

    def _to_logits(self, x: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Logits of the dequantized images and the log|det| of k -> logits (per image, 8-bit scale)."""
        k = torch.round(x * (BINS - 1))
        # Sec. 4.1: logit(p), p = alpha + (1 - alpha) v / 256 with v = k + noise. 1 - p is computed from
        # 256 - v = (255 - k) + (1 - noise): in float32, k + noise itself rounds to 256 at the top of the range
        log_p = torch.log(self.alpha + (1 - self.alpha) * (k + noise) / BINS)
        log_q = torch.log((1 - self.alpha) * ((BINS - 1 - k) + (1 - noise)) / BINS)
        d = self.latent_dim
        log_det = d * (math.log(1 - self.alpha) - math.log(BINS)) - (log_p + log_q).flatten(1).sum(1)
        return log_p - log_q, log_det

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Standardise the logits of the first training batch, value by value."""
        self.flow.norm.initialize(self._to_logits(x, torch.rand_like(x))[0])

    def _from_logits(self, logits: Tensor) -> Tensor:
        """8-bit images k/255 from logits: the inverse logit transform, then the bin k of k + u."""
        y = (torch.sigmoid(logits) - self.alpha) / (1 - self.alpha)
        return torch.floor(y * BINS).clamp(0, BINS - 1) / (BINS - 1)

    def log_density(self, x: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """log p(k + noise) per image and the latent z (B, D)."""
        logits, ld_pre = self._to_logits(x, noise)
        z, ld_flow = self.flow(logits)
        log_pz = -0.5 * (z.pow(2) + _LOG_2PI).sum(1)
        return log_pz + ld_flow + ld_pre, z

    def forward(self, x: Tensor, n_samples: int = 1) -> VAEOutput:
        b = x.shape[0]
        xs = x.unsqueeze(0).expand(n_samples, *x.shape).reshape(n_samples * b, *x.shape[1:])
        log_p, z = self.log_density(xs, torch.rand_like(xs))
        zeros = torch.zeros(n_samples, b, dtype=log_p.dtype, device=log_p.device)
        z = z.reshape(n_samples, b, -1)
        return VAEOutput(log_px_z=log_p.reshape(n_samples, b), log_pz=zeros, log_qz=zeros, z=z, mu=z.mean(0))

    def decode_mean(self, z: Tensor) -> Tensor:
        """Images for latents z (n, D): the inverse flow."""
        return self._from_logits(self.flow.inverse(z))

    def encode_mean(self, x: Tensor) -> Tensor:
        """The latent of each image dequantized at the centre of its bins."""
        return self.flow(self._to_logits(x, torch.full_like(x, 0.5))[0])[0]

    def reconstruct(self, x: Tensor) -> Tensor:
        """decode(encode(x)): x itself, since the flow is invertible."""
        return self.decode_mean(self.encode_mean(x))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        p = next(self.parameters())
        device = generator.device if generator is not None else p.device
        z = torch.randn((n, self.latent_dim), generator=generator, dtype=p.dtype, device=device)
        return self.decode_mean(z.to(p.device))


def build_pixel_flow(
    variant: Variant, settings: PixelFlowSettings, image_shape: tuple[int, int, int], likelihood: str
) -> RealNVPDensity:
    """The family table's builder of realnvp_s*_b*: a density model of 8-bit images only."""
    if not get_likelihood(likelihood).eight_bit:
        raise ValueError(f"{variant.name} models 8-bit images (a data set with an 8-bit likelihood), not {likelihood} data")
    return RealNVPDensity(variant, settings, image_shape)
