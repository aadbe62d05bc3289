"""The `flowvae` command: every Snakemake rule and DVC stage calls one of its subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flowvae.config import load_params, prepared_dir, profile_settings, run_config, run_dir, source_dataset


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    p.add_argument("--profile", default=None, help="profile (default: params.yaml's `profile`)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True, help="variant name, e.g. vae, nf10, rnvp5, iaf_d2_w320")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="run folder (default: results/{profile}/{dataset}/{model}/seed{seed})")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (Snakemake passes its `threads`)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")


def _resolve(args: argparse.Namespace):
    params = load_params(args.params)
    profile = args.profile or params["profile"]
    cfg = run_config(params, profile, args.dataset, args.model, args.seed)
    out = Path(args.out) if args.out else run_dir(profile, args.dataset, args.model, args.seed)
    return params, cfg, out


def cmd_prepare(args: argparse.Namespace) -> None:
    from flowvae.data import DatasetSpec, prepare

    params = load_params(args.params)
    profile = args.profile or params["profile"]
    source = source_dataset(params, profile, args.dataset)
    spec = DatasetSpec.from_params(source, params["datasets"][source])
    data = params["data"]
    out = Path(args.out) if args.out else prepared_dir(params, profile, args.dataset)
    subset = profile_settings(params, profile).get("subset") or {}
    paths = prepare(spec, Path(data["raw_dir"]), out, data.get("mirror"), subset=subset)
    note = "" if source == args.dataset else f" (the {profile} profile's stand-in: {source})"
    for split, path in paths.items():
        print(f"{args.dataset}{note} {split}: {path}")


def cmd_train(args: argparse.Namespace) -> None:
    from flowvae.train import Trainer

    _, cfg, out = _resolve(args)
    summary = Trainer(cfg, out, threads=args.threads, device=args.device).run()
    print(json.dumps(summary))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from flowvae.evaluate import evaluate

    _, cfg, out = _resolve(args)
    metrics = evaluate(cfg, out, threads=args.threads, device=args.device)
    keys = ("neg_elbo", "neg_log_px", "neg_log_px_se", "gap", "active_units", "K")
    print(json.dumps({k: metrics[k] for k in keys}))


def cmd_describe(args: argparse.Namespace) -> None:
    from flowvae.train import make_model
    from flowvae.vae import describe

    params = load_params(args.params)
    profile = args.profile or params["profile"]
    cfg = run_config(params, profile, args.dataset, args.model, 0)
    print(f"{args.model} on {args.dataset} ({profile} profile)")
    print(describe(make_model(cfg)))


def cmd_validate(args: argparse.Namespace) -> None:
    from flowvae.schema import validate_params

    validate_params(load_params(args.params))
    print(f"{args.params}: valid")


def cmd_figures(args: argparse.Namespace) -> None:
    import papermill

    from flowvae import plan
    from flowvae.atomic import atomic_path

    params = load_params(args.params)
    profile = args.profile or params["profile"]
    runs = plan.all_runs(params)
    parameters = {
        "eval_files": [r.path(profile, "eval.json") for r in runs],
        "train_files": [r.path(profile, "train.jsonl") for r in runs],
        "sample_files": [r.path(profile, "samples.npz") for r in runs],
        "out_dir": args.out_dir,
        "profile": profile,
    }
    with atomic_path(args.executed, suffix=".ipynb") as tmp:
        papermill.execute_notebook(args.notebook, str(tmp), parameters=parameters, kernel_name="python3", progress_bar=False)


def cmd_dvc_yaml(args: argparse.Namespace) -> None:
    from flowvae.atomic import write_text
    from flowvae.dvcgen import dvc_yaml_text
    from flowvae.schema import validate_params

    params = load_params(args.params)
    validate_params(params)
    write_text(args.out, dvc_yaml_text(params))
    print(f"wrote {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowvae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="download (mirror first), verify and prepare a data set for a profile")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--profile", default=None, help="profile (default: params.yaml's `profile`)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", default=None, help="folder for the split files (default: data.prepared_dir/<profile>/<dataset>)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train one (profile, dataset, model, seed); resumes after a kill")
    _run_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="importance-sampled evaluation of a trained run into eval.json")
    _run_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("describe", help="print the architecture and parameter counts of a variant")
    p.add_argument("model")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--profile", default=None)
    p.add_argument("--dataset", default="binarized_mnist")
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("figures", help="execute the figures notebook with papermill over a profile's runs")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--profile", default=None)
    p.add_argument("--notebook", default="workflow/notebooks/figures.ipynb")
    p.add_argument("--out-dir", default="reports/figures")
    p.add_argument("--executed", default="reports/figures.ipynb", help="where the executed notebook is saved")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("dvc-yaml", help="regenerate dvc.yaml from params.yaml")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--out", default="dvc.yaml")
    p.set_defaults(func=cmd_dvc_yaml)

    sub.add_parser("report", help="tables and the summary page: `flowvae report table|summary --help`")

    p = sub.add_parser("validate", help="check params.yaml against the schema")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:
        from flowvae import report

        return report.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"flowvae {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
