"""The model contract (model.py) that train, evaluate, bench and the figures rely on, kept by both model kinds."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import flowvae
from flowvae.models.build import build_variant, describe
from flowvae.models.ladder import LadderVAE
from flowvae.models.contract import LatentVariableModel, VAEOutput
from flowvae.models.vae import VAE

SRC = Path(flowvae.__file__).parent
MLP = {"kind": "mlp", "hidden": 16, "layers": 1, "z_dim": 2, "context_dim": 3}
LADDER = {"channels": 4, "z_channels": 2, "free_bits": 0.25}


def models() -> dict[str, LatentVariableModel]:
    """One model of each kind."""
    torch.manual_seed(0)
    return {
        "vae": build_variant("iaf_d1_w8", MLP, (1, 8, 8), "bernoulli"),
        "ladder": build_variant("resvae_r2_iaf", LADDER, (3, 8, 8), "discretized_logistic"),
    }


@pytest.mark.parametrize("kind", ["vae", "ladder"])
def test_every_contract_member_is_set(kind: str) -> None:
    m = models()[kind]
    assert isinstance(m, LatentVariableModel)
    for name in LatentVariableModel.__annotations__:
        getattr(m, name)  # AttributeError names a missing member
    assert m.variant.name == ("iaf_d1_w8" if kind == "vae" else "resvae_r2_iaf")
    assert m.image_shape == ((1, 8, 8) if kind == "vae" else (3, 8, 8))
    assert not hasattr(m, "net")
    x = torch.rand(2, *m.image_shape)
    m.initialize(x)
    with torch.no_grad():
        out = m(x, n_samples=3)
        assert type(out) is VAEOutput and out.z.shape == (3, 2, m.latent_dim) and out.mu.shape == (2, m.latent_dim)
        assert m.decode_mean(m.encode_mean(x)).shape == m.reconstruct(x).shape == x.shape
        assert m.sample(2).shape == (2, *m.image_shape)


def test_the_two_kinds_differ_only_in_declared_members() -> None:
    vae, ladder = models()["vae"], models()["ladder"]
    assert type(vae) is VAE and type(ladder) is LadderVAE
    assert vae.has_posterior_density and vae.free_bits == 0.0 and vae.settings.made_layers == 1
    assert not ladder.has_posterior_density and ladder.free_bits == 0.25 and ladder.settings.free_bits == 0.25
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(NotImplementedError, match="LadderVAE"):
        ladder.log_q(torch.zeros(1, 1, ladder.latent_dim), x)
    z = torch.zeros(5, 1, 2)
    assert vae.log_q(z, torch.rand(1, 1, 8, 8)).shape == (5, 1)
    for m in (vae, ladder):
        header = f"model: {m.variant.name}\nsettings: {m.settings}\nlikelihood: {m.likelihood.name}\n"
        assert describe(m).startswith(header)


def test_vae_output_is_defined_once() -> None:
    import flowvae.models.ladder
    import flowvae.models.vae

    assert flowvae.models.vae.VAEOutput is flowvae.models.ladder.VAEOutput is VAEOutput
    defined = [p.name for p in SRC.rglob("*.py") if "class VAEOutput" in p.read_text()]
    assert defined == ["contract.py"]


@pytest.mark.parametrize("module, other", [("models.vae", "models.ladder"), ("models.ladder", "models.vae")])
def test_no_import_cycle_between_vae_and_ladder(module: str, other: str) -> None:
    code = f"import sys, flowvae.{module}; assert 'flowvae.{other}' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ["models/contract.py", "models/vae.py", "models/ladder.py", "models/build.py", "runs/inference.py", "bench.py"])
def test_no_attribute_probing(name: str) -> None:
    """Callers use the contract's members; nothing asks a model what it has."""
    tree = ast.parse((SRC / name).read_text())
    calls = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert not {"hasattr", "getattr"} & set(calls)
