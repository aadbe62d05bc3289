"""The `flowvae` command: every Snakemake rule and DVC stage calls one of its subcommands.

Every subcommand reads params.yaml (or --params) through the same validation as the Snakefile.
Exit status: 0 done; 1 an error, named on one line; 2 bad command-line options; 75 (train) a time
box or SIGTERM/SIGUSR1 stopped it after a checkpoint: rerun the same command to continue.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from pathlib import Path

from flowvae.files.errors import EXIT_TIME_BOX, TimeBoxReached
from flowvae.spec.layout import FIGURE_INPUTS, PUBLISHED_CSV, RunFolder, prepared_dir
from flowvae.spec.params import load_params, profile_settings, source_dataset

ALLOW_DIRTY_ENV = "FLOWVAE_ALLOW_DIRTY"


def _int_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {value:g}")
    return value


def _params(args: argparse.Namespace) -> dict:
    """params.yaml validated, table sources against the published numbers beside it (its project's
    reference/paper_results.csv, wherever the command runs from) when that file exists."""
    published = Path(args.params).parent / PUBLISHED_CSV
    return load_params(args.params, published=published if published.is_file() else None)


def _params_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    p.add_argument("--profile", default=None, help="profile (default: the params file's `profile`)")


def _run_args(p: argparse.ArgumentParser) -> None:
    _params_arg(p)
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True, help="variant name, e.g. vae, nf10, rnvp5, iaf_d2_w320")
    p.add_argument("--seed", type=_int_at_least(0, "a non-negative integer"), default=0)
    p.add_argument("--out", default=None, help="run folder (default: results/{profile}/{dataset}/{model}/seed{seed})")
    p.add_argument("--threads", type=_int_at_least(1, "a positive number of threads"), default=None,
                   help="CPU threads (Snakemake passes its `threads`; default: torch's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--allow-dirty", action="store_true",
                   help=f"run although the sources (or the params file) have uncommitted changes; the run folder keeps "
                        f"the diff and its sha256 is recorded (also ${ALLOW_DIRTY_ENV}=1, for test suites)")


def _source(args: argparse.Namespace):
    """The state of the code a train or evaluate command would record; DirtyCheckout unless dirty code is allowed."""
    from flowvae.files.provenance import refuse_dirty, source_state

    state = source_state(args.params)
    if not (args.allow_dirty or os.environ.get(ALLOW_DIRTY_ENV) == "1"):
        refuse_dirty(state, args.command)
    return state


def _resolve(args: argparse.Namespace):
    """The resolved run of a train or evaluate command, and its folder."""
    from flowvae.spec.run import RunSpec

    params = _params(args)
    spec = RunSpec.resolve(params, args.profile or params["profile"], args.dataset, args.model, args.seed)
    return params, spec, RunFolder(Path(args.out)) if args.out else spec.default_folder


def cmd_prepare(args: argparse.Namespace) -> None:
    from flowvae.spec.datasets import DatasetSpec
    from flowvae.data.prepare import prepare

    params = _params(args)
    profile = args.profile or params["profile"]
    source = source_dataset(params, profile, args.dataset)
    spec = DatasetSpec.from_params(source, params["datasets"][source])
    data = params["data"]
    out = Path(args.out) if args.out else prepared_dir(params, profile, args.dataset)
    subset = profile_settings(params, profile)["subset"] or {}
    paths = prepare(spec, Path(data["raw_dir"]), out, data.get("mirror"), subset=subset)
    note = "" if source == args.dataset else f" (the {profile} profile's stand-in: {source})"
    for split, path in paths.items():
        print(f"{args.dataset}{note} {split}: {path}")


@contextlib.contextmanager
def _withdrawn_on_failure(params: dict, spec, folder: RunFolder):
    """If the training or evaluation of a pipeline run fails: remove the tables and summary pages that show it.

    Snakemake does not rerun a table whose evaluation's outputs went missing with the failed job, so
    an older table would look current; without it, the next build must evaluate the run again.
    """
    from flowvae.pipeline import plan
    from flowvae.spec.layout import report_files

    try:
        yield
    except BaseException:
        if folder == spec.default_folder:  # a run trained elsewhere (--out) is in no table
            run = plan.Run(spec.dataset_name, spec.variant.name, spec.seed)
            for name in plan.reports_with_run(params, run):
                for path in report_files(spec.profile, name):
                    if path.exists():
                        path.unlink()
                        print(f"removed {path}: it shows {folder.root}, whose job failed", file=sys.stderr)
        raise


def cmd_train(args: argparse.Namespace) -> None:
    from flowvae.runs.train import Trainer

    params, spec, folder = _resolve(args)
    source = _source(args)
    resources = spec.resources
    max_minutes = args.max_minutes if args.max_minutes is not None else resources.max_minutes
    with _withdrawn_on_failure(params, spec, folder):
        trainer = Trainer(
            spec, folder.root, threads=args.threads, device=args.device, on_change=args.on_change,
            max_minutes=max_minutes, compile_step=resources.compile_train, source=source,
        )
        print(json.dumps(trainer.run()))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from flowvae.runs.evaluate import evaluate

    params, spec, folder = _resolve(args)
    source = _source(args)
    with _withdrawn_on_failure(params, spec, folder):
        metrics = evaluate(spec, folder.root, threads=args.threads, device=args.device, source=source)
    keys = ("neg_elbo", "neg_log_px", "neg_log_px_se", "gap", "active_units", "K")
    print(json.dumps({k: metrics[k] for k in keys}))


def cmd_verify(args: argparse.Namespace) -> int:
    from flowvae.files.atomic import write_text
    from flowvae.runs.verify import verify

    verdicts = [verify(args.params, run_dir, epochs=args.epochs, threads=args.threads) for run_dir in args.run_dirs]
    text = "\n".join(v.text() for v in verdicts) + "\n"
    print(text, end="")
    if args.out:
        write_text(args.out, text)
    return 0 if all(v.identical for v in verdicts) else 1


def cmd_describe(args: argparse.Namespace) -> None:
    from flowvae.models.build import build_model, describe
    from flowvae.spec.run import RunSpec

    params = _params(args)
    profile = args.profile or params["profile"]
    spec = RunSpec.resolve(params, profile, args.dataset, args.model, 0)
    print(f"{args.model} on {args.dataset} ({profile} profile)")
    print(describe(build_model(spec)))


def cmd_validate(args: argparse.Namespace) -> None:
    _params(args)
    print(f"{args.params}: valid")


def cmd_figures(args: argparse.Namespace) -> None:
    import papermill

    from flowvae.pipeline import plan
    from flowvae.files.atomic import atomic_path

    params = _params(args)
    profile = args.profile or params["profile"]
    if args.summary not in plan.summary_names(params):
        raise ValueError(f"--summary: {args.summary!r} is not one of {plan.summary_names(params)}")
    runs = plan.summary_runs(params, args.summary)
    eval_file, history_file, samples_file = FIGURE_INPUTS
    parameters = {
        "eval_files": [r.path(profile, eval_file) for r in runs],
        "train_files": [r.path(profile, history_file) for r in runs],
        "sample_files": [r.path(profile, samples_file) for r in runs],
        "out_dir": args.out_dir,
        "profile": profile,
    }
    with atomic_path(args.executed, suffix=".ipynb") as tmp:
        papermill.execute_notebook(args.notebook, str(tmp), parameters=parameters, kernel_name="python3", progress_bar=False)


def cmd_dvc_yaml(args: argparse.Namespace) -> None:
    from flowvae.files.atomic import write_text
    from flowvae.pipeline.dvcgen import dvc_yaml_text

    write_text(args.out, dvc_yaml_text(_params(args)))
    print(f"wrote {args.out}")


def cmd_report_table(args: argparse.Namespace) -> None:
    from flowvae.report.inputs import load_eval, load_published, load_sources
    from flowvae.report.tables import table_context, write_table

    params = load_params(args.params, published=args.published)
    tables = params["tables"]
    if args.table not in tables:
        raise ValueError(f"{args.params}: no table {args.table!r} under 'tables' (have: {', '.join(tables)})")
    spec = tables[args.table]
    context = table_context(params, args.profile, spec.get("dataset"), args.table)
    published = load_published(args.published) if args.published else None
    sources = Path(args.published).with_name("sources.csv") if args.published else None
    if sources is not None and sources.is_file():  # readable citations and each source's set-up
        context["sources"] = load_sources(sources)
    write_table(args.table, spec, [load_eval(p) for p in args.evals], published, context, args.out_md, args.out_tex)


def cmd_report_summary(args: argparse.Namespace) -> None:
    from flowvae.report.summary import write_summary

    write_summary(args.out, args.files)


def cmd_status(args: argparse.Namespace) -> int:
    from flowvae.pipeline.status import follow

    params = load_params(args.params or Path(args.root) / "params.yaml")
    return follow(params, args.profile or params["profile"], args.table, args.root, args.watch)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowvae", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="download (mirror first), verify and prepare a data set for a profile")
    _params_arg(p)
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", default=None, help="folder for the split files (default: data.prepared_dir/<profile>/<dataset>)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train one (profile, dataset, model, seed); resumes after a kill")
    _run_args(p)
    p.add_argument("--on-change", choices=["refuse", "restart"], default="refuse",
                   help="when params.yaml changed a setting other than epochs/patience since the checkpoint: "
                        "refuse (default), or set the checkpoint aside and start over")
    p.add_argument("--max-minutes", type=_positive_float, default=None,
                   help="time box: checkpoint and exit 75 after this many minutes (default: resources.max_minutes)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="importance-sampled evaluation of a trained run into eval.json")
    _run_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("verify", help="retrain a run from its own settings record and compare its files byte for byte")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a finished run's folder, e.g. results/smoke/binarized_mnist/vae/seed0")
    p.add_argument("--out", default=None, help="also write the verdicts to this file")
    p.add_argument("--params", default="params.yaml", help="for the evaluation settings and the prepared data (default: params.yaml)")
    p.add_argument("--epochs", type=_int_at_least(1, "a positive number of epochs"), default=None,
                   help="check only the first EPOCHS epochs against the recorded train.jsonl")
    p.add_argument("--threads", type=_int_at_least(1, "a positive number of threads"), default=None)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("describe", help="print the architecture and parameter counts of a variant")
    p.add_argument("model")
    _params_arg(p)
    p.add_argument("--dataset", default="binarized_mnist")
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("figures", help="execute the figures notebook with papermill over a profile's runs")
    _params_arg(p)
    p.add_argument("--notebook", default="workflow/notebooks/figures.ipynb")
    p.add_argument("--out-dir", default="reports/figures")
    p.add_argument("--executed", default="reports/figures.ipynb", help="where the executed notebook is saved")
    p.add_argument("--summary", default="summary", help="draw the runs of this summary page (default: every run)")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("dvc-yaml", help="regenerate dvc.yaml from params.yaml")
    _params_arg(p)
    p.add_argument("--out", default="dvc.yaml")
    p.set_defaults(func=cmd_dvc_yaml)

    report = sub.add_parser("report", help="a results table, or the summary page").add_subparsers(dest="kind", required=True)
    p = report.add_parser("table", help="one table's .md and .tex from params.yaml, the published numbers and eval.json files")
    p.add_argument("--params", required=True, help="params.yaml")
    p.add_argument("--table", required=True, help="key under params['tables'], e.g. table1")
    p.add_argument("--profile", help="profile name (default: params['profile'])")
    p.add_argument("--published", help=f"the published numbers, {PUBLISHED_CSV} (omit for no published columns)")
    p.add_argument("--out-md", required=True)
    p.add_argument("--out-tex", required=True)
    p.add_argument("evals", nargs="*", help="eval.json files (runs of other tables are filtered out)")
    p.set_defaults(func=cmd_report_table)
    p = report.add_parser("summary", help="a Markdown page linking the given tables and figures")
    p.add_argument("--out", required=True, help="summary markdown file")
    p.add_argument("files", nargs="*", help="table .md/.tex, figure .png/.pdf/.svg, or folders of them")
    p.set_defaults(func=cmd_report_summary)

    p = sub.add_parser("status", help="each run's state, epoch and ETA, read from the run folders (--watch to follow)")
    p.add_argument("--params", default=None, help="the params file (default: params.yaml under --root)")
    p.add_argument("--profile", default=None, help="profile (default: the params file's `profile`)")
    p.add_argument("--table", action="append", default=None, metavar="NAME",
                   help="only the runs of this table (repeatable; default: every run of every table and figure)")
    p.add_argument("--root", default=".", help="the project folder holding results/ and logs/ (default: .)")
    p.add_argument("--watch", type=_positive_float, default=None, metavar="SECONDS",
                   help="reprint every SECONDS until every selected run is evaluated (Ctrl-C stops)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("validate", help="check params.yaml against the schema and every name it refers to")
    _params_arg(p)
    p.set_defaults(func=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        status = args.func(args)
    except TimeBoxReached as exc:
        print(f"flowvae {args.command}: stopped: {exc}", file=sys.stderr)
        return EXIT_TIME_BOX
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"flowvae {args.command}: error: {message}", file=sys.stderr)
        return 1
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
