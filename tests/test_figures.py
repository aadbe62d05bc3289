"""The figures notebook runs under papermill on tiny synthetic results and writes every figure; its scales
(report/figure_scales.py) keep diverged values off the axis, tell rows apart and zoom to each posterior."""

from __future__ import annotations

import io
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

papermill = pytest.importorskip("papermill")

from flowvae.report.figure_scales import (  # noqa: E402
    box_mass,
    distinct_colors,
    draw_clipped,
    mass_box,
    off_scale,
    y_range,
)

NOTEBOOK = Path(__file__).resolve().parents[1] / "workflow" / "notebooks" / "figures.ipynb"
DATASET = "binarized_mnist"
MODELS = ("vae", "nf2", "nf4", "rnvp1", "rnvp2")
BLOWUP = 3e11  # rnvp20's first training epoch on binarized MNIST (quick profile)
# The tables the notebook gets from `flowvae figures` (plan.figure_tables): rows in their order, with seeds.
TABLES = [
    {"name": "tableA", "title": "Binarized MNIST: planar flows vs real-NVP couplings", "dataset": DATASET, "units": "nats",
     "rows": [{"model": "rnvp2", "seeds": [0, 1]}, {"model": "vae", "seeds": [0, 1]}, {"model": "nf2", "seeds": [0]},
              {"model": "nf4", "seeds": [0, 1]}, {"model": "rnvp1", "seeds": [0, 1]}]},
    {"name": "tableB", "title": "A second table over two of the same runs", "dataset": DATASET, "units": "nats",
     "rows": [{"model": "nf4", "seeds": [0]}, {"model": "vae", "seeds": [0]}]},
    {"name": "tableC", "title": "CIFAR-10, bits/dim", "dataset": "cifar10", "units": "bits_per_dim",
     "rows": [{"model": "vae", "seeds": [0]}], "metrics": ["neg_log_px", "fcd"],
     "claims": [{"quote": "the samples are sharp", "where": "a seed, line 1"}]},
]


def _gaussian_logq(gx: np.ndarray, gy: np.ndarray, centre: tuple[float, float], sd: tuple[float, float]) -> np.ndarray:
    return (-0.5 * (((gx - centre[0]) / sd[0]) ** 2 + ((gy - centre[1]) / sd[1]) ** 2)
            - np.log(2 * np.pi * sd[0] * sd[1]))


def _write_run(
    root: Path, model: str, seed: int, rng: np.random.Generator, latent_2d: bool, dataset: str = DATASET,
    epochs: int = 6, blowup: bool = False, own_grids: bool = True,
) -> dict[str, str]:
    """Synthetic eval.json, train.jsonl and samples.npz for one run; returns their paths."""
    run = root / "results" / "smoke" / dataset / model / f"seed{seed}"
    run.mkdir(parents=True)
    nll = 90.0 - len(model) + rng.normal(0, 0.3)
    channels, side = (3, 32) if dataset == "cifar10" else (1, 28)
    bpd = {"neg_elbo": (nll + 3) / (3072 * np.log(2)), "neg_log_px": nll / (3072 * np.log(2))}
    ev = {
        "profile": "smoke", "dataset": dataset, "model": model, "seed": seed, "commit": "deadbee",
        "device": "cpu", "n_test": 100, "K": 8, "epochs": epochs, "train_minutes": 0.1, "n_params": 1000,
        "latent_dim": 2 if latent_2d else 4, "neg_elbo": nll + 3, "neg_elbo_se": 0.4, "recon": 70.0,
        "kl": nll + 3 - 70.0, "neg_log_px": nll, "neg_log_px_se": 0.3, "gap": 3.0, "active_units": 2,
        "ess_fraction": 0.4, "bits_per_dim": bpd if dataset == "cifar10" else None,
        # a point past the evaluation's K is not drawn
        "is_curve": [{"K": k, "neg_log_px": nll + 3 / k} for k in (1, 2, 4, 8, 16)], "is_curve_images": 37,
        "eval_seconds": 1.0, "is_samples_per_s": 1e4,
    }
    (run / "eval.json").write_text(json.dumps(ev))
    offset = len(model) + rng.normal(0, 0.5)
    lines = [
        {"epoch": e, "step": 10 * e, "train_neg_elbo": 100 - 8 * math.log(e) + offset, "train_recon": 80 - 6 * math.log(e) + offset,
         "train_kl": 20.0 - math.log(e), "val_neg_elbo": 101 - 7 * math.log(e) + offset, "val_recon": 81 - 5 * math.log(e) + offset,
         "val_kl": 20.0 - math.log(e), "beta": 1.0, "lr": 1e-3, "seconds": 1.0, "images_per_s": 100.0, "best": True}
        for e in range(1, epochs + 1)
    ]
    if blowup:
        lines[0] |= {"train_neg_elbo": BLOWUP, "train_kl": BLOWUP, "train_recon": 2.5e4}
    (run / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    images = lambda *shape: (rng.random(shape) > 0.5).astype(np.uint8) * 255
    arrays = {
        "originals": images(6, channels, side, side),
        "reconstructions": rng.random((6, channels, side, side)).astype(np.float32),
        "prior_samples": images(9, channels, side, side),
        "interpolations": images(2, 5, channels, side, side),
    }
    if latent_2d:
        g = np.linspace(-4, 4, 101)
        gx, gy = np.meshgrid(g, g)
        centres = [(-2.1, 1.3), (0.4, -0.2), (1.7, 2.6)]
        sds = [(0.05, 0.12), (0.08, 0.03), (0.2, 0.2)]
        arrays |= {
            "grid_x": g, "grid_y": g,
            "prior_logp": -(gx**2 + gy**2) / 2 - np.log(2 * np.pi),
            "posterior_logq": np.stack([_gaussian_logq(gx, gy, c, s) for c, s in zip(centres, sds)]),
            "manifold": rng.random((5, 5, channels, side, side)).astype(np.float32),
            "manifold_quantiles": np.linspace(-1.28, 1.28, 5),
        }
        if own_grids:  # what evaluate writes now: each posterior on a grid of its own, and the encoder means
            xs = np.stack([np.linspace(c[0] - 5 * max(s), c[0] + 5 * max(s), 101) for c, s in zip(centres, sds)])
            ys = np.stack([np.linspace(c[1] - 5 * max(s), c[1] + 5 * max(s), 101) for c, s in zip(centres, sds)])
            arrays |= {
                "posterior_x": xs, "posterior_y": ys,
                "posterior_logq_local": np.stack([_gaussian_logq(*np.meshgrid(x, y), c, s)
                                                  for x, y, c, s in zip(xs, ys, centres, sds)]),
                "posterior_mu": np.array(centres) + 0.01,
            }
    np.savez(run / "samples.npz", **arrays)
    return {"eval": str(run / "eval.json"), "train": str(run / "train.jsonl"), "samples": str(run / "samples.npz")}


def _execute(tmp_path: Path, runs: list[dict[str, str]], out_dir: Path, tables: list[dict]) -> dict:
    out = tmp_path / f"{out_dir.name}.out.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(out),
        parameters={
            "eval_files": [r["eval"] for r in runs],
            "train_files": [r["train"] for r in runs],
            "sample_files": [r["samples"] for r in runs],
            "out_dir": str(out_dir),
            "profile": "smoke",
            "tables": tables,
        },
        kernel_name="python3",
        cwd=str(tmp_path),
        progress_bar=False,
    )
    return json.loads(out.read_text())


def fabricated_runs(root: Path, own_grids: bool = True) -> list[dict[str, str]]:
    """Two seeds of every model (rnvp2's blowing up in its first epoch), a 2-D latent for vae and nf2, one cifar10 run."""
    rng = np.random.default_rng(0)
    runs = [_write_run(root, m, s, rng, latent_2d=m in ("vae", "nf2"), blowup=m == "rnvp2", own_grids=own_grids)
            for m in MODELS for s in (0, 1)]
    runs.append(_write_run(root, "vae", 0, rng, latent_2d=False, dataset="cifar10"))
    return runs


def test_notebook_writes_every_figure_per_table(tmp_path: Path) -> None:
    runs = fabricated_runs(tmp_path)
    cifar = Path(runs[-1]["eval"]).with_name("sample_quality.json")
    cifar.write_text(json.dumps({"fcd": 12.5, "fcd_se": 0.5}))
    out_dir = tmp_path / "reports" / "figures"
    executed = _execute(tmp_path, runs, out_dir, TABLES)
    per_table = [f"{kind}_{t['name']}_{t['dataset']}" for t in TABLES for kind in ("training_curves", "is_curve")]
    per_table.append("samples_tableC_cifar10")  # only the table that shows the FCD gets its samples side by side
    assert not list(out_dir.glob("samples_tableA_*")) and not list(out_dir.glob("samples_tableB_*"))
    per_dataset = [f"{stem}_{DATASET}" for stem in ("flow_steps", "reconstructions", "prior_samples", "interpolations",
                                                     "latent_densities", "manifold")]
    for stem in per_table + per_dataset:
        for suffix in (".png", ".pdf"):
            path = out_dir / f"{stem}{suffix}"
            assert path.is_file() and path.stat().st_size > 0, path
    # curves per table only: no figure of every model of a data set in one panel
    assert not list(out_dir.glob(f"training_curves_{DATASET}.*")) and not list(out_dir.glob(f"is_curve_{DATASET}.*"))
    for stem in ["reconstructions", "prior_samples", "interpolations"]:
        assert (out_dir / f"{stem}_cifar10.png").stat().st_size > 0
    # no flow runs and no 2-D latent on cifar10: those figures are skipped, not drawn empty
    assert not list(out_dir.glob("flow_steps_cifar10.*")) and not list(out_dir.glob("latent_densities_cifar10.*"))
    assert not list(out_dir.glob("manifold_cifar10.*"))
    printed = json.dumps(executed["cells"][-1]["outputs"])
    assert f"flow_steps_{DATASET}.pdf" in printed and "training_curves_tableB_binarized_mnist.png" in printed


def test_notebook_without_tables_draws_per_data_set_and_reads_old_density_grids(tmp_path: Path) -> None:
    runs = fabricated_runs(tmp_path, own_grids=False)  # samples.npz written before the posteriors' own grids
    runs = [r for r in runs if "/nf2/" not in r["eval"] and "/rnvp1/" not in r["eval"]]  # flows of 4 layers only
    out_dir = tmp_path / "reports" / "figures"
    _execute(tmp_path, runs, out_dir, [])
    assert not list(out_dir.glob("flow_steps_*"))  # one layer count: no line to draw against the number of layers
    for stem in ("training_curves", "is_curve", "latent_densities"):
        assert (out_dir / f"{stem}_{DATASET}.png").stat().st_size > 0, stem
    assert (out_dir / "training_curves_cifar10.png").stat().st_size > 0


def test_y_range_is_set_by_the_settled_curves_and_marks_the_blowup() -> None:
    epochs = np.arange(1, 16)
    settled = [100 - 8 * np.log(epochs) + shift for shift in range(8)]
    diverged = settled[0].copy()
    diverged[0] = BLOWUP
    curves = [*settled, diverged]
    limits = y_range(curves)
    assert limits is not None
    lo, hi = limits
    assert hi < 200 and lo > 50  # not stretched to 3e11
    # every value after the first fifth of the epochs is on the scale
    later = np.concatenate([c[3:] for c in curves])
    assert lo <= later.min() and later.max() <= hi
    clipped, above, below = off_scale(diverged, limits)
    assert above.tolist() == [True] + [False] * 14 and not below.any() and clipped[0] == hi
    # a row that never converges does not set the range either
    assert y_range([*settled, np.full(15, 1e6)])[1] < 200
    assert y_range([[np.nan, np.nan]]) is None


def test_off_scale_points_are_drawn_as_triangles_at_the_edge() -> None:
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    epochs = np.arange(1, 11)
    values = 90 - np.log(epochs)
    values[0] = BLOWUP
    limits = y_range([values])
    assert draw_clipped(ax, epochs, values, limits, "C0", "--")
    assert ax.get_ylim() == pytest.approx(limits) and limits[1] < 100
    markers = [line for line in ax.get_lines() if line.get_marker() == "^"]
    assert len(markers) == 1 and markers[0].get_xdata().tolist() == [1]
    assert markers[0].get_ydata().tolist() == [limits[1]]
    assert max(max(line.get_ydata()) for line in ax.get_lines()) <= limits[1]
    assert not draw_clipped(Figure().subplots(), epochs[1:], values[1:], limits, "C1")


@pytest.mark.parametrize("n", [2, 5, 8, 10, 11, 16, 20, 21, 30])
def test_row_colours_are_pairwise_distinct(n: int) -> None:
    colours = np.array(distinct_colors(n))
    assert colours.shape == (n, 3)
    gaps = [np.linalg.norm(a - b) for a, b in itertools.combinations(colours, 2)]
    assert min(gaps) > (0.15 if n <= 20 else 0.05), min(gaps)


@pytest.mark.parametrize("centre,sd", [((1.3, -0.7), (0.05, 0.02)), ((3.95, 0.0), (0.1, 0.1)), ((0.0, 0.0), (1.0, 1.0))])
def test_density_zoom_box_holds_the_posterior_mass(centre, sd) -> None:
    g = np.linspace(-4, 4, 401)
    gx, gy = np.meshgrid(g, g)
    q = np.exp(_gaussian_logq(gx, gy, centre, sd))
    box = mass_box(g, g, q, mass=0.99)
    x0, x1, y0, y1 = box
    assert box_mass(g, g, q, box) >= 0.99
    assert -4 <= x0 < x1 <= 4 and -4 <= y0 < y1 <= 4
    assert x1 - x0 == pytest.approx(y1 - y0)  # square: the panel keeps the posterior's shape
    if max(sd) < 0.5:  # zoomed: a few posterior sd's, not the whole grid
        assert x1 - x0 < 12 * max(sd) + 0.1
        assert x0 <= centre[0] <= x1 and y0 <= centre[1] <= y1
    # a density off the grid's edge draws the grid
    assert mass_box(g, g, np.zeros_like(q)) == (-4.0, 4.0, -4.0, 4.0)


def test_evaluate_grids_each_posterior_where_its_mass_is() -> None:
    torch = pytest.importorskip("torch")
    from flowvae.runs.evaluate import figure_arrays

    class Narrow(torch.nn.Module):
        """A 2-D latent model whose posteriors are narrow Gaussians at points set by the image."""

        latent_dim, has_posterior_density = 2, True

        def mean(self, x):
            return torch.stack([x.mean((1, 2, 3)) * 6 - 3, x[:, 0, 0, :].mean(-1) * 4 - 2], -1)

        def log_q(self, z, x):
            return (-0.5 * ((z - self.mean(x)) / torch.tensor([0.04, 0.09])).pow(2).sum(-1)) - math.log(2 * math.pi * 0.04 * 0.09)

        def base_mean(self, x):
            return self.mean(x)

        def encode_mean(self, x):
            return self.mean(x) + 1.0  # the flowed centre: not what the density figure marks

        def reconstruct(self, x):
            return x

        def sample(self, n):
            return torch.zeros(n, 1, 4, 4)

        def decode_mean(self, z):
            return torch.zeros(z.shape[0], 1, 4, 4) + z.sum(-1).view(-1, 1, 1, 1)

    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    arrays = figure_arrays(Narrow(), x, seed=0)
    means = Narrow().mean(x[:4]).numpy()
    assert arrays["posterior_logq_local"].shape == (4, 101, 101)
    assert np.allclose(arrays["posterior_mu"], means)
    for i in range(4):
        gx, gy = arrays["posterior_x"][i], arrays["posterior_y"][i]
        assert gx[-1] - gx[0] < 1.2 and gy[-1] - gy[0] < 1.2  # zoomed from [-4, 4]
        q = np.exp(arrays["posterior_logq_local"][i].astype(np.float64))
        assert q.sum() * (gx[1] - gx[0]) * (gy[1] - gy[0]) == pytest.approx(1.0, abs=0.01)  # the whole mass on the grid
    buffers = []
    for _ in range(2):  # no random draws: the same bytes again
        buffers.append(io.BytesIO())
        np.savez(buffers[-1], **figure_arrays(Narrow(), x, seed=0))
    assert buffers[0].getvalue() == buffers[1].getvalue()
