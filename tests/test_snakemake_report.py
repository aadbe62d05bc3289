"""`snakemake --report report.html`: every table and figure the smoke profile built, captioned, in one HTML file.

The copy keeps two tables (1 and 2, first row each) and the density figure's first model, so that the whole
summary (three runs, both tables, every figure) builds in well under a minute.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from html import escape
from pathlib import Path

import pytest
import yaml

from conftest import project_copy

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
TABLES = ["table1", "table2"]


def snakemake(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "snakemake"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def embedded(html: str, name: str) -> dict:
    """One of the JSON objects the report's scripts hold: `var results = {...};`, `var categories = {...};`."""
    match = re.search(rf"var {name} = (\{{.*?\}});\s*\n", html)
    assert match, f"no {name} in the report"
    return json.loads(match.group(1))


def test_report_has_every_table_and_figure(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    mirror = project_copy(project, rows_per_table=1)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tables"] = {name: params["tables"][name] for name in TABLES}
    params.pop("summaries", None)  # they name the tables cut here
    params.pop("budgets", None)  # and some match only models of those tables
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "FLOWVAE_DATA_MIRROR": str(mirror)}
    target = ["--config", "profile=smoke", "--", "reports/smoke/summary.md"]
    snakemake("--cores", "2", *target, cwd=project, env=env)
    snakemake("--report", "report.html", *target, cwd=project, env=env)

    html = (project / "report.html").read_text()
    results = embedded(html, "results")
    categories = embedded(html, "categories")
    tables = [f"reports/smoke/{t}.{ext}" for t in TABLES for ext in ("md", "tex")]
    figures = sorted(str(p.relative_to(project)) for p in (project / "reports/smoke/figures").glob("*.png"))
    assert any("training_curves" in f for f in figures) and any("latent_densities" in f for f in figures)
    assert sorted(results) == sorted(tables + figures)
    assert categories["Tables"] == {t: [f"reports/smoke/{t}.md", f"reports/smoke/{t}.tex"] for t in TABLES}
    assert sorted(p for paths in categories["Figures"].values() for p in paths) == figures
    for path, record in results.items():
        data = base64.b64decode(record["data_uri"].split("base64,", 1)[1])
        assert data == (project / path).read_bytes(), f"{path}: the embedded file is not the built one"

    for t in TABLES:
        md = (project / f"reports/smoke/{t}.md").read_text().splitlines()
        for ext, fmt in (("md", "Markdown"), ("tex", "LaTeX")):
            record = results[f"reports/smoke/{t}.{ext}"]
            assert record["labels"] == {"table": t, "format": fmt}
            caption = record["caption"]
            # The caption is the table file's own text: bold title, the table as written, the provenance.
            title = md[0].strip("*")
            assert f"<strong>{escape(title)}</strong>" in caption
            # an HTML table, its header and first row as the Markdown has them; not a Markdown box
            assert '<table class="dataframe table table-sm">' in caption and "literal-block" not in caption
            header = [cell.strip() for cell in md[2].split("|")[1:-1]]
            assert all(f"<th>{escape(cell)}</th>" in caption for cell in header)
            assert f"<td>{md[4].split('|')[1].strip()}</td>" in caption
            assert escape(md[-1].split(",")[0]) in caption and "Profile smoke" in caption
            assert "system-message" not in caption  # docutils reports a failed include inline
    # A bare `snakemake --report`: what was built for the active profile, not the DAG of its whole summary.
    (project / "profile.yaml").write_text("profile: smoke\n")
    (project / "reports/smoke/table2.html").unlink()  # a table without its HTML (built before it existed) is left out
    bare = snakemake("--report", "bare.html", cwd=project, env=env)
    assert "Missing metadata" not in bare.stdout + bare.stderr
    bare_results = embedded((project / "bare.html").read_text(), "results")
    assert sorted(bare_results) == sorted([f"reports/smoke/table1.{ext}" for ext in ("md", "tex")] + figures)
    for path in figures:
        record = results[path]
        kind, dataset = re.match(r".*/(\w+?)_(binarized_mnist|mnist_dynamic|mnist_digits4)\.png$", path).groups()
        assert path in categories["Figures"][dataset]
        assert record["labels"] == {"figure": kind, "data set": dataset}
        assert f"{kind.replace('_', ' ').capitalize()}, {dataset}" in record["caption"]
        assert "system-message" not in record["caption"]


def test_generated_reports_and_plots_are_not_committed_by_accident():
    repo = Path(__file__).resolve().parents[1]
    paths = ["report.html", "report.zip", "dvc_plots/index.html"]
    ignored = subprocess.run(["git", "check-ignore", *paths], cwd=repo, capture_output=True, text=True)
    assert ignored.stdout.split() == paths
