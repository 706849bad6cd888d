"""Process-group helpers that also work in a single process without a process group.

Launch with ``torchrun --nproc_per_node N ...``: :func:`init_from_env` reads ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` and joins the group (NCCL on CUDA, gloo on CPU). Without those variables every helper
behaves as a world of one: reductions and gathers are the identity, :func:`barrier` does nothing.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def is_distributed() -> bool:
    """True when a process group is initialised (even a group of one)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``; 0 when not launched by torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on rank 0, the process that writes logs and checkpoints."""
    return rank() == 0


def device_for_rank() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group described by torchrun's environment; returns whether it is distributed.

    ``backend`` defaults to ``"nccl"`` on CUDA and ``"gloo"`` on CPU. Calling it again, or without
    ``WORLD_SIZE`` > 1 in the environment, does nothing.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"), init_method="env://")
    return True


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over all processes (a new tensor; ``t`` is left alone); no gradient."""
    if not is_distributed():
        return t.detach().clone()
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over all processes (a new tensor); no gradient."""
    out = t.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def rank_local_names(module: torch.nn.Module) -> set[str]:
    """Names of the parameters and buffers of ``module`` that DDP ignores: each rank holds its own
    (e.g. Partial FC's shard of the class centres); set with
    ``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model``."""
    return set(getattr(module, "_ddp_params_and_buffers_to_ignore", ()))


def global_grad_norm(module: torch.nn.Module, prefix: str = "") -> torch.Tensor:
    """L2 norm of the gradients of ``module``'s parameters whose names start with ``prefix`` (all by
    default), across processes.

    DDP-synced gradients are identical on every rank; parameters DDP ignores (e.g. Partial FC's
    per-rank class centres) hold a different shard on each rank, so their squared norms are summed over
    ranks. Every rank gets the same norm, hence the same clipping factor, and the replicas stay in sync.
    """
    ignored = {name for name in rank_local_names(module) if name.startswith(prefix)}
    shared, sharded = [], []
    for name, p in module.named_parameters():
        if p.grad is not None and name.startswith(prefix):
            (sharded if name in ignored else shared).append(p.grad)
    device = (shared or sharded or [torch.zeros(1)])[0].device
    square = torch.nn.utils.get_total_norm(shared) ** 2 if shared else torch.zeros((), device=device)
    if sharded or ignored:
        local = torch.nn.utils.get_total_norm(sharded) ** 2 if sharded else torch.zeros((), device=device)
        square = square + all_reduce_sum(local)
    return square.sqrt()


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """``t: [B, ...]`` from every rank, concatenated in rank order: ``[world * B, ...]``; no gradient.

    Every rank must pass the same shape. Use it for keys / targets that take no gradient (MoCo keys).
    """
    if not is_distributed():
        return t.detach()
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.detach().contiguous())
    return torch.cat(parts)


def all_gather_cat_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Like :func:`all_gather_cat`, but gradients flow back to every rank's slice.

    The backward sums, over ranks, the gradient each rank computed for a slice and returns it to the rank
    that owns the slice, so with DDP's gradient averaging an InfoNCE over gathered keys gets the gradient
    of one big batch (SimCLR-style negatives).
    """
    if not is_distributed():
        return t
    return torch.cat(dist_fn.all_gather(t.contiguous()))
