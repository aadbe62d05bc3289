"""Data-parallel training (runs/distributed.py): N gloo processes on the CPU train as one process with the same
global batch; a SIGTERM to one of them leaves one checkpoint that 1 or 2 processes resume alike."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import tiny_params
from flowvae import cli
from flowvae.files.errors import EXIT_TIME_BOX
from flowvae.runs import distributed
from flowvae.spec.layout import RunFolder

TOL = 1e-6


def _params(root: Path, **overrides) -> Path:
    """The tiny stripes data set as 8-bit grey images, dynamically binarized; 3 batches of 32 per epoch; a
    validation set of 41 images, whose last batch of 9 splits unevenly over two processes."""
    params = tiny_params(root, ema=0.9, subset={"train": 96, "valid": 41, "test": 32}, **overrides)
    params["datasets"]["stripes"]["binarize"] = "dynamic"
    rng = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        path = root / "prepared/test/stripes" / f"{split}.npz"
        x = np.load(path)["x"]
        with open(path, "wb") as f:
            np.savez(f, x=(x * 180 + rng.integers(0, 60, x.shape)).astype(np.uint8))
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _args(path: Path, model: str, out: Path) -> list[str]:
    return ["train", "--params", str(path), "--dataset", "stripes", "--model", model, "--threads", "1", "--out", str(out)]


def _state(run: Path) -> dict:
    return torch.load(run / "checkpoint/state.pt", weights_only=True)


def _assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = _state(a), _state(b)
    assert (sa["state"]["epoch"], sa["state"]["global_step"]) == (sb["state"]["epoch"], sb["state"]["global_step"])
    for part in ("model", "ema"):
        assert sa[part].keys() == sb[part].keys()
        worst = max((sa[part][k].double() - sb[part][k].double()).abs().max().item() for k in sa[part])
        assert worst <= TOL, f"{part}: {a.name} and {b.name} differ by {worst:.3g}"


def test_two_gloo_processes_train_as_one_process_with_the_same_global_batch(tmp_path):
    # The ladder: noise drawn as (samples * batch, ...), parameters that get no gradient, and free bits high
    # enough that some groups sit at the floor, whose clamp must see the global batch's KL, not a shard's.
    path = _params(tmp_path, epochs=1, ladder={"channels": 8, "z_channels": 2, "free_bits": 0.8})
    model = "resvae_r2_iaf"
    assert cli.main([*_args(path, model, tmp_path / "one")]) == 0
    assert cli.main([*_args(path, model, tmp_path / "two"), "--nproc", "2"]) == 0
    _assert_same_weights(tmp_path / "one", tmp_path / "two")  # 3 steps, EMA included
    state = _state(tmp_path / "two")["state"]
    assert state["global_step"] == 3 and state["history"][0]["train_loss"] > state["history"][0]["train_neg_elbo"]  # free bits bit
    one, two = (_state(tmp_path / r)["state"]["history"][0] for r in ("one", "two"))
    for key in ("train_neg_elbo", "val_neg_elbo", "val_kl"):  # the epoch's sums and the sharded validation
        assert two[key] == pytest.approx(one[key], rel=1e-6), key
    # rank 0 alone wrote the run's files, and wrote each once
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


HOOK = """
import os, signal, sys
from flowvae import cli
from flowvae.runs import train

real, calls = train.objective, [0]

def sigterm_rank0_at_step_5(*args, **kwargs):  # only rank 0 gets the signal: the other must stop with it
    calls[0] += 1
    if calls[0] == 5 and os.environ["RANK"] == "0":
        os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)

train.objective = sigterm_rank0_at_step_5
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigterm_mid_epoch_leaves_one_checkpoint_that_two_or_one_processes_resume_alike(tmp_path):
    path = _params(tmp_path, epochs=2)
    model = "vae_iwae2"  # noise drawn as (samples, batch, latent)
    assert cli.main(_args(path, model, tmp_path / "straight")) == 0

    hook = tmp_path / "hook.py"
    hook.write_text(HOOK)
    stopped = tmp_path / "two"
    worker = [str(hook), *_args(path, model, stopped), "--nproc", "2"]
    marker = RunFolder(stopped).stopped
    assert distributed.launch(worker, distributed.Plan(2), stopped=marker) == EXIT_TIME_BOX
    state = _state(stopped)["state"]
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)  # epoch 2, step 2 of 3: both stopped after the same step
    assert "SIGTERM received" in marker.read_text()
    assert not (stopped / "model.safetensors").exists()
    assert sorted(p.name for p in (stopped / "checkpoint").iterdir()) == ["best.safetensors", "state.pt", "stopped.json"]  # no stray writes
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the launcher put the handlers back

    shutil.copytree(stopped, tmp_path / "one")
    assert cli.main([*_args(path, model, stopped), "--nproc", "2"]) == 0
    assert cli.main(_args(path, model, tmp_path / "one")) == 0
    _assert_same_weights(tmp_path / "straight", stopped)
    _assert_same_weights(tmp_path / "straight", tmp_path / "one")
    assert not marker.exists()


def test_a_global_batch_that_does_not_divide_is_refused_before_any_process_starts(tmp_path, capsys):
    path = _params(tmp_path, epochs=1)
    assert cli.main([*_args(path, "vae", tmp_path / "run"), "--nproc", "3"]) == 1
    err = capsys.readouterr().err
    assert "train.batch_size 32 does not divide by the 3 training processes" in err and "e.g. 33" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("shape", [(2, 5, 3), (2 * 5, 4, 2, 2)])
def test_draws_in_a_shard_are_the_global_batchs_draw_cut_to_it(shape):
    samples, total = 2, 9  # a shard of images [3, 8) of 9, two samples each
    layout_b = len(shape) == 3  # (samples, batch, ...) or else (samples * batch, ...)
    global_shape = (samples, total, *shape[2:]) if layout_b else (samples * total, *shape[1:])

    def cut(t):
        return t[:, 3:8] if layout_b else t.reshape(samples, total, *shape[1:])[:, 3:8].reshape(shape)

    torch.manual_seed(0)
    whole, whole_uniform, after = torch.randn(global_shape), torch.rand(global_shape), torch.rand(3)
    torch.manual_seed(0)
    with distributed.GlobalDraws(samples, 3, 8, total):
        part = torch.randn(shape)
        uniform = torch.rand_like(torch.zeros(shape))
    assert torch.equal(part, cut(whole)) and torch.equal(uniform, cut(whole_uniform))
    assert torch.equal(torch.rand(3), after)  # the generator advanced as the global draws advance it
    with distributed.GlobalDraws(samples, 3, 8, total), pytest.raises(RuntimeError, match=r"no dimension of this process's 5 images"):
        torch.randn(7, 3)
    with distributed.GlobalDraws(samples, 3, 8, total), pytest.raises(RuntimeError, match="bernoulli"):
        torch.bernoulli(torch.full(shape, 0.5))


def test_process_plans(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert distributed.plan_processes(8, 1, None, None, env={}) == distributed.Plan(8, 1, "cuda")
    # a SLURM job of one task per node on two nodes: each node's task launches its 4
    slurm = {"SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "2"}
    assert distributed.plan_processes(8, 1, None, None, env=slurm) == distributed.Plan(4, 2, "cuda")
    assert distributed.plan_processes(8, 1, None, "cpu", env={}) == distributed.Plan(1, 1, "cpu")  # resources.nproc
    assert distributed.plan_processes(8, 1, 2, None, env={}) == distributed.Plan(2, 1, "cpu")  # --nproc: CPU processes
    with pytest.raises(ValueError, match="--nproc starts CPU processes"):
        distributed.plan_processes(0, 1, 2, "cuda", env={})
    with pytest.raises(ValueError, match="do not divide over the job's 2 nodes"):
        distributed.plan_processes(3, 1, None, None, env=slurm)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.plan_processes(8, 2, None, None, env={}) == distributed.Plan(2, 1, "cpu")  # no CUDA here
