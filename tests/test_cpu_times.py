"""The suite's --cpu-times report: a test that spends CPU in a subprocess is charged for it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
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
    began = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "-c", "/dev/null",
         "-n", "2", "--confcutdir", str(tmp_path), "-p", "cpu_times", f"--cpu-times={out}", str(tmp_path / "test_busy.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(REPO / "tests"), "PATH": ""},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = {row["test"].split("::")[1]: row for row in map(json.loads, out.read_text().splitlines())}
    seconds = {name: row["cpu_seconds"] for name, row in rows.items()}
    busy = rows["test_busy_subprocess"]
    assert began <= busy["start"] <= busy["start"] + busy["wall_seconds"] <= time.time()
    assert busy["wall_seconds"] >= 0.9 * busy["cpu_seconds"]  # one single-threaded subprocess: wall time covers its CPU
    assert set(seconds) == {"test_busy_subprocess", "test_idle"}
    assert seconds["test_busy_subprocess"] > 0.05 and seconds["test_busy_subprocess"] > 5 * seconds["test_idle"]
    assert "CPU seconds per test with its subprocesses, the 2 costliest" in result.stdout and "in all, 2 tests" in result.stdout
