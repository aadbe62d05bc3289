"""Jobs that survive time limits: SIGTERM or a time box checkpoints at once, exits 75, and the rerun ends bit-identical."""

from __future__ import annotations

import hashlib
import os
import signal

import torch

from flowvae import cli
from flowvae.runs import train
from flowvae.files.errors import EXIT_TIME_BOX
from flowvae.models.objectives import objective
from test_failures import cfg_from, params_file


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _train(path, out) -> int:
    return cli.main(["train", "--params", str(path), "--dataset", "stripes", "--model", "rnvp1", "--out", str(out)])


def test_sigterm_mid_epoch_checkpoints_exits_75_and_resumes_bit_identically(tmp_path, monkeypatch):
    path = params_file(tmp_path, epochs=3, ema=0.9)
    assert _train(path, tmp_path / "straight") == 0

    calls = {"n": 0}

    def sigterm_at_step_11(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 11:  # epoch 2, step 3 of 8
            os.kill(os.getpid(), signal.SIGTERM)
        return objective(*args, **kwargs)

    monkeypatch.setattr(train, "objective", sigterm_at_step_11)
    assert _train(path, tmp_path / "stopped") == EXIT_TIME_BOX
    state = torch.load(tmp_path / "stopped/checkpoint/state.pt", weights_only=True)
    assert (state["state"]["epoch"], state["state"]["step_in_epoch"]) == (1, 3)  # lost nothing but the signal's step
    assert not (tmp_path / "stopped/model.safetensors").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again

    monkeypatch.setattr(train, "objective", objective)
    torch.manual_seed(12345)  # a fresh process would not share the stopped one's RNG state
    assert _train(path, tmp_path / "stopped") == 0
    for name in ("model.safetensors", "train.jsonl", "settings.json"):
        assert _sha(tmp_path / "straight" / name) == _sha(tmp_path / "stopped" / name), name


def test_a_time_box_stops_after_a_step_and_the_rerun_continues(tmp_path):
    path = params_file(tmp_path, epochs=2)
    cfg = cfg_from(path, "vae")
    train.Trainer(cfg, tmp_path / "straight").run()
    out = tmp_path / "boxed"
    stops = 0
    for _ in range(40):
        try:
            train.Trainer(cfg, out, max_minutes=1e-9).run()
            break
        except train.TimeBoxReached as exc:
            assert "time box of" in str(exc) and "Rerun the same command" in str(exc)
            stops += 1
    assert 16 <= stops < 40  # one step per call (16 steps in all): every call makes progress  # one step per call: every call makes progress
    assert _sha(tmp_path / "straight/model.safetensors") == _sha(out / "model.safetensors")
