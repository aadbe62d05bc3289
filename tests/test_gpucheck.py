"""`make gpu-check` (flowvae.gpucheck): its one line without CUDA, and every step but the CUDA ones on the CPU."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import tiny_params
from flowvae import gpucheck

TINY_MLP = {"kind": "mlp", "hidden": 16, "layers": 1, "z_dim": 4, "context_dim": 8}


def test_without_cuda_it_says_so_in_one_line_and_exits_0(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpucheck.main(["--out", str(tmp_path / "gpu")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("gpu-check: no CUDA device on this machine")
    assert not (tmp_path / "gpu").exists()


def test_every_step_runs_on_the_cpu_and_writes_json_and_one_page(tmp_path):
    params = tiny_params(tmp_path, epochs=100_000)  # only the 1-second time box can end it, on any machine
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    out = tmp_path / "gpu"
    report = gpucheck.run_check(torch.device("cpu"), str(path), out, train_seconds=1.0, nets={"mlp": (TINY_MLP, None)},
                                rows=(("vae", "mlp", "mnist"),), compiled=False, profile="test",
                                dataset="stripes")
    saved = json.loads((out / "gpucheck.json").read_text())
    assert saved["step_match"] == report["step_match"] and report["step_match"]["match"]
    assert report["step_match"]["max_abs_param_delta"] == 0.0  # the CPU against itself
    row = saved["bench"][0]
    assert row["train_images_per_s"] > 0 and row["train_images_per_s_bf16"] > 0 and row["is_samples_per_s_eager"] > 0
    assert json.loads((out / "bench.json").read_text())["rows"] == saved["bench"]
    for run, model in zip(saved["table1"], gpucheck.TABLE1_MODELS):
        assert run["model"] == model and "error" not in run, run
        assert run["stopped_by"] == "time box" and run["steps"] > 0 and run["epochs"] < 100_000  # the time box, not the epochs
        assert run["K"] == 128 and run["test_images"] == 32 and run["neg_log_px"] <= run["neg_elbo"] + 1e-6
    page = (out / "gpucheck.md").read_text()
    assert page.startswith("# GPU check") and "| vae | time box |" in page and "**match**" in page


def test_the_step_check_sees_a_difference(monkeypatch):
    """A device whose steps differ (here: a CPU whose Adamax runs at a learning rate 10% higher) is a mismatch."""
    real = torch.optim.Adamax
    made = []

    def adamax(params, lr):
        made.append(lr)
        return real(params, lr=lr * (1.1 if len(made) == 2 else 1.0))

    monkeypatch.setattr(torch.optim, "Adamax", adamax)
    result = gpucheck.step_match(TINY_MLP, torch.device("cpu"), torch.device("cpu"))
    assert not result["match"] and result["max_abs_param_delta"] > gpucheck.STEP_TOL
