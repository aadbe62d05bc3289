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
import time
from html import escape
from pathlib import Path

import pytest
import yaml

import chromium
from conftest import project_copy

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
TABLES = ["table1", "table2"]
# clicks the last element whose whole visible text is the argument (the report's navigation entries)
CLICK_TEXT = """(text => {
    const hits = [...document.querySelectorAll("a, button, li, span, div")].filter(e => (e.innerText || "").trim() === text);
    if (!hits.length) return false;
    hits[hits.length - 1].click();
    return true;
})"""


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
    formats = {"md": "Markdown", "tex": "LaTeX", "html": "HTML"}
    tables = [f"reports/smoke/{t}.{ext}" for t in TABLES for ext in formats]
    figures = sorted(str(p.relative_to(project)) for p in (project / "reports/smoke/figures").glob("*.png"))
    assert any("training_curves" in f for f in figures) and any("latent_densities" in f for f in figures)
    assert sorted(results) == sorted(tables + figures)
    assert {t: sorted(paths) for t, paths in categories["Tables"].items()} == {
        t: sorted(f"reports/smoke/{t}.{ext}" for ext in formats) for t in TABLES}
    assert sorted(p for paths in categories["Figures"].values() for p in paths) == figures
    for path, record in results.items():
        data = base64.b64decode(record["data_uri"].split("base64,", 1)[1])
        assert data == (project / path).read_bytes(), f"{path}: the embedded file is not the built one"

    for t in TABLES:
        md = (project / f"reports/smoke/{t}.md").read_text().splitlines()
        for ext, fmt in formats.items():
            record = results[f"reports/smoke/{t}.{ext}"]
            assert record["labels"] == {"table": t, "format": fmt}
            assert all(f"reports/smoke/{t}.{e}" in record["caption"] for e in formats)
            assert "system-message" not in record["caption"]  # docutils reports a failed include inline
        # The HTML item, which the report shows in its main pane: a page with an HTML table (not a Markdown box), its
        # header and first row as the Markdown has them, the caption, and the commands as a collapsed block.
        page = (project / f"reports/smoke/{t}.html").read_text()
        assert f"<strong>{escape(md[0].strip('*'))}</strong>" in page and '<meta charset="utf-8">' in page
        assert '<table class="dataframe table table-sm">' in page
        header = [cell.strip() for cell in md[2].split("|")[1:-1]]
        assert all(f"<th>{escape(cell)}</th>" in page for cell in header)
        assert f"<td>{md[4].split('|')[1].strip()}</td>" in page
        assert escape(md[-1].split(",")[0]) in page and "Profile smoke" in page
        assert "<details><summary>Commands behind each row</summary>" in page and "```" not in page

    # In a headless browser: Tables, table1, the HTML item's eye; the main pane then holds table1's page, drawn.
    shown = f"reports/smoke/{TABLES[0]}.html"
    with chromium.Page(chromium.browser(), 1400, 1000) as browser:
        browser.open((project / "report.html").as_uri(), "document.body.innerText.includes('Tables')")
        for label in ("Tables", TABLES[0]):
            assert browser.evaluate(CLICK_TEXT + f"({json.dumps(label)})"), label
            time.sleep(0.5)
        browser.evaluate("document.querySelector('[iconname=eye]').click()")
        frame = "document.querySelector('iframe') && document.querySelector('iframe').src"
        browser.wait(f"({frame} || '').startsWith('data:text/html')")
        src = browser.evaluate(frame)
        assert base64.b64decode(src.split("base64,", 1)[1]) == (project / shown).read_bytes()
        time.sleep(1)
        # the top of the main pane: blank while it shows the workflow graph (drawn lower down), the table's title and rows now
        main_pane_top = chromium.crop(browser.screenshot(), left=400, height=200)
    covered, colours = chromium.ink(main_pane_top)
    assert covered > 0.01 and colours > 20, (covered, colours)
    # A bare `snakemake --report`: what was built for the active profile, not the DAG of its whole summary.
    (project / "profile.yaml").write_text("profile: smoke\n")
    (project / "reports/smoke/table2.html").unlink()  # a table without its HTML (built before it existed) is left out
    bare = snakemake("--report", "bare.html", cwd=project, env=env)
    assert "Missing metadata" not in bare.stdout + bare.stderr
    bare_results = embedded((project / "bare.html").read_text(), "results")
    assert sorted(bare_results) == sorted([f"reports/smoke/table1.{ext}" for ext in ("md", "tex", "html")] + figures)
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
