"""The slurm profile against a real SLURM: a throwaway single-node cluster on this machine.

workflow/cluster/local-slurm.sh starts it (installing slurm-wlm and munge with apt-get when they are
missing); the tests skip where that cannot be done (not root, no apt-get, another SLURM's config).
Each test works in a git copy of the project with a synthetic data mirror (conftest.project_copy).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, project_copy

BIN = Path(sys.executable).parent
SCRIPT = REPO / "workflow" / "cluster" / "local-slurm.sh"
# The plugin waits 40 s before its first status check and 10 s more after every check that finds
# no job finished; a cluster of one idle node can be asked far more often.
FAST_POLLING = ["--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2"]
SLURM_RUN = [str(BIN / "snakemake"), "--profile", "workflow/profiles/slurm", *FAST_POLLING]
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")
TIMING_FIELDS = {"commit", "train_minutes", "eval_seconds", "is_samples_per_s"}

pytestmark = pytest.mark.slow


def _script(command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), command], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running single-node SLURM cluster; stopped afterwards unless it was already up."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root: local-slurm.sh starts slurmctld, slurmd and munged, and SLURM jobs run as root")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and there is no apt-get to install slurm-wlm and munge")
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')")
    was_up = _script("status", timeout=60).returncode == 0
    started = _script("start")
    if started.returncode != 0:
        pytest.skip(f"the local SLURM cluster did not start (exit {started.returncode}): {started.stderr.strip()[-800:]}")
    memory = subprocess.run(["sinfo", "--noheader", "--format=%m"], capture_output=True, text=True).stdout.split()
    if not memory or int(memory[0].rstrip("+")) < 4000:
        if not was_up:
            _script("stop", timeout=120)
        pytest.skip(f"the node has {memory} MB; the prepare rule asks SLURM for 4000 MB")
    yield
    if not was_up:
        _script("stop", timeout=120)


def _env(mirror: Path) -> dict:
    """The venv's commands first, the copy's data mirror, and no SLURM settings of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SNAKEMAKE_PROFILE"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["FLOWVAE_DATA_MIRROR"] = str(mirror)
    return env


def _jobs_on_cluster() -> dict[str, tuple[str, str]]:
    """SLURM job id -> (state, comment) of every job squeue still remembers (MinJobAge is 600 s)."""
    out = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%T|%k"], capture_output=True, text=True, check=True
    ).stdout
    return {i: (state, comment) for i, state, comment in (line.split("|", 2) for line in out.split())}


def _submissions(log: str) -> list[tuple[str, str, str]]:
    """(SLURM job id, rule, wildcards) of every submission in Snakemake's output."""
    found = []
    for job_id, path in SUBMITTED.findall(log):
        parts = Path(path).parts  # .../slurm_logs/rule_<rule>/<wildcards>/<id>.log
        found.append((job_id, parts[-3].removeprefix("rule_"), parts[-2]))
    return found


def _table_without_timings(md: str) -> list[str]:
    """The table's lines without the `train min` column and with the commit left out of the caption."""
    lines, drop = [], None
    for line in md.splitlines():
        if line.startswith("|"):
            cells = line.strip("|").split("|")
            if drop is None:
                drop = [i for i, c in enumerate(cells) if c.strip() == "train min"]
                assert drop, f"no `train min` column in {line}"
            line = "|".join(c for i, c in enumerate(cells) if i not in drop)
        lines.append(re.sub(r"commit [0-9a-f]+", "commit <commit>", line))
    return lines


def _output(proc: subprocess.CompletedProcess | subprocess.Popen, text: str) -> str:
    return f"exit {proc.returncode}\n{text[-6000:]}"


def test_table1_through_slurm_equals_local_run(tmp_path, slurm_cluster):
    slurm_dir, local_dir = tmp_path / "slurm", tmp_path / "local"
    slurm_env, local_env = _env(project_copy(slurm_dir)), _env(project_copy(local_dir))
    target = ["--config", "profile=smoke", "--", "reports/smoke/table10.md"]

    # The local run of the same profile and seed, side by side with the SLURM run (which mostly waits).
    local = subprocess.Popen(
        [str(BIN / "snakemake"), "--profile", "workflow/profiles/local", "--cores", "2", *target],
        cwd=local_dir, env=local_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        on_slurm = subprocess.run(
            [*SLURM_RUN, *target], cwd=slurm_dir, env=slurm_env, capture_output=True, text=True, timeout=600
        )
        local_out = local.communicate(timeout=600)[0]
    finally:
        if local.poll() is None:
            local.kill()
    slurm_out = on_slurm.stdout + on_slurm.stderr
    assert on_slurm.returncode == 0, _output(on_slurm, slurm_out)
    assert local.returncode == 0, _output(local, local_out)

    # Every job (the data, each training, each evaluation) was its own SLURM job (the table is a local rule),
    # and SLURM saw each one complete. The prepare job found the data only through
    # FLOWVAE_DATA_MIRROR: the jobs inherit the submitting shell's environment.
    submitted = _submissions(slurm_out)
    runs = {"smoke_binarized_mnist_vae_0", "smoke_binarized_mnist_iaf_d2_w320_0"}
    by_rule = {rule: sorted(wc for _, r, wc in submitted if r == rule) for rule in {r for _, r, _ in submitted}}
    assert by_rule == {
        "prepare": ["smoke_binarized_mnist"],
        "train": sorted(runs),
        "evaluate": sorted(runs),
    }, slurm_out[-4000:]
    assert len({job_id for job_id, _, _ in submitted}) == len(submitted) == 5
    on_cluster = _jobs_on_cluster()
    for job_id, rule, wildcards in submitted:
        assert on_cluster[job_id] == ("COMPLETED", f"rule_{rule}_wildcards_{wildcards}")

    # The same numbers as the local run: tables and evaluations, timings and the commit aside.
    ours, theirs = (d.joinpath("reports/smoke/table10.md").read_text() for d in (slurm_dir, local_dir))
    assert "Profile smoke" in ours
    assert _table_without_timings(ours) == _table_without_timings(theirs)
    for model in ("vae", "iaf_d2_w320"):
        rel = f"results/smoke/binarized_mnist/{model}/seed0/eval.json"
        a, b = (json.loads(d.joinpath(rel).read_text()) for d in (slurm_dir, local_dir))
        assert {k: v for k, v in a.items() if k not in TIMING_FIELDS} == {
            k: v for k, v in b.items() if k not in TIMING_FIELDS
        }


def test_cancelled_slurm_training_resumes_on_rerun(tmp_path, slurm_cluster):
    """scancel a training mid-run; the same command again resubmits it and it resumes from its checkpoint."""
    project = tmp_path / "project"
    env = _env(project_copy(project))
    # A `resume` profile: the smoke settings with enough epochs to cancel one midway, no early stop.
    epochs = 200
    params = yaml.safe_load((project / "params.yaml").read_text())
    profile = copy.deepcopy(params["profiles"]["smoke"])
    profile["train"].update(epochs=epochs, patience=0)
    params["profiles"]["resume"] = profile
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    prepared = subprocess.run(
        [str(BIN / "flowvae"), "prepare", "--profile", "resume", "--dataset", "binarized_mnist"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )
    assert prepared.returncode == 0, prepared.stderr[-3000:]

    run_dir = project / "results/resume/binarized_mnist/vae/seed0"
    history = run_dir / "train.jsonl"
    comment = "rule_train_wildcards_resume_binarized_mnist_vae_0"
    command = [*SLURM_RUN, "--config", "profile=resume", "--", str(run_dir.relative_to(project) / "model.safetensors")]

    first = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (history.exists() and history.read_text().strip()):
            assert first.poll() is None, _output(first, first.communicate()[0])
            assert time.monotonic() < deadline, "no epoch finished within 5 minutes"
            time.sleep(0.05)
        before = [json.loads(line) for line in history.read_text().splitlines()]
        running = [i for i, (state, c) in _jobs_on_cluster().items() if c == comment and state == "RUNNING"]
        assert len(running) == 1, _jobs_on_cluster()
        subprocess.run(["scancel", running[0]], check=True, timeout=60)
        first_out = first.communicate(timeout=300)[0]
    finally:
        if first.poll() is None:
            first.kill()
    assert 1 <= len(before) < epochs, f"the training was not cancelled midway ({len(before)} epochs)"
    assert first.returncode != 0 and "CANCELLED" in first_out, _output(first, first_out)
    assert (run_dir / "checkpoint/state.pt").exists()
    assert not (run_dir / "model.safetensors").exists()

    again = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    again_out = again.stdout + again.stderr
    assert again.returncode == 0, _output(again, again_out)
    jobs = [job_id for job_id, rule, _ in _submissions(first_out + again_out) if rule == "train"]
    assert len(set(jobs)) == 2, "the rerun did not submit the training anew"
    on_cluster = _jobs_on_cluster()
    assert [on_cluster[j][0] for j in jobs] == ["CANCELLED", "COMPLETED"]

    records = [json.loads(line) for line in history.read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
    # The epochs done before the cancel were kept, not trained again...
    assert records[: len(before)] == before
    # ...and the resubmitted job's log starts after them.
    logged = [int(e) for e in re.findall(r": epoch (\d+)/", (project / "logs/train/resume/binarized_mnist/vae/seed0.log").read_text())]
    assert logged and logged[0] > len(before) and logged[-1] == epochs


def test_a_two_process_training_runs_as_one_slurm_job(tmp_path, slurm_cluster):
    """resources.nproc: 2 on a CPU profile: one SLURM job (one task, 2 CPUs) in which `flowvae train` launches two
    gloo processes; its weights are those of one process training on the same global batches."""
    import torch

    project = tmp_path / "project"
    env = _env(project_copy(project))
    params = yaml.safe_load((project / "params.yaml").read_text())
    profile = copy.deepcopy(params["profiles"]["smoke"])
    profile["train"].update(epochs=1)
    profile["resources"].update(threads=2, nproc=2)
    params["profiles"]["ddp"] = profile
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run = "results/ddp/binarized_mnist/vae/seed0"
    on_slurm = subprocess.run([*SLURM_RUN, "--config", "profile=ddp", "--", f"{run}/model.safetensors"],
                              cwd=project, env=env, capture_output=True, text=True, timeout=600)
    out = on_slurm.stdout + on_slurm.stderr
    assert on_slurm.returncode == 0, _output(on_slurm, out)
    train_jobs = [job_id for job_id, rule, _ in _submissions(out) if rule == "train"]
    assert len(train_jobs) == 1 and _jobs_on_cluster()[train_jobs[0]][0] == "COMPLETED"
    log = (project / "logs/train/ddp/binarized_mnist/vae/seed0.log").read_text()
    assert "2 training processes (cpu)" in log, log[-3000:]

    single = subprocess.run(
        [str(BIN / "flowvae"), "train", "--profile", "ddp", "--dataset", "binarized_mnist", "--model", "vae",
         "--nproc", "1", "--threads", "1", "--out", str(tmp_path / "single")],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    a = torch.load(project / run / "checkpoint/state.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "single/checkpoint/state.pt", weights_only=True)["model"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
