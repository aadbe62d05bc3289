"""The paper profile's fidelity audit: every paper-profile value names its source, and the table matches params.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from flowvae.spec.params import read_params

from flowvae.pipeline.audit import current_value, markdown_table, params_value_text, read_audit

REPO = Path(__file__).resolve().parents[1]


# Each profile that reproduces a paper's settings, its audit file, and how many of its rows at least are key paths.
AUDITS = {"paper": ("reference/paper_profile_audit.csv", 20), "sylvester": ("reference/sylvester_profile_audit.csv", 12)}
PAGES = {"paper": "docs/paper-profile-audit.md", "sylvester": "docs/sylvester-profile-audit.md"}


def _profile(name: str) -> dict:
    return read_params(REPO / "params.yaml")["profiles"][name]


@pytest.mark.parametrize("profile", list(AUDITS))
def test_audit_values_are_what_params_yaml_says_now(profile: str):
    block = _profile(profile)
    path, minimum = AUDITS[profile]
    checked = 0
    for row in read_audit(REPO / path):
        try:
            value = current_value(block, row["setting"])
        except KeyError:
            assert row["params_value"] == "", f"{row['setting']}: no such key in profiles.{profile}"
            continue
        assert row["params_value"] == params_value_text(value), row["setting"]
        checked += 1
    assert checked >= minimum


@pytest.mark.parametrize("profile", list(AUDITS))
def test_every_profile_setting_has_a_sourced_row(profile: str):
    leaves = []

    def walk(block, prefix):
        for key, value in block.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and key not in ("subset", "substitute", "resources", "eval"):
                walk(value, path + ".")
            elif key not in ("subset", "substitute", "resources", "kind"):
                leaves.append(path)

    walk(_profile(profile), "")
    rows = read_audit(REPO / AUDITS[profile][0])
    audited = {r["setting"] for r in rows if r["source"].strip()}
    # A row covers its own key; a row for a whole block covers the keys inside it.
    covered = {leaf for leaf in leaves if any(s == leaf or s.startswith(leaf + ".") or leaf.startswith(s + ".") for s in audited)}
    assert set(leaves) - covered == set(), f"{profile}-profile settings without a sourced audit row"
    assert all(r["source"].strip() for r in rows)


@pytest.mark.parametrize("profile", list(AUDITS))
def test_docs_show_the_audit_table(profile: str):
    page = (REPO / PAGES[profile]).read_text()
    assert markdown_table(read_audit(REPO / AUDITS[profile][0])) in page
    assert PAGES[profile] in (REPO / "README.md").read_text()
