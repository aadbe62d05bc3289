"""The command behind every row: how to rebuild each run of a table, and which code trained and evaluated it."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from html import escape
from typing import Any

from flowvae.report.inputs import BESIDE_EVAL
from flowvae.spec.layout import EVAL_SOURCE_DIFF_FILE, SOURCE_DIFF_FILE, run_dir


def _code(ev: Mapping[str, Any], prefix: str, diff_file: str | None) -> str:
    commit = ev.get(f"{prefix}commit") or "unknown"
    diff = ev.get(f"{prefix}source_diff_sha256")
    return f"{commit}" + (f" + uncommitted diff sha256 {diff[:16]}" + (f" ({diff_file})" if diff_file else "") if diff else "")


def dirty_rows(evals: list[Mapping[str, Any]], beside_read: Collection[str]) -> list[str]:
    """'model seed N' for every run trained or evaluated from uncommitted code, counting the evaluations beside its
    eval.json that the table reads (beside_read: their keys, AIS, gaps and the others)."""
    return [f"{ev.get('model')} seed {ev.get('seed')}" for ev in evals
            if ev.get("source_diff_sha256") or ev.get("train_source_diff_sha256")
            or any(isinstance(ev.get(key), Mapping) and ev[key].get("source_diff_sha256")
                   for _, key, _ in BESIDE_EVAL if key in beside_read)]


def row_commands(table: str, profile: str | None, evals: list[Mapping[str, Any]], budgets: Mapping[str, list[str]],
                 beside_read: Collection[str]) -> tuple[str, list[str]]:
    """The Snakemake target of the table (a sentence), then per run a comment naming its code and its three commands,
    and those of the evaluations beside its eval.json that the table reads (beside_read: their keys)."""
    intro = (f"Rebuild the table: `snakemake --cores 2 reports/{profile}/{table}.md` (from the project folder, on the commit "
             "each run names below). One run by hand:")
    lines = []
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
        folder = run_dir(str(ev.get("profile")), str(ev.get("dataset")), str(ev.get("model")), int(ev.get("seed") or 0))
        for name, key, command in BESIDE_EVAL:
            record = ev.get(key)
            if key in beside_read and isinstance(record, Mapping) and "commit" in record:  # read from its own file, with its provenance
                line = command.replace("RUN_DIR", str(folder)) + (f" {args}" if key == "ais" else "")
                lines.append(f"{line}  # {name} at {_code(record, '', None)}")
    return intro, lines


def commands_block(table: str, profile: str | None, evals: list[Mapping[str, Any]], budgets: Mapping[str, list[str]],
                   beside_read: Collection[str]) -> str:
    """A collapsed Markdown block of row_commands."""
    intro, lines = row_commands(table, profile, evals, budgets, beside_read)
    block = ["<details><summary>Commands behind each row</summary>", "", intro, "", "```", *lines, "```", "", "</details>"]
    return "\n".join(block) + "\n"


def commands_html(table: str, profile: str | None, evals: list[Mapping[str, Any]], budgets: Mapping[str, list[str]],
                  beside_read: Collection[str]) -> str:
    """row_commands as a collapsed HTML block."""
    intro, lines = row_commands(table, profile, evals, budgets, beside_read)
    sentence = "".join(f"<code>{escape(part)}</code>" if i % 2 else escape(part) for i, part in enumerate(intro.split("`")))
    return (f"<details><summary>Commands behind each row</summary>\n<p>{sentence}</p>\n"
            f"<pre>{escape(chr(10).join(lines))}</pre>\n</details>\n")
