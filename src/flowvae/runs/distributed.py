"""Data-parallel training: one run in N processes (torch.distributed, DistributedDataParallel).

How many: `resources.gpus: N` > 1 on a CUDA machine (NCCL, one process per GPU), else
`resources.nproc` or `flowvae train --nproc N` (gloo, CPU processes). Who starts them: `flowvae train`
itself, through torchrun's launcher (torch.distributed.launcher.api.elastic_launch, what `torchrun`
runs), so the command of the Snakemake rule and of the DVC stage is the same for 1 or N processes; a
process that torchrun started (RANK and WORLD_SIZE in its environment, e.g. `torchrun --nproc-per-node 8
-m flowvae.cli train ...` by hand) is a worker. On several nodes (a SLURM job of one task per node,
`srun flowvae train ...`), each node's task launches its share of the processes and they meet at the
first node of the job (c10d rendezvous on port 29500, run id = the SLURM job id).

What makes N processes train as one (the same parameters as one process to float tolerance):

- every process cuts the *global* batch (same order, same dynamic binarization: `Batches` draws them
  from the shared seed) and keeps its equal shard; the loss is a mean over the shard and DDP averages the
  gradients, which is then the gradient of the mean over the global batch (so the global batch must
  divide by N: `check_batch`);
- every random draw of the model's forward is drawn for the whole global batch, on every process from
  the same generator state, and cut to the process's shard (`GlobalDraws`), so the noise is the single
  process's and the generators stay in step with it (a checkpoint resumes in any number of processes);
- the ladder's free bits clamp the KL of each group averaged over the *global* batch (`global_free_bits`);
- host decisions (stop on a signal or time box, a periodic checkpoint) are agreed by all processes after
  every step (`Context.agree`), and the NaN guard looks at the terms averaged over the processes, so all
  stop, or raise, after the same step; rank 0 alone writes files.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from flowvae.files.errors import EXIT_TIME_BOX

WORKER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
RENDEZVOUS_PORT = 29500  # the multi-node rendezvous on the job's first node (torchrun's default port)
TIMEOUT = datetime.timedelta(minutes=30)  # a collective waiting longer than this fails the run (a lost process)


# ------------------------------------------------------------------ the processes of one run


@dataclass
class Context:
    """This process's place in a run: rank, world size, local rank (the GPU it drives); world 1: no-op."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    flags_group: object = None  # a gloo group for host-side flags (no device sync under NCCL)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """[start, stop) of this process's share of n items (sizes differ by at most one)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def agree(self, *flags: bool) -> list[bool]:
        """Each flag True on any process -> True on every process (one small all-reduce on the host)."""
        if not self.enabled:
            return list(flags)
        t = torch.tensor([int(f) for f in flags], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.flags_group)
        return [bool(v) for v in t.tolist()]

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum over the processes of a tensor (a new tensor; the argument is left as it was)."""
        if not self.enabled:
            return t
        out = t.detach().clone()
        dist.all_reduce(out)
        return out

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        return self.sum(t) / self.world if self.enabled else t

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(group=self.flags_group)


SINGLE = Context()


def is_worker() -> bool:
    """Whether torchrun (or its launcher) started this process as one of several."""
    return all(v in os.environ for v in WORKER_VARS) and int(os.environ["WORLD_SIZE"]) > 1


def init_worker(device: torch.device) -> tuple[Context, torch.device]:
    """Join the run's process group (NCCL on CUDA, gloo on CPU); the device this process trains on."""
    rank, world, local = (int(os.environ[v]) for v in WORKER_VARS)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"process {rank} has local rank {local} but this node shows {torch.cuda.device_count()} CUDA device(s)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
        flags = dist.new_group(backend="gloo", timeout=TIMEOUT)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
        flags = None
    return Context(rank, world, local, local_world, flags), device


def close(ctx: Context) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def check_batch(batch_size: int, world: int) -> None:
    """The global batch must split into equal shards, or the processes' mean gradient is not the batch's."""
    if world > 1 and batch_size % world:
        raise ValueError(
            f"train.batch_size {batch_size} does not divide by the {world} training processes: each process takes "
            f"an equal shard of every batch. Use a batch size that is a multiple of {world} (e.g. "
            f"{batch_size + world - batch_size % world}), or another number of processes (resources.gpus / resources.nproc / --nproc)"
        )


# ------------------------------------------------------------------ random draws of the global batch

_DRAWS = {torch.randn, torch.rand}
_DRAWS_LIKE = {torch.randn_like, torch.rand_like}
# Random functions whose draws GlobalDraws cannot cut to a shard: refused rather than silently different.
_REFUSED = {
    torch.normal, torch.bernoulli, torch.randint, torch.randint_like, torch.multinomial, torch.poisson, torch.randperm,
    torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.bernoulli_, torch.Tensor.exponential_,
    torch.Tensor.random_, torch.Tensor.cauchy_, torch.Tensor.log_normal_, torch.Tensor.geometric_,
    torch.nn.functional.dropout, torch.nn.functional.dropout2d, torch.nn.functional.alpha_dropout,
}


class GlobalDraws(TorchFunctionMode):
    """Inside a forward pass on images [start, stop) of a global batch of `total` images with `samples`
    samples each: torch.randn/rand(_like) draw for the whole global batch and return this shard's part.

    A draw is per image when its shape is (samples * b, ...) (samples outermost, as the ladder and the pixel
    flow draw) or (samples, b, ...) (the VAEs), b the shard's images; any other random draw is an error.
    Every process draws the same global tensor from the same generator state, so the noise, and the
    generator afterwards, are those of one process training on the global batch.
    """

    def __init__(self, samples: int, start: int, stop: int, total: int) -> None:
        super().__init__()
        self.samples, self.start, self.stop, self.total = samples, start, stop, total

    def _plan(self, size: tuple[int, ...]):
        s, b, n, a, z = self.samples, self.stop - self.start, self.total, self.start, self.stop
        if len(size) >= 1 and size[0] == s * b:
            rest = size[1:]
            return (s * n, *rest), lambda t: t.reshape(s, n, *rest)[:, a:z].reshape(size)
        if len(size) >= 2 and size[0] == s and size[1] == b:
            return (s, n, *size[2:]), lambda t: t[:, a:z]
        raise RuntimeError(
            f"a random draw of shape {tuple(size)} in the model's forward has no dimension of this process's {b} images "
            f"({s} sample(s) each): data-parallel training cannot cut it from the draw of one process; draw noise per "
            "image, shaped (samples * batch, ...) or (samples, batch, ...)"
        )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _DRAWS:
            size = tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else tuple(args)
            global_size, cut = self._plan(size)
            return cut(func(global_size, **kwargs)).contiguous()
        if func in _DRAWS_LIKE:
            like = args[0]
            global_size, cut = self._plan(tuple(like.shape))
            fmt = (torch.channels_last if like.dim() == 4 and not like.is_contiguous()
                   and like.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
            template = torch.empty(global_size, dtype=kwargs.get("dtype") or like.dtype, device=kwargs.get("device") or like.device,
                                   memory_format=fmt)
            rest = {k: v for k, v in kwargs.items() if k not in ("dtype", "device", "memory_format")}
            return cut(func(template, **rest)).contiguous(memory_format=fmt)
        if func in _REFUSED:
            raise RuntimeError(
                f"{getattr(func, '__name__', func)} in the model's forward: data-parallel training draws only torch.randn/rand"
                "(_like) per image for the global batch; this draw would differ from one process's"
            )
        return func(*args, **kwargs)


def global_free_bits(kl_groups: torch.Tensor, floor: float, ctx: Context) -> torch.Tensor:
    """The free-bits KL of the global batch (objectives.free_bits_kl over every process's images) on this shard.

    Its value is sum_g max(mean KL_g over the global batch, floor); its gradient, once DDP has averaged
    it over the processes, is that of the global batch: the groups above the floor pass their shard-mean
    gradient, the others none.
    """
    local = kl_groups.mean(dim=(0, 1))
    total = ctx.mean(local.detach())
    above = (total > floor).to(local.dtype)
    return torch.clamp(total, min=floor).sum() + (above * (local - local.detach())).sum()


def has_unused_parameters(model: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether some parameter gets no gradient from the model's outputs on x (DDP must then look for them in every
    step). The generators are left as they were."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        out = model(x, n_samples=1)
        total = sum(t.sum() for t in (out.log_px_z, out.log_pz, out.log_qz, out.kl_groups) if t is not None)
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(total, params, allow_unused=True)
    return any(g is None for g in grads)


# ------------------------------------------------------------------ launching the processes


@dataclass(frozen=True)
class Plan:
    """How many processes a training takes: per node, and over how many nodes; on which device kind."""

    nproc: int = 1
    nodes: int = 1
    device: str = "cpu"

    @property
    def world(self) -> int:
        return self.nproc * self.nodes


def plan_processes(gpus: int, nproc_resource: int, nproc_arg: int | None, device_arg: str | None, env=os.environ) -> Plan:
    """The processes of one `flowvae train`: --nproc N (CPU), else resources.gpus > 1 with CUDA, else resources.nproc (CPU).

    Within a SLURM job of one task per node on several nodes, the processes are split over the nodes.
    """
    if nproc_arg is not None:
        if nproc_arg > 1 and device_arg and torch.device(device_arg).type == "cuda":
            raise ValueError("--nproc starts CPU processes (gloo); for several GPUs set resources.gpus in params.yaml")
        world, device = nproc_arg, "cpu"
    elif gpus > 1 and (device_arg or "cuda").startswith("cuda") and torch.cuda.is_available():
        world, device = gpus, "cuda"
    else:
        world, device = nproc_resource, "cpu"
    nodes = _slurm_nodes(env)
    if world <= 1 or nodes == 1:
        return Plan(world, 1, device)
    if world % nodes:
        raise ValueError(f"{world} training processes do not divide over the job's {nodes} nodes (SLURM_JOB_NUM_NODES)")
    return Plan(world // nodes, nodes, device)


def _slurm_nodes(env) -> int:
    """Nodes of a SLURM job step of one task per node (srun --ntasks-per-node=1), else 1."""
    nodes, tasks = int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_JOB_NUM_NODES") or 1), env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")
    return nodes if nodes > 1 and tasks is not None and int(tasks) == nodes else 1


def rendezvous(plan: Plan, env=os.environ) -> tuple[str, str, int]:
    """(rendezvous endpoint, run id, node rank): this machine alone, or the SLURM job's first node."""
    if plan.nodes == 1:
        return "localhost:0", uuid.uuid4().hex, 0
    nodelist = env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"]
    first = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True).stdout.split()[0]
    return f"{first}:{RENDEZVOUS_PORT}", f"flowvae-{env.get('SLURM_JOB_ID', 'job')}", int(env.get("SLURM_NODEID", 0))


def launch(worker_args: list[str], plan: Plan, stopped: Path | None = None, env=os.environ) -> int:
    """Run `python <worker_args>` in plan.nproc processes on this node with torchrun's launcher; the exit status.

    0 when every process finished; 75 when they stopped on a time box or signal after their checkpoint
    (every failed process exited 75, or this launcher got SIGTERM/SIGUSR1, passed it on, and rank 0 wrote
    the `stopped` marker); 1 otherwise, naming the failed processes.
    """
    import logging

    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # our own line names the failures
    endpoint, run_id, node_rank = rendezvous(plan, env)
    config = LaunchConfig(
        min_nodes=plan.nodes, max_nodes=plan.nodes, nproc_per_node=plan.nproc, run_id=run_id,
        rdzv_backend="c10d", rdzv_endpoint=endpoint,  # the node named by the endpoint hosts the store
        max_restarts=0, monitor_interval=0.1, start_method="spawn",
        # SLURM's time limit and preemption send SIGTERM (or SIGUSR1): passed on to every process
        signals_to_handle="SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
    )
    if stopped is not None:
        stopped.unlink(missing_ok=True)
    where = f" on node {node_rank} of {plan.nodes}" if plan.nodes > 1 else ""
    print(f"flowvae train: {plan.world} training processes ({plan.device}){where}", file=sys.stderr, flush=True)
    handled = [getattr(signal, name) for name in config.signals_to_handle.split(",")]
    before = {sig: signal.getsignal(sig) for sig in handled}  # the launcher installs its own; put ours back after
    try:
        elastic_launch(config, entrypoint=sys.executable)(*worker_args)
    except ChildFailedError as exc:
        codes = {rank: f.exitcode for rank, f in exc.failures.items()}
        # The processes exit 75 once rank 0 has written the checkpoint and the marker; the launcher ends those
        # still exiting when the first has gone (a signal's exit status, -15): the run stopped as one.
        marked = stopped is not None and stopped.exists()
        if EXIT_TIME_BOX in codes.values() and all(c == EXIT_TIME_BOX or (c < 0 and marked) for c in codes.values()):
            return EXIT_TIME_BOX
        named = ", ".join(f"rank {r} exit {c}" for r, c in sorted(codes.items()))
        print(f"flowvae train: error: training processes failed ({named}); their messages are above", file=sys.stderr)
        return 1
    except SignalException as exc:
        if stopped is not None and stopped.exists():
            return EXIT_TIME_BOX
        print(f"flowvae train: error: {signal.Signals(exc.sigval).name} received before the processes wrote a checkpoint",
              file=sys.stderr)
        return 1
    finally:
        for sig, handler in before.items():
            if handler is not None:
                signal.signal(sig, handler)
    return 0
