"""Result tables (Markdown and LaTeX) from eval.json files and the published numbers.

A table's runs are gathered once (`gather`: the rows, each model's runs over its seeds, the published
rows that apply) and then laid out (`build_table`); its caption (captions.py) reads the same gathering.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

import pandas as pd

from flowvae.files.atomic import write_text
from flowvae.report.captions import DAGGER, caption
from flowvae.report.commands import commands_block, commands_html
from flowvae.report.format import MISSING_MD, MISSING_TEX, latex_escape, md_escape, num, pm
from flowvae.report.inputs import PUBLISHED_COLUMNS
from flowvae.report.paired import NOT_DISTINGUISHABLE, paired_delta
from flowvae.spec.metrics import Metric, beside_evals_read, metric


LATE_LIMIT = 0.5  # nats of validation -ELBO gained in the last 20% of the epochs: a row still improving
STILL_IMPROVING = " ▲"
# reports/<profile>/<table>.html: a page of its own, which `snakemake --report` shows in its main pane
HTML_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; font-size: 14px; margin: 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }}
th:first-child, td:first-child {{ text-align: left; }}
thead th {{ border-bottom: 1px solid #888; }}
tbody tr:nth-child(even) {{ background: #f3f3f3; }}
p {{ max-width: 60em; line-height: 1.4; }}
pre {{ background: #f6f6f6; padding: 0.6em; overflow-x: auto; }}
</style></head>
<body>
<p><strong>{title}</strong></p>
{table}
<p>{caption}</p>
{commands}</body></html>
"""


class MissingEvalError(ValueError):
    """A table row has no eval.json among the inputs."""


@dataclass(frozen=True)
class Cell:
    """One table entry, rendered separately for Markdown and LaTeX."""

    md: str
    tex: str


@dataclass(frozen=True)
class TableRuns:
    """A table's spec with its runs gathered: what the layout and the caption read."""

    name: str
    spec: Mapping[str, Any]
    context: Mapping[str, Any]
    metrics: list[Metric]
    rows: list[Mapping[str, Any]]  # the spec's rows, each {"model": ..., optional label / published_as / seeds}
    runs: dict[str, list[Mapping[str, Any]]]  # model -> its evals, by seed
    published: pd.DataFrame  # the published rows of the table's sources
    sources: list[str]
    primary: str
    pub_key: dict[str, str]  # model -> the model name its published numbers go by

    @property
    def models(self) -> list[str]:
        return [str(r["model"]) for r in self.rows]

    @property
    def chosen(self) -> list[Mapping[str, Any]]:
        """Every eval the table shows, row by row."""
        return [ev for model in self.models for ev in self.runs[model]]

    @property
    def beside_evals_read(self) -> frozenset[str]:
        """The evaluations beside eval.json that the table's columns read (their commands and code are its rows')."""
        return beside_evals_read(m.key for m in self.metrics)

    @property
    def several_seeds(self) -> bool:
        return max(len(v) for v in self.runs.values()) > 1

    @property
    def seed_metric(self) -> Metric | None:
        """The metric whose spread over seeds gets a column: -log p(x) where the table shows it."""
        return next((m for m in self.metrics if m.shows_k), self.metrics[0]) if self.several_seeds else None

    def still_improving(self, model: str) -> bool:
        """Whether any run of the row improved its best validation -ELBO by more than LATE_LIMIT nats in its last 20% of epochs."""
        return any((ev.get("late_improvement") or 0.0) > LATE_LIMIT for ev in self.runs[model])

    @property
    def baseline(self) -> str:
        """The row the paired differences are taken against: the spec's `baseline`, else the first row."""
        return str(self.spec.get("baseline") or self.models[0])

    @property
    def published_here(self) -> pd.DataFrame:
        """The published rows of the models the table shows."""
        return self.published[self.published["model"].isin(set(self.pub_key.values()))]


def _published_for(
    spec: Mapping[str, Any], published: pd.DataFrame | None, dataset: str | None
) -> tuple[pd.DataFrame, list[str], str]:
    """The published rows for this table (its data set's only), its sources in order, and the primary source."""
    pub_spec = spec.get("published") or {}
    if published is None or not pub_spec.get("tables"):
        return pd.DataFrame(columns=list(PUBLISHED_COLUMNS)), [], ""
    rows = published[published["table"].isin([int(t) for t in pub_spec["tables"]])]
    if dataset is not None:  # a number on another binarization (or data set) is not comparable
        rows = rows[rows["dataset"] == dataset]
    sources = list(pub_spec.get("sources") or dict.fromkeys(rows["source"]))
    rows = rows[rows["source"].isin(sources)]
    primary = str(pub_spec.get("primary") or (sources[0] if sources else ""))
    return rows, sources, primary


def gather(
    name: str,
    spec: Mapping[str, Any],
    evals: Sequence[Mapping[str, Any]],
    published: pd.DataFrame | None,
    context: Mapping[str, Any] | None = None,
) -> TableRuns:
    """A table's rows, each model's evals by seed, and its published rows; errors name what is missing or mixed."""
    context = dict(context or {})
    dataset = spec.get("dataset") or context.get("dataset")
    metrics = [metric(m, spec.get("units")) for m in spec.get("metrics") or ["neg_elbo", "neg_log_px", "gap"]]
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
    profile = context.get("profile")
    others = {ev.get("profile") for model in wanted for ev in runs[model]} - {None, profile}
    if profile and others:
        raise ValueError(f"{name}: evals from profile(s) {sorted(others)} mixed into a {profile!r} table")
    pub_rows, sources, primary = _published_for(spec, published, dataset)
    pub_key = {str(r["model"]): str(r.get("published_as") or r["model"]) for r in rows}
    return TableRuns(name, spec, context, metrics, rows, runs, pub_rows, sources, primary, pub_key)


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


def _ours(m: Metric, runs: list[Mapping[str, Any]], table: str) -> tuple[Cell, float | None]:
    """Our entry for one metric: the mean over a model's seeds ± the standard error over test points.

    With several seeds the standard error is the runs' mean one (the seed-to-seed spread has its own
    column, see _seed_sd). A metric of some rows only (Metric.some_rows) is blank where no run has it.
    """
    if m.some_rows and all(m.get(ev) is None for ev in runs):
        return Cell(MISSING_MD, MISSING_TEX), None
    mean = statistics.fmean(_values(m, runs, table))
    errors = [m.se(ev) for ev in runs] if m.se is not None else []
    err = statistics.fmean(float(e) for e in errors) if errors and None not in errors else None
    digits = m.digits
    if m.key == "active_units" and not float(mean).is_integer():
        digits = 1
    md, tex = pm(mean, err, digits, tex=False), pm(mean, err, digits, tex=True)
    if m.key == "active_units":
        dims = {ev.get("latent_dim") for ev in runs} - {None}
        if len(dims) == 1:
            dim = dims.pop()
            md, tex = f"{md}/{dim}", f"{tex}/{dim}"
    return Cell(md, tex), mean


def _seed_sd(m: Metric, runs: list[Mapping[str, Any]], table: str) -> Cell:
    """The standard deviation of a metric over a model's seeds ('—' with one seed)."""
    values = _values(m, runs, table)
    if len(values) < 2:
        return Cell(MISSING_MD, MISSING_TEX)
    sd = num(statistics.stdev(values), m.digits)
    return Cell(sd, sd)


def _paired_columns(t: TableRuns, m: Metric, body: list[list[Cell]]) -> list[tuple[str, str]]:
    """Δ against the baseline row (paired over test images) and its sd over seeds; no columns without per-image values."""
    base = t.baseline
    runs = t.runs[base]
    scale = 1.0
    if m.key == "bits_per_dim":  # nats to bits/dim, by the baseline's own ratio
        ev = runs[0]
        scale = m.get(ev) / ev["neg_log_px"] if ev.get("neg_log_px") else 1.0
    deltas = {model: paired_delta(t.runs[model], runs, scale) for model in t.models if model != base}
    if not any(deltas.values()):
        return []
    digits = m.digits + 1
    for cells, model in zip(body, t.models):
        d = deltas.get(model)
        if model == base:
            cells += [Cell("baseline", "baseline"), Cell(MISSING_MD, MISSING_TEX)]
        elif d is None:
            cells += [Cell(MISSING_MD, MISSING_TEX)] * 2
        else:
            mark = "" if d.distinguishable else f" {NOT_DISTINGUISHABLE}"
            text = f"{d.delta:+.{digits}f} ± {d.se:.{digits}f}{mark}"
            sd = MISSING_MD if d.seed_sd is None else f"{d.seed_sd:.{digits}f}"
            cells += [Cell(text, latex_escape(text)), Cell(sd, MISSING_TEX if d.seed_sd is None else sd)]
    return [(f"Δ vs {base} (paired)", rf"$\Delta$ vs {latex_escape(base)} (paired)"), ("sd of Δ over seeds", r"sd of $\Delta$ over seeds")]


def build_table(
    name: str,
    spec: Mapping[str, Any],
    evals: Sequence[Mapping[str, Any]],
    published: pd.DataFrame | None,
    context: Mapping[str, Any] | None = None,
) -> tuple[str, str]:
    """Markdown and LaTeX for one params.yaml table spec, with published numbers beside ours."""
    return table_texts(name, spec, evals, published, context)[:2]


def table_texts(
    name: str,
    spec: Mapping[str, Any],
    evals: Sequence[Mapping[str, Any]],
    published: pd.DataFrame | None,
    context: Mapping[str, Any] | None = None,
) -> tuple[str, str, str]:
    """Markdown, LaTeX and an HTML fragment (title, table, commands, caption: what `snakemake --report` shows) of a table."""
    t = gather(name, spec, evals, published, context)
    keyed = t.published_here[["source", "model", "metric", "value"]]
    if keyed.duplicated(["source", "model", "metric"]).any():
        dup = keyed[keyed.duplicated(["source", "model", "metric"], keep=False)].to_dict("records")
        raise ValueError(f"{name}: published numbers given twice: {dup}")
    pub_value = {(s, mo, me): v for s, mo, me, v in keyed.itertuples(index=False)}
    second_hand = {(s, mo, me) for s, mo, me, st in t.published_here[["source", "model", "metric", "status"]].itertuples(index=False)
                   if st != "primary"}

    several, seed_metric = t.several_seeds, t.seed_metric
    shown: dict[str, str] = {}  # published metric -> the source its column shows
    columns: list[tuple[str, str]] = [("model", "model")] + ([("seeds", "seeds")] if several else [])
    body: list[list[Cell]] = []
    for row in t.rows:
        label = str(row.get("label") or row["model"]) + (STILL_IMPROVING if t.still_improving(str(row["model"])) else "")
        n = str(len(t.runs[str(row["model"])]))
        body.append([Cell(label, latex_escape(label))] + ([Cell(n, n)] if several else []))
    for m in t.metrics:
        columns.append((m.md, m.tex))
        means = {}
        for cells, model in zip(body, t.models):
            cell, means[model] = _ours(m, t.runs[model], name)
            cells.append(cell)
        if m is seed_metric:
            columns.append(("sd over seeds", "sd over seeds"))
            for cells, model in zip(body, t.models):
                cells.append(_seed_sd(m, t.runs[model], name))
        if m.shows_k:
            columns += _paired_columns(t, m, body)
        # one published column per metric: the primary source, or the first that has this metric
        have = [src for src in t.sources if any((src, t.pub_key[model], m.published) in pub_value for model in t.models)]
        if not m.published or not have:
            continue
        ref = t.primary if t.primary in have else have[0]
        shown[m.published] = ref
        columns += [("published", "published"), (f"Δ {m.md}", rf"$\Delta$ {m.tex}")]
        for cells, model in zip(body, t.models):
            value = pub_value.get((ref, t.pub_key[model], m.published))
            if value is None or means[model] is None:
                cells += [Cell(MISSING_MD, MISSING_TEX)] * 2
                continue
            digits = max(m.digits, 1) if m.key == "active_units" else m.digits
            delta = f"{means[model] - value:+.{digits}f}"
            shown_value = num(value, m.digits) + (DAGGER if (ref, t.pub_key[model], m.published) in second_hand else "")
            cells += [Cell(shown_value, shown_value.replace(DAGGER, r"$^\dagger$")), Cell(delta, delta)]

    title, text = caption(t, shown, [c[0] for c in columns])
    row_commands_of = (name, t.context.get("profile") or (t.chosen[0].get("profile") if t.chosen else None), t.chosen,
                       t.context.get("row_budgets") or {}, t.beside_evals_read)
    commands = commands_block(*row_commands_of)
    md_frame = pd.DataFrame([[md_escape(c.md) for c in cells] for cells in body], columns=[md_escape(c[0]) for c in columns])
    tex_frame = pd.DataFrame([[c.tex for c in cells] for cells in body], columns=[c[1] for c in columns])
    markdown = (
        f"**{title}**\n\n"
        + md_frame.to_markdown(index=False, disable_numparse=True, colalign=["left"] + ["right"] * (len(columns) - 1))
        + "\n\n" + commands + "\n" + text + "\n"
    )  # the caption stays the last line: `snakemake --report` shows it from there (workflow/report/table.rst)
    tex_title = str(spec.get("title") or title)  # LaTeX numbers the table itself
    latex = tex_frame.to_latex(
        index=False,
        escape=False,
        caption=(latex_escape(f"{tex_title}. {text}"), latex_escape(tex_title)),
        label=f"tab:{name}",
        position="htbp",
        column_format="l" + "r" * (len(columns) - 1),
    )
    html_frame = pd.DataFrame([[c.md for c in cells] for cells in body], columns=[c[0] for c in columns])
    html = HTML_PAGE.format(
        title=escape(title),
        table=html_frame.to_html(index=False, border=0, classes="table table-sm", justify="right"),
        caption=escape(text),
        commands=commands_html(*row_commands_of),
    )
    return markdown, latex, html


def write_table(
    name: str,
    spec: Mapping[str, Any],
    evals: Sequence[Mapping[str, Any]],
    published: pd.DataFrame | None,
    context: Mapping[str, Any] | None,
    out_md: str | os.PathLike[str],
    out_tex: str | os.PathLike[str],
    out_html: str | os.PathLike[str] | None = None,
) -> tuple[str, str]:
    """Build a table and write its .md and .tex (and the HTML fragment) atomically; returns the Markdown and LaTeX."""
    markdown, latex, html = table_texts(name, spec, evals, published, context)
    if out_html is not None:
        write_text(out_html, html)
    write_text(out_md, markdown)
    write_text(out_tex, latex)
    return markdown, latex


def budget_text(params: Mapping[str, Any], profile: str, runs: Iterable[Any]) -> str | None:
    """The budgets under which a table's runs train, with what they change: for the caption."""
    from flowvae.spec.params import matching_budgets

    names = list(dict.fromkeys(n for r in runs for n in matching_budgets(params, r.dataset, r.model, profile)))
    if not names:
        return None
    base = params["profiles"][profile]["train"]
    texts = []
    for name in names:
        budget = params["budgets"][name]
        changes = ", ".join(f"{k} {v}" + (f" instead of {base[k]}" if k in base else "")
                            for k, v in budget["train"].items() if base.get(k) != v) or "the profile's training settings"
        texts.append(f"budget {name}: {changes}" + (f"; {budget['note']}" if budget.get("note") else ""))
    return "; ".join(texts)


def table_context(params: Mapping[str, Any], profile: str | None, dataset: str | None, table: str | None = None) -> dict[str, Any]:
    """Fallback caption facts from params.yaml (eval.json values take precedence), and the table's budgets."""
    from flowvae.pipeline import plan
    from flowvae.spec.params import matching_budgets
    from flowvae.spec.settings import EvalSettings, TrainSettings

    profile = profile or params["profile"]
    block = params["profiles"][profile]
    return {
        "profile": profile,
        "dataset": dataset,
        "epochs": TrainSettings.from_params(block["train"]).epochs,
        "K": EvalSettings.from_params(block["eval"]).K_for(dataset),
        "seeds": list(params["seeds"]),
        "code_version": params.get("code_version"),
        "budget": budget_text(params, profile, plan.table_runs(params, table)) if table else None,
        "row_budgets": {r.model: matching_budgets(params, r.dataset, r.model, profile) for r in plan.table_runs(params, table)}
        if table else {},
        "setup": our_setup(params, profile, table) if table else None,
    }


def our_setup(params: Mapping[str, Any], profile: str, table: str) -> str:
    """The data, networks and training length of a table's runs, as its caption states them beside the published set-ups."""
    from flowvae.pipeline import plan
    from flowvae.spec.run import RunSpec

    runs = plan.table_runs(params, table)
    specs = [RunSpec.resolve(dict(params), profile, r.dataset, r.model, r.seed) for r in runs]
    networks = list(dict.fromkeys(_network_text(s) for s in specs))
    epochs = sorted({s.train.epochs for s in specs})
    span = f"{epochs[0]}" if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}"
    return f"{specs[0].dataset_name}, {'; '.join(networks)}, at most {span} epochs (early stopping after {specs[0].train.patience})" \
        if specs[0].train.patience else f"{specs[0].dataset_name}, {'; '.join(networks)}, {span} epochs"


def _network_text(spec) -> str:
    s = spec.network
    if spec.family.block == "ladder":
        return f"bidirectional ResNet VAE of {s.channels} channels, {s.z_channels} latent maps per rung"
    if spec.family.block == "pixel_flow":
        return f"pixel real NVP with {s.channels}-feature s/t networks"
    if spec.family.block == "pixel_cnn":
        gated = "gated " if spec.variant.gated else ""
        return f"{gated}PixelCNN of {spec.variant.steps} layers x {spec.variant.width} channels"
    if spec.family.block == "gan":
        layers = lambda sizes: "-".join(map(str, sizes))
        return (f"MLP GAN (generator {layers(s.generator_hidden)}, discriminator {layers(s.discriminator_hidden)}), "
                f"{s.latent_dim} latent units")
    if s.kind == "mlp":
        return f"MLP encoder and decoder ({s.layers} x {s.hidden} ELU units), {s.z_dim} latent units"
    if s.kind == "resnet":
        return f"ResNet encoder and decoder (channels {', '.join(map(str, s.channels))}), {s.z_dim} latent units"
    return f"gated convolutional encoder and decoder, {s.z_dim} latent units"
