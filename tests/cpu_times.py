"""`--cpu-times=PATH`: the CPU seconds of each test, its own process's and those of the subprocesses it waited for
(Snakemake, DVC and their jobs), one JSON line per test in PATH (with its start and wall seconds, which show how the
workers' time was spent), and the costliest tests with the total at the end.

Other work on the machine stretches a test's wall time but hardly its CPU time, so on a shared machine this is the
figure that says where the suite's time goes. Jobs run by a daemon (the SLURM tests' slurmd) are not counted.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

SHOWN = 15


def pytest_addoption(parser):
    parser.addoption("--cpu-times", metavar="PATH", default=None,
                     help="write each test's CPU seconds (with the subprocesses it waited for) to PATH and list the costliest")


def _cpu_seconds() -> float:
    own, waited = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + waited.ru_utime + waited.ru_stime


class _Recorder:
    """Times the tests this process runs (each xdist worker has its own) and appends them to the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started: dict[str, tuple[float, float]] = {}

    def pytest_runtest_logstart(self, nodeid, location):
        self.started[nodeid] = _cpu_seconds(), time.time()

    def pytest_runtest_logfinish(self, nodeid, location):
        cpu, wall = self.started.pop(nodeid)
        row = {"test": nodeid, "cpu_seconds": round(_cpu_seconds() - cpu, 3), "pid": os.getpid(),
               "start": round(wall, 3), "wall_seconds": round(time.time() - wall, 3)}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def pytest_configure(config):
    option = config.getoption("--cpu-times", default=None)
    if not option:
        return
    path = Path(option).resolve()
    distributed = config.getoption("numprocesses", default=None) and not hasattr(config, "workerinput")
    if not hasattr(config, "workerinput"):
        path.unlink(missing_ok=True)  # the controller, before any worker starts
    if not distributed:  # a worker, or pytest without xdist: the process that runs the tests
        config.pluginmanager.register(_Recorder(path), "cpu_times_recorder")


def pytest_terminal_summary(terminalreporter, config):
    option = config.getoption("--cpu-times", default=None)
    if not option or hasattr(config, "workerinput") or not Path(option).is_file():
        return
    rows = [json.loads(line) for line in Path(option).read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: -r["cpu_seconds"])
    terminalreporter.write_sep("=", f"CPU seconds per test with its subprocesses, the {min(SHOWN, len(rows))} costliest")
    for r in rows[:SHOWN]:
        terminalreporter.write_line(f"{r['cpu_seconds']:8.1f}s  {r['test']}")
    terminalreporter.write_line(f"{sum(r['cpu_seconds'] for r in rows):8.1f}s  in all, {len(rows)} tests ({option})")
