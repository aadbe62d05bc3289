"""The paper profile's fidelity audit (reference/paper_profile_audit.csv): each setting, its value here, the papers' value, the source.

A row whose `setting` is a key path inside profiles.paper carries the value params.yaml has now in
`params_value` (JSON); tests keep the two equal, and the table in docs/paper-profile-audit.md (docs/sylvester-profile-audit.md) is `markdown_table()` of the file.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from flowvae.pipeline.plan import lookup

AUDIT_FILE = Path("reference/paper_profile_audit.csv")
COLUMNS = ("table", "setting", "params_value", "paper_value", "source", "note")


def read_audit(path: str | Path = AUDIT_FILE) -> list[dict[str, str]]:
    """The audit rows."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and tuple(rows[0]) != COLUMNS:
        raise ValueError(f"{path}: columns {tuple(rows[0])}, expected {COLUMNS}")
    return rows


def current_value(paper_profile: dict, setting: str) -> Any:
    """The value params.yaml gives a key path of the paper profile; KeyError if it is not one."""
    return lookup(paper_profile, setting)


def params_value_text(value: Any) -> str:
    """How the audit writes a params value."""
    return json.dumps(value, sort_keys=True)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict[str, str]]) -> str:
    """An audit as a Markdown table: what docs/paper-profile-audit.md and docs/sylvester-profile-audit.md show."""
    lines = ["| tables | setting | here | papers | source | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        here = f"`{r['params_value']}`" if r["params_value"] else "(no key)"
        lines.append("| " + " | ".join(_cell(c) for c in (r["table"], f"`{r['setting']}`", here, r["paper_value"], r["source"], r["note"])) + " |")
    return "\n".join(lines) + "\n"
