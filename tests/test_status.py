"""flowvae.pipeline.status: run folders written by hand (no training), the clock given through `now`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from conftest import tiny_params
from flowvae import cli
from flowvae.pipeline import status
from flowvae.pipeline.plan import Run
from flowvae.pipeline.status import format_status, run_status

NOW = 1_700_000_000.0
PROFILE = "test"


@pytest.fixture
def params(tmp_path):
    p = tiny_params(tmp_path, epochs=10, patience=3)
    p["tables"] = {
        "t1": {"title": "one", "dataset": "stripes", "rows": [{"model": "vae", "seeds": [0, 1, 2]}, {"model": "nf4"}],
               "metrics": ["neg_log_px"]},
        "t2": {"title": "two", "dataset": "stripes", "rows": [{"model": "rnvp2"}], "metrics": ["neg_log_px"]},
    }
    return p


def folder(root: Path, run: Run) -> Path:
    path = root / run.path(PROFILE, "")
    path.mkdir(parents=True, exist_ok=True)
    return path


def touch(path: Path, when: float) -> None:
    os.utime(path, (when, when))


def write_epochs(root: Path, run: Run, seconds: list[float], vals: list[float], when: float) -> Path:
    """What the trainer leaves after len(seconds) epochs: checkpoint, timings and history, last written at `when`."""
    out = folder(root, run)
    (out / "checkpoint").mkdir(exist_ok=True)
    (out / "checkpoint/state.pt").write_bytes(b"not read")
    epochs = [{"epoch": i + 1, "seconds": s, "images_per_s": 256 / s} for i, s in enumerate(seconds)]
    (out / "train_timings.json").write_text(json.dumps({"train_minutes": sum(seconds) / 60, "epochs": epochs}))
    history = [{"epoch": i + 1, "val_neg_elbo": v, "best": v == min(vals[: i + 1])} for i, v in enumerate(vals)]
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    for name in ("checkpoint/state.pt", "train_timings.json", "train.jsonl"):
        touch(out / name, when)
    return out


def write_trained(root: Path, run: Run, epochs: int) -> Path:
    out = write_epochs(root, run, [20.0] * epochs, [100.0 - i for i in range(epochs)], NOW - 86_400)
    (out / "model.safetensors").write_bytes(b"weights")
    return out


def write_evaluated(root: Path, run: Run, neg_log_px: float) -> None:
    out = write_trained(root, run, 10)
    (out / "eval.json").write_text(json.dumps({"neg_log_px": neg_log_px, "neg_elbo": neg_log_px + 4}))
    (out / "eval_timings.json").write_text(json.dumps({"eval_seconds": 12.0}))


def test_a_run_without_files_is_pending(params, tmp_path):
    s = run_status(params, PROFILE, Run("stripes", "vae", 0), root=tmp_path, now=NOW)
    assert (s.state, s.epochs_done, s.epochs_target, s.eta_seconds) == ("pending", 0, 10, None)
    assert status.format_line(s).split() == ["stripes/vae/seed0", "pending"]


def test_a_training_run_reports_its_epoch_speed_eta_and_best_validation(params, tmp_path):
    run = Run("stripes", "vae", 0)
    write_epochs(tmp_path, run, [30.0, 32.0, 34.0], [100.0, 97.5, 98.1], when=NOW - 10)
    s = run_status(params, PROFILE, run, root=tmp_path, now=NOW)
    assert s.state == "training"
    assert (s.epochs_done, s.epochs_target) == (3, 10)
    assert s.seconds_per_epoch == pytest.approx(32.0)
    assert s.eta_seconds == pytest.approx(7 * 32.0 - 10)  # 7 epochs left, less the 10 s into the 4th
    assert s.best_val_neg_elbo == pytest.approx(97.5)
    line = status.format_line(s)
    assert "training    epoch 3/10  32 s/epoch  ETA <= 4 min  val -ELBO 97.50" in line


def test_without_early_stopping_the_eta_is_an_estimate_not_a_bound(params, tmp_path):
    params["profiles"][PROFILE]["train"]["patience"] = 0
    run = Run("stripes", "vae", 0)
    write_epochs(tmp_path, run, [5.0, 7.0], [100.0, 99.0], when=NOW)
    s = run_status(params, PROFILE, run, root=tmp_path, now=NOW)
    assert s.eta_seconds == pytest.approx(8 * 6.0)
    assert "6.0 s/epoch  ETA ~ 48 s" in status.format_line(s)


def test_a_run_whose_files_stopped_moving_is_stopped(params, tmp_path):
    run = Run("stripes", "vae", 0)
    write_epochs(tmp_path, run, [30.0, 32.0, 34.0], [100.0, 97.5, 98.1], when=NOW - 3600)
    s = run_status(params, PROFILE, run, root=tmp_path, now=NOW)
    assert s.state == "stopped"
    assert s.eta_seconds == pytest.approx(7 * 32.0)  # the whole remaining epochs: nothing runs now
    assert s.idle_seconds == pytest.approx(3600)
    line = status.format_line(s)
    assert "stopped     epoch 3/10  32 s/epoch  ETA <= 4 min  val -ELBO 97.50  idle 1 h 00 min, rerun to resume" in line


def test_stale_means_three_mean_epochs_and_at_least_ten_minutes(params, tmp_path):
    run = Run("stripes", "vae", 0)
    write_epochs(tmp_path, run, [400.0], [100.0], when=NOW - 1000)  # slow epochs: 3 x 400 s = 20 min
    assert run_status(params, PROFILE, run, root=tmp_path, now=NOW).state == "training"
    assert run_status(params, PROFILE, run, root=tmp_path, now=NOW + 300).state == "stopped"
    write_epochs(tmp_path, run, [10.0], [100.0], when=NOW - 500)  # fast epochs: the 10 minutes floor
    assert run_status(params, PROFILE, run, root=tmp_path, now=NOW).state == "training"
    assert run_status(params, PROFILE, run, root=tmp_path, now=NOW + 101).state == "stopped"


def test_a_moving_snakemake_log_keeps_a_run_training(params, tmp_path):
    run = Run("stripes", "vae", 0)
    log = tmp_path / "logs/train/test/stripes/vae/seed0.log"
    log.parent.mkdir(parents=True)
    log.write_text("epoch 1 ...\n")
    touch(log, NOW - 5)
    # a log but no run folder: the log of an earlier, killed attempt; the trainer makes the folder as it starts
    assert run_status(params, PROFILE, run, root=tmp_path, now=NOW).state == "pending"
    (tmp_path / run.path(PROFILE, "")).mkdir(parents=True)
    s = run_status(params, PROFILE, run, root=tmp_path, now=NOW)  # no checkpoint yet: the first epoch runs
    assert (s.state, s.epochs_done, s.eta_seconds) == ("training", 0, None)
    assert "not estimated" in status.format_totals([s])
    touch(log, NOW - 3600)  # an old log without a checkpoint: a failed start, rerun from scratch
    assert run_status(params, PROFILE, run, root=tmp_path, now=NOW).state == "pending"
    write_epochs(tmp_path, run, [30.0], [100.0], when=NOW - 3600)
    touch(log, NOW - 5)  # an old checkpoint but a live log: a resumed run inside its epoch
    assert run_status(params, PROFILE, run, root=tmp_path, now=NOW).state == "training"


def test_trained_and_evaluated_runs(params, tmp_path):
    trained, evaluated = Run("stripes", "vae", 1), Run("stripes", "vae", 2)
    write_trained(tmp_path, trained, epochs=6)  # stopped early
    write_evaluated(tmp_path, evaluated, neg_log_px=90.5234)
    t = run_status(params, PROFILE, trained, root=tmp_path, now=NOW)
    e = run_status(params, PROFILE, evaluated, root=tmp_path, now=NOW)
    assert (t.state, t.epochs_done, t.eta_seconds, t.best_val_neg_elbo) == ("trained", 6, 0.0, 95.0)
    assert "trained     epoch 6/10  val -ELBO 95.00" in status.format_line(t)
    assert (e.state, e.neg_log_px) == ("evaluated", 90.5234)
    assert status.format_line(e).endswith("evaluated   -log p(x) 90.52")


def test_format_status_lists_every_run_and_totals(params, tmp_path):
    runs = [Run("stripes", "vae", s) for s in (0, 1, 2)] + [Run("stripes", "nf4", 0), Run("stripes", "rnvp2", 0)]
    write_epochs(tmp_path, runs[0], [30.0] * 3, [100.0, 99.0, 98.0], when=NOW)  # training: 210 s left
    write_epochs(tmp_path, runs[1], [60.0] * 5, [100.0] * 5, when=NOW - 7200)  # stopped: 300 s left
    write_trained(tmp_path, runs[2], epochs=10)
    write_evaluated(tmp_path, runs[3], neg_log_px=88.0)
    statuses = [run_status(params, PROFILE, r, root=tmp_path, now=NOW) for r in runs]
    lines = format_status(statuses).splitlines()
    assert len(lines) == 6
    assert [line.split()[1] for line in lines[:5]] == ["training", "stopped", "trained", "evaluated", "pending"]
    assert len({line.index(line.split()[1]) for line in lines[:5]}) == 1  # states in one column
    assert lines[5] == (
        "5 runs: 1 pending, 1 training, 1 stopped, 1 trained, 1 evaluated; "
        "training left <= 9 min (pending runs not estimated); "
        f"spent {status.format_duration(90 + 300 + 200 + 200 + 12)} training and evaluating (summed over the runs)"
    )


def test_a_budget_changes_the_target_epochs(params, tmp_path):
    run = Run("stripes", "vae", 0)
    write_epochs(tmp_path, run, [30.0] * 3, [100.0, 99.0, 98.0], when=NOW)
    params["budgets"] = {"short": {"profiles": [PROFILE], "datasets": ["stripes"], "train": {"epochs": 7}}}
    s = run_status(params, PROFILE, run, root=tmp_path, now=NOW)
    assert (s.epochs_target, s.eta_seconds) == (7, pytest.approx(4 * 30.0))
    assert "epoch 3/7" in status.format_line(s)
    params["budgets"]["short"]["profiles"] = ["quick"]  # another profile's budget does not apply
    assert run_status(params, PROFILE, run, root=tmp_path, now=NOW).epochs_target == 10


@pytest.fixture
def project(params, tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def test_main_filters_by_table(project, capsys):
    write_evaluated(project, Run("stripes", "rnvp2", 0), neg_log_px=91.0)
    assert cli.main(["status", "--root", str(project), "--profile", PROFILE, "--table", "t2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["profile test (--profile)", "stripes/rnvp2/seed0  evaluated   -log p(x) 91.00",
                   f"1 run: 1 evaluated; spent {status.format_duration(212)} training and evaluating (summed over the runs)"]
    assert cli.main(["status", "--root", str(project)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out.pop(0) == f"profile {PROFILE} (its run folders under results/{PROFILE} were written last; --profile to choose)"
    assert [line.split()[0] for line in out[:-1]] == [f"stripes/{m}/seed{s}" for m, s in
                                                      [("nf4", 0), ("rnvp2", 0), ("vae", 0), ("vae", 1), ("vae", 2)]]
    assert out[-1] == ("5 runs: 4 pending, 1 evaluated (pending runs not estimated); "
                       f"spent {status.format_duration(212)} training and evaluating (summed over the runs)")


def test_main_rejects_an_unknown_table(project, capsys):
    assert cli.main(["status", "--root", str(project), "--table", "t9"]) == 1
    assert "'t9' is not one of ['t1', 't2']" in capsys.readouterr().err


def test_watch_ends_when_every_run_is_evaluated_and_on_ctrl_c(project, capsys, monkeypatch):
    write_evaluated(project, Run("stripes", "rnvp2", 0), neg_log_px=91.0)

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(status.time, "sleep", interrupt)
    assert cli.main(["status", "--root", str(project), "--table", "t2", "--watch", "5"]) == 0  # done: no wait
    assert capsys.readouterr().out.count("1 run: 1 evaluated") == 1
    assert cli.main(["status", "--root", str(project), "--table", "t1", "--watch", "5"]) == 0  # Ctrl-C while waiting
    assert capsys.readouterr().out.count("4 runs: 4 pending") == 1


def test_preparing_and_evaluating_runs(params, tmp_path):
    pending, trained = Run("stripes", "nf4", 0), Run("stripes", "vae", 0)
    log = tmp_path / "logs/prepare" / PROFILE / "stripes.log"
    log.parent.mkdir(parents=True)
    log.write_text("")
    touch(log, NOW - 30)
    assert run_status(params, PROFILE, pending, root=tmp_path, now=NOW).state == "pending"  # its data are prepared
    split = Path(tiny_params_prepared(params)) / "valid.npz"
    split.rename(split.with_suffix(".part"))
    assert run_status(params, PROFILE, pending, root=tmp_path, now=NOW).state == "preparing"
    assert run_status(params, PROFILE, pending, root=tmp_path, now=NOW + 3600).state == "pending"  # a dead prepare

    out = write_trained(tmp_path, trained, epochs=10)
    touch(out / "model.safetensors", NOW - 86_400)
    eval_log = tmp_path / "logs/evaluate" / PROFILE / "stripes/vae/seed0.log"
    eval_log.parent.mkdir(parents=True)
    eval_log.write_text("")
    touch(eval_log, NOW - 60)
    s = run_status(params, PROFILE, trained, root=tmp_path, now=NOW)
    assert s.state == "evaluating" and "evaluating  epoch 10/10" in status.format_line(s)
    touch(out / "model.safetensors", NOW)  # retrained after that evaluation log: not being evaluated
    assert run_status(params, PROFILE, trained, root=tmp_path, now=NOW).state == "trained"


def tiny_params_prepared(params: dict) -> str:
    return f"{params['data']['prepared_dir']}/{PROFILE}/stripes"


def test_without_profile_status_follows_the_build_written_last(params, tmp_path):
    assert status.choose_profile(params, None, tmp_path) == (params["profile"], "the active profile, set in profile.yaml")
    params["profiles"]["smoke"] = params["profiles"][PROFILE]
    older, newer = folder(tmp_path, Run("stripes", "vae", 0)), tmp_path / "results/smoke/stripes/vae/seed0"
    newer.mkdir(parents=True)
    touch(older, NOW - 100)
    touch(newer, NOW)
    assert status.choose_profile(params, None, tmp_path)[0] == "smoke"
    touch(older, NOW + 100)
    assert status.choose_profile(params, None, tmp_path)[0] == PROFILE
    assert status.choose_profile(params, "smoke", tmp_path) == ("smoke", "--profile")


def test_watch_ends_when_nothing_of_the_selection_moves(project, capsys, monkeypatch):
    sleeps = []
    monkeypatch.setattr(status.time, "sleep", sleeps.append)
    assert cli.main(["status", "--root", str(project), "--table", "t1", "--watch", "5"]) == 0
    out = capsys.readouterr().out
    assert len(sleeps) == status.IDLE_POLLS - 1 and out.count("4 runs: 4 pending") == status.IDLE_POLLS
    assert "nothing of this selection moved for 3 polls" in out
