"""A data set added from local files, as the README's Fashion-MNIST walk-through does it: an IDX entry in params.yaml,
its files in a second mirror, and a Snakemake target that prepares it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from conftest import md5, project_copy, write_idx
from flowvae.data.prepare import load_split

BIN = Path(sys.executable).parent


def test_an_idx_data_set_in_a_second_mirror_prepares_through_snakemake(tmp_path):
    project = tmp_path / "project"
    mnist_mirror = project_copy(project, rows_per_table=1)
    second = tmp_path / "fashion mirror"
    (second / "fashion").mkdir(parents=True)
    rng = np.random.default_rng(3)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (700, 28, 28)),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 700),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (200, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 200),
    }
    for name, arr in arrays.items():
        write_idx(second / "fashion" / name, arr)
    roles = dict(zip(("train_images", "train_labels", "test_images", "test_labels"), arrays))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["datasets"]["fashion_tiny"] = {
        "kind": "idx", "binarize": "none", "likelihood": "discretized_logistic", "shape": [1, 28, 28],
        "splits": {"train": 600, "valid": 100, "test": 200},
        "files": {role: {"path": f"fashion/{name}", "url": "http://127.0.0.1:9/unreachable", "size": (second / "fashion" / name).stat().st_size,
                         "md5": md5(second / "fashion" / name)} for role, name in roles.items()},
    }
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "FLOWVAE_DATA_MIRROR": f"{mnist_mirror}:{second.as_uri()}"}
    valid = subprocess.run([str(BIN / "flowvae"), "validate"], cwd=project, env=env, capture_output=True, text=True)
    assert valid.returncode == 0, valid.stderr
    target = "data/prepared/smoke/fashion_tiny/test.npz"
    result = subprocess.run([str(BIN / "snakemake"), "--cores", "1", "--config", "profile=smoke", "--", target],
                            cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    x, y = load_split(project / target)
    assert x.shape == (128, 1, 28, 28) and y is not None and len(y) == 128  # the smoke profile's test subset
    assert set(np.unique(x)) - set(range(256)) == set()
