"""Faster evaluation of a trained model without changing what it computes (bfloat16 aside, and opt-in).

Every model keeps the contract of model.py: its `decoder` runs on all posterior samples, and the model
calls nothing on it but itself, so it can be compiled or wrapped here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from flowvae.models.ladder import WNConv2d
from flowvae.models.contract import LatentVariableModel

CONVOLUTIONS = (nn.Conv2d, nn.ConvTranspose2d, WNConv2d)


def has_convolutions(model: nn.Module) -> bool:
    """Whether any layer is a convolution (then channels_last pays on CPU)."""
    return any(isinstance(m, CONVOLUTIONS) for m in model.modules())


def _to_float32(out: Any) -> Any:
    """Floating tensors in out (nested in tuples and lists) as float32; everything else as it is."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (tuple, list)):
        return type(out)(_to_float32(t) for t in out)
    return out


class BFloat16Decoder(nn.Module):
    """Runs a decoder under bfloat16 autocast and hands back its floating outputs in float32."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.inner = decoder

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The inner decoder's outputs, computed in bfloat16 where autocast allows."""
        device = next(self.inner.parameters()).device
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = self.inner(*args, **kwargs)
        return _to_float32(out)


def fold_weight_norm(model: nn.Module) -> None:
    """Replace every weight normalisation (torch parametrisations and WNConv2d) by the plain weight it computes."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        if isinstance(module, WNConv2d):
            module.fold()


def prepare_for_inference(
    model: LatentVariableModel, channels_last: bool = True, compile_decoder: bool = False, decoder_bf16: bool = False
) -> LatentVariableModel:
    """Make evaluation fast without changing its result; return the model, changed in place.

    Weight normalisation is folded into plain weights (the same function, computed once), the model
    goes to eval mode, convolutional models switch to channels_last, and optionally the decoder,
    which runs on all K samples, is compiled with torch.compile or run in bfloat16 (off by default:
    check its effect with `python -m flowvae.bench --bf16-check RUN_DIR` first). The model is for
    inference only afterwards: training would no longer update the folded weights.
    """
    fold_weight_norm(model)
    model.eval()
    if channels_last and has_convolutions(model):
        model.to(memory_format=torch.channels_last)
    if compile_decoder:
        model.decoder = torch.compile(model.decoder, dynamic=False)
    if decoder_bf16:
        model.decoder = BFloat16Decoder(model.decoder)
    return model
