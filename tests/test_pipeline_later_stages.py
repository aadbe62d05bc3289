"""End to end: the stages that only tables 11 and 13 use (AIS, gaps, BDMC, the classifier, sample quality and the
Gaussian observation model), through `dvc repro` in a git copy of the project with the smoke profile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import project_copy, set_active_profile

BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_dvc_builds_the_tables_of_the_later_stages(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    mirror = project_copy(project, rows_per_table=1, tables=["table11", "table13"])
    set_active_profile(project, "smoke")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "FLOWVAE_DATA_MIRROR": str(mirror)}
    result = subprocess.run([str(BIN / "dvc"), "repro"], cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    table11 = (project / "reports/smoke/table11.md").read_text()
    assert "Profile smoke" in table11 and "approximation gap" in table11
    gaps = json.loads((project / "results/smoke/mnist_dynamic/vae/seed0/gaps.json").read_text())
    assert gaps["n_images"] > 0 and gaps["approximation_gap"] >= 0

    table13 = (project / "reports/smoke/table13.md").read_text()
    assert "Profile smoke" in table13 and "| vae" in table13 and "FCD" in table13
    classifier = json.loads((project / "results/smoke/mnist_8bit/classifier/classifier.json").read_text())
    assert 0 <= classifier["test_accuracy"] <= 1
    run = project / "results/smoke/mnist_8bit/vae/seed0"
    quality = json.loads((run / "sample_quality.json").read_text())
    assert quality["fcd"] > 0 and quality["classifier"]["sha256"]
    observed = json.loads((run / "gaussian_obs.json").read_text())
    assert observed["sigma"] in [row["sigma"] for row in observed["sigma_grid"]]
