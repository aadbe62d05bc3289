"""Training the GAN: the run folder's files, exact resumption, reproducibility, refused settings, the NaN guard."""

from __future__ import annotations

import copy
import json
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import tiny_params
from flowvae import cli
from flowvae.files.errors import EXIT_TIME_BOX, NonFiniteLoss, TimeBoxReached
from flowvae.models import gan
from flowvae.models.build import build_variant
from flowvae.runs.distributed import Context
from flowvae.runs.gan_training import GANTrainer
from flowvae.spec.layout import TRAIN_OUTPUTS
from flowvae.spec.run import RunSpec

SMALL_GAN = {"latent_dim": 4, "generator_hidden": [16, 32], "discriminator_hidden": [32, 16], "dropout": 0.3}
STEPS_PER_EPOCH = 8  # 256 training images in batches of 32


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread beats two contending ones


def gan_params(root: Path, epochs: int = 3, **train) -> dict:
    """tiny_params with the small GAN and Adam (on the stripes data set prepared under root)."""
    params = tiny_params(root, epochs=epochs, **{"optimizer": "adam", "lr": 2e-3, "betas": [0.5, 0.999], **train})
    params["profiles"]["test"]["gan"] = copy.deepcopy(SMALL_GAN)
    return params


def gan_spec(root: Path, seed: int = 0, epochs: int = 3, **train) -> RunSpec:
    return RunSpec.resolve(gan_params(root, epochs, **train), "test", "stripes", "gan", seed)


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train.jsonl").read_text().splitlines()]


def test_a_run_writes_its_files_and_its_weights_load_into_a_fresh_gan(tmp_path):
    spec = gan_spec(tmp_path)
    out = tmp_path / "run"
    summary = GANTrainer(spec, out).run()
    for name in TRAIN_OUTPUTS:
        assert (out / name).is_file(), name
    h = history(out)
    assert [r["epoch"] for r in h] == [1, 2, 3]
    assert [r["step"] for r in h] == [STEPS_PER_EPOCH * e for e in (1, 2, 3)]
    assert all(set(r) == {"epoch", "step", "d_loss", "g_loss", "d_real", "d_fake"} for r in h)
    assert all(0 < r["d_real"] < 1 and 0 < r["d_fake"] < 1 and r["d_loss"] > 0 and r["g_loss"] > 0 for r in h)
    curves = (out / "train_curves.csv").read_text().splitlines()
    assert curves[0] == "epoch,d_loss,g_loss,d_real,d_fake" and len(curves) == 4
    assert curves[3] == ",".join(str(h[2][k]) for k in ("epoch", "d_loss", "g_loss", "d_real", "d_fake"))
    timings = json.loads((out / "train_timings.json").read_text())
    assert [t["epoch"] for t in timings["epochs"]] == [1, 2, 3]
    assert all(t["seconds"] > 0 and t["images_per_s"] > 0 for t in timings["epochs"])
    assert timings["train_minutes"] == pytest.approx(sum(t["seconds"] for t in timings["epochs"]) / 60)
    assert summary["epochs"] == 3 and summary["g_loss"] == h[-1]["g_loss"] and summary["d_loss"] == h[-1]["d_loss"]

    settings = json.loads((out / "settings.json").read_text())
    assert settings["settings"] == spec.record() and settings["best_epoch"] == 3
    assert {"commit", "source_diff_sha256", "versions"} <= set(settings)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["flowvae"]) == settings
    weights = load_file(str(out / "model.safetensors"))
    fresh = build_variant("gan", settings["settings"]["network"], spec.image_shape, spec.likelihood)
    assert any(not torch.equal(weights[k], v) for k, v in fresh.state_dict().items())  # trained, not the initial weights
    fresh.load_state_dict(weights)  # strict: every key of both networks, and nothing else
    assert {k.split(".")[0] for k in weights} == {"generator", "discriminator"}
    assert fresh.sample(5, torch.Generator().manual_seed(0)).shape == (5, 1, 8, 8)

    # rerunning a finished run rewrites its outputs from the checkpoint without training
    before = (out / "model.safetensors").read_bytes()
    assert GANTrainer(spec, out).run()["epochs"] == 3
    assert (out / "model.safetensors").read_bytes() == before and len(history(out)) == 3


class Killed(Exception):
    pass


@pytest.mark.parametrize("interruption", ["killed", "time_box", "sigterm"])
def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, monkeypatch, interruption):
    spec = gan_spec(tmp_path)
    GANTrainer(spec, tmp_path / "straight").run()

    calls = {"n": 0}
    real_loss = gan.generator_loss

    def interrupted_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 11:  # mid-way through epoch 2, after D's update of that step
            if interruption == "killed":
                raise Killed
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer stops after this step
        return real_loss(*args, **kwargs)

    resumed = tmp_path / "resumed"
    if interruption == "time_box":
        with pytest.raises(TimeBoxReached, match="time box"):
            GANTrainer(spec, resumed, max_minutes=0.0).run()
        done = (0, 1)
    else:
        monkeypatch.setattr(gan, "generator_loss", interrupted_loss)
        expected = Killed if interruption == "killed" else TimeBoxReached
        with pytest.raises(expected):
            GANTrainer(spec, resumed, checkpoint_seconds=0.0).run()
        monkeypatch.setattr(gan, "generator_loss", real_loss)
        done = (1, 2) if interruption == "killed" else (1, 3)
    assert not (resumed / "model.safetensors").exists()
    state = torch.load(resumed / "checkpoint" / "state.pt", weights_only=True)
    assert (state["state"]["epoch"], state["state"]["step_in_epoch"]) == done
    assert (resumed / "checkpoint" / "stopped.json").exists() == (interruption != "killed")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again
    torch.manual_seed(12345)  # a fresh process would not share the stopped one's RNG state
    GANTrainer(spec, resumed).run()

    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert (tmp_path / "straight" / "train.jsonl").read_bytes() == (resumed / "train.jsonl").read_bytes()
    assert not (resumed / "checkpoint" / "stopped.json").exists()


def test_the_same_seed_gives_the_same_history_and_another_seed_another(tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        GANTrainer(gan_spec(tmp_path, seed=seed, epochs=2), tmp_path / name).run()
        runs[name] = (tmp_path / name / "train.jsonl").read_bytes()
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


@pytest.mark.parametrize(("setting", "value"), [("optimizer", "adamax"), ("patience", 5), ("warmup_epochs", 1), ("ema", 0.9)])
def test_train_settings_the_gan_cannot_honour_are_refused(tmp_path, setting, value):
    with pytest.raises(ValueError, match=rf"train\.{setting} is {value!r}"):
        GANTrainer(gan_spec(tmp_path, **{setting: value}), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_nan_guard_names_the_epoch_and_step(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_loss = gan.generator_loss

    def nan_at_step_11(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 11 else loss

    monkeypatch.setattr(gan, "generator_loss", nan_at_step_11)
    out = tmp_path / "run"
    message = r"the loss \(g_loss\) is not finite at epoch 2, step 3; the last good checkpoint is kept"
    with pytest.raises(NonFiniteLoss, match=message) as err:
        GANTrainer(gan_spec(tmp_path), out).run()
    assert str(out) in str(err.value)
    assert len(history(out)) == 1 and not (out / "model.safetensors").exists()
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert (state["state"]["epoch"], state["state"]["step_in_epoch"]) == (1, 0)


def test_data_parallel_training_is_refused(tmp_path):
    with pytest.raises(ValueError, match="data-parallel GAN training is not supported"):
        GANTrainer(gan_spec(tmp_path), tmp_path / "run", ctx=Context(rank=0, world=2))


def test_flowvae_train_trains_a_gan_and_a_time_box_exits_75(tmp_path, capsys):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(gan_params(tmp_path, epochs=2), sort_keys=False))
    argv = ["train", "--params", str(path), "--dataset", "stripes", "--model", "gan", "--out", str(tmp_path / "cli")]
    assert cli.main([*argv, "--max-minutes", "1e-9"]) == EXIT_TIME_BOX
    assert not (tmp_path / "cli" / "model.safetensors").exists()
    capsys.readouterr()
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["epochs"] == 2 and set(printed) == {"epochs", "train_minutes", "d_loss", "g_loss", "d_real", "d_fake"}
    GANTrainer(gan_spec(tmp_path, epochs=2), tmp_path / "direct").run()
    assert (tmp_path / "cli" / "train.jsonl").read_bytes() == (tmp_path / "direct" / "train.jsonl").read_bytes()
