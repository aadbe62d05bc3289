"""The smoke profile trains and evaluates the variants of tables 3 and 4 on its synthetic CIFAR-10 stand-in."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from flowvae.spec.params import read_params

from flowvae.spec.layout import prepared_dir
from flowvae.spec.params import source_dataset
from flowvae.spec.run import RunSpec
from flowvae.spec.datasets import DatasetSpec
from flowvae.spec.variants import parse_variant
from flowvae.data.prepare import prepare
from flowvae.runs.evaluate import evaluate
from flowvae.runs.train import Trainer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    params = read_params(REPO / "params.yaml")
    params["data"] = {"raw_dir": str(root / "raw"), "prepared_dir": str(root / "prepared"), "mirror": None}
    source = source_dataset(params, "smoke", "cifar10")
    assert source == "synthetic_cifar10"
    spec = DatasetSpec.from_params(source, params["datasets"][source])
    prepare(spec, root / "raw", prepared_dir(params, "smoke", "cifar10"), subset=params["profiles"]["smoke"]["subset"])
    return params, root


def _variants(params, table):
    """The table's models; of table 4's ResNet VAEs, both posteriors at the fewest rungs and the IAF at the next
    count (more rungs build nothing a second count does not; the 20-rung IAF alone cost 53 s of CPU here)."""
    models = [row["model"] for row in params["tables"][table]["rows"]]
    if table != "table4":
        return models
    rungs = sorted({parse_variant(m).steps for m in models})
    return [m for m in models if parse_variant(m).steps == rungs[0] or (parse_variant(m).steps == rungs[1] and m.endswith("_iaf"))]


@pytest.mark.slow
@pytest.mark.parametrize("table", ["table3", "table4"])
def test_the_cifar_variants_train_and_evaluate(smoke, table):
    params, root = smoke
    for model in _variants(params, table):
        cfg = RunSpec.resolve(params, "smoke", "cifar10", model, 0)
        out = root / "results" / model
        Trainer(cfg, out).run()
        metrics = evaluate(cfg, out)
        assert metrics["dataset"] == "cifar10" and metrics["data_source"] == "synthetic_cifar10"
        bpd = metrics["bits_per_dim"]
        assert math.isfinite(bpd["neg_log_px"]) and 0 < bpd["neg_log_px"] <= bpd["neg_elbo"] + 1e-6
        assert bpd["neg_log_px"] == pytest.approx(metrics["neg_log_px"] / (3072 * math.log(2)))
