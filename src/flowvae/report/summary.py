"""The summary page: every table of a selection (its Markdown inlined) and every figure, linked."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flowvae.files.atomic import write_text

FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
TABLE_SUFFIXES = (".md", ".tex")
DIRTY_MARK = "ran from uncommitted code"  # what a table's caption says of such runs (captions.py)


def _natural(path: str | os.PathLike[str]) -> list[Any]:
    """Sort key that puts table2 before table10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def build_summary(
    table_files: Iterable[str | os.PathLike[str]],
    figure_files: Iterable[str | os.PathLike[str]],
    base_dir: str | os.PathLike[str] | None = None,
) -> str:
    """Markdown page linking every table (its markdown inlined) and every figure."""

    def link(path: Path) -> str:
        return Path(os.path.relpath(path, base_dir)).as_posix() if base_dir is not None else path.as_posix()

    tables: dict[str, dict[str, Path]] = {}
    for f in map(Path, table_files):
        tables.setdefault(str(f.with_suffix("")), {})[f.suffix] = f
    figures: dict[str, dict[str, Path]] = {}
    for f in map(Path, figure_files):
        figures.setdefault(str(f.with_suffix("")), {})[f.suffix] = f

    dirty = [Path(stem).name for stem, files in sorted(tables.items(), key=lambda kv: _natural(kv[0]))
             if ".md" in files and files[".md"].is_file() and DIRTY_MARK in files[".md"].read_text(encoding="utf-8")]
    warning = [f"**Warning: {', '.join(dirty)} show runs trained or evaluated from uncommitted code (see their captions).**", ""]
    lines = [*(warning if dirty else []), "# flowvae results", ""]
    if tables:
        lines += ["## Tables", ""]
    for stem in sorted(tables, key=_natural):
        files = tables[stem]
        links = " · ".join(f"[{f.name}]({link(f)})" for _, f in sorted(files.items()))
        lines += [f"### {Path(stem).name}", "", links, ""]
        md = files.get(".md")
        if md is not None and md.is_file():
            lines += [md.read_text(encoding="utf-8").strip(), ""]
    if figures:
        lines += ["## Figures", ""]
    for stem in sorted(figures, key=_natural):
        files = figures[stem]
        name = Path(stem).name
        lines += [f"### {name}", ""]
        image = files.get(".png") or files.get(".svg")
        if image is not None:
            lines += [f"![{name}]({link(image)})", ""]
        # PDFs (for LaTeX) lie beside the images where the figures were drawn; the project commits the PNGs only
        lines += [" · ".join(f"[{f.name}]({link(f)})" for suffix, f in sorted(files.items()) if suffix != ".pdf"), ""]
    if not tables and not figures:
        lines += ["No tables or figures were given.", ""]
    return "\n".join(lines)


def expand_inputs(paths: Iterable[str]) -> tuple[list[Path], list[Path]]:
    """Split files (and folders, walked) into table files and figure files; others are an error."""
    tables, figures = [], []
    for raw in paths:
        p = Path(raw)
        found = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in found:
            if f.suffix in TABLE_SUFFIXES:
                tables.append(f)
            elif f.suffix in FIGURE_SUFFIXES:
                figures.append(f)
            elif not p.is_dir():
                raise ValueError(f"{f}: neither a table ({TABLE_SUFFIXES}) nor a figure ({FIGURE_SUFFIXES})")
    return tables, figures


def write_summary(out: str | os.PathLike[str], files: Iterable[str]) -> None:
    """Write the summary page for tables and figures (files, or folders holding them), links relative to it."""
    tables, figures = expand_inputs(files)
    write_text(out, build_summary(tables, figures, base_dir=Path(out).parent))
