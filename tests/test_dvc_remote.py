"""Shared artifacts through a DVC remote, and `dvc plots show`, on the smoke profile's table 1 in a git copy.

The copy builds `dvc repro table1` once (two runs: table 1 cut to its first two rows). Cached outputs (prepared
data, model.safetensors, samples.npz) travel through a local-folder remote; the outputs DVC does not cache
(eval.json, settings.json, timings, training logs, the table) travel through git, as DVC means them to.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import chromium
from conftest import project_copy, set_active_profile

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
RUNS = ["results/smoke/mnist_dynamic/vae/seed0", "results/smoke/mnist_dynamic/iaf_d2_w320/seed0"]
TABLE = "reports/smoke/table1.md"


def run(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, f"{' '.join(cmd)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def dvc(*args: str, cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "dvc"), *args], cwd, env, check)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(project, env): a git copy with profile smoke whose table 1 `dvc repro` built."""
    root = tmp_path_factory.mktemp("dvc_remote")
    project = root / "project"
    project.mkdir()
    mirror = project_copy(project, rows_per_table=2)
    set_active_profile(project, "smoke")
    run([*GIT, "commit", "-qam", "profile smoke"], project, os.environ)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "FLOWVAE_DATA_MIRROR": str(mirror)}
    dvc("repro", "table1", cwd=project, env=env)
    assert "Profile smoke" in (project / TABLE).read_text()
    return project, env


def test_plots_show_renders_the_training_curves(built):
    """The top-level plot of table 1 in dvc.yaml: train and validation -ELBO per epoch of both its runs."""
    project, env = built
    curves = [f"{run}/train_curves.csv" for run in RUNS]
    assert all((project / c).is_file() for c in curves), "flowvae train wrote no train_curves.csv"
    out = project.parent / "plots"
    shown = dvc("plots", "show", "table1_training_curves", "--out", str(out), cwd=project, env=env)
    assert "failed to load" not in shown.stdout + shown.stderr
    html = (out / "index.html").read_text()
    # DVC names each line's file by the shortest distinct end of its path, and the column it draws.
    name = {run: f"{run.split('/', 3)[3]}/train_curves.csv" for run in RUNS}  # e.g. vae/seed0/train_curves.csv
    lines = [f'"filename": "{name[run]}"' for run in RUNS] + [f'"field": "{f}"' for f in ("train_neg_elbo", "val_neg_elbo")]
    for needed in ("table1: Dynamically binarized MNIST", '"field": "epoch"', *lines):
        assert needed in html, needed
    # Offline: Vega, Vega-Lite and Vega-Embed inlined from workflow/dvc/plots.html, no script from a CDN.
    assert "<script src" not in html and '<meta charset="utf-8">' in html
    for package in ("vega@5.20.2", "vega-lite@5.2.0", "vega-embed@6.18.2"):
        assert f"<!-- {package}, build/" in html
    # A colour per run and a dash per curve (DVC's own template colours by revision only), units on the y axis.
    encoding = json.loads(dvc("plots", "show", "table1_training_curves", "--json", cwd=project, env=env).stdout)[
        "data"]["table1_training_curves"][0]["content"]["encoding"]
    assert encoding["color"]["field"] == "filename" and encoding["strokeDash"]["field"] == "field"
    assert encoding["color"]["legend"]["labelLimit"] >= 400
    assert encoding["y"]["title"] == "-ELBO [nats per image], train and validation"
    # Drawn by a headless browser offline: the page is not blank and its legend names both runs and both curves.
    with chromium.Page(chromium.browser(), 1000, 800) as page:
        page.open((out / "index.html").as_uri(), "document.querySelectorAll('.role-legend-label text').length >= 4")
        legend = page.evaluate("[...document.querySelectorAll('.role-legend-label text')].map(t => t.textContent)")
        lines = page.evaluate("document.querySelectorAll('.role-mark path').length")
        covered, colours = chromium.ink(page.screenshot())
    assert sorted(legend) == sorted([*name.values(), "train_neg_elbo", "val_neg_elbo"])
    assert lines >= 4 and covered > 0.02 and colours > 20, (lines, covered, colours)
    # One point per epoch, run and curve, with the values of the run's own log.
    spec = json.loads(dvc("plots", "show", "table1_training_curves", "--json", cwd=project, env=env).stdout)
    (plot,) = spec["data"]["table1_training_curves"]
    points = plot["content"]["data"]["values"]
    for run in RUNS:
        log = [json.loads(line) for line in (project / run / "train.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in log] == [1, 2]
        for field in ("train_neg_elbo", "val_neg_elbo"):
            drawn = {int(p["epoch"]): float(p["dvc_inferred_y_value"]) for p in points
                     if (p["filename"], p["field"]) == (name[run], field)}
            assert drawn == {r["epoch"]: r[field] for r in log}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_push_delete_pull_and_nothing_to_rerun(built, tmp_path):
    project, env = built
    remote = tmp_path / "remote"
    dvc("remote", "add", "-d", "local", str(remote), cwd=project, env=env)
    pushed = dvc("push", cwd=project, env=env)
    assert "files pushed" in pushed.stdout
    assert any(remote.rglob("*")), "nothing in the remote"

    # What git carries: dvc.lock, the remote's config, and every output DVC does not cache.
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        outs = [o for o in repo.index.outs if o.exists]
    cached = sorted(o.def_path for o in outs if o.use_cache)
    uncached = sorted(o.def_path for o in outs if not o.use_cache)
    assert {"data/prepared/smoke/mnist_dynamic", f"{RUNS[0]}/model.safetensors", f"{RUNS[0]}/samples.npz"} <= set(cached)
    assert {f"{RUNS[0]}/eval.json", f"{RUNS[0]}/settings.json", f"{RUNS[0]}/train_timings.json", TABLE} <= set(uncached)
    run([*GIT, "add", "dvc.lock", ".dvc/config"], project, env)
    run([*GIT, "add", "-f", "--", *uncached], project, env)
    run([*GIT, "commit", "-qm", "table 1 of the smoke profile"], project, env)
    before = {p: md5(project / p) for p in [TABLE, *(f"{r}/{n}" for r in RUNS for n in ("model.safetensors", "samples.npz"))]}

    # A machine without any of it: no results, no data (raw or prepared), no DVC cache, no mirror to download from.
    for folder in ("results", "data", ".dvc/cache", "reports/smoke"):
        shutil.rmtree(project / folder)
    run([*GIT, "checkout", "--", "."], project, env)  # git's share: the uncached outputs
    assert not (project / RUNS[0] / "model.safetensors").exists() and not (project / "data").exists()
    offline = {**env, "FLOWVAE_DATA_MIRROR": str(tmp_path / "no-mirror")}
    pulled = dvc("pull", "table1", "--with-deps", cwd=project, env=offline)
    assert "fetched" in pulled.stdout.lower() or "added" in pulled.stdout.lower(), pulled.stdout

    status = dvc("status", "table1", "--with-deps", cwd=project, env=offline)
    assert "Data and pipelines are up to date." in status.stdout, status.stdout
    repro = dvc("repro", "table1", cwd=project, env=offline)
    assert "Running stage" not in repro.stdout, repro.stdout
    assert "Stage 'table1' didn't change, skipping" in repro.stdout
    assert run(["git", "status", "--porcelain"], project, env).stdout == ""  # dvc.lock unchanged
    assert {p: md5(project / p) for p in before} == before
