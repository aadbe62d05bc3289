"""The package's layers: spec/ and pipeline/ without torch, a run resolved once, one family table, one run-folder layout."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from flowvae.spec.params import read_params

import flowvae
from flowvae.models.build import build_model, build_variant, count_parameters
from flowvae.pipeline import plan
from flowvae.spec import families, run as run_module
from flowvae.spec.layout import RUN_PATTERN, RunFolder, run_dir
from flowvae.spec.run import RunSpec
from flowvae.spec.settings import MODEL_BLOCKS, LadderSettings, NetworkSettings, PixelCNNSettings, PixelFlowSettings
from flowvae.spec.variants import parse_variant, variant_sort_key

REPO = Path(__file__).resolve().parents[1]
SRC = Path(flowvae.__file__).parent
BIN = Path(sys.executable).parent

def _without_torch(tmp_path: Path, blocked: tuple[str, ...] = ("torch", "numpy")) -> dict[str, str]:
    """An environment whose Python processes cannot import the `blocked` packages (a sitecustomize sets them to None)."""
    blocker = tmp_path / "blocker"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(SRC.parent)])}


def test_the_blocker_blocks(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", "import torch"], env=_without_torch(tmp_path), capture_output=True, text=True)
    assert result.returncode != 0 and "torch" in result.stderr


@pytest.mark.parametrize(
    "module",
    ["flowvae.pipeline.plan", "flowvae.pipeline.dvcgen", "flowvae.pipeline.status", "flowvae.pipeline.audit",
     "flowvae.spec.run", "flowvae.spec.families", "flowvae.spec.layout", "flowvae.spec.schema"],
)
def test_the_planning_layer_imports_without_torch(tmp_path: Path, module: str) -> None:
    result = subprocess.run([sys.executable, "-c", f"import {module}"], env=_without_torch(tmp_path), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_resolving_every_planned_run_needs_no_torch(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        from flowvae.pipeline import plan
        from flowvae.spec.params import read_params
        from flowvae.spec.run import RunSpec
        params = read_params("params.yaml")
        runs = plan.all_runs(params)
        for r in runs:
            RunSpec.resolve(params, "quick", r.dataset, r.model, r.seed).record()
        print(len(runs))
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_without_torch(tmp_path), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 50


@pytest.mark.slow
def test_a_snakemake_dry_run_imports_no_torch(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "snakemake"), "-n", "--", "reports/quick/summary_mnist.md"],
        cwd=REPO, env=_without_torch(tmp_path, ("torch",)), capture_output=True, text=True,
    )  # Snakemake's SLURM plugin needs numpy (through pandas), so only torch is blocked here
    assert result.returncode == 0, result.stderr[-2000:]


def _params() -> dict:
    return read_params(REPO / "params.yaml")


@pytest.mark.parametrize("model", ["vae", "nf10", "iaf_d2_w320_fixed", "osnf4_m8", "resvae_r4_iaf", "vae_iwae50"])
def test_a_run_is_resolved_with_one_parse_of_its_name(monkeypatch, model: str) -> None:
    calls = []
    real = run_module.parse_variant
    monkeypatch.setattr(run_module, "parse_variant", lambda name: calls.append(name) or real(name))
    params = _params()
    dataset = "cifar10" if model.startswith("resvae") else "binarized_mnist"
    first = RunSpec.resolve(params, "quick", dataset, model, 1)
    assert calls == [model]
    second = RunSpec.resolve(copy.deepcopy(params), "quick", dataset, model, 1)
    assert first.record() == second.record() and first == second
    assert json.dumps(first.record(), sort_keys=True) == json.dumps(second.record(), sort_keys=True)


def test_a_record_gives_back_the_same_run() -> None:
    params = _params()
    for dataset, model in [("binarized_mnist", "iaf_d2_w320"), ("cifar10", "resvae_r4_gauss"), ("mnist_8bit", "realnvp_s2_b2"),
                           ("mnist_digits4", "nf4"), ("binarized_mnist", "pixelcnn_l4_c32_gated")]:
        spec = RunSpec.resolve(params, "quick", dataset, model, 2)
        again = RunSpec.from_record(spec.record(), spec.eval, spec.resources, spec.prepared_dir)
        assert again == spec and again.record() == spec.record()


def test_each_family_reads_its_own_block() -> None:
    params = _params()
    assert isinstance(RunSpec.resolve(params, "quick", "cifar10", "resvae_r4_iaf", 0).network, LadderSettings)
    assert isinstance(RunSpec.resolve(params, "quick", "mnist_8bit", "realnvp_s2_b2", 0).network, PixelFlowSettings)
    assert isinstance(RunSpec.resolve(params, "quick", "mnist_8bit", "pixelcnn_l2_c16", 0).network, PixelCNNSettings)
    digits = RunSpec.resolve(params, "quick", "mnist_digits4", "vae", 0).network
    assert isinstance(digits, NetworkSettings) and digits.z_dim == params["datasets"]["mnist_digits4"]["network"]["z_dim"]
    for fam in families.FAMILIES:
        assert fam.block in MODEL_BLOCKS
        for target in (fam.builder, fam.trainer, fam.evaluator):
            families.load(target)
        if fam.flow:
            families.load(fam.flow)


def test_build_model_builds_what_the_spec_says() -> None:
    spec = RunSpec.resolve(_params(), "smoke", "binarized_mnist", "iaf_d2_w320", 0)
    model = build_model(spec)
    assert model.settings == spec.network and model.variant == spec.variant
    again = build_variant("iaf_d2_w320", spec.network.record(), spec.image_shape, "bernoulli")
    assert count_parameters(again) == count_parameters(model)


def test_the_run_folder_has_one_owner() -> None:
    folder = RunFolder(run_dir("quick", "binarized_mnist", "vae", 3))
    assert str(folder.root) == RUN_PATTERN.format(profile="quick", dataset="binarized_mnist", model="vae", seed=3)
    assert plan.Run("binarized_mnist", "vae", 3).path("quick", "eval.json") == str(folder.eval)
    spelled = []
    for path in SRC.rglob("*.py"):
        if path.name == "layout.py":
            continue
        text = path.read_text()
        spelled += [f"{path.relative_to(SRC)}: {name}" for name in ('"eval.json"', '"model.safetensors"', '"train.jsonl"',
                    '"settings.json"', '"paper_results.csv"', '"checkpoint/state.pt"', '"samples.npz"') if name in text]
    assert spelled == []


def test_variants_sort_in_the_family_tables_order() -> None:
    names = ["realnvp_s2_b2", "tsnf4", "vae", "iaf_d2_w320", "nf10", "nf2", "resvae_r4_iaf", "osnf4_m8"]
    order = sorted(names, key=variant_sort_key)
    assert order == ["vae", "nf2", "nf10", "iaf_d2_w320", "osnf4_m8", "tsnf4", "resvae_r4_iaf", "realnvp_s2_b2"]
    assert [parse_variant(n).family for n in order] == ["vae", "nf", "nf", "iaf", "osnf", "tsnf", "resvae", "realnvp"]


TOY_FAMILY = '''
FAMILIES = FAMILIES + (Family("toy", rf"toy(?P<steps>{N})", "toy{k}", flow="flowvae.models.toy:shift_flow"),)
BY_NAME = {f.name: f for f in FAMILIES}
'''

TOY_MODULE = '''
"""A toy posterior flow: k learnt shifts of the latent (log|det| = 0)."""

import torch
from torch import nn

from flowvae.models.flows import Flow


class Shifts(Flow):
    def __init__(self, dim: int, steps: int) -> None:
        super().__init__()
        self.dim, self.context_size = dim, 0
        self.shifts = nn.Parameter(torch.zeros(steps, dim))

    def forward(self, z, context):
        return z + self.shifts.sum(0), z.new_zeros(z.shape[:-1])

    def inverse(self, z, context):
        return z - self.shifts.sum(0), z.new_zeros(z.shape[:-1])


def shift_flow(variant, dim, settings):
    return Shifts(dim, variant.steps)
'''


@pytest.mark.slow
def test_adding_a_family_is_one_table_entry_and_its_module(tmp_path: Path) -> None:
    """In a copy of the package: append the family, add its module, then train and evaluate a run of it."""
    from conftest import tiny_params

    copy_src = tmp_path / "src"
    shutil.copytree(SRC, copy_src / "flowvae", ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy_src / "flowvae" / "spec" / "families.py", "a") as f:
        f.write(TOY_FAMILY)
    (copy_src / "flowvae" / "models" / "toy.py").write_text(TOY_MODULE)
    params = tiny_params(tmp_path, epochs=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(copy_src)}
    args = ["--params", "params.yaml", "--dataset", "stripes", "--model", "toy3", "--out", "run"]
    for command in ("train", "evaluate"):
        result = subprocess.run([sys.executable, "-m", "flowvae.cli", command, *args], cwd=tmp_path, env=env,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert metrics["model"] == "toy3" and metrics["neg_log_px"] > 0
    described = subprocess.run([sys.executable, "-m", "flowvae.cli", "describe", "toy3", "--params", "params.yaml",
                                "--dataset", "stripes"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "Shifts" in described.stdout, described.stderr[-2000:]
    # the unmodified package does not know the name
    assert subprocess.run([sys.executable, "-m", "flowvae.cli", "train", *args], cwd=tmp_path, capture_output=True).returncode == 1


def test_make_run_builds_the_headline_table_that_the_readme_names() -> None:
    """`make run`'s default target is the one the README's first command shows, and it holds table 1 only (the
    full MNIST build is a named TARGET, not the default: it takes hours)."""
    makefile = (REPO / "Makefile").read_text()
    target = next(line.split("?=")[1].strip() for line in makefile.splitlines() if line.startswith("TARGET ?="))
    readme = (REPO / "README.md").read_text()
    first_command = next(line for line in readme.splitlines() if line.startswith("make run "))
    assert f"snakemake --cores 2 {target}" in first_command
    summary = Path(target).stem
    assert plan.summary_tables(_params(), summary) == ["table1"]
    assert "make run TARGET=reports/quick/summary_mnist.md" in readme
