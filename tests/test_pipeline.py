"""End to end: the smoke profile through `dvc exp run` and `dvc repro` in a git copy of the project, with the stages
that only tables 11 and 13 use (AIS, gaps, BDMC, the classifier, sample quality, the Gaussian observation model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import project_copy

BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_dvc_smoke_profile_end_to_end(tmp_path):
    project = tmp_path / "project"
    # Tables 1-3: the three kinds of data file (MNIST's IDX, the binarized set's amat, CIFAR's pickled batches) and
    # the 2-d latent variants of the figures; tables 11 and 13: every stage beside training and evaluation. One build
    # for all: table 11's row is table 1's run. Table 4's ResNet VAE trains in test_smoke_cifar.py. Of the named
    # summaries, whose figures repeat the default summary's, the headline one.
    mirror = project_copy(project, rows_per_table=1, tables=["table1", "table2", "table3", "table11", "table13"],
                          summaries=["headline"])
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "FLOWVAE_DATA_MIRROR": str(mirror)}

    params_before = (project / "params.yaml").read_bytes()
    result = run([str(BIN / "dvc"), "exp", "run", "-S", "profile.yaml:profile=smoke"], project, env)  # as the README shows it
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (project / "params.yaml").read_bytes() == params_before  # the experiment's one change is profile.yaml's line
    changed = run(["git", "status", "--porcelain", "--untracked-files=no"], project, env).stdout.split("\n")
    assert [line[3:] for line in changed if line.strip() and not line.endswith("dvc.lock")] == ["profile.yaml"]
    assert "profile: smoke" in (project / "profile.yaml").read_text()

    for n in range(1, 4):
        md = (project / f"reports/smoke/table{n}.md").read_text()
        assert "Profile smoke" in md
        assert (project / f"reports/smoke/table{n}.tex").read_text().count(r"\toprule") == 1
    table1 = (project / "reports/smoke/table1.md").read_text()
    assert "| vae" in table1 and "84.08" in table1  # ours beside Kingma et al.'s
    assert "synthetic_cifar10" in (project / "reports/smoke/table3.md").read_text()
    evaluation = json.loads((project / "results/smoke/mnist_dynamic/vae/seed0/eval.json").read_text())
    assert evaluation["n_test"] == 128 and evaluation["K"] == 8
    figures = sorted(p.name for p in (project / "reports/smoke/figures").iterdir())
    assert any(name.startswith("training_curves") and name.endswith(".png") for name in figures)
    assert any(name.startswith("latent_densities") for name in figures)
    summary = (project / "reports/smoke/summary.md").read_text()
    assert "table1.md" in summary and "figures/" in summary

    table11 = (project / "reports/smoke/table11.md").read_text()
    assert "Profile smoke" in table11 and "approximation gap" in table11
    gaps = json.loads((project / "results/smoke/mnist_dynamic/vae/seed0/gaps.json").read_text())
    assert gaps["n_images"] > 0 and gaps["approximation_gap"] >= 0
    table13 = (project / "reports/smoke/table13.md").read_text()
    assert "Profile smoke" in table13 and "| vae" in table13 and "FCD" in table13
    classifier = json.loads((project / "results/smoke/mnist_8bit/classifier/classifier.json").read_text())
    assert 0 <= classifier["test_accuracy"] <= 1
    run_8bit = project / "results/smoke/mnist_8bit/vae/seed0"
    quality = json.loads((run_8bit / "sample_quality.json").read_text())
    assert quality["fcd"] > 0 and quality["classifier"]["sha256"]
    observed = json.loads((run_8bit / "gaussian_obs.json").read_text())
    assert observed["sigma"] in [row["sigma"] for row in observed["sigma_grid"]]

    start = time.perf_counter()
    result = run([str(BIN / "dvc"), "repro"], project, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "up to date" in result.stdout.lower() or "didn't change" in result.stdout.lower()
    assert time.perf_counter() - start < 120

    shown = run([str(BIN / "dvc"), "metrics", "show", "--json"], project, env)
    assert shown.returncode == 0 and "neg_log_px" in shown.stdout
    # metrics.json, a few named numbers per run, not every field of eval.json: lines a terminal shows whole
    table = run([str(BIN / "dvc"), "metrics", "show"], project, env).stdout.splitlines()
    assert any(line.startswith("results/smoke/mnist_dynamic/vae/seed0/metrics.json") for line in table)
    assert max(map(len, table)) < 180 and "is_curve" not in "\n".join(table)

    # A row added to a table without `flowvae dvc-yaml`: the first stage DVC runs stops, naming the fix, and the
    # table built before stays as it was.

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tables"]["table1"]["rows"].append({"model": "nf2"})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    validated = run([str(BIN / "flowvae"), "validate"], project, env)
    assert validated.returncode != 0 and "regenerate it with `flowvae dvc-yaml`" in validated.stderr
    before = (project / "reports/smoke/table1.md").read_text()
    result = run([str(BIN / "dvc"), "repro"], project, env)
    assert result.returncode != 0
    assert "dvc.yaml is out of date" in result.stdout + result.stderr
    assert (project / "reports/smoke/table1.md").read_text() == before
