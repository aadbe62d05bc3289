"""Throughput benchmark: training images/s and importance samples/s per variant and network.

    python -m flowvae.bench                      # the standard table (quick MLP; paper ResNet and ladder r4, r20; sylvester gated conv)
    python -m flowvae.bench --device cuda        # the same on a GPU, with bf16 and compiled training and peak memory
    python -m flowvae.bench --fast               # fewer repeats, no torch.compile
    python -m flowvae.bench --only gatedconv     # the Sylvester profile's gated-conv VAE, with IS timed as the Sylvester code does it
    python -m flowvae.bench --bf16-check RUN_DIR # |log p(x) change| with a bfloat16 decoder on a trained run
    python -m flowvae.bench --ais                # AIS cost: decoder gradient evaluations/s, s/image (MLP, ResNet, gated conv)
    python -m flowvae.bench --flows --repeats 5  # the flow posteriors' training speed on the quick MLP, as a ratio to the VAE's
    python -m flowvae.bench --flows --train-modes compiled  # the same, eager and torch.compile'd steps in the same rounds

The networks are those of params.yaml: the MLP of the quick profile, the ResNet and the ladder of the
paper profile, the gated convolutions of the sylvester profile. The gated-conv rows also time importance
sampling as the Sylvester-flows code does it (`IS encoding every sample`: each test image repeated K
times through encoder and decoder, where flowvae encodes it once). Training goes through the
trainer's own step (flowvae.runs.train.make_loss_fn): eager, under bfloat16 autocast (`bf16`, on CUDA by
default), compiled (`compiled`, unless --no-compile) and, for convolutional networks on a CPU, with
the model in channels_last memory format (`ch-last`).

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

from flowvae.data.batches import Batches
from flowvae.files.atomic import write_json
from flowvae.models.build import build_variant, count_parameters
from flowvae.models.contract import LatentVariableModel
from flowvae.models.objectives import log_weights
from flowvae.runs.evaluate import importance_sample
from flowvae.runs.inference import BFloat16Decoder, has_convolutions, prepare_for_inference
from flowvae.runs.train import make_loss_fn

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)
VARIANTS = ("vae", "nf10", "rnvp5", "iaf_d2_w320")
LADDERS = ("resvae_r4_iaf", "resvae_r20_iaf")
GATED_VARIANTS = ("vae", "osnf4_m8")
FLOW_VARIANTS = ("vae", "nf10", "rnvp5", "iaf_d2_w320", "osnf4_m8")
# Each benchmarked network: the profile and the block of params.yaml it is read from.
NETWORK_PROFILES = {"mlp": ("quick", "network"), "resnet": ("paper", "network"), "ladder": ("paper", "ladder"),
                    "gatedconv": ("sylvester", "network")}


def networks(params_path: str) -> dict[str, tuple[dict, int | None]]:
    """The benchmarked networks from params.yaml, each with its profile's eval.max_batch (None: the default)."""
    from flowvae.spec.params import load_params

    profiles = load_params(params_path)["profiles"]
    return {net: (profiles[profile][block], profiles[profile]["eval"].get("max_batch"))
            for net, (profile, block) in NETWORK_PROFILES.items()}


def _images(shape: tuple[int, int, int], n: int, binary: bool) -> np.ndarray:
    rng = np.random.default_rng(0)
    if binary:
        return rng.integers(0, 2, size=(n, *shape), dtype=np.uint8)
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _binarize(shape: tuple[int, int, int]) -> str:
    return "fixed" if shape == MNIST else "none"


def train_rate(model: LatentVariableModel, shape, batch: int, steps: int, device, amp: str = "none", compiled: bool = False,
               channels_last: bool = False) -> float:
    """Training images/s of the trainer's step over `steps` Adamax steps after two warm-up steps (data on the device)."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    x_all = _images(shape, batch * (steps + 2), shape == MNIST)
    batches = Batches(x_all, batch, _binarize(shape), shuffle=False, device=device)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    step = make_loss_fn(model, model.variant, amp, compiled)
    beta = torch.ones((), device=device)
    model.train()
    start = None
    for i, x in enumerate(batches.epoch(0)):
        if i == 2:
            _sync(device)
            start = time.perf_counter()
        loss, _ = step(x, beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return batch * steps / (time.perf_counter() - start)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


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
def is_rate_encoding_every_sample(model: LatentVariableModel, shape, n_images: int, K: int, device, max_batch: int) -> float:
    """Importance samples/s as the Sylvester code computes them: each image repeated K times through encoder and decoder."""
    x = torch.from_numpy(_images(shape, n_images, shape == MNIST)).float().div(255).to(device)
    chunk = max(1, min(K, max_batch))

    def run(images: torch.Tensor) -> None:
        for image in images:
            done = 0
            while done < K:
                s = min(chunk, K - done)
                log_weights(model(image.expand(s, *shape), n_samples=1))
                done += s

    run(x[:1])
    _sync(device)
    start = time.perf_counter()
    run(x)
    _sync(device)
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


def bench_row(name: str, net_name: str, net: dict, shape, device, fast: bool, compile_decoder: bool, train_modes: tuple[str, ...],
              max_batch: int | None = None) -> dict:
    """One row of the table."""
    torch.manual_seed(0)
    build = lambda: build_variant(name, net, shape, _likelihood(shape)).to(device)  # noqa: E731
    model = build()
    init = torch.from_numpy(_images(shape, 16, shape == MNIST)).float().div(255).to(device)
    model.initialize(init)
    conv = has_convolutions(model)
    ladder = model.variant.family == "resvae"
    batch = 16 if ladder else 100
    steps = (3 if fast else 10) if conv else (10 if fast else 40)
    row = {"model": name, "network": net_name, "shape": "x".join(map(str, shape)), "params": count_parameters(model)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    row["train_images_per_s"] = train_rate(model, shape, batch, steps, device)
    if device.type == "cuda":
        row["train_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    modes = train_modes + (("channels_last",) if conv and device.type == "cpu" else ())
    for mode in modes:  # a fresh model each, so that compiled graphs do not leak into the eager figures
        fresh = build()
        fresh.initialize(init)
        row[f"train_images_per_s_{mode}"] = train_rate(
            fresh, shape, batch, steps, device, amp="bf16" if mode == "bf16" else "none", compiled=mode == "compiled",
            channels_last=mode == "channels_last",
        )
    prepare_for_inference(model, channels_last=False)
    max_batch = max_batch or (2_000 if conv else 20_000)  # evaluate's default where the profile sets none
    row["is_max_batch"] = max_batch
    n_images, K = (20, 100) if conv else (200, 128)
    if fast:
        n_images //= 2
    row["is_samples_per_s_eager"] = is_rate(model, shape, n_images, K, device, max_batch)
    if net_name == "gatedconv":
        row["is_samples_per_s_code_style"] = is_rate_encoding_every_sample(model, shape, n_images, K, device, max_batch)
    if conv:
        prepare_for_inference(model, channels_last=True)
        row["is_samples_per_s_channels_last"] = is_rate(model, shape, n_images, K, device, max_batch)
        if compile_decoder:
            prepare_for_inference(model, channels_last=True, compile_decoder=True)
            row["is_samples_per_s_compiled"] = is_rate(model, shape, n_images, K, device, max_batch)
    if ladder:
        row["prior_sample_ms_per_image"] = sample_ms(model, 8 if fast else 32, device)
    return row


def run_benchmark(fast: bool, compile_decoder: bool, device, nets: dict[str, tuple[dict, int | None]], train_modes: tuple[str, ...],
                  only: str | None = None) -> list[dict]:
    """Every row of the standard table (or those of one network)."""
    plan = [(name, net_name, MNIST) for net_name in ("mlp", "resnet") for name in VARIANTS]
    plan += [(name, "ladder", CIFAR) for name in LADDERS]
    plan += [(name, "gatedconv", MNIST) for name in GATED_VARIANTS]
    rows = []
    for name, net_name, shape in plan:
        if only and net_name != only:
            continue
        net, max_batch = nets[net_name]
        rows.append(bench_row(name, net_name, net, shape, device, fast, compile_decoder, train_modes, max_batch))
        print(_format([rows[-1]], header=len(rows) == 1), flush=True)
    return rows


COLUMNS = [
    ("model", "model", "{}"),
    ("network", "network", "{}"),
    ("params", "params", "{:,}"),
    ("train_images_per_s", "train img/s", "{:,.0f}"),
    ("train_images_per_s_bf16", "train bf16", "{:,.0f}"),
    ("train_images_per_s_compiled", "train compiled", "{:,.0f}"),
    ("train_images_per_s_channels_last", "train ch-last", "{:,.0f}"),
    ("train_peak_mib", "train peak MiB", "{:,.0f}"),
    ("is_samples_per_s_eager", "IS samples/s", "{:,.0f}"),
    ("is_samples_per_s_code_style", "IS encoding every sample", "{:,.0f}"),
    ("is_samples_per_s_channels_last", "IS ch-last", "{:,.0f}"),
    ("is_samples_per_s_compiled", "IS compiled", "{:,.0f}"),
    ("prior_sample_ms_per_image", "ms/prior image", "{:.1f}"),
]


def flow_speed(nets: dict[str, tuple[dict, int | None]], repeats: int, device, compiled: bool = False) -> list[dict]:
    """Training images/s of each flow posterior on the quick MLP: the median of `repeats` rounds, each round timing
    every variant once in turn (so that a slow spell of the machine hits all of them), and its ratio to the eager
    VAE's. With `compiled`, every round also times each variant's torch.compile'd step (compiled before the rounds)."""
    net = nets["mlp"][0]
    modes = (False, True) if compiled else (False,)
    models = {}
    for name in FLOW_VARIANTS:
        for mode in modes:  # one model per mode, so that the eager figures never run a compiled graph
            torch.manual_seed(0)
            models[name, mode] = build_variant(name, net, MNIST, _likelihood(MNIST)).to(device)
            models[name, mode].initialize(torch.from_numpy(_images(MNIST, 16, True)).float().to(device))
    compile_s = {}
    for (name, mode), model in models.items():
        if mode:
            start = time.perf_counter()
            train_rate(model, MNIST, 100, 1, device, compiled=True)
            compile_s[name] = time.perf_counter() - start
    rates: dict[tuple[str, bool], list[float]] = {key: [] for key in models}
    for _ in range(repeats):
        for (name, mode), model in models.items():
            rates[name, mode].append(train_rate(model, MNIST, 100, 40, device, compiled=mode))
    vae = float(np.median(rates["vae", False]))
    rows = [{"model": name, "network": "mlp", "compiled": mode, "train_images_per_s": float(np.median(r)),
             "train_images_per_s_runs": r, "ratio_to_vae": float(np.median(r)) / vae,
             **({"compile_seconds": compile_s[name]} if mode else {})} for (name, mode), r in rates.items()]
    for row in rows:
        label = row["model"] + (" compiled" if row["compiled"] else "")
        compile_note = f", compiled in {row['compile_seconds']:.0f} s" if row["compiled"] else ""
        print(f"{label:<21} {row['train_images_per_s']:>9,.0f} images/s  {row['ratio_to_vae']:.2f}x the eager VAE"
              f"  (median of {repeats}: {', '.join(f'{v:,.0f}' for v in row['train_images_per_s_runs'])}{compile_note})",
              flush=True)
    return rows


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
    from flowvae.data.batches import batches_for
    from flowvae.models.build import build_model
    from flowvae.runs.checkpoint import load_weights
    from flowvae.spec.layout import RunFolder
    from flowvae.spec.params import load_params
    from flowvae.spec.run import RunSpec

    parts = Path(run_dir).parts
    profile, dataset, model_name, seed = parts[-4], parts[-3], parts[-2], int(parts[-1].removeprefix("seed"))
    cfg = RunSpec.resolve(load_params(params_path), profile, dataset, model_name, seed)
    model = build_model(cfg)
    load_weights(model, RunFolder(Path(run_dir)).model)
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
    results["training_step"] = amp_step_check(model, cfg.variant, next(test.epoch(0)))
    results.update(run=str(run_dir), n_images=len(test.x), K=K)
    return results


def amp_step_check(model: LatentVariableModel, variant, x: torch.Tensor) -> dict:
    """The training step under bfloat16 autocast against float32 on one batch, same noise: loss change and gradient agreement."""
    model.train()
    beta = torch.ones(())
    grads, losses = {}, {}
    for amp in ("none", "bf16"):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        loss, _ = make_loss_fn(model, variant, amp)(x, beta)
        loss.backward()
        losses[amp] = float(loss)
        grads[amp] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    cosine = torch.nn.functional.cosine_similarity(grads["none"], grads["bf16"], dim=0)
    return {"loss_float32": losses["none"], "loss_bf16": losses["bf16"],
            "abs_delta_loss": abs(losses["bf16"] - losses["none"]), "gradient_cosine": float(cosine)}


AIS_NETWORKS = ("mlp", "resnet", "gatedconv")


def ais_rows(nets: dict, device, T: int, L: int, S: int, n_images: int) -> list[dict]:
    """AIS cost (runs/ais.py) of the vae variant on each of AIS_NETWORKS: decoder gradient evaluations per second
    (each chain's log p(x|z) and its gradient) and seconds per image at T, L, S, timed on n_images random images."""
    from flowvae.runs.ais import frozen_for_ais, model_ais

    rows = []
    for net_name in AIS_NETWORKS:
        torch.manual_seed(0)
        model = build_variant("vae", nets[net_name][0], MNIST, _likelihood(MNIST)).to(device)
        x = torch.from_numpy(_images(MNIST, n_images, True)).float().to(device)
        model.initialize(x)
        frozen_for_ais(model)
        model_ais(model, x[:1], 2, L, S, batch_size=n_images)  # warm-up
        _sync(device)
        start = time.perf_counter()
        r = model_ais(model, x, T, L, S, batch_size=n_images, generator=torch.Generator(device=device).manual_seed(0))
        _sync(device)
        seconds = time.perf_counter() - start
        evaluations = n_images * S * r["gradient_evaluations_per_chain"]
        row = {"model": "vae", "network": net_name, "T": T, "L": L, "S": S, "images": n_images,
               "ais_gradient_evaluations_per_s": evaluations / seconds, "ais_seconds_per_image": seconds / n_images,
               "accept_rate": float(r["accept_rate"].mean())}
        print(f"AIS {net_name}: {row['ais_gradient_evaluations_per_s']:,.0f} decoder gradient evaluations/s, "
              f"{row['ais_seconds_per_image']:.2f} s/image at T={T}, L={L}, S={S} ({n_images} images at once)", flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flowvae.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true", help="fewer repeats and no torch.compile")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--only", choices=list(NETWORK_PROFILES), help="benchmark one network's rows")
    ap.add_argument("--train-modes", default=None,
                    help="extra training measurements, comma-separated from bf16,compiled (default: both on CUDA, none on CPU)")
    ap.add_argument("--out", default="reports/bench.json")
    ap.add_argument("--bf16-check", metavar="RUN_DIR", help="compare float32 and bfloat16 decoding on a trained run")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--flows", action="store_true", help="only the flow posteriors' training speed on the quick MLP, vs the VAE's")
    ap.add_argument("--repeats", type=int, default=5, help="rounds for --flows (the median is reported)")
    ap.add_argument("--images", type=int, default=1000, help="test images for --bf16-check")
    ap.add_argument("--K", type=int, default=128, help="importance samples for --bf16-check")
    ap.add_argument("--ais", action="store_true", help="time AIS instead (MLP, ResNet, gated conv; see --ais-T/L/S/images)")
    ap.add_argument("--ais-T", type=int, default=500)
    ap.add_argument("--ais-L", type=int, default=10)
    ap.add_argument("--ais-S", type=int, default=16)
    ap.add_argument("--ais-images", type=int, default=25, help="images annealed at once (ais.batch_size's default)")
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
    from flowvae.runs.device import pick_device

    device = pick_device(args.device)
    info["device"] = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    if args.train_modes is None:
        modes = ("bf16",) if device.type == "cuda" else ()
        modes += ("compiled",) if device.type == "cuda" and not (args.fast or args.no_compile) else ()
    else:
        modes = tuple(m for m in args.train_modes.split(",") if m)
        unknown = set(modes) - {"bf16", "compiled"}
        if unknown:
            ap.error(f"--train-modes: unknown {sorted(unknown)}; choose from bf16, compiled")
    print(f"device {info['device']}, {info['threads']} threads, torch {info['torch']}")
    if args.ais:
        rows = ais_rows(networks(args.params), device, args.ais_T, args.ais_L, args.ais_S, args.ais_images)
        out = "reports/bench_ais.json" if args.out == "reports/bench.json" else args.out  # the standard table's file stays
        write_json(out, {**info, "ais_rows": rows})
        print(f"wrote {out}")
        return 0
    if args.flows:
        rows = flow_speed(networks(args.params), args.repeats, device, compiled="compiled" in modes)
        write_json(args.out, {**info, "flow_speed": rows})
        print(f"wrote {args.out}")
        return 0
    rows = run_benchmark(args.fast, not (args.fast or args.no_compile), device, networks(args.params), modes, args.only)
    write_json(args.out, {**info, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
