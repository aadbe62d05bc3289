"""Sylvester-flow VAEs and the gated-conv, categorical VAE through the trainer and the evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from flowvae.spec.params import read_params
from flowvae.models.build import build_variant
from flowvae.spec.run import RunSpec
from flowvae.runs.evaluate import evaluate
from flowvae.runs.train import Trainer


def _history(run_dir):
    return [json.loads(line) for line in (run_dir / "train.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("model", ["osnf2_m2", "hsnf2_h2", "tsnf2"])
def test_sylvester_vae_learns_and_its_importance_sampled_bound_is_tighter(tiny, tmp_path, model):
    out = tmp_path / model
    cfg = tiny(model, epochs=4)
    Trainer(cfg, out).run()
    h = _history(out)
    assert h[-1]["val_neg_elbo"] < h[0]["val_neg_elbo"] - 3
    metrics = evaluate(cfg, out)
    assert math.isfinite(metrics["neg_log_px"])
    assert metrics["neg_log_px"] <= metrics["neg_elbo"] + 1e-6  # K = 16 samples: log p(x) bound above the ELBO
    assert metrics["bits_per_dim"] is None  # binary data: nats only


def test_gatedconv_categorical_vae_trains_and_reports_bits_per_dim(tmp_path):
    from conftest import add_gray_dataset, tiny_params

    params = tiny_params(tmp_path, epochs=2)
    add_gray_dataset(params, tmp_path, "faces", (1, 8, 4), "categorical", (64, 16, 16))
    params["profiles"]["test"]["network"] = {"kind": "gatedconv", "z_dim": 4}
    cfg = RunSpec.resolve(params, "test", "faces", "osnf1_m2", 0)
    out = tmp_path / "run"
    Trainer(cfg, out).run()
    h = _history(out)
    assert h[-1]["val_neg_elbo"] < h[0]["val_neg_elbo"]
    assert h[0]["val_neg_elbo"] < 32 * math.log(256) * 1.5  # starts near a uniform 256-way guess per pixel
    metrics = evaluate(cfg, out)
    assert metrics["bits_per_dim"]["neg_log_px"] == pytest.approx(metrics["neg_log_px"] / (32 * math.log(2)))


def test_every_table9_row_builds_on_the_sylvester_profiles_gated_convolutions():
    """The sylvester profile's network with each posterior of table 9: finite bounds and gradients on two images."""
    params = read_params(Path(__file__).resolve().parents[1] / "params.yaml")
    net = params["profiles"]["sylvester"]["network"]
    assert net["kind"] == "gatedconv" and net["z_dim"] == 64
    x = (torch.rand(2, 1, 28, 28) > 0.5).float()
    for row in params["tables"]["table9"]["rows"]:
        torch.manual_seed(0)
        model = build_variant(row["model"], net, (1, 28, 28), "bernoulli")
        out = model(x, n_samples=2)
        bound = out.log_px_z + out.log_pz - out.log_qz
        assert bound.shape == (2, 2) and torch.isfinite(bound).all(), row["model"]
        bound.mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), row["model"]
