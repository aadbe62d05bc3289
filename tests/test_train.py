"""Training: it learns, it resumes to the same weights, and it stops loudly on a non-finite loss."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from flowvae import cli
from flowvae.runs import train
from flowvae.models.objectives import objective
from flowvae.files.errors import NonFiniteLoss
from flowvae.runs.train import Trainer


def history(run_dir):
    return [json.loads(line) for line in (run_dir / "train.jsonl").read_text().splitlines()]


def test_training_lowers_neg_elbo(tiny, tmp_path):
    out = tmp_path / "run"
    summary = Trainer(tiny("iaf_d1_w16", epochs=4), out).run()
    h = history(out)
    assert [r["epoch"] for r in h] == [1, 2, 3, 4]
    assert h[-1]["val_neg_elbo"] < h[0]["val_neg_elbo"] - 3
    assert h[-1]["train_neg_elbo"] < h[0]["train_neg_elbo"]
    assert summary["epochs"] == 4
    assert (out / "model.safetensors").exists()
    for key in ("train_recon", "train_kl", "val_recon", "val_kl", "beta", "lr"):
        assert key in h[0]
    timings = json.loads((out / "train_timings.json").read_text())
    assert [t["epoch"] for t in timings["epochs"]] == [1, 2, 3, 4]
    assert all(t["seconds"] > 0 and t["images_per_s"] > 0 for t in timings["epochs"])
    assert timings["train_minutes"] == pytest.approx(sum(t["seconds"] for t in timings["epochs"]) / 60)
    assert "seconds" not in h[0]  # wall-clock figures stay out of train.jsonl: same run, same bytes


def test_warmup_beta_rises_linearly(tiny, tmp_path):
    out = tmp_path / "run"
    Trainer(tiny("vae", epochs=3, warmup_epochs=2), out).run()
    betas = [r["beta"] for r in history(out)]
    assert betas[0] == pytest.approx(0.5, abs=0.02) and betas[1] == 1.0 and betas[2] == 1.0


def test_early_stopping_keeps_best_weights(tiny, tmp_path, monkeypatch):
    scores = iter([10.0, 9.0, 9.5, 9.6, 8.0, 7.0])
    monkeypatch.setattr(train, "validate", lambda *a: {"neg_elbo": next(scores), "recon": 0.0, "kl": 0.0})
    out = tmp_path / "run"
    trainer = Trainer(tiny("vae", epochs=6, patience=2), out)
    summary = trainer.run()
    h = history(out)
    assert [r["best"] for r in h] == [True, True, False, False]
    assert summary["best_epoch"] == 2
    kept = load_file(str(out / "model.safetensors"))
    live = trainer.model.state_dict()
    assert any(not torch.equal(kept[k], live[k]) for k in kept)  # epoch 2's weights, not the last ones


class Killed(Exception):
    pass


@pytest.mark.parametrize("network", [None, {"kind": "gatedconv", "z_dim": 4}])  # MLP; convolutions, trained channels_last
def test_kill_and_resume_gives_identical_weights(tiny, tmp_path, monkeypatch, network):
    cfg = tiny("rnvp1", epochs=3, ema=0.9, **({"network": network} if network else {}))
    Trainer(cfg, tmp_path / "straight").run()

    calls = {"n": 0}

    def dies_at_step_11(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 11:  # mid-way through epoch 2 (8 batches per epoch)
            raise Killed
        return objective(*args, **kwargs)

    monkeypatch.setattr(train, "objective", dies_at_step_11)
    with pytest.raises(Killed):
        Trainer(cfg, tmp_path / "resumed", checkpoint_seconds=0.0).run()
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    state = torch.load(tmp_path / "resumed" / "checkpoint" / "state.pt", weights_only=True)
    assert state["state"]["epoch"] == 1 and state["state"]["step_in_epoch"] == 2
    monkeypatch.setattr(train, "objective", objective)
    torch.manual_seed(12345)  # a fresh process would not share the killed one's RNG state
    Trainer(cfg, tmp_path / "resumed").run()

    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = history(tmp_path / "straight"), history(tmp_path / "resumed")
    assert [r["val_neg_elbo"] for r in ha] == [r["val_neg_elbo"] for r in hb]


def test_nan_guard_names_epoch_and_step_and_keeps_checkpoint(tiny, tmp_path, monkeypatch):
    cfg = tiny("vae", epochs=3)
    calls = {"n": 0}

    def nan_at_step_11(*args, **kwargs):
        calls["n"] += 1
        loss = objective(*args, **kwargs)
        if calls["n"] == 11:
            loss.loss = loss.loss * float("nan")
        return loss

    monkeypatch.setattr(train, "objective", nan_at_step_11)
    with pytest.raises(NonFiniteLoss, match="epoch 2, step 3"):
        Trainer(cfg, tmp_path / "run").run()
    state = torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=True)
    assert state["state"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_cli_exits_non_zero_on_nan(tiny, tmp_path, monkeypatch, capsys):
    import yaml

    from conftest import tiny_params

    params = tiny_params(tmp_path, epochs=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    def always_nan(*args, **kwargs):
        loss = objective(*args, **kwargs)
        loss.loss = loss.loss * float("inf")
        return loss

    monkeypatch.setattr(train, "objective", always_nan)
    code = cli.main(
        ["train", "--params", str(tmp_path / "params.yaml"), "--dataset", "stripes", "--model", "vae", "--out", str(tmp_path / "r")]
    )
    assert code == 1
    assert "epoch 1, step 1" in capsys.readouterr().err


def test_convolutional_models_train_channels_last_on_a_cpu(tiny, tmp_path):
    conv = Trainer(tiny("vae", network={"kind": "gatedconv", "z_dim": 4}), tmp_path / "conv").model
    assert conv.encoder.body[1].h.weight.is_contiguous(memory_format=torch.channels_last)
    mlp = Trainer(tiny("vae"), tmp_path / "mlp").model
    assert all(p.is_contiguous() for p in mlp.parameters())


def test_a_twenty_step_real_nvp_posterior_trains_with_a_bounded_kl(tiny, tmp_path):
    """rnvp20 (40 couplings) for one epoch under the learning-rate warm-up: every batch's KL stays far below the guard."""
    cfg = tiny("rnvp20", epochs=1, lr=2e-3, lr_warmup_steps=50)
    trainer = Trainer(cfg, tmp_path / "run")
    kls = []
    step = trainer.forward_loss

    def recording(x, beta):
        loss, terms = step(x, beta)
        kls.append(float(terms[3]))
        return loss, terms

    trainer.forward_loss = recording
    trainer.run()
    assert len(kls) == 8 and max(kls) < 1e3, kls
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert lrs == [pytest.approx(2e-3 * 8 / 50)]  # still warming up after 8 of 50 steps


def test_the_learning_rate_warms_up_linearly(tiny, tmp_path):
    trainer = Trainer(tiny("vae", lr=1e-2, lr_warmup_steps=4), tmp_path / "run")
    seen = []
    for step in range(1, 7):
        trainer._warm_up_lr(step)
        seen.append(trainer.optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2])


def test_a_run_whose_kl_explodes_fails_naming_epoch_and_step(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "KL_LIMIT", 1e-6)  # any real KL is above it: the guard must fire at the first look
    with pytest.raises(NonFiniteLoss, match=r"the KL term exploded \(\S+ nats per image, above 1e-06\): the run diverged "
                                            r"at epoch 1, step 1"):
        Trainer(tiny("vae", epochs=1), tmp_path / "run").run()
