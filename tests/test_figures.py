"""The figures notebook runs under papermill on tiny synthetic results and writes every figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

papermill = pytest.importorskip("papermill")

NOTEBOOK = Path(__file__).resolve().parents[1] / "workflow" / "notebooks" / "figures.ipynb"
DATASET = "binarized_mnist"
MODELS = ("vae", "nf2", "nf4", "rnvp1", "rnvp2")


def _write_run(
    root: Path, model: str, seed: int, rng: np.random.Generator, latent_2d: bool, dataset: str = DATASET
) -> dict[str, str]:
    """Synthetic eval.json, train.jsonl and samples.npz for one run; returns their paths."""
    run = root / "results" / "smoke" / dataset / model / f"seed{seed}"
    run.mkdir(parents=True)
    nll = 90.0 - len(model) + rng.normal(0, 0.3)
    channels, side = (3, 32) if dataset == "cifar10" else (1, 28)
    bpd = {"neg_elbo": (nll + 3) / (3072 * np.log(2)), "neg_log_px": nll / (3072 * np.log(2))}
    ev = {
        "profile": "smoke", "dataset": dataset, "model": model, "seed": seed, "commit": "deadbee",
        "device": "cpu", "n_test": 100, "K": 8, "epochs": 3, "train_minutes": 0.1, "n_params": 1000,
        "latent_dim": 2 if latent_2d else 4, "neg_elbo": nll + 3, "neg_elbo_se": 0.4, "recon": 70.0,
        "kl": nll + 3 - 70.0, "neg_log_px": nll, "neg_log_px_se": 0.3, "gap": 3.0, "active_units": 2,
        "ess_fraction": 0.4, "bits_per_dim": bpd if dataset == "cifar10" else None,
        "is_curve": [{"K": k, "neg_log_px": nll + 3 / k} for k in (1, 2, 4, 8)],
        "eval_seconds": 1.0, "is_samples_per_s": 1e4,
    }
    (run / "eval.json").write_text(json.dumps(ev))
    lines = [
        {"epoch": e, "step": 10 * e, "train_neg_elbo": 100 - e, "train_recon": 80 - e, "train_kl": 20.0,
         "val_neg_elbo": 101 - e, "val_recon": 81 - e, "val_kl": 20.0, "beta": 1.0, "lr": 1e-3,
         "seconds": 1.0, "images_per_s": 100.0, "best": True}
        for e in (1, 2, 3)
    ]
    (run / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    images = lambda *shape: (rng.random(shape) > 0.5).astype(np.uint8) * 255
    arrays = {
        "originals": images(6, channels, side, side),
        "reconstructions": rng.random((6, channels, side, side)).astype(np.float32),
        "prior_samples": images(9, channels, side, side),
        "interpolations": images(2, 5, channels, side, side),
    }
    if latent_2d:
        g = np.linspace(-3, 3, 12)
        gx, gy = np.meshgrid(g, g)
        arrays |= {
            "grid_x": g, "grid_y": g, "density_grid": np.stack([gx, gy], -1),
            "prior_logp": -(gx**2 + gy**2) / 2 - np.log(2 * np.pi),
            "posterior_logq": np.stack([-((gx - c) ** 2 + gy**2) * 2 for c in (-1.0, 1.0)]),
            "manifold": rng.random((5, 5, channels, side, side)).astype(np.float32),
            "manifold_quantiles": np.linspace(-1.28, 1.28, 5),
        }
    np.savez(run / "samples.npz", **arrays)
    return {"eval": str(run / "eval.json"), "train": str(run / "train.jsonl"), "samples": str(run / "samples.npz")}


def test_notebook_writes_every_figure(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    runs = [_write_run(tmp_path, m, s, rng, latent_2d=m in ("vae", "nf2")) for m in MODELS for s in (0, 1)]
    runs.append(_write_run(tmp_path, "vae", 0, rng, latent_2d=False, dataset="cifar10"))
    out_dir = tmp_path / "reports" / "figures"
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(tmp_path / "figures.out.ipynb"),
        parameters={
            "eval_files": [r["eval"] for r in runs],
            "train_files": [r["train"] for r in runs],
            "sample_files": [r["samples"] for r in runs],
            "out_dir": str(out_dir),
            "profile": "smoke",
        },
        kernel_name="python3",
        cwd=str(tmp_path),
        progress_bar=False,
    )
    stems = ["training_curves", "flow_steps", "is_curve", "reconstructions", "prior_samples",
             "interpolations", "latent_densities", "manifold"]
    for stem in stems:
        for suffix in (".png", ".pdf"):
            path = out_dir / f"{stem}_{DATASET}{suffix}"
            assert path.is_file() and path.stat().st_size > 0, path
    for stem in ["training_curves", "is_curve", "reconstructions", "prior_samples", "interpolations"]:
        assert (out_dir / f"{stem}_cifar10.png").stat().st_size > 0
    # no flow runs and no 2-D latent on cifar10: those figures are skipped, not drawn empty
    assert not list(out_dir.glob("flow_steps_cifar10.*")) and not list(out_dir.glob("latent_densities_cifar10.*"))
    assert not list(out_dir.glob("manifold_cifar10.*"))
    printed = json.dumps(json.loads((tmp_path / "figures.out.ipynb").read_text())["cells"][-1]["outputs"])
    assert f"flow_steps_{DATASET}.pdf" in printed
