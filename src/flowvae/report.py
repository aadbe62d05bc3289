"""Result tables (markdown + LaTeX) and the summary page, built from eval.json files only.

Reads eval.json / train.jsonl / samples.npz and the published numbers; never a model, never torch.

Command line (each writes its outputs atomically)::

    python -m flowvae.report table --params params.yaml --table table1 [--profile quick] \\
        --published reference/paper_results.csv \\
        --out-md reports/table1.md --out-tex reports/table1.tex EVAL_JSON...
    python -m flowvae.report summary --out reports/summary.md FILE_OR_DIR...

`table`: the spec is params["tables"][TABLE]; --profile defaults to params["profile"]; EVAL_JSON may
include runs of other tables (they are filtered by dataset and model), but every row of the table
needs at least one. `summary`: FILE_OR_DIR are the tables' .md/.tex files and the figures (.png,
.pdf, .svg) or folders holding them; links are written relative to the summary's folder.
The same entry points as functions: main_table(argv), main_summary(argv), main(argv).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from flowvae.atomic import write_text
from flowvae.metrics import BY_PUBLISHED, METRICS, Metric, metric

PUBLISHED_COLUMNS = ("source", "table", "dataset", "model", "metric", "value", "note")
UNVERIFIED = "UNVERIFIED"  # a note with this word: a number not checked against its source; captions say so
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
TABLE_SUFFIXES = (".md", ".tex")
MISSING_MD = "—"
MISSING_TEX = "--"


class MissingEvalError(ValueError):
    """A table row has no eval.json among the inputs."""


# ---------------------------------------------------------------- reading inputs


def load_published(csv_path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read paper_results.csv: one row per (source, table, dataset, model, metric) with a float value."""
    df = pd.read_csv(csv_path, dtype={"source": str, "dataset": str, "model": str, "metric": str, "note": str})
    missing = [c for c in PUBLISHED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing columns {missing}; expected {list(PUBLISHED_COLUMNS)}")
    df["table"] = pd.to_numeric(df["table"], errors="coerce").astype("Int64")
    df["value"] = pd.to_numeric(df["value"], errors="raise").astype(float)
    df["note"] = df["note"].fillna("")
    return df


def load_eval(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one eval.json, with the timings beside it merged in; ValueError if it lacks the fields that identify the run.

    Timings live in their own files (eval_timings.json, train_timings.json) so that eval.json has the
    same bytes for the same run; a table reads train_minutes and eval_seconds from them.
    """
    with open(path, encoding="utf-8") as fh:
        ev = json.load(fh)
    missing = [k for k in ("model", "dataset") if k not in ev]
    if missing:
        raise ValueError(f"{path}: eval.json lacks {missing}")
    for name, keys in (("eval_timings.json", ("eval_seconds", "is_samples_per_s")), ("train_timings.json", ("train_minutes",))):
        beside = Path(path).with_name(name)
        if beside.is_file():
            timings = json.loads(beside.read_text(encoding="utf-8"))
            ev.update({k: timings[k] for k in keys if k in timings})
    return ev


def load_train_log(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a train.jsonl (one JSON object per epoch) into a DataFrame."""
    with open(path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return pd.DataFrame(rows)


def run_id(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Profile, dataset, model and seed of a run file: from the eval.json beside it, else the path."""
    p = Path(path)
    beside = p.with_name("eval.json")
    if beside.is_file():
        try:
            ev = load_eval(beside)
            return {k: ev.get(k) for k in ("profile", "dataset", "model", "seed")}
        except (OSError, ValueError):
            pass
    # results/{profile}/{dataset}/{model}/seed{seed}/file
    parts = p.parts
    match = re.fullmatch(r"seed(\d+)", parts[-2]) if len(parts) >= 2 else None
    if match and len(parts) >= 5:
        return {"profile": parts[-5], "dataset": parts[-4], "model": parts[-3], "seed": int(match.group(1))}
    return {"profile": None, "dataset": None, "model": p.parent.name or p.stem, "seed": None}


# ---------------------------------------------------------------- formatting


def _num(value: float, digits: int) -> str:
    """A number with fixed decimals (thousands separators for integers)."""
    return f"{value:,.0f}" if digits == 0 else f"{value:.{digits}f}"


def _pm(value: float, err: float | None, digits: int, tex: bool) -> str:
    """`value ± err`, or the value alone where there is no error."""
    if err is None or (isinstance(err, float) and math.isnan(err)):
        return _num(value, digits)
    sep = r" $\pm$ " if tex else " ± "
    return f"{_num(value, digits)}{sep}{_num(err, digits or 1)}"


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters in plain text."""
    table = {
        "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "±": r"$\pm$", "−": "$-$", "Δ": r"$\Delta$", "—": "--", "–": "--",
    }
    return "".join(table.get(ch, ch) for ch in text)


def _md_escape(text: str) -> str:
    """Escape the pipes that would otherwise split a markdown table cell."""
    return text.replace("|", r"\|")


def _describe(values: Iterable[Any]) -> str:
    """Distinct values joined for a caption (e.g. '30' or '10, 30')."""
    distinct = sorted({v for v in values if v is not None}, key=lambda v: (str(type(v)), v))
    return ", ".join(str(v) for v in distinct) if distinct else "unknown"


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class _Cell:
    """One table entry, rendered separately for markdown and LaTeX."""

    md: str
    tex: str


def _values(m: Metric, runs: list[Mapping[str, Any]], table: str) -> list[float]:
    """One metric's value in each of a model's runs; ValueError naming the run where one is missing."""
    values = []
    for ev in runs:
        value = m.get(ev)
        if value is None:
            raise ValueError(
                f"{table}: eval.json of {ev.get('model')} seed {ev.get('seed')} has no value for "
                f"{m.key!r} (is the metric right for dataset {ev.get('dataset')}?)"
            )
        values.append(float(value))
    return values


def _ours(m: Metric, runs: list[Mapping[str, Any]], table: str) -> tuple[_Cell, float]:
    """Our entry for one metric: the mean over a model's seeds ± the standard error over test points.

    With several seeds the standard error is the runs' mean one (the seed-to-seed spread has its own
    column, see _seed_sd).
    """
    mean = statistics.fmean(_values(m, runs, table))
    errors = [m.se(ev) for ev in runs] if m.se is not None else []
    err = statistics.fmean(float(e) for e in errors) if errors and None not in errors else None
    digits = m.digits
    if m.key == "active_units" and not float(mean).is_integer():
        digits = 1
    md, tex = _pm(mean, err, digits, tex=False), _pm(mean, err, digits, tex=True)
    if m.key == "active_units":
        dims = {ev.get("latent_dim") for ev in runs} - {None}
        if len(dims) == 1:
            dim = dims.pop()
            md, tex = f"{md}/{dim}", f"{tex}/{dim}"
    return _Cell(md, tex), mean


def _seed_sd(m: Metric, runs: list[Mapping[str, Any]], table: str) -> _Cell:
    """The standard deviation of a metric over a model's seeds ('—' with one seed)."""
    values = _values(m, runs, table)
    if len(values) < 2:
        return _Cell(MISSING_MD, MISSING_TEX)
    sd = _num(statistics.stdev(values), m.digits)
    return _Cell(sd, sd)


def _published_for(spec: Mapping[str, Any], published: pd.DataFrame | None) -> tuple[pd.DataFrame, list[str], str]:
    """The published rows for this table, its sources in order, and the primary source."""
    pub_spec = spec.get("published") or {}
    if published is None or not pub_spec.get("tables"):
        return pd.DataFrame(columns=list(PUBLISHED_COLUMNS)), [], ""
    rows = published[published["table"].isin([int(t) for t in pub_spec["tables"]])]
    sources = list(pub_spec.get("sources") or dict.fromkeys(rows["source"]))
    rows = rows[rows["source"].isin(sources)]
    primary = str(pub_spec.get("primary") or (sources[0] if sources else ""))
    return rows, sources, primary


def build_table(
    name: str,
    spec: Mapping[str, Any],
    evals: Sequence[Mapping[str, Any]],
    published: pd.DataFrame | None,
    context: Mapping[str, Any] | None = None,
) -> tuple[str, str]:
    """Markdown and LaTeX for one params.yaml table spec, with published numbers beside ours."""
    context = dict(context or {})
    dataset = spec.get("dataset") or context.get("dataset")
    units = spec.get("units")
    metrics = [metric(m, units) for m in spec.get("metrics") or ["neg_elbo", "neg_log_px", "gap"]]
    rows = [r if isinstance(r, Mapping) else {"model": r} for r in spec.get("rows") or []]
    if not rows:
        raise ValueError(f"{name}: the table spec has no rows")

    by_model: dict[str, list[Mapping[str, Any]]] = {}
    for ev in evals:
        if dataset is None or ev.get("dataset") == dataset:
            by_model.setdefault(str(ev["model"]), []).append(ev)
    wanted = [str(r["model"]) for r in rows]
    missing = [m for m in wanted if m not in by_model]
    if missing:
        have = sorted(set(by_model) & set(wanted)) or "none"
        raise MissingEvalError(
            f"{name}: no eval.json for model(s) {', '.join(missing)} on dataset {dataset} "
            f"(profile {context.get('profile') or 'any'}); rows with evals: {have}. Expected "
            f"results/{context.get('profile') or '{profile}'}/{dataset}/{missing[0]}/seed{{seed}}/eval.json"
        )
    runs: dict[str, list[Mapping[str, Any]]] = {}
    for model in wanted:
        seen: dict[Any, Mapping[str, Any]] = {}
        for ev in by_model[model]:
            if ev.get("seed") in seen:
                raise ValueError(f"{name}: two eval.json for {model} seed {ev.get('seed')}")
            seen[ev.get("seed")] = ev
        runs[model] = sorted(seen.values(), key=lambda ev: (ev.get("seed") is None, ev.get("seed") or 0))
    chosen = [ev for model in wanted for ev in runs[model]]
    profile = context.get("profile")
    others = {ev.get("profile") for ev in chosen} - {None, profile}
    if profile and others:
        raise ValueError(f"{name}: evals from profile(s) {sorted(others)} mixed into a {profile!r} table")

    pub_rows, sources, primary = _published_for(spec, published)
    pub_key = {str(r["model"]): str(r.get("published_as") or r["model"]) for r in rows}
    pub_here = pub_rows[pub_rows["model"].isin(set(pub_key.values()))]
    keyed = pub_here[["source", "model", "metric", "value"]]
    if keyed.duplicated(["source", "model", "metric"]).any():
        dup = keyed[keyed.duplicated(["source", "model", "metric"], keep=False)].to_dict("records")
        raise ValueError(f"{name}: published numbers given twice: {dup}")
    pub_value = {(s, mo, me): v for s, mo, me, v in keyed.itertuples(index=False)}

    n_seeds = {model: len(runs[model]) for model in wanted}
    several = max(n_seeds.values()) > 1
    # the metric whose spread over seeds gets a column: -log p(x) where the table shows it
    seed_metric = next((m for m in metrics if m.shows_k), metrics[0]) if several else None
    shown: dict[str, str] = {}  # published metric -> the source its column shows
    columns: list[tuple[str, str]] = [("model", "model")] + ([("seeds", "seeds")] if several else [])
    body: list[list[_Cell]] = [[_Cell(str(r.get("label") or r["model"]), latex_escape(str(r.get("label") or r["model"])))]
                               + ([_Cell(str(n_seeds[str(r["model"])]), str(n_seeds[str(r["model"])]))] if several else [])
                               for r in rows]
    for m in metrics:
        columns.append((m.md, m.tex))
        means = {}
        for cells, row in zip(body, rows):
            cell, means[str(row["model"])] = _ours(m, runs[str(row["model"])], name)
            cells.append(cell)
        if m is seed_metric:
            columns.append(("sd over seeds", "sd over seeds"))
            for cells, row in zip(body, rows):
                cells.append(_seed_sd(m, runs[str(row["model"])], name))
        # one published column per metric: the primary source, or the first that has this metric
        have = [src for src in sources if any((src, pub_key[str(r["model"])], m.published) in pub_value for r in rows)]
        if not m.published or not have:
            continue
        ref = primary if primary in have else have[0]
        shown[m.published] = ref
        columns += [("published", "published"), (f"Δ {m.md}", rf"$\Delta$ {m.tex}")]
        for cells, row in zip(body, rows):
            model = str(row["model"])
            value = pub_value.get((ref, pub_key[model], m.published))
            if value is None:
                cells += [_Cell(MISSING_MD, MISSING_TEX)] * 2
                continue
            digits = max(m.digits, 1) if m.key == "active_units" else m.digits
            delta = f"{means[model] - value:+.{digits}f}"
            cells += [_Cell(_num(value, m.digits), _num(value, m.digits)), _Cell(delta, delta)]

    caption = _caption(name, spec, context, chosen, n_seeds, seed_metric, metrics, shown, pub_key, pub_here, pub_rows, sources)
    md_frame = pd.DataFrame([[_md_escape(c.md) for c in cells] for cells in body],
                            columns=[_md_escape(c[0]) for c in columns])
    tex_frame = pd.DataFrame([[c.tex for c in cells] for cells in body], columns=[c[1] for c in columns])
    markdown = (
        f"**{caption[0]}**\n\n"
        + md_frame.to_markdown(index=False, disable_numparse=True, colalign=["left"] + ["right"] * (len(columns) - 1))
        + "\n\n" + caption[1] + "\n"
    )
    tex_title = str(spec.get("title") or caption[0])  # LaTeX numbers the table itself
    latex = tex_frame.to_latex(
        index=False,
        escape=False,
        caption=(latex_escape(f"{tex_title}. {caption[1]}"), latex_escape(tex_title)),
        label=f"tab:{name}",
        position="htbp",
        column_format="l" + "r" * (len(columns) - 1),
    )
    return markdown, latex


def _caption(
    name: str,
    spec: Mapping[str, Any],
    context: Mapping[str, Any],
    chosen: Sequence[Mapping[str, Any]],
    n_seeds: Mapping[str, int],
    seed_metric: Metric | None,
    metrics: Sequence[Metric],
    shown: Mapping[str, str],
    pub_key: Mapping[str, str],
    pub_here: pd.DataFrame,
    pub_rows: pd.DataFrame,
    sources: Sequence[str],
) -> tuple[str, str]:
    """The title line and the provenance text of a table."""
    number = re.sub(r"^table", "Table ", name)
    title = f"{number}: {spec['title']}" if spec.get("title") else number

    def first(key: str) -> str:
        from_evals = _describe(ev.get(key) for ev in chosen)
        return from_evals if from_evals != "unknown" else _describe([context.get(key)])

    seeds = _describe(ev.get("seed") for ev in chosen)
    if seeds == "unknown":
        seeds = _describe(context.get("seeds") or [])
    dataset = spec.get("dataset") or first("dataset")
    sources_used = sorted({str(ev["data_source"]) for ev in chosen if ev.get("data_source", dataset) != dataset})
    if sources_used:
        dataset = f"{dataset} (stand-in: {', '.join(sources_used)}; numbers not comparable to the published ones)"
    units = "bits/dim" if spec.get("units") == "bits_per_dim" else "nats"
    parts = [f"Profile {first('profile')}, data set {dataset}, seeds {seeds}, commit {first('commit')}; {units}."]
    budget = context.get("budget")
    if budget:
        parts.append(f"Trained under a reduced budget ({budget}), {first('epochs')} epochs run.")
    else:
        parts.append(f"{first('epochs')} epochs.")
    if any(m.shows_k for m in metrics):
        exact = sorted({str(ev["model"]) for ev in chosen if ev.get("estimator") == "exact"})
        sampled = [ev for ev in chosen if ev.get("estimator") != "exact"]
        if sampled:
            parts.append(f"-log p(x) is the importance-sampling estimate with K = {_describe(ev.get('K') for ev in sampled)} "
                         "samples per test image (Burda et al. 2016)" + (" for the VAEs." if exact else "."))
        if exact:
            parts.append(f"{', '.join(exact)}: a flow used as a density model, its -log p(x) exact (no importance "
                         "sampling: the density of one uniform dequantization per test image, dequantization and "
                         "logit Jacobians included), so its -ELBO column repeats it.")
    if seed_metric is not None:
        parts.append(f"Rows with several seeds show the mean over seeds; ± is the standard error over test points "
                     f"(the runs' mean), and 'sd over seeds' the standard deviation of {seed_metric.md} over seeds.")
    else:
        parts.append("± is the standard error over test points (one seed per model).")
    if shown:
        named = "; ".join(f"{BY_PUBLISHED[pm].md if pm in BY_PUBLISHED else pm}: {src}" for pm, src in shown.items())
        parts.append(f"'published' columns: {named}; Δ = ours − published.")
    others = pub_here[~pub_here.apply(lambda r: shown.get(r["metric"]) == r["source"], axis=1)] if len(pub_here) else pub_here
    for (source, pm), group in others.groupby(["source", "metric"], sort=False):
        label = BY_PUBLISHED[pm].md if pm in BY_PUBLISHED else pm
        values = ", ".join(f"{model} {_num(v, BY_PUBLISHED[pm].digits if pm in BY_PUBLISHED else 2)}"
                           for model, v in zip(group["model"], group["value"]))
        parts.append(f"Also published ({source}, {label}): {values}.")
    if not shown and sources and not len(others):
        parts.append(f"Published numbers from {', '.join(sources)}.")
    unverified = pub_here[pub_here["note"].str.contains(UNVERIFIED, regex=False)] if len(pub_here) else pub_here
    for source, group in unverified.groupby("source", sort=False):
        reason = group["note"].iloc[0].split(UNVERIFIED, 1)[1].lstrip(": ").strip()
        parts.append(f"UNVERIFIED published numbers ({source}): {reason}.")
    mapped = [f"{m} as {p}" for m, p in pub_key.items() if m != p]
    if mapped:
        parts.append(f"Published rows matched: {', '.join(mapped)}.")
    unmatched = pub_rows[~pub_rows["model"].isin(set(pub_key.values()))]
    if len(unmatched):
        extra = "; ".join(f"{source}: {', '.join(dict.fromkeys(group['model']))}"
                          for source, group in unmatched.groupby("source", sort=False))
        parts.append(f"Published models without a row here: {extra}.")
    return title, " ".join(parts)


# ---------------------------------------------------------------- files


def write_table(
    name: str,
    spec: Mapping[str, Any],
    evals: Sequence[Mapping[str, Any]],
    published: pd.DataFrame | None,
    context: Mapping[str, Any] | None,
    out_md: str | os.PathLike[str],
    out_tex: str | os.PathLike[str],
) -> tuple[str, str]:
    """Build a table and write its .md and .tex atomically; returns both texts."""
    markdown, latex = build_table(name, spec, evals, published, context)
    write_text(out_md, markdown)
    write_text(out_tex, latex)
    return markdown, latex


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

    lines = ["# flowvae results", ""]
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
        lines += [" · ".join(f"[{f.name}]({link(f)})" for _, f in sorted(files.items())), ""]
    if not tables and not figures:
        lines += ["No tables or figures were given.", ""]
    return "\n".join(lines)


def _expand(paths: Iterable[str]) -> tuple[list[Path], list[Path]]:
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


# ---------------------------------------------------------------- command line


def budget_text(params: Mapping[str, Any], profile: str, runs: Iterable[Any]) -> str | None:
    """The budgets under which a table's runs train, with what they change: for the caption."""
    from flowvae.config import matching_budgets

    names = list(dict.fromkeys(n for r in runs for n in matching_budgets(params, r.dataset, r.model, profile)))
    if not names:
        return None
    base = params["profiles"][profile]["train"]
    texts = []
    for name in names:
        budget = params["budgets"][name]
        changes = ", ".join(f"{k} {v}" + (f" instead of {base[k]}" if k in base else "") for k, v in budget["train"].items())
        texts.append(f"budget {name}: {changes}" + (f"; {budget['note']}" if budget.get("note") else ""))
    return "; ".join(texts)


def table_context(params: Mapping[str, Any], profile: str | None, dataset: str | None, table: str | None = None) -> dict[str, Any]:
    """Fallback caption facts from params.yaml (eval.json values take precedence), and the table's budgets."""
    from flowvae import plan
    from flowvae.settings import EvalSettings, TrainSettings

    profile = profile or params["profile"]
    block = params["profiles"][profile]
    return {
        "profile": profile,
        "dataset": dataset,
        "epochs": TrainSettings.from_params(block["train"]).epochs,
        "K": EvalSettings.from_params(block["eval"]).K_for(dataset),
        "seeds": list(params["seeds"]),
        "commit": None,
        "budget": budget_text(params, profile, plan.table_runs(params, table)) if table else None,
    }


def main_table(argv: Sequence[str] | None = None) -> int:
    """CLI: write one table's .md and .tex from params.yaml, the published CSV and eval.json files."""
    from flowvae.config import load_params

    ap = argparse.ArgumentParser(prog="python -m flowvae.report table", description=main_table.__doc__)
    ap.add_argument("--params", required=True, help="params.yaml")
    ap.add_argument("--table", required=True, help="key under params['tables'], e.g. table1")
    ap.add_argument("--profile", help="profile name (default: params['profile'])")
    ap.add_argument("--published", help="paper_results.csv (omit for no published columns)")
    ap.add_argument("--out-md", required=True)
    ap.add_argument("--out-tex", required=True)
    ap.add_argument("evals", nargs="*", help="eval.json files")
    args = ap.parse_args(argv)

    params = load_params(args.params, published=args.published)
    tables = params["tables"]
    if args.table not in tables:
        raise SystemExit(f"{args.params}: no table {args.table!r} under 'tables' (have: {', '.join(tables)})")
    spec = tables[args.table]
    context = table_context(params, args.profile, spec.get("dataset"), args.table)
    published = load_published(args.published) if args.published else None
    evals = [load_eval(p) for p in args.evals]
    try:
        write_table(args.table, spec, evals, published, context, args.out_md, args.out_tex)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    return 0


def main_summary(argv: Sequence[str] | None = None) -> int:
    """CLI: write reports/summary.md linking the given tables and figures (files or folders)."""
    ap = argparse.ArgumentParser(prog="python -m flowvae.report summary", description=main_summary.__doc__)
    ap.add_argument("--out", required=True, help="summary markdown file")
    ap.add_argument("files", nargs="*", help="table .md/.tex, figure .png/.pdf/.svg, or folders of them")
    args = ap.parse_args(argv)
    tables, figures = _expand(args.files)
    write_text(args.out, build_summary(tables, figures, base_dir=Path(args.out).parent))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI dispatcher: `table ...` or `summary ...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"table": main_table, "summary": main_summary}
    if not argv or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
