"""The command behind every row: how to rebuild each run of a table, and which code trained and evaluated it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowvae.spec.layout import EVAL_SOURCE_DIFF_FILE, SOURCE_DIFF_FILE


def _code(ev: Mapping[str, Any], prefix: str, diff_file: str) -> str:
    commit = ev.get(f"{prefix}commit") or "unknown"
    diff = ev.get(f"{prefix}source_diff_sha256")
    return f"{commit}" + (f" + uncommitted diff sha256 {diff[:16]} ({diff_file})" if diff else "")


def dirty_rows(evals: list[Mapping[str, Any]]) -> list[str]:
    """'model seed N' for every run trained or evaluated from uncommitted code."""
    return [f"{ev.get('model')} seed {ev.get('seed')}" for ev in evals
            if ev.get("source_diff_sha256") or ev.get("train_source_diff_sha256")]


def commands_block(table: str, profile: str | None, evals: list[Mapping[str, Any]], budgets: Mapping[str, list[str]]) -> str:
    """A collapsed Markdown block: the Snakemake target of the table, then per run its three commands and its code."""
    lines = [
        "<details><summary>Commands behind each row</summary>",
        "",
        f"Rebuild the table: `snakemake --cores 2 reports/{profile}/{table}.md` (from the project folder, on the commit "
        "each run names below). One run by hand:",
        "",
        "```",
    ]
    for ev in evals:
        args = f"--profile {ev.get('profile')} --dataset {ev.get('dataset')} --model {ev.get('model')} --seed {ev.get('seed')}"
        applied = budgets.get(str(ev.get("model"))) or []
        lines += [
            f"# {ev.get('model')} seed {ev.get('seed')}"
            + (f", under budget {', '.join(applied)}" if applied else "")
            + f"; trained at {_code(ev, 'train_', SOURCE_DIFF_FILE)}; evaluated at {_code(ev, '', EVAL_SOURCE_DIFF_FILE)}",
            f"flowvae prepare --profile {ev.get('profile')} --dataset {ev.get('dataset')}",
            f"flowvae train {args}",
            f"flowvae evaluate {args}",
        ]
    lines += ["```", "", "</details>"]
    return "\n".join(lines) + "\n"
