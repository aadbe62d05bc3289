"""`make gpu-check` (python -m flowvae.gpucheck): what a CUDA machine does with this project, in one command.

On a CUDA machine, in under 8 minutes (the defaults), it

1. prints the device (name, memory, capability, torch and CUDA versions);
2. benchmarks the trainer's own step and evaluate's importance sampling on the GPU (flowvae.bench's rows, run
   in-process): eager, bf16 autocast and torch.compile training images/s, IS samples/s and peak MiB, for
   one or two variants of each network: the quick profile's MLP (vae, iaf_d2_w320), the paper profile's
   ResNet (iaf_d2_w320), the sylvester profile's gated convolutions (vae) and the paper profile's r4
   ladder (resvae_r4_iaf);
3. trains table 1's vae and iaf_d2_w320 of the paper profile (dynamically binarized MNIST, the paper
   settings: ResNet, Adamax 2e-3, batch 100, KL warm-up, EMA) for a fixed time box each (--train-seconds,
   default 60) and evaluates the live weights with K = 128 on the test set (-log p(x), -ELBO, nats);
4. checks that the GPU's first training steps match the CPU's: the paper ResNet VAE from the same initial
   weights on the same batches with the same noise (drawn on the CPU), TF32 off, 3 Adamax steps: the
   losses and the parameters must agree to float tolerance (relative 1e-4, absolute 1e-4);
5. writes reports/gpu/gpucheck.json (everything), reports/gpu/bench.json (the bench rows) and
   reports/gpu/gpucheck.md (one page).

On a machine without CUDA it says so in one line and exits 0. `--device cpu` runs every step on the CPU
(the step check then compares the CPU with itself), which is how the tests check it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from flowvae.files.atomic import write_json, write_text

OUT = Path("reports/gpu")
# (variant, network, image shape name) benchmarked: one or two per network, so that compiling stays in budget
BENCH_ROWS = (("vae", "mlp", "mnist"), ("iaf_d2_w320", "mlp", "mnist"), ("iaf_d2_w320", "resnet", "mnist"),
              ("vae", "gatedconv", "mnist"), ("resvae_r4_iaf", "ladder", "cifar"))
TABLE1_MODELS = ("vae", "iaf_d2_w320")
STEP_TOL = 1e-4


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(), "host": platform.node()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(name=p.name, memory_mib=p.total_memory // 2**20, capability=f"{p.major}.{p.minor}",
                    cuda=torch.version.cuda, device_count=torch.cuda.device_count())
    else:
        info.update(name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return info


def bench(device: torch.device, nets: dict, rows=BENCH_ROWS, compiled: bool = True) -> list[dict]:
    """flowvae.bench's rows on `device`: eager, bf16 and (unless compiled=False) compiled training, IS samples/s."""
    from flowvae import bench as b

    shapes = {"mnist": b.MNIST, "cifar": b.CIFAR}
    modes = ("bf16", "compiled") if compiled else ("bf16",)
    out = []
    for name, net_name, shape in rows:
        net, max_batch = nets[net_name]
        row = b.bench_row(name, net_name, net, shapes[shape], device, fast=True, compile_decoder=compiled,
                          train_modes=modes, max_batch=max_batch)
        print(b._format([row], header=not out), flush=True)
        out.append(row)
    return out


def train_and_evaluate(params: dict, profile: str, dataset: str, model: str, device: torch.device, seconds: float,
                       work: Path, K: int = 128, test_images: int | None = None) -> dict:
    """Train one run for a time box with its profile's settings, then -log p(x) with K samples on the test set."""
    from flowvae.data.batches import batches_for
    from flowvae.files.errors import TimeBoxReached
    from flowvae.files.provenance import source_state
    from flowvae.runs.evaluate import importance_sample
    from flowvae.runs.train import Trainer
    from flowvae.spec.run import RunSpec

    spec = RunSpec.resolve(params, profile, dataset, model, 0)
    trainer = Trainer(spec, work / model, device=str(device), max_minutes=seconds / 60, progress=False,
                      source=source_state(), compile_step=False)
    started = time.perf_counter()
    try:
        trainer.run()
        stopped = "finished"
    except TimeBoxReached:
        stopped = "time box"
    train_seconds = time.perf_counter() - started
    s = trainer.state
    test = batches_for(spec, "test", spec.eval.batch_size, False, spec.seed + 30_000, device)
    if test_images:
        test.x = test.x[:test_images]
    model_ = trainer.model.eval()
    started = time.perf_counter()
    with torch.no_grad():
        torch.manual_seed(0)
        r = importance_sample(model_, test, K, device, spec.eval.max_batch or 20_000)
    eval_seconds = time.perf_counter() - started
    return {
        "model": model, "profile": profile, "dataset": dataset, "train": spec.train.record(), "stopped_by": stopped,
        "train_seconds": train_seconds, "epochs": s.epoch, "steps": s.global_step,
        "images_per_s": s.global_step * spec.train.batch_size / max(train_seconds, 1e-9),
        "val_neg_elbo": [h["val_neg_elbo"] for h in s.history], "K": K, "test_images": int(test.n_images),
        "weights": "live (not the EMA)", "neg_log_px": float(-r["log_px"].mean()), "neg_elbo": float(-r["elbo"].mean()),
        "eval_seconds": eval_seconds, "is_samples_per_s": test.n_images * K / max(eval_seconds, 1e-9),
    }


class _DrawsOn(TorchFunctionMode):
    """torch.randn/rand(_like) drawn on `host` from its generator, then moved: the same noise on every device."""

    def __init__(self, host: torch.device) -> None:
        super().__init__()
        self.host = host

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in (torch.randn, torch.rand):
            device = kwargs.pop("device", None)
            return func(*args, **{**kwargs, "device": self.host}).to(device or "cpu")
        if func in (torch.randn_like, torch.rand_like):
            like = args[0]
            return func(like.detach().to(self.host), **{k: v for k, v in kwargs.items() if k != "device"}).to(like.device)
        return func(*args, **kwargs)


def step_match(net: dict, device: torch.device, reference: torch.device, steps: int = 3, batch: int = 32) -> dict:
    """The first `steps` Adamax steps of a VAE on `device` against `reference` (the CPU): same initial weights,
    same batches, same noise; the losses and parameters after each must agree to STEP_TOL."""
    from flowvae import bench as b
    from flowvae.models.build import build_variant
    from flowvae.runs.train import make_loss_fn

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    init = build_variant("vae", net, b.MNIST, "bernoulli")
    x = torch.from_numpy(b._images(b.MNIST, batch * steps, True)).float()
    init.initialize(x[:batch])
    runs = []
    for where in (reference, device):
        model = build_variant("vae", net, b.MNIST, "bernoulli")
        model.load_state_dict(init.state_dict())
        model.to(where).train()
        opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
        step = make_loss_fn(model, model.variant)
        torch.manual_seed(1)
        losses = []
        for i in range(steps):
            with _DrawsOn(torch.device("cpu")):
                loss, _ = step(x[i * batch:(i + 1) * batch].to(where), torch.ones((), device=where))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        runs.append((losses, {k: v.detach().double().cpu() for k, v in model.state_dict().items()}))
    (ref_losses, ref_w), (losses, w) = runs
    loss_delta = max(abs(a - c) / max(abs(a), 1.0) for a, c in zip(ref_losses, losses))
    param_delta = max((ref_w[k] - w[k]).abs().max().item() for k in ref_w)
    return {"device": str(device), "reference": str(reference), "steps": steps, "batch": batch,
            "losses": losses, "reference_losses": ref_losses, "max_rel_loss_delta": loss_delta,
            "max_abs_param_delta": param_delta, "tolerance": STEP_TOL,
            "match": bool(loss_delta <= STEP_TOL and param_delta <= STEP_TOL)}


def _prepared(params: dict, profile: str, dataset: str) -> None:
    """Prepare the data set for the profile if its split files are missing (mirror first, then the official URL)."""
    from flowvae.data.prepare import prepare
    from flowvae.spec.datasets import DatasetSpec
    from flowvae.spec.layout import prepared_dir
    from flowvae.spec.params import profile_settings, source_dataset

    out = prepared_dir(params, profile, dataset)
    if all((out / f"{s}.npz").exists() for s in ("train", "valid", "test")):
        return
    source = source_dataset(params, profile, dataset)
    data = params["data"]
    prepare(DatasetSpec.from_params(source, params["datasets"][source]), Path(data["raw_dir"]), out, data.get("mirror"),
            subset=profile_settings(params, profile)["subset"] or {})


def markdown(report: dict) -> str:
    from flowvae import bench as b

    d = report["device"]
    lines = [f"# GPU check: {d.get('name')} ({d['device']})", "",
             f"`{report['command']}` on {report['date']}, {report['seconds']:.0f} s in all; torch {d['torch']}"
             + (f", CUDA {d['cuda']}, {d['memory_mib']:,} MiB, capability {d['capability']}" if "cuda" in d else "") + ".", "",
             "## Throughput (flowvae.bench rows)", "", b._format(report["bench"]) if report["bench"] else "(not run)", "",
             "## Table 1 of the paper profile, trained for a time box", "",
             "| model | stopped by | train s | epochs | steps | train img/s | -ELBO (test) | -log p(x) (test, K) | IS samples/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["table1"]:
        if "error" in r:
            lines.append(f"| {r['model']} | error: {r['error']} |  |  |  |  |  |  |  |")
            continue
        lines.append(f"| {r['model']} | {r['stopped_by']} | {r['train_seconds']:.0f} | {r['epochs']} | {r['steps']} | "
                     f"{r['images_per_s']:,.0f} | {r['neg_elbo']:.2f} | {r['neg_log_px']:.2f} (K = {r['K']}, "
                     f"{r['test_images']} images) | {r['is_samples_per_s']:,.0f} |")
    m = report["step_match"]
    lines += ["", "Live weights after the time box (not the EMA), so far from the converged numbers of the table.", "",
              "## First training steps: GPU against CPU", "",
              f"{m['steps']} Adamax steps of the paper ResNet VAE, batch {m['batch']}, same weights, batches and noise, TF32 off: "
              f"largest relative loss difference {m['max_rel_loss_delta']:.2e}, largest parameter difference "
              f"{m['max_abs_param_delta']:.2e} (tolerance {m['tolerance']:g}): **{'match' if m['match'] else 'MISMATCH'}**.", ""]
    return "\n".join(lines)


def run_check(device: torch.device, params_path: str = "params.yaml", out: Path = OUT, train_seconds: float = 60.0,
              test_images: int | None = None, nets: dict | None = None, rows=BENCH_ROWS, compiled: bool = True,
              profile: str = "paper", dataset: str | None = None, work: Path | None = None,
              command: str = "python -m flowvae.gpucheck") -> dict:
    """Every step of the check on `device` (the step check against the CPU); the report, also written under `out`."""
    from flowvae import bench as b
    from flowvae.spec.params import load_params

    started = time.perf_counter()
    params = load_params(params_path)
    info = device_info(device)
    print(f"gpu-check: {info.get('name')} ({device}), torch {info['torch']}" + (f", CUDA {info['cuda']}" if "cuda" in info else ""),
          flush=True)
    nets = nets or b.networks(params_path)
    rows_out = bench(device, nets, rows, compiled)
    dataset = dataset or params["tables"]["table1"]["dataset"]
    table1 = []
    with tempfile.TemporaryDirectory(prefix="flowvae-gpucheck-") as tmp:
        for model in TABLE1_MODELS:
            try:
                _prepared(params, profile, dataset)
                table1.append(train_and_evaluate(params, profile, dataset, model, device, train_seconds,
                                                 Path(work or tmp), test_images=test_images))
            except (OSError, ValueError, RuntimeError) as exc:  # e.g. no data here: said in the report, the rest goes on
                table1.append({"model": model, "error": str(exc).splitlines()[0]})
            print(f"gpu-check: table 1 {model}: {json.dumps(table1[-1])[:300]}", flush=True)
    net = params["profiles"][profile]["network"]
    match = step_match(net, device, torch.device("cpu"))
    print(f"gpu-check: first steps against the CPU: {'match' if match['match'] else 'MISMATCH'} "
          f"(loss {match['max_rel_loss_delta']:.1e}, parameters {match['max_abs_param_delta']:.1e})", flush=True)
    report = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": info, "bench": rows_out, "table1": table1,
              "step_match": match}
    report["seconds"] = time.perf_counter() - started
    out = Path(out)
    write_json(out / "bench.json", {**info, "rows": rows_out})
    write_json(out / "gpucheck.json", report)
    write_text(out / "gpucheck.md", markdown(report))
    print(f"gpu-check: wrote {out}/gpucheck.md, gpucheck.json, bench.json ({report['seconds']:.0f} s)", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flowvae.gpucheck", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cuda (default, when present) or cpu (every step on the CPU)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--train-seconds", type=float, default=60.0, help="time box of each table 1 training (default 60)")
    ap.add_argument("--test-images", type=int, default=None, help="evaluate on the first N test images (default: all)")
    args = ap.parse_args(argv)
    if args.device is None and not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device on this machine (torch {torch.__version__}); nothing to check", flush=True)
        return 0
    from flowvae.runs.device import pick_device

    device = pick_device(args.device or "cuda")
    report = run_check(device, args.params, Path(args.out), args.train_seconds, args.test_images,
                       command=" ".join(["python -m flowvae.gpucheck", *(sys.argv[1:] if argv is None else argv)]))
    return 0 if report["step_match"]["match"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
