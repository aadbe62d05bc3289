"""A mistyped target is explained with the valid patterns and the nearest names; no valid target is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flowvae.pipeline import plan
from flowvae.pipeline.targets import command_line_targets, problems, unknown_targets_message
from flowvae.spec import layout
from flowvae.spec.params import load_params

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def params() -> dict:
    return load_params(REPO / "params.yaml")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("results/quick/binarized_mnist/vea/seed0/eval.json", "model 'vea' is not a variant name; did you mean vae?"),
        ("results/quick/binarised_mnist/vae/seed0/eval.json", "did you mean binarized_mnist?"),
        ("results/quikc/binarized_mnist/vae/seed0/eval.json", "profile 'quikc' is not one of"),
        ("reports/quick/tabel1.md", "'tabel1' is not a table or summary page of params.yaml; did you mean table1"),
        ("reports/quick/verify_tabel2.txt", "'tabel2' is not a table of params.yaml; did you mean table2"),
        ("results/quick/binarized_mnist/vae/seed0", "a folder is not a target: name a file in it, e.g. "
                                                    "results/quick/binarized_mnist/vae/seed0/eval.json"),
        ("results/quick/binarized_mnist/vae/seed0/evl.json", "did you mean eval.json"),
        ("results/quick/binarized_mnist/vae/s0/eval.json", "'s0' is not a seed folder"),
    ],
)
def test_a_mistyped_name_is_named_with_the_nearest_known_one(params, target, expected):
    found = problems(params, target)
    assert any(expected in p for p in found), found
    assert "Targets look like:" in unknown_targets_message(params, [target])


def test_every_target_the_pipeline_builds_passes(params):
    targets = ["reports/quick/summary.md", "reports/smoke/summary_mnist.md", "reports/quick/figures_mnist", "Snakefile", "all"]
    for profile in params["profiles"]:
        for table in params["tables"]:
            targets += [f"reports/{profile}/{table}.md", f"reports/{profile}/{table}.tex", f"reports/{profile}/verify_{table}.txt"]
        for run in plan.all_runs(params):
            folder = run.folder(profile)
            targets += [f"{folder}/{name}" for name in (layout.EVAL_FILE, layout.MODEL_FILE, layout.HISTORY_FILE)]
    assert unknown_targets_message(params, targets) is None


def test_only_a_snakemake_command_line_is_read():
    assert command_line_targets(["/x/bin/snakemake", "-n", "--cores", "2", "--", "reports/quick/table1.md"]) == ["reports/quick/table1.md"]
    assert command_line_targets(["/x/bin/python", "reports/quick/table1.md"]) == []
    assert command_line_targets(["/x/bin/snakemake", "--no-such-flag"]) == []


def test_snakemake_stops_on_a_mistyped_target_before_building_anything(tmp_path):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([str(BIN / "snakemake"), "-n", "--", "reports/quick/tabel1.md"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "did you mean table1" in out and "reports/<profile>/<table>.md" in out
    assert "No rule to produce" not in out
