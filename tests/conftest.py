"""Shared fixtures: tiny synthetic data sets and params written by the tests themselves."""

from __future__ import annotations

import copy
import gzip
import hashlib
import os
import struct
from pathlib import Path

# On pytest-xdist workers (`make test` runs more workers than cores), each worker and the jobs it starts compute on one
# thread, so that the workers do not put more compute threads than that on the cores. Set before numpy and torch load;
# the jobs inherit it (a job given `threads` sets that many itself).
if os.environ.get("PYTEST_XDIST_WORKER"):
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from flowvae.spec.run import RunSpec  # noqa: E402

from cpu_times import pytest_addoption, pytest_configure, pytest_terminal_summary  # noqa: F401  (--cpu-times)

# `flowvae train` and `evaluate` refuse uncommitted sources; the suite runs them from a work in progress
# too (a clean clone in CI is unaffected). test_provenance.py checks the refusal itself, without this.
os.environ["FLOWVAE_ALLOW_DIRTY"] = "1"

TINY_SHAPE = (1, 8, 8)
TRAIN_KEYS = {"epochs", "batch_size", "optimizer", "lr", "betas", "warmup_epochs", "lr_warmup_steps", "patience", "ema", "amp"}


# The data mirror of the pipeline runs (FLOWVAE_DATA_MIRROR, else ../shared/data beside the checkout):
# only the checks of the real files read it.
DATA_MIRROR = Path(os.environ.get("FLOWVAE_DATA_MIRROR") or Path(__file__).resolve().parents[2] / "shared" / "data")

def write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def write_amat(path: Path, arr: np.ndarray) -> None:
    path.write_text("".join(" ".join(str(int(v)) for v in row) + "\n" for row in arr.reshape(len(arr), -1)))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def stripe_images(n: int, seed: int) -> np.ndarray:
    """Binary 8x8 images: one of four stripe patterns with a little pixel noise."""
    rng = np.random.default_rng(seed)
    patterns = np.zeros((4, 8, 8), dtype=np.uint8)
    patterns[0, ::2, :] = 1
    patterns[1, :, ::2] = 1
    patterns[2, :4, :] = 1
    patterns[3, :, :4] = 1
    x = patterns[rng.integers(0, 4, n)]
    flip = rng.random(x.shape) < 0.05
    return np.where(flip, 1 - x, x).astype(np.uint8)[:, None]


def tiny_params(root: Path, epochs: int = 3, **overrides) -> dict:
    """A params dict with one synthetic binary data set prepared under root."""
    prepared = root / "prepared" / "test" / "stripes"
    prepared.mkdir(parents=True, exist_ok=True)
    for i, (split, n) in enumerate([("train", 256), ("valid", 64), ("test", 32)]):
        with open(prepared / f"{split}.npz", "wb") as f:
            np.savez(f, x=stripe_images(n, seed=i))
    train = {"epochs": epochs, "batch_size": 32, "optimizer": "adamax", "lr": 3e-3, "warmup_epochs": 0, "patience": 0, "ema": 0.0}
    profile = {
        "substitute": {},
        "subset": None,
        "network": {"kind": "mlp", "hidden": 32, "layers": 1, "z_dim": 4, "context_dim": 8},
        "ladder": {},
        "train": train,
        "eval": {"K": 16, "batch_size": 16, "is_curve_points": 8, "curve_K": [1, 4, 16]},
        "ais": {},
        "gaps": {},
        "sample_quality": {"samples": 16, "sets": 2, "classifier_epochs": 1, "batch_size": 16},
        "resources": {"threads": 1},
    }
    for key, value in overrides.items():  # training settings may be given flat: tiny_params(root, lr=1e-3)
        (train if key in TRAIN_KEYS else profile)[key] = value
    return {
        "code_version": 1,
        "profile": "test",
        "seeds": [0],
        "data": {"raw_dir": str(root / "raw"), "prepared_dir": str(root / "prepared"), "mirror": None},
        "datasets": {
            "stripes": {
                "kind": "synthetic",
                "binarize": "fixed",
                "likelihood": "bernoulli",
                "shape": list(TINY_SHAPE),
                "splits": {"train": 256, "valid": 64, "test": 32},
            }
        },
        "profiles": {"test": profile},
        "tables": {},
    }


def add_gray_dataset(params: dict, root: Path, name: str, shape: tuple[int, int, int], likelihood: str,
                     sizes: tuple[int, int, int]) -> None:
    """Prepare an 8-bit data set of four grey levels with noise (learnable) under root, and add it to params."""
    prepared = root / "prepared" / "test" / name
    prepared.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "valid", "test"), sizes):
        base = rng.integers(0, 4, (n, 1, 1, 1)) * 60
        images = np.clip(base + rng.integers(0, 20, (n, *shape)), 0, 255).astype(np.uint8)
        with open(prepared / f"{split}.npz", "wb") as f:
            np.savez(f, x=images)
    params["datasets"][name] = {"kind": "synthetic", "binarize": "none", "likelihood": likelihood, "shape": list(shape),
                                "splits": dict(zip(("train", "valid", "test"), sizes))}


@pytest.fixture
def one_thread():
    """torch on one thread for the test, as it was after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny(tmp_path):
    """A factory: tiny(model, **profile overrides) -> RunConfig on synthetic stripes."""
    torch.manual_seed(0)

    def make(model: str = "vae", seed: int = 0, **overrides):
        params = tiny_params(tmp_path, **overrides)
        return RunSpec.resolve(copy.deepcopy(params), "test", "stripes", model, seed)

    return make


REPO = Path(__file__).resolve().parents[1]


def synthetic_mirror(root: Path, n_mnist_train: int = 900, n_test: int = 200) -> dict[str, dict]:
    """Write MNIST IDX and binarized-MNIST .amat files in their real formats; return params file entries."""
    rng = np.random.default_rng(0)
    digits = stripe_images(n_mnist_train + n_test, seed=7)[:, 0]  # 8x8 patterns, scaled up to 28x28
    images = np.kron(digits, np.ones((4, 4), dtype=np.uint8))[:, 2:30, 2:30] * 255
    labels = rng.integers(0, 10, n_mnist_train + n_test)
    (root / "mnist").mkdir(parents=True, exist_ok=True)
    (root / "binarized_mnist").mkdir(parents=True, exist_ok=True)
    files = {
        "mnist/train-images-idx3-ubyte.gz": images[:n_mnist_train],
        "mnist/train-labels-idx1-ubyte.gz": labels[:n_mnist_train],
        "mnist/t10k-images-idx3-ubyte.gz": images[n_mnist_train:],
        "mnist/t10k-labels-idx1-ubyte.gz": labels[n_mnist_train:],
    }
    for rel, arr in files.items():
        write_idx(root / rel, arr)
    binary = (images > 127).astype(np.uint8)
    sizes = {"train": n_mnist_train - 300, "valid": 300, "test": n_test}
    start = 0
    for split, n in sizes.items():
        write_amat(root / f"binarized_mnist/binarized_mnist_{split}.amat", binary[start : start + n])
        start += n
    return {
        rel: {"size": (root / rel).stat().st_size, "md5": md5(root / rel)}
        for rel in [*files, *(f"binarized_mnist/binarized_mnist_{s}.amat" for s in sizes)]
    }


def project_copy(
    dest: Path, rows_per_table: int = 2, latent2d_variants: int = 1, tables: list[str] | None = None,
    summaries: list[str] | None = None,
) -> Path:
    """A git copy of the project with a synthetic data mirror and tables cut to their first rows, one seed each;
    with `tables`, only those tables (and the summaries' mentions of them) are kept; with `summaries`, only those
    named summaries (each draws its own figures).

    The data sets' checksums and split sizes in the copy's params.yaml are rewritten for the
    synthetic files, and dvc.yaml is regenerated; returns the mirror folder.
    """
    import fnmatch
    import shutil
    import subprocess
    import sys

    import yaml

    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in listed:
        if (REPO / rel).is_file() and not rel.startswith(("reports/", "results/", "data/", "logs/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    mirror = dest.parent / f"{dest.name}-mirror"
    entries = synthetic_mirror(mirror)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for name, entry in params["datasets"].items():
        for f in (entry.get("files") or {}).values():
            if f["path"] in entries:
                f.pop("sha256", None)
                f.update(entries[f["path"]])
        if entry["kind"] in ("amat", "idx"):
            entry["splits"] = {"train": 600, "valid": 300, "test": 200}
    if tables is not None:
        params["tables"] = {name: params["tables"][name] for name in tables}
        for name, summary in list(params["summaries"].items()):
            summary["tables"] = [t for t in summary["tables"] if t in params["tables"]]
            if not summary["tables"]:
                del params["summaries"][name]
    if summaries is not None:
        params["summaries"] = {name: params["summaries"][name] for name in summaries}
    for table in params["tables"].values():
        table["rows"] = [{k: v for k, v in row.items() if k != "seeds"} for row in table["rows"][:rows_per_table]]
    params["figures"]["latent2d"]["variants"] = params["figures"]["latent2d"]["variants"][:latent2d_variants]
    kept = {row["model"] for table in params["tables"].values() for row in table["rows"]}
    kept |= set(params["figures"]["latent2d"]["variants"])
    for name, budget in list((params.get("budgets") or {}).items()):  # a budget for rows cut here matches nothing
        if "models" in budget and not any(fnmatch.fnmatchcase(m, pat) for m in kept for pat in budget["models"]):
            del params["budgets"][name]
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "flowvae"), "dvc-yaml"], cwd=dest, check=True, capture_output=True)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=dest, check=True)
    return mirror


def set_active_profile(project: Path, name: str) -> None:
    """Make `name` the active profile of a project copy (its profile.yaml)."""
    (project / "profile.yaml").write_text(f"profile: {name}\n")


def quadrature_log_px(model, x, half_width: float, points: int):
    """log p(x) per image of a 2-D latent model (N(0, I) prior) by summing over a points x points grid on
    [-half_width, half_width]^2: the exact value the estimators are checked against."""
    import math

    g = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    step = (g[1] - g[0]).item()
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        params = model.decoder(grid)
        log_prior = -0.5 * (grid**2).sum(-1) - math.log(2 * math.pi)
        return torch.stack([torch.logsumexp(model.likelihood.log_prob(params, x[i : i + 1]) + log_prior, 0) + 2 * math.log(step)
                            for i in range(x.shape[0])])


# The files that take longest, in wall seconds on 3 workers (`--cpu-times`, 2026-12-02, commit 5de2759). They start
# first, longest first, so that the workers finish together; figures gone stale cost balance, not correctness.
LONGEST_FILES = {
    "test_pipeline.py": 344, "test_invalidation.py": 285, "test_slurm.py": 229, "test_provenance.py": 110,
    "test_dvc_remote.py": 106, "test_train_paths.py": 105, "test_ci_workflow.py": 93,
    "test_results_match_settings.py": 82, "test_snakemake_report.py": 78,
}


def pytest_collection_modifyitems(items):
    """The longest files first (LONGEST_FILES), then the other files holding slow tests, each file's tests in their
    order: on several workers (`make test`: --dist loadfile --no-loadscope-reorder, which keeps this order) a long
    end-to-end test then starts early instead of running alone at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (-LONGEST_FILES.get(item.path.name, 0), item.path not in slow_files))
