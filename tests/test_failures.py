"""Failures that name their cause and the way back; resumes that never silently change a run; bytes that reproduce."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import tiny_params
from flowvae import cli
from flowvae.runs import train
from flowvae.spec.run import RunSpec
from flowvae.data.prepare import load_split
from flowvae.files.errors import SettingsChanged
from flowvae.runs.evaluate import evaluate
from flowvae.models.objectives import objective
from flowvae.files.safeload import CorruptFileError
from flowvae.runs.train import Trainer

BIN = Path(sys.executable).parent


def params_file(tmp_path: Path, **overrides) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params(tmp_path, **overrides), sort_keys=False))
    return path


def cfg_from(path: Path, model: str = "vae"):
    return RunSpec.resolve(yaml.safe_load(path.read_text()), "test", "stripes", model, 0)


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- resume with changed settings


def test_resume_refuses_a_changed_lr_naming_the_key(tmp_path):
    path = params_file(tmp_path, epochs=2)
    Trainer(cfg_from(path), tmp_path / "run").run()
    path.write_text(path.read_text().replace("lr: 0.003", "lr: 1000000.0"))
    with pytest.raises(SettingsChanged, match=r"train\.lr: 0\.003 -> 1000000\.0"):
        Trainer(cfg_from(path), tmp_path / "run").run()


def test_resume_with_restart_sets_the_old_checkpoint_aside_and_starts_over(tmp_path, capsys):
    path = params_file(tmp_path, epochs=2)
    Trainer(cfg_from(path), tmp_path / "run").run()
    path.write_text(path.read_text().replace("lr: 0.003", "lr: 0.001"))
    Trainer(cfg_from(path), tmp_path / "run", on_change="restart").run()
    assert "train.lr: 0.003 -> 0.001" in capsys.readouterr().err
    assert (tmp_path / "run/checkpoint.replaced/state.pt").exists()
    assert [r["lr"] for r in history(tmp_path / "run")] == [0.001, 0.001]
    recorded = json.loads((tmp_path / "run/settings.json").read_text())
    assert recorded["settings"]["train"]["lr"] == 0.001


def test_more_epochs_extend_a_finished_run_and_say_so(tmp_path, capsys):
    path = params_file(tmp_path, epochs=2)
    Trainer(cfg_from(path), tmp_path / "run").run()
    before = history(tmp_path / "run")
    path.write_text(path.read_text().replace("epochs: 2", "epochs: 3"))
    summary = Trainer(cfg_from(path), tmp_path / "run").run()
    assert "train.epochs: 2 -> 3: extending the finished run from epoch 2" in capsys.readouterr().err
    after = history(tmp_path / "run")
    assert summary["epochs"] == 3 and after[:2] == before and len(after) == 3


def test_rerunning_a_finished_run_says_it_finished(tmp_path, capsys):
    path = params_file(tmp_path, epochs=2)
    Trainer(cfg_from(path), tmp_path / "run").run()
    capsys.readouterr()
    Trainer(cfg_from(path), tmp_path / "run").run()
    err = capsys.readouterr().err
    assert "the run finished at epoch 2; writing its outputs from the checkpoint" in err and "epoch 3" not in err


# ---------------------------------------------------------------- evaluate against the run's record


def test_evaluate_refuses_a_run_whose_settings_params_no_longer_give(tmp_path):
    path = params_file(tmp_path, epochs=1)
    Trainer(cfg_from(path), tmp_path / "run").run()
    path.write_text(path.read_text().replace("hidden: 32", "hidden: 16"))
    with pytest.raises(SettingsChanged, match=r"network\.hidden: 32 -> 16"):
        evaluate(cfg_from(path), tmp_path / "run")


# ---------------------------------------------------------------- corrupt files


@pytest.mark.parametrize("content", [b"garbage, not an archive", None], ids=["garbage", "truncated"])
def test_a_corrupt_prepared_split_is_named_with_its_rebuild(tmp_path, content):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((4, 1, 8, 8), np.uint8))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(content if content is not None else good.read_bytes()[:100])
    with pytest.raises(CorruptFileError) as err:
        load_split(bad)
    message = str(err.value)
    assert str(bad) in message and "corrupt" in message and "flowvae prepare" in message
    assert "unsafe" not in message and "allow_pickle" not in message


def test_a_pickled_object_array_is_refused_without_unsafe_advice(tmp_path):
    bad = tmp_path / "objects.npz"
    np.savez(bad, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CorruptFileError) as err:
        load_split(bad)
    assert "never loads" in str(err.value) and "unsafe" not in str(err.value) and "allow_pickle" not in str(err.value)


@pytest.mark.parametrize("victim", ["checkpoint/state.pt", "model.safetensors"])
def test_a_replaced_checkpoint_or_weights_file_is_named_and_never_unpickled(tmp_path, victim, capsys):
    path = params_file(tmp_path, epochs=1)
    run = tmp_path / "run"
    Trainer(cfg_from(path), run).run()
    (run / victim).write_bytes(b"not a checkpoint" * 10)
    command = "train" if victim.startswith("checkpoint") else "evaluate"
    code = cli.main([command, "--params", str(path), "--dataset", "stripes", "--model", "vae", "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 1 and str(run / victim) in err and "corrupt or not" in err
    assert "weights_only" not in err and "Traceback" not in err
    assert ("delete" in err) if command == "train" else ("retrain" in err)


# ---------------------------------------------------------------- byte-reproducible artifacts


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _a_day_later(monkeypatch):
    """Let the clock read one day later: a file that stores a write time (zip entries do) then differs."""
    import time

    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 86_400)


def test_two_identical_trainings_give_identical_bytes(tmp_path, monkeypatch):
    path = params_file(tmp_path, epochs=2)
    for name in ("a", "b"):
        if name == "b":
            _a_day_later(monkeypatch)
        Trainer(cfg_from(path, "iaf_d1_w16"), tmp_path / name).run()
        evaluate(cfg_from(path, "iaf_d1_w16"), tmp_path / name)
    for artifact in ("model.safetensors", "settings.json", "train.jsonl", "train_curves.csv", "eval.json", "samples.npz"):
        assert _sha(tmp_path / "a" / artifact) == _sha(tmp_path / "b" / artifact), artifact
    assert _sha(tmp_path / "a/train_timings.json") != _sha(tmp_path / "b/train_timings.json")  # wall clock lives there


def test_prepared_files_have_the_same_bytes_every_time(tmp_path, monkeypatch):
    from flowvae.spec.datasets import DatasetSpec
    from flowvae.data.prepare import prepare

    params = tiny_params(tmp_path)
    spec = DatasetSpec.from_params("stripes", params["datasets"]["stripes"])
    hashes = []
    for name in ("p1", "p2"):
        if name == "p2":
            _a_day_later(monkeypatch)
        paths = prepare(spec, tmp_path / "raw", tmp_path / name)
        hashes.append([_sha(paths[s]) for s in ("train", "valid", "test")])
    assert hashes[0] == hashes[1]


def test_outputs_have_the_usual_file_mode(tmp_path):
    path = params_file(tmp_path, epochs=1)
    Trainer(cfg_from(path), tmp_path / "run").run()
    expected = 0o666 & ~_umask()
    for name in ("model.safetensors", "settings.json", "train.jsonl", "checkpoint/state.pt"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == expected, name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_fetched_file_has_the_usual_file_mode(tmp_path):
    from flowvae.spec.datasets import RemoteFile
    from flowvae.data.download import fetch

    mirror = tmp_path / "mirror"
    (mirror / "d").mkdir(parents=True)
    (mirror / "d/f.bin").write_bytes(b"payload")
    remote = RemoteFile.from_params({"path": "d/f.bin", "url": "http://localhost:9/none", "size": 7, "md5": hashlib.md5(b"payload").hexdigest()})
    got = fetch(remote, tmp_path / "raw", mirror)
    assert stat.S_IMODE(got.stat().st_mode) == 0o666 & ~_umask()


# ---------------------------------------------------------------- small ones


def test_nan_on_the_first_epoch_says_no_checkpoint_exists_yet(tmp_path, monkeypatch):
    path = params_file(tmp_path, epochs=1)

    def always_nan(*args, **kwargs):
        loss = objective(*args, **kwargs)
        loss.loss = loss.loss * float("nan")
        return loss

    monkeypatch.setattr(train, "objective", always_nan)
    with pytest.raises(train.NonFiniteLoss) as err:
        Trainer(cfg_from(path), tmp_path / "run").run()
    assert "no checkpoint was written yet" in str(err.value) and "kept in" not in str(err.value)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--threads", "0"], "argument --threads: expected a positive number of threads, got 0"),
        (["--seed", "-1"], "argument --seed: expected a non-negative integer, got -1"),
    ],
)
def test_bad_options_name_the_option(tmp_path, argv, expected, capsys):
    path = params_file(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--params", str(path), "--dataset", "stripes", "--model", "vae", *argv])
    assert exit_.value.code == 2 and expected in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(tmp_path, capsys):
    path = params_file(tmp_path)
    code = cli.main(["train", "--params", str(path), "--dataset", "stripes", "--model", "vae", "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 1 and "--device cuda: this torch build or machine has no CUDA device" in err and "Assertion" not in err


def test_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text("code_version: 1\nprofile: test\nseeds: [0\nprofiles: {}\n")
    result = subprocess.run([str(BIN / "flowvae"), "validate", "--params", str(path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith(f"flowvae validate: error: {path}:4:9: YAML syntax error")
    assert result.stderr.count("\n") == 1


def test_the_active_profile_comes_from_profile_yaml_beside_the_params_file(tmp_path, capsys):
    params = tiny_params(tmp_path)
    params["profiles"]["other"] = params["profiles"]["test"]
    del params["profile"]
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(params))
    (tmp_path / "profile.yaml").write_text("# the active profile\nprofile: other\n")
    assert cli.main(["describe", "--params", str(path), "--dataset", "stripes", "vae"]) == 0
    assert f"(other profile, from {tmp_path / 'profile.yaml'})" in capsys.readouterr().out
    (tmp_path / "profile.yaml").write_text("profile: nowhere\n")
    assert cli.main(["validate", "--params", str(path)]) == 1
    assert "'nowhere' is not one of ['other', 'test']" in capsys.readouterr().err
    (tmp_path / "profile.yaml").write_text("profile: other\nseeds: [1]\n")
    assert cli.main(["validate", "--params", str(path)]) == 1
    assert "profile.yaml: expected one line `profile: <name>`" in capsys.readouterr().err
    (tmp_path / "profile.yaml").write_text("profile: other\n")
    path.write_text(yaml.safe_dump({**params, "profile": "test"}))
    assert cli.main(["validate", "--params", str(path)]) == 1
    assert f"{path} sets `profile` and so does {tmp_path / 'profile.yaml'}" in capsys.readouterr().err


def test_errors_name_the_params_file_given(tmp_path, capsys):
    params = tiny_params(tmp_path)
    params["profiles"]["test"]["train"]["lr"] = -1
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(params))
    assert cli.main(["validate", "--params", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: profiles.test.train.lr" in err and "params.yaml:" not in err


@pytest.mark.parametrize("command", ["prepare", "train", "evaluate", "describe", "validate", "dvc-yaml", "figures"])
def test_every_subcommand_validates_params(tmp_path, command, capsys):
    params = tiny_params(tmp_path)
    params["profiles"]["test"]["train"]["epochs"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(params))
    run = ["--dataset", "stripes", "--model", "vae"] if command in ("train", "evaluate") else []
    extra = {"prepare": ["--dataset", "stripes"], "describe": ["vae"]}.get(command, [])
    assert cli.main([command, *extra, "--params", str(path), *run]) == 1
    assert f"{path}: profiles.test.train.epochs: 0 is less than the minimum of 1" in capsys.readouterr().err


def test_report_table_validates_params(tmp_path, capsys):
    params = tiny_params(tmp_path)
    params["tables"] = {"table1": {"title": "t", "dataset": "stripes", "rows": [{"model": "vae"}], "metrics": ["nll_typo"]}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(params))
    argv = ["report", "table", "--params", str(path), "--table", "table1", "--out-md", str(tmp_path / "t.md"), "--out-tex", str(tmp_path / "t.tex")]
    assert cli.main(argv) == 1
    assert "tables.table1.metrics.0: unknown table metric 'nll_typo'" in capsys.readouterr().err


def test_run_folder_commands_default_to_the_profiles_threads(tmp_path, monkeypatch):
    """Without --threads, every command on a run folder computes with resources.threads, the count Snakemake passes:
    float sums depend on it, so a command run by hand must reproduce the build's bytes."""
    from flowvae.runs import ais, gaps, gaussian_observation, sample_quality

    path = params_file(tmp_path, epochs=1)
    params = yaml.safe_load(path.read_text())
    params["profiles"]["test"]["resources"]["threads"] = 3
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    run = tmp_path / "run"
    Trainer(cfg_from(path), run, threads=1).run()
    seen = {}

    def recorder(name):
        def record(*args, threads=None, **kwargs):
            seen[name] = threads
            raise RuntimeError("recorded")
        return record

    monkeypatch.setattr(gaps, "inference_gaps", recorder("gaps"))
    monkeypatch.setattr(sample_quality, "evaluate_sample_quality", recorder("sample-quality"))
    monkeypatch.setattr(sample_quality, "train_feature_classifier", recorder("classifier"))
    monkeypatch.setattr(gaussian_observation, "evaluate_decoder", recorder("gaussian-obs"))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.setdefault("bdmc", n))
    monkeypatch.setattr(ais, "load_trained", recorder("load_trained"))
    for command in ("gaps", "sample-quality", "gaussian-obs", "bdmc"):
        assert cli.main([command, str(run), "--params", str(path), "--allow-dirty"]) != 0
    assert cli.main(["classifier", "--params", str(path), "--dataset", "stripes", "--allow-dirty"]) != 0
    assert seen == {"gaps": 3, "sample-quality": 3, "gaussian-obs": 3, "bdmc": 3, "classifier": 3, "load_trained": None}


def test_the_gaps_command_takes_its_image_count_from_the_command_line(tmp_path, capsys):
    path = params_file(tmp_path, epochs=1)
    params = yaml.safe_load(path.read_text())
    params["profiles"]["test"]["gaps"] = {"images": 8, "batch_size": 4}  # --images below wins over the profile's 8
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    run = tmp_path / "run"
    Trainer(cfg_from(path), run).run()
    out = tmp_path / "gaps.json"
    code = cli.main(["gaps", str(run), "--params", str(path), "--images", "3", "--max-steps", "5", "--check-every", "5",
                     "--samples", "2", "--eval-samples", "4", "--T", "3", "--S", "2", "--threads", "1", "--allow-dirty",
                     "--out", str(out)])
    assert code in (0, None), capsys.readouterr().err
    assert json.loads(out.read_text())["n_images"] == 3
