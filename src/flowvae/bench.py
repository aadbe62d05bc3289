"""Throughput benchmark: training images/s and importance samples/s per variant and network.

    python -m flowvae.bench                      # the standard table (MLP and ResNet; ladder r4, r20)
    python -m flowvae.bench --fast               # fewer repeats, no torch.compile
    python -m flowvae.bench --bf16-check RUN_DIR # |log p(x) change| with a bfloat16 decoder on a trained run

Prints a table and writes JSON (default reports/bench.json). Numbers depend on the machine and
on whatever else runs on it: run it on an idle machine and report the command with the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from flowvae.atomic import write_json
from flowvae.build import build_model, count_parameters
from flowvae.data import Batches
from flowvae.evaluate import importance_sample
from flowvae.inference import BFloat16Decoder, has_convolutions, prepare_for_inference
from flowvae.model import LatentVariableModel
from flowvae.objectives import objective

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)
NETWORKS = {
    "mlp": {"kind": "mlp", "hidden": 450, "layers": 2, "z_dim": 32, "context_dim": 64},
    "resnet": {"kind": "resnet", "channels": [16, 32, 32], "dense": 450, "z_dim": 32, "context_dim": 450},
}
LADDER = {"channels": 64, "z_channels": 32}
VARIANTS = ("vae", "nf10", "rnvp5", "iaf_d2_w320")


def _images(shape: tuple[int, int, int], n: int, binary: bool) -> np.ndarray:
    rng = np.random.default_rng(0)
    if binary:
        return rng.integers(0, 2, size=(n, *shape), dtype=np.uint8)
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _binarize(shape: tuple[int, int, int]) -> str:
    return "fixed" if shape == MNIST else "none"


def train_rate(model: LatentVariableModel, shape, batch: int, steps: int, device) -> float:
    """Training images/s over `steps` Adamax steps after two warm-up steps."""
    x_all = _images(shape, batch * (steps + 2), shape == MNIST)
    batches = Batches(x_all, batch, _binarize(shape), shuffle=False)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    model.train()
    start = None
    for i, x in enumerate(batches.epoch(0)):
        if i == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        loss = objective(model(x.to(device)), "elbo").loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def is_rate(model: LatentVariableModel, shape, n_images: int, K: int, device, max_batch: int) -> float:
    """Importance samples/s of evaluate's own code path (after one warm-up batch)."""
    x = _images(shape, n_images, shape == MNIST)
    batches = Batches(x, min(100, n_images), _binarize(shape), shuffle=False)
    importance_sample(model, Batches(x[: batches.batch_size], batches.batch_size, _binarize(shape), shuffle=False), K, device, max_batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    importance_sample(model, batches, K, device, max_batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n_images * K / (time.perf_counter() - start)


@torch.no_grad()
def sample_ms(model: LatentVariableModel, n: int, device) -> float:
    """Milliseconds per image drawn from the prior and decoded (after one warm-up call of the same size)."""
    model.sample(n)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.sample(n)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / n


def _likelihood(shape) -> str:
    return "bernoulli" if shape == MNIST else "discretized_logistic"


def bench_row(name: str, net_name: str, net: dict, shape, device, fast: bool, compile_decoder: bool) -> dict:
    """One row of the table."""
    torch.manual_seed(0)
    model = build_model(name, net, shape, _likelihood(shape)).to(device)
    model.initialize(torch.from_numpy(_images(shape, 16, shape == MNIST)).float().div(255).to(device))
    conv = has_convolutions(model)
    ladder = model.variant.family == "resvae"
    batch = 16 if ladder else 100
    steps = (3 if fast else 10) if conv else (10 if fast else 40)
    row = {"model": name, "network": net_name, "shape": "x".join(map(str, shape)), "params": count_parameters(model)}
    row["train_images_per_s"] = train_rate(model, shape, batch, steps, device)
    prepare_for_inference(model, channels_last=False)
    max_batch = 2_000 if conv else 20_000
    n_images, K = (20, 100) if conv else (200, 128)
    if fast:
        n_images //= 2
    row["is_samples_per_s_eager"] = is_rate(model, shape, n_images, K, device, max_batch)
    if conv:
        prepare_for_inference(model, channels_last=True)
        row["is_samples_per_s_channels_last"] = is_rate(model, shape, n_images, K, device, max_batch)
        if compile_decoder:
            prepare_for_inference(model, channels_last=True, compile_decoder=True)
            row["is_samples_per_s_compiled"] = is_rate(model, shape, n_images, K, device, max_batch)
    if ladder:
        row["prior_sample_ms_per_image"] = sample_ms(model, 8 if fast else 32, device)
    return row


def run_benchmark(fast: bool, compile_decoder: bool, device) -> list[dict]:
    """Every row of the standard table."""
    rows = []
    for net_name, net in NETWORKS.items():
        for name in VARIANTS:
            rows.append(bench_row(name, net_name, net, MNIST, device, fast, compile_decoder))
            print(_format([rows[-1]], header=len(rows) == 1), flush=True)
    for name in ("resvae_r4_iaf", "resvae_r20_iaf"):
        rows.append(bench_row(name, "ladder", LADDER, CIFAR, device, fast, compile_decoder))
        print(_format([rows[-1]], header=False), flush=True)
    return rows


COLUMNS = [
    ("model", "model", "{}"),
    ("network", "network", "{}"),
    ("params", "params", "{:,}"),
    ("train_images_per_s", "train img/s", "{:,.0f}"),
    ("is_samples_per_s_eager", "IS samples/s", "{:,.0f}"),
    ("is_samples_per_s_channels_last", "IS ch-last", "{:,.0f}"),
    ("is_samples_per_s_compiled", "IS compiled", "{:,.0f}"),
    ("prior_sample_ms_per_image", "ms/prior image", "{:.1f}"),
]


def _format(rows: list[dict], header: bool = True) -> str:
    lines = []
    if header:
        lines.append("| " + " | ".join(title for _, title, _ in COLUMNS) + " |")
        lines.append("|" + "---|" * len(COLUMNS))
    for r in rows:
        cells = [fmt.format(r[key]) if key in r else "" for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bf16_check(run_dir: Path, params_path: str, n_images: int, K: int) -> dict:
    """-log p(x) of a trained run with a float32 and a bfloat16 decoder, same samples, and their difference."""
    from flowvae.config import load_params, run_config
    from flowvae.train import batches_for, load_weights, make_model

    parts = Path(run_dir).parts
    profile, dataset, model_name, seed = parts[-4], parts[-3], parts[-2], int(parts[-1].removeprefix("seed"))
    cfg = run_config(load_params(params_path), profile, dataset, model_name, seed)
    model = make_model(cfg)
    load_weights(model, Path(run_dir) / "model.safetensors")
    prepare_for_inference(model)
    test = batches_for(cfg, "test", 100, False, cfg.seed + 30_000)
    test.x = test.x[:n_images]
    results = {}
    float_decoder = model.decoder
    for label, decoder in (("float32", float_decoder), ("bfloat16", BFloat16Decoder(float_decoder))):
        model.decoder = decoder
        torch.manual_seed(0)
        start = time.perf_counter()
        r = importance_sample(model, test, K, torch.device("cpu"), 20_000)
        results[label] = {"neg_log_px": float(-r["log_px"].mean()), "seconds": time.perf_counter() - start}
    model.decoder = float_decoder
    results["abs_delta_nats"] = abs(results["bfloat16"]["neg_log_px"] - results["float32"]["neg_log_px"])
    results.update(run=str(run_dir), n_images=len(test.x), K=K)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flowvae.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true", help="fewer repeats and no torch.compile")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default="reports/bench.json")
    ap.add_argument("--bf16-check", metavar="RUN_DIR", help="compare float32 and bfloat16 decoding on a trained run")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--images", type=int, default=1000, help="test images for --bf16-check")
    ap.add_argument("--K", type=int, default=128, help="importance samples for --bf16-check")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if args.bf16_check:
        result = {**info, **bf16_check(Path(args.bf16_check), args.params, args.images, args.K)}
        print(json.dumps(result, indent=2))
        write_json(args.out, result)
        return 0
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info["device"] = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {info['device']}, {info['threads']} threads, torch {info['torch']}")
    rows = run_benchmark(args.fast, compile_decoder=not (args.fast or args.no_compile), device=device)
    write_json(args.out, {**info, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
