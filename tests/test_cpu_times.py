"""The suite's --cpu-times report: a test that spends CPU in a subprocess is charged for it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BUSY = '''
import subprocess, sys

def test_busy_subprocess():
    subprocess.run([sys.executable, "-c", "x = 0\\nfor i in range(3_000_000): x += i"], check=True)

def test_idle():
    pass
'''


def test_cpu_times_charge_each_test_its_subprocesses(tmp_path):
    (tmp_path / "test_busy.py").write_text(BUSY)
    out = tmp_path / "cpu.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "-c", "/dev/null",
         "-n", "2", "--confcutdir", str(tmp_path), "-p", "cpu_times", f"--cpu-times={out}", str(tmp_path / "test_busy.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(REPO / "tests"), "PATH": ""},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    seconds = {json.loads(line)["test"].split("::")[1]: json.loads(line)["cpu_seconds"] for line in out.read_text().splitlines()}
    assert set(seconds) == {"test_busy_subprocess", "test_idle"}
    assert seconds["test_busy_subprocess"] > 0.05 and seconds["test_busy_subprocess"] > 5 * seconds["test_idle"]
    assert "CPU seconds per test with its subprocesses, the 2 costliest" in result.stdout and "in all, 2 tests" in result.stdout
