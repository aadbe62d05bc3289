"""The bidirectional ResNet VAE of Kingma et al. (2016), laid out as their released CIFAR-10 code.

Layout for r rungs (stochastic layers) and `stages` resolutions (default 1):

    x - 1/2 -> 5x5 stride-2 conv -> up rungs 0 .. r-1 -> h_top (learnt, tiled)
            -> down rungs r-1 .. 0 -> ELU -> 5x5 stride-2 transposed conv -> p(x|z)

Rung 0 lies next to the data, rung r-1 at the top. Rung i belongs to stage i*stages//r; the first rung
of every later stage halves the resolution on the way up (stride-2 conv, nearest-neighbour skip) and
doubles it on the way down (stride-2 transposed conv, nearest-neighbour skip). With stages = 1 every
latent is an H/2 x W/2 map (the released code with one block: 16x16 on CIFAR-10, any r >= 1); stages = 2
gives its two blocks (r = 20: ten rungs at 16x16, ten at 8x8). stages is capped at r; H and W must be
divisible by 2**stages.

Rung i, with z_i of `z_channels` feature maps (every residual branch scaled by 0.1, ELU throughout):

    up:    q_mean, q_log_std, ctx_up, a = conv(elu(h));        h <- h + 0.1 conv(elu(a))
    down:  p_mean, p_log_std, r_mean, r_log_std, ctx_down, d = conv(elu(h))
           prior p(z_i | z_>i)      = N(p_mean, exp(p_log_std))
           posterior base q(z_i | .) = N(q_mean + r_mean, exp(q_log_std + r_log_std))
           iaf: z <- (z - m) * sigma, (m, log sigma) = 0.1 * masked ConvNet(z, ctx_up + ctx_down)
           h <- h + 0.1 conv(elu([z, d]))

The IAF ConvNet is PixelCNN-style: 3x3 convolutions masked to raster order (mask A on z, mask B after);
the step is flows/autoregressive.py's affine step with log_scale = log sigma, so log|det dz'/dz| = sum
log sigma and log q(z|x) = base log-density - sum log sigma. KL terms are single sample log q - log p,
grouped per (rung, feature map) for free bits. The IAF steps belong to the top-down path (`decoder`),
which runs on all S*B samples. Every convolution is weight-normalised, initialised from data by
`initialize(x)`, and folded into a plain weight for inference by `fold()`. The discretized logistic
likelihood has a location per subpixel and one learnt log-scale (as released), initialised from the
data as well.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowvae.models.flows import AutoregressiveAffine
from flowvae.models.likelihoods import get_likelihood
from flowvae.models.contract import LatentVariableModel, VAEOutput
from flowvae.spec.settings import LadderSettings
from flowvae.spec.variants import Variant

RESIDUAL_SCALE = 0.1
IAF_SCALE = 0.1  # (m, log sigma) = 0.1 * ConvNet output, as released
HEAD_INIT_SCALE = 0.1  # initial spread of the Gaussian parameters and the image location
_LOG_2PI = math.log(2.0 * math.pi)

UpStats = tuple[Tensor, Tensor, Tensor]  # posterior mean, log-std and IAF context of one rung
# TopDown's output: likelihood parameters, then per rung z, log q, log p and the base posterior mean
Generated = tuple[Tensor, list[Tensor], list[Tensor], list[Tensor], list[Tensor]]


def autoregressive_mask(deg_in: Tensor, deg_out: Tensor, kernel: int, strict: bool) -> Tensor:
    """(c_out, c_in, k, k) raster-order mask; at the centre, input degree < (mask A) or <= (mask B) output degree."""
    c = kernel // 2
    mask = torch.zeros(len(deg_out), len(deg_in), kernel, kernel)
    mask[:, :, :c, :] = 1.0
    mask[:, :, c, :c] = 1.0
    below = deg_in[None, :] < deg_out[:, None] if strict else deg_in[None, :] <= deg_out[:, None]
    mask[:, :, c, c] = below.float()
    return mask


class WNConv2d(nn.Module):
    """Weight-normalised k x k convolution, w = g v / |v| (transposed: upsampling), optional weight mask."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int = 3,
        stride: int = 1,
        transpose: bool = False,
        mask: Tensor | None = None,
        init_scale: float | list[float] = 1.0,
    ) -> None:
        super().__init__()
        self.c_in, self.c_out, self.kernel, self.stride, self.transpose = c_in, c_out, kernel, stride, transpose
        shape = (c_in, c_out, kernel, kernel) if transpose else (c_out, c_in, kernel, kernel)
        self.v = nn.Parameter(0.05 * torch.randn(shape))
        self.g = nn.Parameter(torch.ones(c_out))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.register_buffer("mask", mask, persistent=False)
        scale = torch.as_tensor(init_scale, dtype=torch.float32).expand(c_out).clone()
        self.register_buffer("init_scale", scale, persistent=False)
        self.register_buffer("folded", None, persistent=False)  # the weight computed once, by fold()
        self.init_pending = False  # set by LadderVAE.initialize: the next forward sets g and bias from its input

    def extra_repr(self) -> str:
        """Settings, for printing."""
        kind = "transposed, " if self.transpose else ""
        masked = ", masked" if self.mask is not None else ""
        return f"{self.c_in}, {self.c_out}, {kind}kernel={self.kernel}, stride={self.stride}{masked}"

    def weight(self) -> Tensor:
        """g v / |v|, the norm taken per output channel over the (masked) kernel; once folded, its stored value."""
        if self.folded is not None:
            return self.folded
        v = self.v if self.mask is None else self.v * self.mask
        out_dim = 1 if self.transpose else 0
        shape = [1, 1, 1, 1]
        shape[out_dim] = -1
        norm = v.pow(2).sum([d for d in range(4) if d != out_dim], keepdim=True).clamp_min(1e-24).sqrt()
        return v * (self.g.view(shape) / norm)

    def _conv(self, x: Tensor, bias: Tensor | None) -> Tensor:
        pad = self.kernel // 2
        if self.transpose:
            return F.conv_transpose2d(x, self.weight(), bias, self.stride, pad, output_padding=self.stride - 1)
        return F.conv2d(x, self.weight(), bias, self.stride, pad)

    @torch.no_grad()
    def fold(self) -> None:
        """For inference: compute g v / |v| once into a plain weight that later forwards use as it is."""
        self.folded = None
        self.folded = self.weight().detach().clone()

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        """Set g and bias so that this batch's outputs have zero mean and std init_scale per channel."""
        self.init_pending = False
        self.g.fill_(1.0)
        out = self._conv(x, None)
        mean, std = out.mean((0, 2, 3)), out.std((0, 2, 3), unbiased=False)
        scale = self.init_scale.to(out.dtype)
        # A constant input (the top rung reads the tiled h_top) keeps |w| = init_scale.
        g = torch.where(std > 1e-6, scale / std.clamp_min(1e-6), scale)
        self.g.copy_(g)
        self.bias.copy_(-mean * g)

    def forward(self, x: Tensor) -> Tensor:
        """Convolve (after the data-dependent initialisation, if one is pending)."""
        if self.init_pending:
            self._initialize(x)
        return self._conv(x, self.bias)


class MaskedConvShift(nn.Module):
    """Hyper-network of the ladder's IAF: (shift, log_scale) = (-m exp(-s), -s), (m, s) from a masked ConvNet.

    (m, s) = 0.1 * ConvNet(z, context) with 3x3 convolutions masked to raster order (mask A on z, mask B
    after), so z' = exp(log_scale) z + shift = (z - m) exp(-s) and sigma = exp(-s).
    """

    def __init__(self, z_channels: int, hidden: int) -> None:
        super().__init__()
        dz = torch.arange(z_channels)
        dh = torch.arange(hidden) * z_channels // hidden
        self.conv_in = WNConv2d(z_channels, hidden, mask=autoregressive_mask(dz, dh, 3, strict=True))
        self.conv_hidden = WNConv2d(hidden, hidden, mask=autoregressive_mask(dh, dh, 3, strict=False))
        self.conv_out = WNConv2d(hidden, 2 * z_channels, mask=autoregressive_mask(dh, torch.cat([dz, dz]), 3, False))

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Elementwise shift and log-scale for z (n, z_channels, h, w); context has `hidden` feature maps."""
        a = F.elu(self.conv_in(z) + context)
        a = F.elu(self.conv_hidden(a))
        m, s = (IAF_SCALE * self.conv_out(a)).chunk(2, dim=1)
        return -m * torch.exp(-s), -s


class MaskedIAF(AutoregressiveAffine):
    """One IAF step on (z_channels, h, w) feature maps: z' = (z - m) * sigma, context of `hidden` feature maps."""

    def __init__(self, z_channels: int, hidden: int) -> None:
        super().__init__(MaskedConvShift(z_channels, hidden), z_channels, hidden, event_dims=3)


class UpRung(nn.Module):
    """Bottom-up half of a rung: posterior features of z_i from x."""

    def __init__(self, channels: int, z_channels: int, context: int, downsample: bool) -> None:
        super().__init__()
        self.downsample = downsample
        self.sizes = [z_channels, z_channels, context, channels]
        scales = [HEAD_INIT_SCALE] * (2 * z_channels) + [1.0] * (context + channels)
        self.conv1 = WNConv2d(channels, sum(self.sizes), stride=2 if downsample else 1, init_scale=scales)
        self.conv2 = WNConv2d(channels, channels)

    def extra_repr(self) -> str:
        """Settings, for printing."""
        return f"downsample={self.downsample}"

    def forward(self, h: Tensor) -> tuple[Tensor, UpStats]:
        """The next h and this rung's (posterior mean, log-std, IAF context)."""
        q_mean, q_log_std, ctx, a = self.conv1(F.elu(h)).split(self.sizes, dim=1)
        if self.downsample:
            h = h[:, :, ::2, ::2]
        return h + RESIDUAL_SCALE * self.conv2(F.elu(a)), (q_mean, q_log_std, ctx)


class DownRung(nn.Module):
    """Top-down half of a rung: the prior of z_i, the top-down part of its posterior, and the merge of z_i."""

    def __init__(self, channels: int, z_channels: int, context: int, upsample: bool) -> None:
        super().__init__()
        self.upsample = upsample
        self.sizes = [z_channels] * 4 + [context, channels]
        scales = [HEAD_INIT_SCALE] * (4 * z_channels) + [1.0] * (context + channels)
        self.conv1 = WNConv2d(channels, sum(self.sizes), init_scale=scales)
        self.conv2 = WNConv2d(z_channels + channels, channels, stride=2 if upsample else 1, transpose=upsample)

    def extra_repr(self) -> str:
        """Settings, for printing."""
        return f"upsample={self.upsample}"

    def features(self, h: Tensor) -> tuple[Tensor, ...]:
        """(prior mean, prior log-std, posterior mean shift, posterior log-std shift, IAF context, d)."""
        return self.conv1(F.elu(h)).split(self.sizes, dim=1)

    def merge(self, h: Tensor, z: Tensor, d: Tensor) -> Tensor:
        """The next h below this rung, given z_i."""
        if self.upsample:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        return h + RESIDUAL_SCALE * self.conv2(F.elu(torch.cat([z, d], dim=1)))


class BottomUp(nn.Module):
    """The inference path: x -> stem -> up rungs 0 .. r-1."""

    def __init__(self, image_channels: int, channels: int, z_channels: int, context: int, downsample: list[bool]):
        super().__init__()
        self.stem = WNConv2d(image_channels, channels, kernel=5, stride=2)
        self.rungs = nn.ModuleList(UpRung(channels, z_channels, context, d) for d in downsample)

    def forward(self, x: Tensor) -> list[UpStats]:
        """Posterior features of every rung, rung 0 first."""
        h = self.stem(x - 0.5)
        stats = []
        for rung in self.rungs:
            h, s = rung(h)
            stats.append(s)
        return stats


def _add_per_image(a: Tensor, b: Tensor) -> Tensor:
    """a (S*B, ...) + b (B, ...), without repeating b S times."""
    return (a.view(-1, *b.shape) + b).view(a.shape)


def _normal_log_prob(z: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Elementwise log N(z; mean, exp(log_std)^2)."""
    return -0.5 * (((z - mean) * torch.exp(-log_std)).pow(2) + _LOG_2PI) - log_std


class TopDown(nn.Module):
    """The generative path, posterior IAF steps included: h_top -> down rungs r-1 .. 0 -> ELU -> 5x5 transposed conv.

    It runs on all S*B samples of a forward pass, so it is what inference compiles or runs in bfloat16.
    Log-densities are computed in the dtype of the noise, whatever precision the convolutions run in.
    """

    def __init__(
        self,
        image_channels: int,
        channels: int,
        z_channels: int,
        downsample: list[bool],
        top_hw: tuple[int, int],
        iaf: bool,
        learnt_log_scale: bool,
    ) -> None:
        super().__init__()
        self.top_hw = top_hw
        context = channels if iaf else 0
        self.h_top = nn.Parameter(torch.zeros(channels))
        self.rungs = nn.ModuleList(DownRung(channels, z_channels, context, d) for d in downsample)
        self.flows = nn.ModuleList(MaskedIAF(z_channels, channels) for _ in downsample if iaf)
        self.out = WNConv2d(channels, image_channels, kernel=5, stride=2, transpose=True, init_scale=HEAD_INIT_SCALE)
        self.log_scale = nn.Parameter(torch.zeros(())) if learnt_log_scale else None
        self.offset = 0.5 if learnt_log_scale else 0.0  # locations live in [0, 1]; logits around 0

    def start(self, n: int) -> Tensor:
        """h_top tiled over n images."""
        return self.h_top.view(1, -1, 1, 1).expand(n, -1, *self.top_hw)

    def forward(self, values: list[Tensor], up: list[UpStats] | None = None, latents: bool = False) -> Generated:
        """Likelihood parameters and per-rung terms for n = values[0].shape[0] images.

        values[i] (n, z_channels, h_i, w_i), rung 0 first, is standard-normal noise that draws z_i from
        the posterior (given `up`, the bottom-up statistics of B = n / S images) or else from the prior;
        with latents=True it is z_i itself. Returns the parameters and, rung 0 first, z_i and, for the
        posterior only (else empty lists), log q and log p summed per (image, feature map) and the base
        posterior mean.
        """
        n, dtype = values[0].shape[0], values[0].dtype
        zs, log_q, log_p, means = [], [], [], []
        h = self.start(n)
        for i in reversed(range(len(self.rungs))):
            rung = self.rungs[i]
            p_mean, p_log_std, r_mean, r_log_std, ctx, d = (t.to(dtype) for t in rung.features(h))
            if latents:
                z = values[i]
            elif up is None:
                z = p_mean + torch.exp(p_log_std) * values[i]
            else:
                q_mean, q_log_std, q_ctx = up[i]
                mean, log_std = _add_per_image(r_mean, q_mean), _add_per_image(r_log_std, q_log_std)
                eps = values[i]
                z = mean + torch.exp(log_std) * eps
                lq = -0.5 * (eps.pow(2) + _LOG_2PI) - log_std
                if self.flows:
                    z, log_scale = self.flows[i].elementwise(z, _add_per_image(ctx, q_ctx))
                    lq = lq - log_scale
                log_q.append(lq.sum((2, 3)))
                log_p.append(_normal_log_prob(z, p_mean, p_log_std).sum((2, 3)))
                means.append(mean)
            zs.append(z)
            h = rung.merge(h, z, d)
        loc = self.out(F.elu(h)) + self.offset
        params = loc if self.log_scale is None else torch.cat([loc, self.log_scale.expand_as(loc)], dim=1)
        return params, zs[::-1], log_q[::-1], log_p[::-1], means[::-1]


class LadderVAE(LatentVariableModel):
    """Bidirectional ResNet VAE with `rungs` stochastic layers; diagonal Gaussian or one-step IAF posteriors."""

    has_posterior_density = False

    def __init__(
        self, variant: Variant, settings: LadderSettings, image_shape: tuple[int, int, int], likelihood: str
    ) -> None:
        if variant.family != "resvae":
            raise ValueError(f"{variant.name!r} is not a resvae variant")
        super().__init__(variant, settings, get_likelihood(likelihood), image_shape)
        self.free_bits = float(settings.free_bits)
        c, height, width = self.image_shape
        rungs, channels, z_channels = variant.steps, settings.channels, settings.z_channels
        stages = min(settings.stages, rungs)
        if height % 2**stages or width % 2**stages:
            raise ValueError(f"image size {height}x{width} is not divisible by {2**stages} ({stages} stage(s))")
        stage = [i * stages // rungs for i in range(rungs)]
        downsample = [i > 0 and stage[i] != stage[i - 1] for i in range(rungs)]
        iaf = variant.ladder_posterior == "iaf"
        self.z_shapes: list[tuple[int, int, int]] = []
        h, w = height // 2, width // 2
        for d in downsample:
            h, w = (h // 2, w // 2) if d else (h, w)
            self.z_shapes.append((z_channels, h, w))
        self.latent_dim = sum(math.prod(s) for s in self.z_shapes)
        self.encoder = BottomUp(c, channels, z_channels, channels if iaf else 0, downsample)
        self.decoder = TopDown(
            c, channels, z_channels, downsample, (h, w), iaf, self.likelihood.params_per_channel == 2
        )

    def _noise(self, n: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """Standard-normal noise for every rung of n images, rung 0 first."""
        p = next(self.encoder.parameters())
        device = generator.device if generator is not None else p.device
        return [
            torch.randn((n, *s), generator=generator, dtype=p.dtype, device=device).to(p.device)
            for s in self.z_shapes
        ]

    def forward(self, x: Tensor, n_samples: int = 1) -> VAEOutput:
        """Bottom-up once per image, top-down on all S*B samples; KL per (rung, feature map) in kl_groups."""
        # mu: the base posterior means, which depend on z_>i, averaged over the S samples.
        b, s = x.shape[0], n_samples
        params, zs, log_q, log_p, means = self.decoder(self._noise(s * b), self.encoder(x))
        log_px_z = self.likelihood.log_prob(params.view(s, b, *params.shape[1:]), x)
        lq = torch.cat(log_q, dim=1).view(s, b, -1)
        lp = torch.cat(log_p, dim=1).view(s, b, -1)
        z = torch.cat([t.flatten(1) for t in zs], dim=1).view(s, b, -1)
        mu = torch.cat([t.flatten(1) for t in means], dim=1).view(s, b, -1).mean(0)
        return VAEOutput(
            log_px_z=log_px_z, log_pz=lp.sum(-1), log_qz=lq.sum(-1), z=z, mu=mu, kl_groups=lq - lp
        )

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Data-dependent init: per channel, zero mean and std init_scale of every convolution's outputs on x."""
        # init_scale is 1, or 0.1 for Gaussian parameters and the image location; the logistic
        # log-scale is set to match the residuals of the initial reconstructions.
        convs = [m for m in self.modules() if isinstance(m, WNConv2d)]
        for m in convs:
            m.init_pending = True
        params = self.decoder(self._noise(x.shape[0]), self.encoder(x))[0]
        for m in convs:
            m.init_pending = False
        if self.decoder.log_scale is not None:
            residual_std = (x - params[:, : x.shape[1]]).std().clamp_min(1e-3)
            self.decoder.log_scale.fill_(math.log(residual_std.item() * math.sqrt(3.0) / math.pi))

    def split_latents(self, z: Tensor) -> list[Tensor]:
        """Flattened latents (n, D) as one (n, z_channels, h, w) map per rung, rung 0 first."""
        sizes = [math.prod(s) for s in self.z_shapes]
        return [t.reshape(-1, *s) for t, s in zip(z.split(sizes, dim=1), self.z_shapes)]

    def decode_mean(self, z: Tensor) -> Tensor:
        """Mean images (n, C, H, W) with the given latents fed at every rung."""
        return self.likelihood.mean(self.decoder(self.split_latents(z), latents=True)[0])

    def encode_mean(self, x: Tensor) -> Tensor:
        """Latents (B, D) of the top-down pass that takes every base posterior at its mean (eps = 0)."""
        noise = [torch.zeros_like(t) for t in self._noise(x.shape[0])]
        zs = self.decoder(noise, self.encoder(x))[1]
        return torch.cat([t.flatten(1) for t in zs], dim=1)

    def reconstruct(self, x: Tensor) -> Tensor:
        """Mean images decoded from one posterior sample per image."""
        return self.likelihood.mean(self.decoder(self._noise(x.shape[0]), self.encoder(x))[0])

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Mean images (n, C, H, W) from ancestral samples of the prior."""
        return self.likelihood.mean(self.decoder(self._noise(n, generator))[0])
