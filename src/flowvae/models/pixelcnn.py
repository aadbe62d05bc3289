"""PixelCNN (van den Oord et al. 2016a, arXiv 1601.06759) and gated PixelCNN (van den Oord et al. 2016b,
arXiv 1606.05328): autoregressive density models of images, log p(x) = sum_i log p(x_i | x_<i), exact.

Pixels are ordered in raster order and, within a pixel, channel by channel (R, G, B). Every hidden layer's
channels are split into one contiguous group per image channel; a masked convolution lets output group g see
the positions before the centre in raster order, and at the centre input groups < g (mask A, the first layer)
or <= g (mask B, the later ones).

- `pixelcnn_l{L}_c{C}`: a 7x7 mask-A convolution to C channels, L residual blocks (ReLU, 1x1 to C/2, ReLU,
  3x3 mask B, ReLU, 1x1 back to C; PixelRNN Fig. 5 with 2h = C), then ReLU, 1x1 mask B, ReLU, 1x1 mask B
  to the output (PixelRNN Table 2). The 3x3 stack has a blind spot to the upper right (gated PixelCNN Fig. 1).
- `pixelcnn_l{L}_c{C}_gated`: a vertical stack (rows above) and a horizontal stack (the current row, to the
  left) with no blind spot, gated activations tanh(W_f * x) . sigmoid(W_g * x), the vertical stack feeding the
  horizontal one, residual connections in the horizontal stack (gated PixelCNN Sec. 2.2, Fig. 2); the first
  layer's kernels cover a 7x7 neighbourhood, the L later layers' 3x3; no conditioning.

Binarized data: a Bernoulli logit per pixel (nats). 8-bit data: a 256-way softmax per subpixel (Sec. 5.3 of
PixelRNN), scored by likelihoods.Categorical, in nats per image on the 8-bit scale (bits/dim by the tables).

Sampling draws one subpixel per network evaluation (no activation cache), each evaluation run on the window that
the receptive field of the current pixel reaches (`rows_above` rows, `cols_around` columns either side), the output
head on that pixel only; this gives the same numbers as the whole image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowvae.models.contract import LatentVariableModel, VAEOutput
from flowvae.models.likelihoods import Bernoulli, Categorical, Likelihood, get_likelihood
from flowvae.spec.settings import PixelCNNSettings
from flowvae.spec.variants import Variant


def _groups(n_channels: int, n_groups: int, what: str) -> Tensor:
    """The channel group of each of n_channels channels: contiguous blocks, one per image channel."""
    if n_channels % n_groups:
        raise ValueError(f"{what}: {n_channels} channels cannot be split into {n_groups} per-image-channel groups")
    return torch.arange(n_channels) // (n_channels // n_groups)


class MaskedConv2d(nn.Conv2d):
    """A convolution whose kernel sees only what comes before its centre (kernel row `center[0]`, column
    `center[1]`) in raster order, and at the centre the channel groups that mask A (<) or B (<=) allows.

    `pad` is (left, right, top, bottom) zero padding, so that kernels may sit off-centre (the gated stacks).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int],
        mask_type: str,
        image_channels: int,
        center: tuple[int, int] | None = None,
        pad: tuple[int, int, int, int] | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel)
        kh, kw = kernel
        ch, cw = center if center is not None else (kh // 2, kw // 2)
        self.pad = pad if pad is not None else (kw // 2, kw // 2, kh // 2, kh // 2)
        mask = torch.zeros(out_channels, in_channels, kh, kw)
        mask[:, :, :ch, :] = 1
        mask[:, :, ch, :cw] = 1
        g_out = _groups(out_channels, image_channels, "masked convolution output")
        g_in = _groups(in_channels, image_channels, "masked convolution input")
        allowed = g_in.view(1, -1) < g_out.view(-1, 1) if mask_type == "A" else g_in.view(1, -1) <= g_out.view(-1, 1)
        mask[:, :, ch, cw] = allowed.float()
        self.register_buffer("mask", mask, persistent=False)
        self.mask_type = mask_type

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, self.pad), self.weight * self.mask, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mask={self.mask_type}"


class ResidualBlock(nn.Module):
    """PixelRNN Fig. 5 (right): ReLU, 1x1 to C/2, ReLU, k x k mask B, ReLU, 1x1 to C, plus the input."""

    def __init__(self, channels: int, kernel: int, image_channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.body = nn.Sequential(
            nn.ReLU(),
            MaskedConv2d(channels, half, (1, 1), "B", image_channels),
            nn.ReLU(),
            MaskedConv2d(half, half, (kernel, kernel), "B", image_channels),
            nn.ReLU(),
            MaskedConv2d(half, channels, (1, 1), "B", image_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class PlainStack(nn.Module):
    """Mask-A convolution, then `layers` residual blocks; features (B, C, H, W)."""

    def __init__(self, image_channels: int, channels: int, layers: int, first_kernel: int, kernel: int) -> None:
        super().__init__()
        self.first = MaskedConv2d(image_channels, channels, (first_kernel, first_kernel), "A", image_channels)
        self.blocks = nn.Sequential(*[ResidualBlock(channels, kernel, image_channels) for _ in range(layers)])
        self.half = kernel // 2
        self.rows_above = first_kernel // 2 + layers * self.half
        self.cols_around = first_kernel // 2 + layers * self.half

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.first(x))

    def at(self, window: Tensor, col: int) -> Tensor:
        """Features (B, C, 1, 1) of the window's last row at column col, each layer computed only where a later layer
        or that pixel reads it: the cone narrows by kernel // 2 rows and columns per block."""
        height, width = window.shape[-2:]
        last = height - 1
        h = self.first(window)
        top, left = 0, 0  # the window coordinates of h's first row and column
        for remaining in range(len(self.blocks), -1, -1):
            reach = remaining * self.half
            rows = max(0, last - reach)
            cols = max(0, col - reach), min(width - 1, col + reach)
            h = h[:, :, rows - top :, cols[0] - left : cols[1] - left + 1]
            top, left = rows, cols[0]
            if remaining:
                h = self.blocks[len(self.blocks) - remaining](h)
        return h


def _shift_down(x: Tensor) -> Tensor:
    """Each row moves one row down; the top row becomes zeros."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


class GatedLayer(nn.Module):
    """One gated PixelCNN layer (Fig. 2): vertical stack v (rows <= i), horizontal stack h (row i, columns <= j)."""

    def __init__(self, in_channels: int, channels: int, kernel: int, image_channels: int, first: bool) -> None:
        super().__init__()
        half = kernel // 2
        mask = "A" if first else "B"
        # Vertical: a (half + 1) x kernel window ending at the current row, unmasked: v at row i sees rows <= i
        # and reaches h only shifted one row down. Gate halves are separate convolutions so each keeps its groups.
        self.v_f = nn.Conv2d(in_channels, channels, (half + 1, kernel))
        self.v_g = nn.Conv2d(in_channels, channels, (half + 1, kernel))
        self.v_pad = (half, half, half, 0)
        self.link_f = nn.Conv2d(channels, channels, 1)
        self.link_g = nn.Conv2d(channels, channels, 1)
        hkw = (1, half + 1)
        hpad = (half, 0, 0, 0)
        self.h_f = MaskedConv2d(in_channels, channels, hkw, mask, image_channels, center=(0, half), pad=hpad)
        self.h_g = MaskedConv2d(in_channels, channels, hkw, mask, image_channels, center=(0, half), pad=hpad)
        self.h_out = MaskedConv2d(channels, channels, (1, 1), "B", image_channels)
        self.residual = not first

    def forward(self, v: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        vp = F.pad(v, self.v_pad)
        v_f, v_g = self.v_f(vp), self.v_g(vp)
        h_f = self.h_f(h) + self.link_f(_shift_down(v_f))
        h_g = self.h_g(h) + self.link_g(_shift_down(v_g))
        h_new = self.h_out(torch.tanh(h_f) * torch.sigmoid(h_g))
        return torch.tanh(v_f) * torch.sigmoid(v_g), (h + h_new if self.residual else h_new)


class GatedStack(nn.Module):
    """A first gated layer with first_kernel-wide windows, then `layers` with kernel-wide ones; features from h."""

    def __init__(self, image_channels: int, channels: int, layers: int, first_kernel: int, kernel: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [GatedLayer(image_channels, channels, first_kernel, image_channels, first=True)]
            + [GatedLayer(channels, channels, kernel, image_channels, first=False) for _ in range(layers)]
        )
        self.rows_above = 1 + first_kernel // 2 + layers * (kernel // 2)
        self.cols_around = first_kernel // 2 + layers * (kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        v = h = x
        for layer in self.layers:
            v, h = layer(v, h)
        return h

    def at(self, window: Tensor, col: int) -> Tensor:
        """Features (B, C, 1, 1) of the window's last row at column col (the whole window computed)."""
        return self(window)[:, :, -1:, col : col + 1]


class PixelCNN(LatentVariableModel):
    """An autoregressive density model used through the VAE contract: forward's log_px_z is the exact
    log p(x) of each image; there is no latent (latent_dim 0) and no encoder or decoder."""

    exact_likelihood = True

    def __init__(self, variant: Variant, settings: PixelCNNSettings, likelihood: Likelihood, image_shape: tuple[int, int, int]):
        super().__init__(variant, settings, likelihood, image_shape)
        c = image_shape[0]
        self.latent_dim = 0
        self.outputs_per_channel = likelihood.params_per_channel
        stack = GatedStack if variant.gated else PlainStack
        self.stack = stack(c, variant.width, variant.steps, settings.first_kernel, settings.kernel)
        self.head = nn.Sequential(
            nn.ReLU(),
            MaskedConv2d(variant.width, variant.width, (1, 1), "B", c),
            nn.ReLU(),
            MaskedConv2d(variant.width, c * self.outputs_per_channel, (1, 1), "B", c),
        )

    def logits(self, x: Tensor) -> Tensor:
        """Output parameters (B, C * outputs_per_channel, H, W) of p(x_i | x_<i) for images x in [0, 1]."""
        return self.head(self.stack(2.0 * x - 1.0))

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log p(x) per image, in nats."""
        return self.likelihood.log_prob(self.logits(x), x)

    def forward(self, x: Tensor, n_samples: int = 1) -> VAEOutput:
        log_p = self.log_prob(x)
        b = x.shape[0]
        zeros = torch.zeros(n_samples, b, dtype=log_p.dtype, device=log_p.device)
        empty = x.new_zeros(n_samples, b, 0)
        return VAEOutput(log_px_z=log_p.expand(n_samples, b), log_pz=zeros, log_qz=zeros, z=empty, mu=empty[0])

    def reconstruct(self, x: Tensor) -> Tensor:
        """Each pixel's predicted mean given the true pixels before it (one-step-ahead predictions)."""
        return self.likelihood.mean(self.logits(x))

    def _draw(self, params: Tensor, generator: torch.Generator | None) -> Tensor:
        """One value per image in [0, 1] from the output parameters of one subpixel, (n, outputs_per_channel)."""
        if isinstance(self.likelihood, Bernoulli):
            u = torch.rand(params.shape[0], generator=generator, device=params.device, dtype=params.dtype)
            return (u < torch.sigmoid(params[:, 0])).to(params.dtype)
        probs = torch.softmax(params.double(), dim=1)
        k = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return k.to(params.dtype) / (Categorical.classes - 1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n images drawn subpixel by subpixel. Each step runs the stack on the window that the current pixel's
        receptive field reaches (rows_above rows up, cols_around columns either side; the plain stack only on the
        cone of it that the pixel reads) and the 1x1 head on that pixel alone: the same numbers as the whole image,
        where padding at a window's edge changes only activations that the pixel does not see."""
        c, height, width = self.image_shape
        p = next(self.parameters())
        x = torch.zeros(n, c, height, width, dtype=p.dtype, device=p.device)
        k = self.outputs_per_channel
        for row in range(height):
            top = max(0, row - self.stack.rows_above)
            for col in range(width):
                left = max(0, col - self.stack.cols_around)
                window = x[:, :, top : row + 1, left : col + self.stack.cols_around + 1]
                for ch in range(c):
                    params = self.head(self.stack.at(2.0 * window - 1.0, col - left))[:, ch * k : (ch + 1) * k, 0, 0]
                    x[:, ch, row, col] = self._draw(params, generator).to(p.device)
        return x

    def decode_mean(self, z: Tensor) -> Tensor:
        raise NotImplementedError(f"{self.variant.name} has no latent to decode")

    def encode_mean(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0], 0)


def build_pixelcnn(variant: Variant, settings: PixelCNNSettings, image_shape: tuple[int, int, int], likelihood: str) -> PixelCNN:
    """The family table's builder of pixelcnn_l*_c*[_gated]: Bernoulli outputs on binary data, a 256-way softmax on 8-bit data."""
    data_likelihood = get_likelihood(likelihood)
    if data_likelihood.eight_bit:
        output: Likelihood = Categorical()
    elif isinstance(data_likelihood, Bernoulli):
        output = Bernoulli()
    else:
        raise ValueError(f"{variant.name} models binary or 8-bit images, not {likelihood} data")
    if variant.width % (2 * image_shape[0]):
        raise ValueError(f"{variant.name}: channels {variant.width} must be a multiple of 2 x {image_shape[0]} image channels")
    return PixelCNN(variant, settings, output, image_shape)
