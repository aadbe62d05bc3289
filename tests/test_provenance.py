"""Results from committed code: train and evaluate refuse uncommitted sources unless --allow-dirty, which keeps the diff."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import flowvae
from conftest import tiny_params

SRC = Path(flowvae.__file__).parent
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A git checkout holding a copy of the package and a tracked params.yaml, committed."""
    shutil.copytree(SRC, tmp_path / "src" / "flowvae", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(tmp_path, epochs=1)))
    (tmp_path / ".gitignore").write_text("/prepared/\n/runs/\n__pycache__/\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*GIT, "commit", "-qm", "copy"], cwd=tmp_path, check=True)
    return tmp_path


def flowvae_cli(checkout: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FLOWVAE_ALLOW_DIRTY"}
    env["PYTHONPATH"] = str(checkout / "src")
    run = ["--params", "params.yaml", "--dataset", "stripes", "--model", "vae", "--out", "runs/vae"]
    return subprocess.run([sys.executable, "-m", "flowvae.cli", *args, *run], cwd=checkout, env=env, capture_output=True, text=True)


def test_committed_code_is_recorded_by_its_full_commit(checkout: Path) -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True).stdout.strip()
    for command in ("train", "evaluate"):
        result = flowvae_cli(checkout, command)
        assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((checkout / "runs/vae/settings.json").read_text())
    metrics = json.loads((checkout / "runs/vae/eval.json").read_text())
    assert record["commit"] == head and re.fullmatch(r"[0-9a-f]{40}", head)
    assert record["source_diff_sha256"] is None and not (checkout / "runs/vae/source.diff").exists()
    assert set(record["versions"]) == {"python", "torch", "numpy"}
    assert metrics["commit"] == metrics["train_commit"] == head and metrics["code_version"] == 1


def test_uncommitted_sources_are_refused_then_kept_as_a_diff(checkout: Path) -> None:
    edited = checkout / "src/flowvae/models/vae.py"
    edited.write_text(edited.read_text() + "\n# a local change\n")
    (checkout / "src/flowvae/models/extra.py").write_text("X = 1\n")
    refused = flowvae_cli(checkout, "train")
    assert refused.returncode == 1
    assert "uncommitted changes in src/flowvae/models/extra.py, src/flowvae/models/vae.py" in refused.stderr
    assert "--allow-dirty" in refused.stderr and not (checkout / "runs/vae").exists()

    assert flowvae_cli(checkout, "train", "--allow-dirty").returncode == 0
    diff = (checkout / "runs/vae/source.diff").read_text()
    assert "+# a local change" in diff and "+X = 1" in diff
    record = json.loads((checkout / "runs/vae/settings.json").read_text())
    assert record["source_diff_sha256"] == hashlib.sha256(diff.encode()).hexdigest()

    assert flowvae_cli(checkout, "evaluate").returncode == 1
    assert flowvae_cli(checkout, "evaluate", "--allow-dirty").returncode == 0
    metrics = json.loads((checkout / "runs/vae/eval.json").read_text())
    assert metrics["source_diff_sha256"] == metrics["train_source_diff_sha256"] == record["source_diff_sha256"]
    assert (checkout / "runs/vae/eval_source.diff").read_text() == diff

    # The recorded commit and diff rebuild the code: a clean checkout of it with the diff applied.
    rebuilt = checkout.parent / "rebuilt"
    subprocess.run(["git", "clone", "-q", str(checkout), str(rebuilt)], check=True)
    subprocess.run(["git", "checkout", "-q", record["commit"]], cwd=rebuilt, check=True)
    subprocess.run(["git", "apply", str(checkout / "runs/vae/source.diff")], cwd=rebuilt, check=True)
    assert (rebuilt / "src/flowvae/models/vae.py").read_text() == edited.read_text()


def test_an_edited_params_file_in_the_checkout_is_refused(checkout: Path) -> None:
    params = checkout / "params.yaml"
    params.write_text(params.read_text().replace("lr: 0.003", "lr: 0.002"))
    refused = flowvae_cli(checkout, "train")
    assert refused.returncode == 1 and "uncommitted changes in params.yaml" in refused.stderr


def verify_cli(checkout: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FLOWVAE_ALLOW_DIRTY"}
    env["PYTHONPATH"] = str(checkout / "src")
    return subprocess.run([sys.executable, "-m", "flowvae.cli", "verify", "--params", "params.yaml", *args, "runs/vae"],
                          cwd=checkout, env=env, capture_output=True, text=True)


@pytest.fixture
def trained(checkout: Path) -> Path:
    params = checkout / "params.yaml"
    params.write_text(params.read_text().replace("epochs: 1", "epochs: 2"))
    subprocess.run([*GIT, "commit", "-qam", "two epochs"], cwd=checkout, check=True)
    for command in ("train", "evaluate"):
        assert flowvae_cli(checkout, command).returncode == 0
    return checkout


def test_verify_rebuilds_a_run_byte_for_byte(trained: Path) -> None:
    result = verify_cli(trained)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "runs/vae: identical" in result.stdout
    for name in ("model.safetensors", "train.jsonl", "eval.json"):
        assert f"{name}: identical" in result.stdout
    spot = verify_cli(trained, "--epochs", "1")
    assert spot.returncode == 0 and "first 1 epochs: identical" in spot.stdout


def test_verify_names_the_first_epoch_that_differs(trained: Path) -> None:
    settings = trained / "runs/vae/settings.json"
    record = json.loads(settings.read_text())
    record["settings"]["train"]["lr"] = 0.001
    settings.write_text(json.dumps(record))
    result = verify_cli(trained)
    assert result.returncode == 1
    assert re.search(r"differs: epoch 1: validation -ELBO \S+ recorded, \S+ rebuilt \([+-]", result.stdout), result.stdout


def test_verify_runs_the_recorded_commit_when_the_checkout_has_moved_on(trained: Path) -> None:
    edited = trained / "src/flowvae/models/vae.py"
    edited.write_text(edited.read_text() + "\n# a later commit\n")
    subprocess.run([*GIT, "commit", "-qam", "later"], cwd=trained, check=True)
    result = verify_cli(trained)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "by the recorded code" in result.stdout and "runs/vae: identical" in result.stdout
