"""The CI workflow, .github/workflows/ci.yml, run here: its `run:` steps, read from the file, in order, in a git copy.

What only GitHub has is substituted, and nothing else:
- the `uses:` steps (checkout, setup-python, cache, upload-artifact) are skipped: the copy is already checked
  out, and Python 3.11 with every package is this test's own environment, linked as the copy's `.venv`;
- `make setup` is skipped through FLOWVAE_SKIP_SETUP=1, a switch the set-up step itself reads;
- the job's `${{ ... }}` expressions get the values below, and the runner's variables (RUNNER_TEMP, GITHUB_SHA,
  GITHUB_STEP_SUMMARY) point into the test's folder; `origin` is the copy itself;
- FLOWVAE_CI_TARGETS=table1, another switch of the workflow, so that `dvc repro` builds one table, not the DAG;
- the step that posts the comment (`gh pr comment --body-file FILE`) is not run: the test reads FILE instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, project_copy

WORKFLOW = REPO / ".github/workflows/ci.yml"
POSTS_COMMENT = "gh pr comment"
VENV = Path(sys.executable).parent.parent
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]


def workflow() -> dict:
    wf = yaml.safe_load(WORKFLOW.read_text())
    wf["on"] = wf.pop(True, wf.get("on"))  # YAML 1.1 reads the key `on` as true
    return wf


def job_env(job: dict, expressions: dict[str, str]) -> dict[str, str]:
    """The job's env, each `${{ expr }}` replaced by expressions[expr] (a KeyError for any other)."""
    return {
        key: re.sub(r"\$\{\{\s*(.+?)\s*\}\}", lambda m: expressions[m.group(1)], str(value))
        for key, value in job.get("env", {}).items()
    }


def test_workflow_runs_the_smoke_profile_on_every_pull_request_and_comments():
    """What GitHub reads: triggers, Python, set-up, repro, and the Markdown diffs posted with `gh`."""
    wf = workflow()
    assert "pull_request" in wf["on"]
    assert wf["permissions"]["pull-requests"] == "write"
    assert wf["defaults"]["run"]["shell"] == "bash"
    (job,) = wf["jobs"].values()
    steps = job["steps"]
    uses = {s["uses"].split("@")[0]: s for s in steps if "uses" in s}
    assert uses["actions/checkout"]["with"]["fetch-depth"] == 0
    assert uses["actions/setup-python"]["with"]["python-version"] == "3.11"
    script = "\n".join(s.get("run", "") for s in steps)
    for needed in ("make setup", "profile: smoke", "dvc repro", "dvc metrics diff ci-base --md", "dvc params diff ci-base --md",
                   'gh pr comment "$PR_NUMBER" --body-file'):
        assert needed in script, needed
    assert "${{" not in script, "expressions belong in env:, where the test substitutes them"
    assert [s for s in steps if "if" in s] == [s for s in steps if POSTS_COMMENT in s.get("run", "")]


@pytest.mark.slow
def test_ci_workflow_steps_in_a_copy(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    mirror = project_copy(project, rows_per_table=1)
    git = lambda *args: subprocess.run([*GIT, *args], cwd=project, check=True, capture_output=True, text=True).stdout.strip()  # noqa: E731
    (project / ".venv").symlink_to(VENV)
    with open(project / ".git/info/exclude", "a") as f:
        f.write(".venv\n")
    git("branch", "-M", "main")
    git("remote", "add", "origin", str(project))
    # The pull request: a smoke training setting changed.
    git("checkout", "-q", "-b", "pr")
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["profiles"]["smoke"]["train"]["lr"] == 2.0e-3
    params["profiles"]["smoke"]["train"]["lr"] = 3.0e-3
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git("commit", "-qam", "smoke: lr 3e-3")
    git("fetch", "-q", "origin")
    pr_sha = git("rev-parse", "HEAD")
    main_sha = git("rev-parse", "origin/main")

    runner = tmp_path / "runner"
    runner.mkdir()
    summary = runner / "step_summary.md"
    (job,) = workflow()["jobs"].values()
    expressions = {
        "github.base_ref": "main",
        "github.event.pull_request.number": "1",
        "secrets.GITHUB_TOKEN": "",
        "github.repository": "example/flowvae",
        "vars.FLOWVAE_DATA_MIRROR": str(mirror),
    }
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "FLOWVAE_")) or k == "FLOWVAE_ALLOW_DIRTY"},
        **job_env(job, expressions),
        "FLOWVAE_SKIP_SETUP": "1",
        "FLOWVAE_CI_TARGETS": "table1",
        "RUNNER_TEMP": str(runner),
        "GITHUB_SHA": pr_sha,
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_WORKSPACE": str(project),
    }

    ran, skipped, outputs = [], [], {}
    for i, step in enumerate(job["steps"]):
        if "uses" in step:
            skipped.append(step["uses"])
            continue
        if POSTS_COMMENT in step["run"]:
            body_file = re.search(r"--body-file\s+\"?([^\"\s]+)", step["run"]).group(1)
            body_file = Path(body_file.replace("$RUNNER_TEMP", str(runner)))
            continue
        script = runner / f"step{i}.sh"
        script.write_text(step["run"])
        result = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                                cwd=project, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"step {step['name']!r}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        ran.append(step["name"])
        outputs[step["name"]] = result.stdout + result.stderr
    assert ran == ["Set up (make setup)", "Smoke profile on the base branch", "Smoke profile on the pull request", "Write the comment"]
    assert [u.split("@")[0] for u in skipped] == ["actions/checkout", "actions/setup-python", "actions/cache", "actions/upload-artifact"]

    # The baseline is a commit on top of main with its metrics; the workspace is the pull request's.
    assert git("rev-parse", "ci-base~1") == main_sha and git("rev-parse", "HEAD") == pr_sha
    assert "results/smoke/mnist_dynamic/vae/seed0/metrics.json" in git("ls-tree", "-r", "--name-only", "ci-base")
    assert "Profile smoke" in (project / "reports/smoke/table1.md").read_text()
    pr_log = outputs["Smoke profile on the pull request"]
    assert "Stage 'prepare_mnist_dynamic' didn't change, skipping" in pr_log  # only what the change touches reruns
    assert "Running stage 'train_mnist_dynamic@mnist_dynamic-vae-seed0'" in pr_log

    # The comment that would be posted.
    body = body_file.read_text()
    assert summary.read_text() == body
    assert body.startswith("## Smoke profile: this pull request vs `main`")
    metrics, params_diff = body.split("### Params")
    assert "| Path" in metrics and "| Metric" in metrics and "| ci-base" in metrics and "| workspace" in metrics
    rows = [line for line in metrics.splitlines() if line.startswith("| results/smoke/mnist_dynamic/vae/seed0/metrics.json")]
    assert any("| neg_log_px " in row for row in rows), metrics
    assert any("| neg_elbo " in row for row in rows), metrics
    assert "| Path" in params_diff and "| Param" in params_diff
    (lr_row,) = [line for line in params_diff.splitlines() if "profiles.smoke.train.lr" in line]
    assert "0.002" in lr_row and "0.003" in lr_row
