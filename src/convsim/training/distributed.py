"""Where the trainer's processes run: device and CPU threads, torchrun ranks, sharding, reductions.

``torchrun --nproc_per_node=N -m convsim train ...`` sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; :func:`setup` reads them and starts the process group (gloo on CPU, nccl on
CUDA). A plain ``python -m convsim train`` is the one-process case: every helper below is then a
no-op, so the training loop has no ``if distributed`` branches except around file writes.

Batch semantics: ``batch_size`` is the *global* batch. Every rank draws the same permutation of
the training set (same seed), cuts the same global batches, and keeps the rank-strided part
``batch[rank::world]`` (:func:`shard`). DistributedDataParallel averages the gradients, so with
equal shards one step on N processes is the same step as on one process (up to float summation
order).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from convsim.training.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")  # TrainConfig.device: auto = cuda when available


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job: ``rank`` of ``world_size``, ``local_rank`` on its host."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None  # "gloo" / "nccl" when a process group is in use
    owns_group: bool = False  # True when setup() created the group (teardown() destroys only that)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0


def detect() -> DistEnv:
    """The rank layout from torchrun's environment variables (one process when they are absent).

    Example:
        >>> detect().world_size >= 1
        True
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return DistEnv(rank=rank, local_rank=local, world_size=world)


def setup(device_type: str) -> DistEnv:
    """Start the process group when launched by torchrun with WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA).

    A group that already exists (started by the caller) is reused and left for the caller to
    destroy.
    """
    env = detect()
    if not env.enabled:
        return env
    backend = "nccl" if device_type == "cuda" else "gloo"
    if dist.is_initialized():
        return DistEnv(env.rank, env.local_rank, env.world_size, dist.get_backend(), owns_group=False)
    if device_type == "cuda":
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(backend=backend)
    return DistEnv(env.rank, env.local_rank, env.world_size, backend, owns_group=True)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cuda"`` without CUDA raises ``ValueError``.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' was requested but torch.cuda.is_available() is False")
    if name not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}; got {name!r}")
    return torch.device(name)


def physical_cores() -> int:
    """Physical CPU cores this process may use (hyper-thread siblings counted once).

    Reads ``/sys/devices/system/cpu/cpu*/topology``; falls back to the number of usable CPUs.

    Example:
        >>> physical_cores() >= 1
        True
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(
                (topo.joinpath("physical_package_id").read_text().strip(), topo.joinpath("core_id").read_text().strip())
            )
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


def default_threads(env: DistEnv) -> int:
    """Torch CPU threads per process: the physical cores shared among the ranks on this host.

    Example:
        >>> default_threads(DistEnv()) == physical_cores()
        True
    """
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size)) if env.enabled else 1
    return max(1, physical_cores() // max(1, local_world))


def teardown(env: DistEnv, *, drain: bool = True) -> None:
    """Destroy the process group if :func:`setup` created it, after a final barrier when ``drain``.

    Why the barrier: gloo releases a finished collective's tensors on its own worker thread,
    which needs the GIL for tensors Python created. A rank that exits right after its last
    collective can reach interpreter shutdown first, and the worker then aborts the process
    ("terminate called without an active exception") although the run succeeded.
    ``destroy_process_group`` does not stop those workers once DistributedDataParallel has
    wrapped a model (its reducer keeps the group alive), so the barrier is what gives them time
    to finish: waiting in it releases the GIL. It narrows the race (on this project's 2-rank
    test, from about 1 exit in 8 to 1 in 60) but cannot close it; the ``convsim`` entry point
    (:func:`convsim.cli.entry`) closes it by skipping interpreter shutdown. Pass
    ``drain=False`` on an error path, where the other ranks may never reach the barrier.
    """
    if env.owns_group and dist.is_initialized():
        if drain:
            dist.barrier()
        dist.destroy_process_group()


def shard(indices: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """This rank's part of a global batch of indices: ``indices[rank::world_size]``.

    Example:
        >>> shard(torch.arange(6), DistEnv(rank=1, world_size=2)).tolist()
        [1, 3, 5]
    """
    return indices[env.rank :: env.world_size] if env.enabled else indices


def all_reduce_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum ``values`` over ranks (in place, returned). One process: unchanged."""
    if env.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast(values: torch.Tensor, env: DistEnv, src: int = 0) -> torch.Tensor:
    """Overwrite ``values`` on every rank with rank ``src``'s (in place, returned)."""
    if env.enabled:
        dist.broadcast(values, src=src)
    return values


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def max_weight_difference(model: nn.Module, env: DistEnv) -> float:
    r"""Largest :math:`|w_r - w_0|` over all parameters and ranks: 0.0 when the replicas are in sync.

    Rank 0's parameters are broadcast one tensor at a time (no full extra copy of the model);
    each rank compares and the maximum is reduced over ranks. One process: 0.0.
    """
    if not env.enabled:
        return 0.0
    worst = None
    for p in model.parameters():
        ref = p.detach().clone()
        dist.broadcast(ref, src=0)
        d = (p.detach() - ref).abs().max() if p.numel() else p.new_zeros(())
        worst = d if worst is None else torch.maximum(worst, d)
    if worst is None:
        return 0.0
    worst = worst.float().reshape(1)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)
