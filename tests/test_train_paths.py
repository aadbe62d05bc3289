"""The fast training paths (bfloat16 autocast, torch.compile, data on the device) compute what the eager path does."""

from __future__ import annotations

import pytest
import torch

from flowvae.models.build import build_model
from flowvae.runs.train import Trainer, make_loss_fn


def _batch(cfg):
    trainer_batches = Trainer(cfg, "/nonexistent-unused").train_batches
    return next(trainer_batches.epoch(0))


def test_bf16_training_step_is_within_two_percent_of_float32(tiny):
    cfg = tiny("iaf_d1_w16")
    model = build_model(cfg)
    x, beta = _batch(cfg), torch.ones(())
    losses = {}
    for amp in ("none", "bf16"):
        torch.manual_seed(0)
        losses[amp] = make_loss_fn(model, cfg.variant, amp)(x, beta)[0].item()
    assert abs(losses["bf16"] - losses["none"]) <= 0.02 * abs(losses["none"])
    assert losses["bf16"] != losses["none"]  # autocast did run in bfloat16


@pytest.mark.parametrize("model_name", ["nf2", "rnvp2", "iaf_d1_w16", "osnf2_m2"])  # each flow family, around the VAE's encoder and decoder
def test_compiled_training_step_equals_eager(tiny, model_name):
    import torch._inductor.config as inductor
    from torch._dynamo.utils import counters

    cfg = tiny(model_name)
    model = build_model(cfg)
    x, beta = _batch(cfg), torch.full((), 0.5)
    out = {}
    graphs_before = counters["stats"]["unique_graphs"]
    with inductor.patch(fallback_random=True):  # the same random numbers as eager
        for compiled in (False, True):
            model.zero_grad(set_to_none=True)
            torch.manual_seed(0)
            loss, terms = make_loss_fn(model, cfg.variant, compiled=compiled)(x, beta)
            loss.backward()
            out[compiled] = (terms, torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert counters["stats"]["unique_graphs"] > graphs_before  # the step did go through torch.compile
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-4, atol=1e-5)


def test_training_batches_live_on_the_training_device(tiny, tmp_path):
    trainer = Trainer(tiny("vae"), tmp_path / "run", device="cpu")
    assert trainer.train_batches.x.device == trainer.device and trainer.train_batches.x.dtype == torch.uint8
    assert next(trainer.train_batches.epoch(0)).device == trainer.device
