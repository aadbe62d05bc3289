"""The tables committed under reports/ show what params.yaml asks for now: the same rows in the same order, the same
seeds, and the importance-sampling K of the data set. A table whose settings have moved on is removed, not kept."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flowvae.spec.params import read_params
from flowvae.spec.settings import EvalSettings

REPO = Path(__file__).resolve().parents[1]
PARAMS = read_params(REPO / "params.yaml")
COMMITTED = sorted(REPO.glob("reports/*/table*.md"))
MARKS = re.compile(r"\s*[▲≈†]")


def _rows(text: str) -> tuple[list[str], list[list[str]]]:
    """The header and the body cells of the first Markdown table in a file."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return cells[0], cells[2:]


def test_tables_are_committed() -> None:
    assert COMMITTED, "no committed tables under reports/: this test would check nothing"


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_committed_table_has_the_rows_seeds_and_K_of_params_yaml(path: Path) -> None:
    profile, table = path.parent.name, path.stem
    spec = PARAMS["tables"].get(table)
    assert spec is not None, f"{path}: {table} is no longer a table of params.yaml; remove the file"
    header, body = _rows(path.read_text())
    shown = [MARKS.sub("", row[0]) for row in body]
    wanted = [str(row.get("label") or row["model"]) for row in spec["rows"]]
    assert shown == wanted, f"{path}: rows {shown}, params.yaml's {table} has {wanted}: rebuild or remove it"
    if "seeds" in header:
        counts = [int(row[header.index("seeds")]) for row in body]
        assert counts == [len(row.get("seeds") or [0]) for row in spec["rows"]], f"{path}: seeds differ from params.yaml"
    K = re.search(r"K = ([\d,]+) samples per test image", path.read_text())
    if K:
        expected = EvalSettings.from_params(PARAMS["profiles"][profile]["eval"]).K_for(spec["dataset"])
        assert int(K.group(1).replace(",", "")) == expected, f"{path}: K = {K.group(1)}, params.yaml's is {expected}"


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_committed_table_quotes_its_budgets_as_params_yaml_has_them_now(path: Path) -> None:
    from flowvae.pipeline.plan import table_runs
    from flowvae.report.tables import budget_text

    profile, table = path.parent.name, path.stem
    budgets = budget_text(PARAMS, profile, table_runs(PARAMS, table))
    if budgets is None:
        assert "Trained under budget" not in path.read_text(), f"{path}: names a budget, and params.yaml has none for its runs"
    else:
        assert f"Trained under {budgets}" in path.read_text(), f"{path}: its caption's budgets differ from params.yaml's: {budgets!r}"
