"""A result never disagrees with its settings: overrides the jobs cannot see, a shortened budget, corrupt or
truncated files, a full disk, a stopped run, a params file read from elsewhere (issue: results that never lie)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from flowvae.spec.params import read_params

from flowvae import cli
from flowvae.files.atomic import atomic_path, write_text
from flowvae.files.errors import CorruptFileError, SettingsChanged, WriteFailed
from flowvae.pipeline import status
from flowvae.pipeline.plan import Run
from flowvae.report.inputs import load_eval, load_train_log
from flowvae.runs.checkpoint import save_weights, stop_epoch
from flowvae.runs.evaluate import evaluate
from flowvae.runs.train import Trainer
from flowvae.spec.settings import TrainSettings
from test_failures import cfg_from, history, params_file

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _snakemake(*args: str, cwd: Path = REPO, mirror: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    if mirror is not None:
        env["FLOWVAE_DATA_MIRROR"] = str(mirror)
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------- overrides the jobs would not see


def test_a_config_key_the_jobs_cannot_see_is_refused():
    result = _snakemake("-n", "--config", "profile=smoke", "code_version=2", "--", "reports/smoke/table1.md")
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "--config code_version" in out and "takes only profile and params_file" in out


def test_the_params_file_is_no_part_of_any_rules_command_or_params():
    """So that an identical copy elsewhere reruns nothing, and a path with spaces stays one argument."""
    rules = "".join(p.read_text() for p in (REPO / "workflow/rules").glob("*.smk"))
    assert "PARAMS_FILE," not in rules and "{params.file}" not in rules
    # prepare, train, evaluate, ais, bdmc, gaps, classifier, sample_quality, gaussian_obs, table, figures, verify (the
    # summary page reads none)
    assert rules.count('--params \\"$FLOWVAE_PARAMS\\"') == 12


# ---------------------------------------------------------------- a budget lowered below what was trained


def test_stop_epoch_follows_epochs_and_patience():
    h = [{"best": True}, {"best": False}, {"best": False}, {"best": True}]
    assert stop_epoch(h, TrainSettings(epochs=4, batch_size=1, lr=1.0)) == 4
    assert stop_epoch(h, TrainSettings(epochs=2, batch_size=1, lr=1.0)) == 2
    assert stop_epoch(h, TrainSettings(epochs=9, batch_size=1, lr=1.0, patience=2)) == 3
    assert stop_epoch(h[:1], TrainSettings(epochs=9, batch_size=1, lr=1.0)) == 9


def test_lowering_epochs_never_keeps_the_later_weights(tmp_path, capsys):
    path = params_file(tmp_path, epochs=2)
    fresh = tmp_path / "fresh"
    Trainer(cfg_from(path), fresh).run()
    run = tmp_path / "run"
    Trainer(cfg_from(path), run).run()
    path.write_text(path.read_text().replace("epochs: 2", "epochs: 3"))
    Trainer(cfg_from(path), run).run()  # extends to 3
    path.write_text(path.read_text().replace("epochs: 3", "epochs: 2"))
    with pytest.raises(SettingsChanged, match=r"train\.epochs: 3 -> 2: the checkpoint holds 3 epochs, but this budget stops after epoch 2"):
        Trainer(cfg_from(path), run).run()
    Trainer(cfg_from(path), run, on_change="restart").run()
    assert "starting over" in capsys.readouterr().err
    assert len(history(run)) == 2 and history(run) == history(fresh)
    assert (run / "model.safetensors").read_bytes() == (fresh / "model.safetensors").read_bytes()
    assert json.loads((run / "settings.json").read_text())["best_epoch"] <= 2


def test_evaluate_refuses_weights_from_beyond_the_recorded_epochs(tmp_path):
    path = params_file(tmp_path, epochs=1)
    run = tmp_path / "run"
    spec = cfg_from(path)
    Trainer(spec, run).run()
    metadata = {**json.loads((run / "settings.json").read_text()), "best_epoch": 3}
    from flowvae.files.safeload import load_safetensors

    save_weights(load_safetensors(run / "model.safetensors", "weights", "-"), run / "model.safetensors", metadata)
    write_text(run / "settings.json", json.dumps(metadata))
    with pytest.raises(SettingsChanged, match="holds the weights of epoch 3, beyond the 1 epochs"):
        evaluate(spec, run)


# ---------------------------------------------------------------- files that disagree or are cut short


def test_a_corrupt_settings_json_stops_the_evaluation_naming_it(tmp_path, capsys):
    path = params_file(tmp_path, epochs=1)
    run = tmp_path / "run"
    Trainer(cfg_from(path), run).run()
    args = ["evaluate", "--params", str(path), "--dataset", "stripes", "--model", "vae", "--out", str(run)]
    (run / "settings.json").write_text('{"settings": {')
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert f"{run / 'settings.json'} is not valid JSON" in err and "Traceback" not in err
    (run / "settings.json").write_text(json.dumps({"settings": {}, "commit": "x", "best_epoch": 1}))
    assert cli.main(args) == 1
    assert "does not hold the settings record that" in capsys.readouterr().err
    assert not (run / "eval.json").exists()


def test_truncated_json_files_are_named(tmp_path):
    (tmp_path / "eval.json").write_text('{"model": "vae", "datas')
    with pytest.raises(CorruptFileError, match=f"{tmp_path / 'eval.json'} is not valid JSON"):
        load_eval(tmp_path / "eval.json")
    (tmp_path / "train.jsonl").write_text('{"epoch": 1}\n{"epoch": 2, "val')
    with pytest.raises(CorruptFileError, match=f"{tmp_path / 'train.jsonl'}, line 2: not valid JSON"):
        load_train_log(tmp_path / "train.jsonl")


@pytest.mark.slow
def test_a_failed_evaluation_never_leaves_an_older_table_looking_current(tmp_path):
    """Truncate a trained model after its table was built: every later build fails again, naming the file."""
    from conftest import project_copy

    project = tmp_path / "project"
    mirror = project_copy(project, rows_per_table=1)
    build = ["--cores", "2", "--config", "profile=smoke", "--", "reports/smoke/table1.md"]
    assert _snakemake(*build, cwd=project, mirror=mirror).returncode == 0
    model = project / "results/smoke/mnist_dynamic/vae/seed0/model.safetensors"
    model.write_bytes(model.read_bytes()[:5000])
    table = project / "reports/smoke/table1.md"
    for attempt in range(2):
        result = _snakemake(*build, cwd=project, mirror=mirror)
        assert result.returncode != 0, f"attempt {attempt}: {result.stdout[-1500:]}"
        assert "Nothing to be done" not in result.stdout + result.stderr
        assert "results/smoke/mnist_dynamic/vae/seed0/model.safetensors is corrupt" in log_text(project)
        assert not table.exists()
        assert ("removed reports/smoke/table1.md" in log_text(project)) == (attempt == 0)
    model.unlink()  # what the message says: retrain
    result = _snakemake(*build, cwd=project, mirror=mirror)
    assert result.returncode == 0 and "rule train" in result.stdout + result.stderr and table.exists()
    (model.parent / "settings.json").write_text('{"settings": {')
    assert _snakemake(*build, cwd=project, mirror=mirror).returncode != 0
    assert "settings.json is not valid JSON" in log_text(project)


def log_text(project: Path) -> str:
    """The logs of every job on the run (evaluate, ais, bdmc): whichever Snakemake started first fails first."""
    return "".join(p.read_text() for p in sorted((project / "logs").glob("*/smoke/mnist_dynamic/vae/seed0.log")))


# ---------------------------------------------------------------- a full disk


def test_a_full_disk_names_the_file_and_leaves_nothing_half_written(tmp_path):
    dest = tmp_path / "out" / "eval.json"
    with pytest.raises(WriteFailed, match=f"could not write {dest}: disk full"):
        with atomic_path(dest) as tmp:
            tmp.write_text("partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(dest.parent.iterdir()) == []


def test_torch_save_failing_for_space_is_named(tmp_path, monkeypatch):
    dest = tmp_path / "state.pt"

    def failing_save(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1024 vs 960")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(WriteFailed, match=rf"could not write {dest}: \[enforce fail .*bytes free there"):
        with atomic_path(dest) as tmp:
            torch.save({}, tmp)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_during_training_is_one_line_from_the_command(tmp_path, monkeypatch, capsys):
    path = params_file(tmp_path, epochs=1)
    real_replace = os.replace

    def full(src, dst):
        if str(dst).endswith("state.pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr("flowvae.files.atomic.os.replace", full)
    code = cli.main(["train", "--params", str(path), "--dataset", "stripes", "--model", "vae", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "state.pt: disk full" in err and "Traceback" not in err


# ---------------------------------------------------------------- status after a stop, and with malformed files


def _status_project(tmp_path: Path) -> tuple[dict, Path]:
    path = params_file(tmp_path, epochs=3)
    params = yaml.safe_load(path.read_text())
    params["tables"] = {"t1": {"dataset": "stripes", "rows": [{"model": "vae"}]}}
    return params, tmp_path


def test_status_says_stopped_right_after_a_time_box(tmp_path):
    params, root = _status_project(tmp_path)
    run = root / "results/test/stripes/vae/seed0"
    with pytest.raises(Exception, match="time box"):
        Trainer(cfg_from(root / "params.yaml"), run, max_minutes=1e-9).run()
    s = status.run_status(params, "test", Run("stripes", "vae", 0), root=root, now=time.time())
    assert s.state == "stopped" and "time box" in status.format_line(s)
    Trainer(cfg_from(root / "params.yaml"), run).run()  # resumes, and the mark goes
    assert not (run / "checkpoint/stopped.json").exists()


def test_status_names_malformed_files_instead_of_failing(tmp_path):
    params, root = _status_project(tmp_path)
    run = root / "results/test/stripes/vae/seed0"
    run.mkdir(parents=True)
    (run / "train_timings.json").write_text('{"epochs": [{"epoch": "x", "seconds": null}], "train_minutes": 1')
    (run / "eval_timings.json").write_text('{"eval_seconds": "fast"}')
    (run / "eval.json").write_text('[1, 2]')
    s = status.run_status(params, "test", Run("stripes", "vae", 0), root=root)
    line = status.format_line(s)
    for name in ("train_timings.json", "eval_timings.json", "eval.json"):
        assert str(run / name) in line
    (run / "train_timings.json").write_text('{"epochs": [{"epoch": 1, "seconds": "soon"}]}')
    assert str(run / "train_timings.json") in status.format_line(status.run_status(params, "test", Run("stripes", "vae", 0), root=root))


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-1"])
def test_status_watch_takes_only_a_positive_finite_interval(value, capsys):
    with pytest.raises(SystemExit):
        cli.main(["status", "--watch", value])
    assert "positive finite number" in capsys.readouterr().err


# ---------------------------------------------------------------- the same answer from any working directory


def test_validate_checks_the_published_sources_from_any_directory(tmp_path):
    project = tmp_path / "project"
    (project / "reference").mkdir(parents=True)
    shutil.copy(REPO / "reference/paper_results.csv", project / "reference")
    params = read_params(REPO / "params.yaml")
    params["tables"]["table1"]["published"]["sources"].append("nosuch2099_source")
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cwd in (project, elsewhere):
        result = subprocess.run([str(BIN / "flowvae"), "validate", "--params", str(project / "params.yaml")], cwd=cwd,
                                capture_output=True, text=True)
        assert result.returncode == 1 and "nosuch2099_source" in result.stderr, (cwd, result.stderr)


def test_a_budget_naming_a_stand_in_is_refused():
    from flowvae.spec.schema import ParamsError, validate_params

    params = read_params(REPO / "params.yaml")
    params["budgets"]["stand_in"] = {"profiles": ["smoke"], "datasets": ["synthetic_cifar10"], "train": {"epochs": 1}}
    with pytest.raises(ParamsError, match="budgets.stand_in.datasets.0: 'synthetic_cifar10' is the smoke profile's "
                                          "stand-in for 'cifar10'.*list 'cifar10'"):
        validate_params(params)


def test_a_missing_split_says_where_relative_paths_are_read_from(tmp_path, monkeypatch, capsys):
    path = params_file(tmp_path, epochs=1)
    params = yaml.safe_load(path.read_text())
    params["data"]["prepared_dir"] = "prepared"  # relative, as in the project's params.yaml
    path.write_text(yaml.safe_dump(params))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli.main(["train", "--params", str(path), "--dataset", "stripes", "--model", "vae", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "prepared/test/stripes/train.npz is missing (data.prepared_dir is relative" in err and str(elsewhere) in err
