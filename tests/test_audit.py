"""The paper profile's fidelity audit: every paper-profile value names its source, and the table matches params.yaml."""

from __future__ import annotations

from pathlib import Path

import yaml

from flowvae.audit import current_value, markdown_table, params_value_text, read_audit

REPO = Path(__file__).resolve().parents[1]


def _paper() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())["profiles"]["paper"]


def test_audit_values_are_what_params_yaml_says_now():
    paper = _paper()
    checked = 0
    for row in read_audit(REPO / "reference/paper_profile_audit.csv"):
        try:
            value = current_value(paper, row["setting"])
        except KeyError:
            assert row["params_value"] == "", f"{row['setting']}: no such key in profiles.paper"
            continue
        assert row["params_value"] == params_value_text(value), row["setting"]
        checked += 1
    assert checked >= 20


def test_every_paper_setting_has_a_sourced_row():
    leaves = []

    def walk(block, prefix):
        for key, value in block.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and key not in ("subset", "substitute", "resources", "eval"):
                walk(value, path + ".")
            elif key not in ("subset", "substitute", "resources", "kind"):
                leaves.append(path)

    walk(_paper(), "")
    rows = read_audit(REPO / "reference/paper_profile_audit.csv")
    audited = {r["setting"] for r in rows if r["source"].strip()}
    covered = {leaf for leaf in leaves if any(s == leaf or s.startswith(leaf + ".") for s in audited)}
    assert set(leaves) - covered == set(), "paper-profile settings without a sourced audit row"
    assert all(r["source"].strip() for r in rows)


def test_readme_shows_the_audit_table():
    readme = (REPO / "README.md").read_text()
    assert markdown_table(read_audit(REPO / "reference/paper_profile_audit.csv")) in readme
