"""The `flowvae` command: every Snakemake rule and DVC stage calls one of its subcommands.

Every subcommand reads params.yaml (or --params) through the same validation as the Snakefile.
Exit status: 0 done; 1 an error, named on one line; 2 bad command-line options; 75 (train) a time
box or SIGTERM/SIGUSR1 stopped it after a checkpoint: rerun the same command to continue.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import sys
from pathlib import Path

from flowvae.files.errors import EXIT_TIME_BOX, TimeBoxReached
from flowvae.spec.layout import BDMC_FILE, FIGURE_INPUTS, PUBLISHED_CSV, RunFolder, prepared_dir
from flowvae.spec.params import active_profile_source, load_params, profile_settings, source_dataset

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


def _refuse_stale_dvc_yaml(args: argparse.Namespace) -> None:
    """Under `dvc repro` (DVC sets DVC_STAGE), a dvc.yaml that the params file no longer generates runs no stage."""
    if "DVC_STAGE" not in os.environ or not getattr(args, "params", None):
        return
    from flowvae.pipeline.dvcgen import stale_dvc_yaml

    stale = stale_dvc_yaml(_params(args), Path(os.environ.get("DVC_ROOT", ".")) / "dvc.yaml")
    if stale:
        raise ValueError(f"{stale}; stage {os.environ['DVC_STAGE']} was not run")


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
                   help="CPU threads (default: the profile's resources.threads, which Snakemake passes too)")
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


def _withdrawn_if_it_fails(command):
    """A command on a run folder (args.run_dir), called with the folder's RunSpec, whose failure removes the tables and
    pages that show the run, as _withdrawn_on_failure does for `flowvae evaluate`: Snakemake reruns them, but a reader
    would see the old ones."""

    @functools.wraps(command)
    def run(args: argparse.Namespace):
        from flowvae.runs.ais import spec_of_folder

        spec = spec_of_folder(args.params, args.run_dir)
        args.threads = _threads(args, spec)
        with _withdrawn_on_failure(load_params(args.params), spec, RunFolder(Path(args.run_dir))):
            return command(args, spec)

    return run


def cmd_train(args: argparse.Namespace) -> int | None:
    from flowvae.runs import distributed
    from flowvae.spec.families import load

    params, spec, folder = _resolve(args)
    Trainer = load(spec.family.trainer)
    source = _source(args)
    resources = spec.resources
    max_minutes = args.max_minutes if args.max_minutes is not None else resources.max_minutes
    ctx, device, threads = distributed.SINGLE, args.device, _threads(args, spec)
    if distributed.is_worker():  # one of several processes (started below, or by torchrun)
        from flowvae.runs.device import pick_device

        ctx, worker_device = distributed.init_worker(pick_device(args.device))
        device = worker_device.type
        threads = max(1, threads // ctx.local_world)
    else:
        plan = distributed.plan_processes(resources.gpus, resources.nproc, args.nproc, args.device)
        if plan.world > 1:  # this process launches them, with torchrun's launcher, and waits
            distributed.check_batch(spec.train.batch_size, plan.world)
            with _withdrawn_on_failure(params, spec, folder):
                status = distributed.launch(_worker_args(args, spec, folder, plan), plan, stopped=folder.stopped)
                if status not in (0, EXIT_TIME_BOX):
                    raise RuntimeError(f"{folder.root}: the training processes failed (exit {status})")
            return status
    try:
        withdraw = _withdrawn_on_failure(params, spec, folder) if ctx.main else contextlib.nullcontext()
        with withdraw:
            trainer = Trainer(
                spec, folder.root, threads=threads, device=device, on_change=args.on_change,
                max_minutes=max_minutes, compile_step=resources.compile_train, source=source, ctx=ctx,
            )
            result = trainer.run()
            if ctx.main:
                print(json.dumps(result))
    finally:
        distributed.close(ctx)
    return None


def _threads(args: argparse.Namespace, spec) -> int:
    """--threads, else the profile's resources.threads, the count Snakemake passes: a command run by hand (as a table
    lists it) then computes with the same threads as the build, which float sums depend on."""
    return args.threads or spec.resources.threads


def _worker_args(args: argparse.Namespace, spec, folder: RunFolder, plan) -> list[str]:
    """The `python` arguments of each training process: this train command, resolved, as a worker."""
    argv = ["-m", "flowvae.cli", "train", "--params", args.params, "--profile", spec.profile, "--dataset", args.dataset,
            "--model", args.model, "--seed", str(args.seed), "--out", str(folder.root), "--on-change", args.on_change,
            "--device", plan.device, "--nproc", str(plan.world)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.max_minutes is not None:
        argv += ["--max-minutes", repr(args.max_minutes)]
    if args.allow_dirty:
        argv.append("--allow-dirty")
    return argv


def cmd_evaluate(args: argparse.Namespace) -> None:
    from flowvae.spec.families import load

    params, spec, folder = _resolve(args)
    evaluate = load(spec.family.evaluator)
    source = _source(args)
    if args.estimator == "ais" and spec.family.evaluator != "flowvae.runs.evaluate:evaluate":
        raise ValueError(f"{spec.variant.name} has its own evaluation (`flowvae evaluate` without --estimator), which for "
                         "the GAN already is AIS under a Gaussian observation model")
    if args.estimator == "ais":  # ais.json beside eval.json
        from flowvae.runs.ais import evaluate_ais

        with _withdrawn_on_failure(params, spec, folder):
            result = evaluate_ais(spec, folder.root, threads=_threads(args, spec), device=args.device, source=source)
        keys = ("neg_log_px", "neg_log_px_se", "n_images", "accept_rate")
        print(json.dumps({k: result[k] for k in keys}))
        return
    with _withdrawn_on_failure(params, spec, folder):
        metrics = evaluate(spec, folder.root, threads=_threads(args, spec), device=args.device, source=source)
    keys = ("neg_elbo", "neg_log_px", "neg_log_px_se", "gap", "active_units", "K", "sigma")
    print(json.dumps({k: metrics[k] for k in keys if k in metrics}))


def _ais_overrides(args: argparse.Namespace, spec):
    """The run's ais settings with the command line's overrides."""
    import dataclasses

    from flowvae.spec.settings import AISSettings

    changes = {k: getattr(args, k) for k in ("T", "L", "S", "schedule", "initial") if getattr(args, k) is not None}
    return AISSettings.from_params({**spec.eval.ais.record(), **changes}) if changes else spec.eval.ais


def _run_folder_command(sub, name: str, func, help: str, run_help: str, params_help: str) -> None:
    """A subcommand on one run folder: RUN_DIR, --params, --threads, --device and --allow-dirty."""
    p = sub.add_parser(name, help=help)
    p.add_argument("run_dir", metavar="RUN_DIR", help=run_help)
    p.add_argument("--params", default="params.yaml", help=params_help)
    p.add_argument("--threads", type=_int_at_least(1, "a positive number of threads"), default=None)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--allow-dirty", action="store_true", help="run although the sources have uncommitted changes (recorded)")
    p.set_defaults(func=func)


def _ais_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--T", type=_int_at_least(1, "a positive number of temperatures"), default=None, help="default: ais.T")
    p.add_argument("--L", type=_int_at_least(1, "a positive number of leapfrog steps"), default=None, help="default: ais.L")
    p.add_argument("--S", type=_int_at_least(1, "a positive number of chains"), default=None, help="default: ais.S")
    p.add_argument("--schedule", choices=["sigmoid", "linear"], default=None, help="default: ais.schedule")
    p.add_argument("--initial", choices=["auto", "encoder", "prior"], default=None, help="default: ais.initial")
    p.add_argument("--threads", type=_int_at_least(1, "a positive number of threads"), default=None)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")


@_withdrawn_if_it_fails
def cmd_bdmc(args: argparse.Namespace, spec) -> None:
    import torch

    from flowvae.files import provenance
    from flowvae.files.atomic import write_json, write_npz
    from flowvae.runs.ais import ais_settings_record, bdmc, load_trained, resolve_initial
    from flowvae.runs.device import pick_device

    source = _source(args)
    s = _ais_overrides(args, spec)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_trained(spec, args.run_dir, pick_device(args.device))
    r = bdmc(model, args.images, s.T, s.L, s.S, s.schedule, s.sigmoid_radius, s.initial, s.step_size, s.target_accept,
             s.batch_size, seed=args.seed)
    out = Path(args.out) if args.out else Path(args.run_dir) / BDMC_FILE
    result = {"profile": spec.profile, "dataset": spec.dataset_name, "model": spec.variant.name, "seed": spec.seed,
              **provenance.record(source), "n_images": args.images, "simulation_seed": args.seed,
              **{k: v for k, v in r.items() if k not in ("lower", "upper", "initial")},
              "settings": ais_settings_record(s, resolve_initial(model, s.initial))}
    write_npz(out.with_suffix(".npz"), {"lower": r["lower"], "upper": r["upper"]}, compress=True)
    write_json(out, result)
    print(json.dumps({k: result[k] for k in ("mean_lower", "mean_upper", "gap", "gap_se")}))


@_withdrawn_if_it_fails
def cmd_gaps(args: argparse.Namespace, spec) -> None:
    from flowvae.runs.gaps import GapSettings, inference_gaps

    block = dict(load_params(args.params)["profiles"][spec.profile]["gaps"])  # the profile's settings; the options win
    images, batch_size = block.pop("images", 100), block.pop("batch_size", 25)
    images = args.images or images
    chosen = {k: getattr(args, k) for k in ("max_steps", "lr", "samples", "eval_samples", "check_every", "patience", "tol")}
    settings = GapSettings(**{**block, **{k: v for k, v in chosen.items() if v is not None}})
    r = inference_gaps(spec, args.run_dir, images, settings, _ais_overrides(args, spec), batch_size=batch_size,
                       device=args.device, threads=args.threads, out=args.out, source=_source(args))
    keys = ("elbo_amortized", "elbo_optimised", "ais_log_px", "amortization_gap", "approximation_gap", "images_not_converged")
    print(json.dumps({k: r[k] for k in keys}))


def cmd_classifier(args: argparse.Namespace) -> None:
    from flowvae.runs.sample_quality import train_feature_classifier

    from flowvae.spec.settings import Resources

    params = _params(args)
    profile = args.profile or params["profile"]
    threads = args.threads or Resources.from_params(profile_settings(params, profile).get("resources")).threads
    record = train_feature_classifier(params, profile, args.dataset, threads=threads,
                                      device=args.device, source=_source(args))
    print(json.dumps({k: record[k] for k in ("dataset", "epochs", "test_accuracy")}))


@_withdrawn_if_it_fails
def cmd_sample_quality(args: argparse.Namespace, spec) -> None:
    from flowvae.runs.sample_quality import evaluate_sample_quality, sample_quality_settings

    settings = sample_quality_settings(load_params(args.params), spec.profile)
    r = evaluate_sample_quality(spec, args.run_dir, settings, threads=args.threads, device=args.device, source=_source(args))
    print(json.dumps({k: r[k] for k in ("model", "fcd", "fcd_se", "samples", "sets")}))


@_withdrawn_if_it_fails
def cmd_gaussian_obs(args: argparse.Namespace, spec) -> None:
    from flowvae.runs.gaussian_observation import evaluate_decoder

    r = evaluate_decoder(spec, args.run_dir, threads=args.threads, device=args.device, source=_source(args))
    print(json.dumps({k: r[k] for k in ("model", "neg_log_px", "neg_log_px_se", "sigma", "n_images")}))


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
    print(f"{args.model} on {args.dataset} ({profile} profile, from {'--profile' if args.profile else active_profile_source(args.params)})")
    print(describe(build_model(spec)))


def cmd_validate(args: argparse.Namespace) -> None:
    from flowvae.pipeline.dvcgen import stale_dvc_yaml

    stale = stale_dvc_yaml(_params(args), Path(args.params).parent / "dvc.yaml")
    if stale:
        raise ValueError(stale)
    print(f"{args.params}: valid" + (" (dvc.yaml up to date)" if (Path(args.params).parent / "dvc.yaml").is_file() else ""))


def cmd_figures(args: argparse.Namespace) -> None:
    import papermill

    from flowvae.pipeline import plan
    from flowvae.files.atomic import atomic_path

    params = _params(args)
    profile = args.profile or params["profile"]
    params = plan.for_profile(params, profile)  # the rows this profile builds
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
        "tables": plan.figure_tables(params, args.summary),  # curves per table: its rows, in its order
        "formats": list(params["profiles"][profile].get("figure_formats") or ["png", "pdf"]),
    }
    with atomic_path(args.executed, suffix=".ipynb") as tmp:
        papermill.execute_notebook(args.notebook, str(tmp), parameters=parameters, kernel_name="python3", progress_bar=False)


def cmd_dvc_yaml(args: argparse.Namespace) -> None:
    from flowvae.files.atomic import write_text
    from flowvae.pipeline.dvcgen import dvc_yaml_text

    write_text(args.out, dvc_yaml_text(_params(args)))
    print(f"wrote {args.out}")


def cmd_report_table(args: argparse.Namespace) -> None:
    from flowvae.pipeline import plan
    from flowvae.report.inputs import load_eval, load_published, load_sources
    from flowvae.report.tables import table_context, write_table

    params = load_params(args.params, published=args.published)
    tables = params["tables"]
    if args.table not in tables:
        raise ValueError(f"{args.params}: no table {args.table!r} under 'tables' (have: {', '.join(tables)})")
    params = plan.for_profile(params, args.profile or params["profile"])  # the rows and seeds this profile builds
    spec = params["tables"][args.table]
    context = table_context(params, args.profile, spec.get("dataset"), args.table)
    published = load_published(args.published) if args.published else None
    sources = Path(args.published).with_name("sources.csv") if args.published else None
    if sources is not None and sources.is_file():  # readable citations and each source's set-up
        context["sources"] = load_sources(sources)
    shown = {(r.model, r.seed) for r in plan.table_runs(params, args.table)}  # DVC passes every row's evals
    evals = [ev for ev in map(load_eval, args.evals) if (ev.get("model"), ev.get("seed")) in shown]
    write_table(args.table, spec, evals, published, context, args.out_md, args.out_tex, args.out_html)


def cmd_report_summary(args: argparse.Namespace) -> None:
    from flowvae.report.summary import write_summary

    write_summary(args.out, args.files)


def cmd_status(args: argparse.Namespace) -> int:
    from flowvae.pipeline.plan import for_profile
    from flowvae.pipeline.status import choose_profile, follow

    params = load_params(args.params or Path(args.root) / "params.yaml")
    profile, why = choose_profile(params, args.profile, args.root)
    return follow(for_profile(params, profile), profile, args.table, args.root, args.watch, why)


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
    p.add_argument("--nproc", type=_int_at_least(1, "a positive number of processes"), default=None,
                   help="train in this many CPU processes (data-parallel, gloo), each on its shard of every batch "
                        "(default: resources.gpus processes on a CUDA machine when above 1, else resources.nproc)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="importance-sampled evaluation of a trained run into eval.json")
    _run_args(p)
    p.add_argument("--estimator", choices=["is", "ais"], default="is",
                   help="is: importance sampling into eval.json (default); ais: annealed importance sampling with the "
                        "profile's ais settings into ais.json and ais_per_image.npz")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("bdmc", help="bidirectional Monte Carlo: forward and reverse AIS on images simulated from a trained run")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a trained run's folder, e.g. results/quick/binarized_mnist/vae/seed0")
    p.add_argument("--params", default="params.yaml", help="for ais and the data location (default: params.yaml)")
    p.add_argument("--images", type=_int_at_least(1, "a positive number of images"), default=100, help="simulated images (default: 100)")
    p.add_argument("--seed", type=_int_at_least(0, "a non-negative integer"), default=0, help="simulation and chain seed")
    p.add_argument("--out", default=None, help="result JSON (default: RUN_DIR/bdmc.json; per-image bounds in the .npz beside it)")
    _ais_args(p)
    p.add_argument("--allow-dirty", action="store_true", help="run although the sources have uncommitted changes (recorded)")
    p.set_defaults(func=cmd_bdmc)

    p = sub.add_parser("gaps", help="inference gaps: per-image L[q], optimised L[q*] and AIS log p(x) on test images of a trained run")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a trained run's folder")
    p.add_argument("--params", default="params.yaml", help="for ais and the data location (default: params.yaml)")
    p.add_argument("--images", type=_int_at_least(1, "a positive number of images"), default=None,
                   help="test images: a seeded random subset (default: the profile's gaps.images, else 100)")
    p.add_argument("--out", default=None, help="result JSON (default: RUN_DIR/gaps.json; per-image values in the .npz beside it)")
    p.add_argument("--max-steps", type=_int_at_least(1, "a positive number of steps"), default=None)
    p.add_argument("--lr", type=_positive_float, default=None, help="Adam's learning rate (default: 3e-3)")
    p.add_argument("--samples", type=_int_at_least(1, "a positive number of samples"), default=None, help="samples per Adam step")
    p.add_argument("--eval-samples", type=_int_at_least(1, "a positive number of samples"), default=None,
                   help="fixed noise draws per image for L[q], the convergence checks and L[q*] (default: 256)")
    p.add_argument("--check-every", type=_int_at_least(1, "a positive number of steps"), default=None)
    p.add_argument("--patience", type=_int_at_least(1, "a positive number of checks"), default=None)
    p.add_argument("--tol", type=float, default=None, help="nats: a smaller rise over `patience` checks is convergence")
    _ais_args(p)
    p.add_argument("--allow-dirty", action="store_true", help="run although the sources have uncommitted changes (recorded)")
    p.set_defaults(func=cmd_gaps)

    p = sub.add_parser("classifier", help="train a data set's feature classifier for the Fréchet classifier distance")
    _params_arg(p)
    p.add_argument("--dataset", required=True)
    p.add_argument("--threads", type=_int_at_least(1, "a positive number of threads"), default=None)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--allow-dirty", action="store_true", help="run although the sources have uncommitted changes (recorded)")
    p.set_defaults(func=cmd_classifier)

    _run_folder_command(sub, "sample-quality", cmd_sample_quality,
                        "the Fréchet classifier distance of a trained run's samples to the test images",
                        "a trained run's folder", "for the sample_quality settings and the data location")
    _run_folder_command(sub, "gaussian-obs", cmd_gaussian_obs,
                        "a trained VAE decoder's log p under the GAN's Gaussian observation model, by AIS",
                        "a trained VAE run's folder on an 8-bit data set", "for the ais settings and the data location")

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
    p.add_argument("--profile", help="profile name (default: the active profile, in profile.yaml)")
    p.add_argument("--published", help=f"the published numbers, {PUBLISHED_CSV} (omit for no published columns)")
    p.add_argument("--out-md", required=True)
    p.add_argument("--out-tex", required=True)
    p.add_argument("--out-html", default=None, help="also the table as an HTML fragment (what `snakemake --report` shows)")
    p.add_argument("evals", nargs="*", help="eval.json files (runs of other tables are filtered out)")
    p.set_defaults(func=cmd_report_table)
    p = report.add_parser("summary", help="a Markdown page linking the given tables and figures")
    p.add_argument("--out", required=True, help="summary markdown file")
    p.add_argument("files", nargs="*", help="table .md/.tex, figure .png/.pdf/.svg, or folders of them")
    p.set_defaults(func=cmd_report_summary)

    p = sub.add_parser("status", help="each run's state, epoch and ETA, read from the run folders (--watch to follow)")
    p.add_argument("--params", default=None, help="the params file (default: params.yaml under --root)")
    p.add_argument("--profile", default=None,
                   help="profile (default: the one whose run folders were written last, else the params file's `profile`)")
    p.add_argument("--table", action="append", default=None, metavar="NAME",
                   help="only the runs of this table (repeatable; default: every run of every table and figure)")
    p.add_argument("--root", default=".", help="the project folder holding results/ and logs/ (default: .)")
    p.add_argument("--watch", type=_positive_float, default=None, metavar="SECONDS",
                   help="reprint every SECONDS until every selected run is evaluated, or none moved for 3 polls (Ctrl-C stops)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("validate", help="check params.yaml against the schema and every name it refers to")
    _params_arg(p)
    p.set_defaults(func=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        _refuse_stale_dvc_yaml(args)
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
