"""Training checkpoints: weights in safetensors, the rest of the training state in a small torch file.

A checkpoint is a folder ``root/last/`` (and, on request, a hard-linked copy ``root/step-NNNNNNN/``)::

    model.safetensors   the method's state dict (tied / shared tensors stored once) but per-rank tensors
    train_state.pt      optimizer state (but that of per-rank parameters), step, epoch, RNG states (torch,
                        CUDA, numpy, python) per rank, and the caller's ``extra_state`` (sampler position ...)
    rank<r>.pt          with per-rank tensors only: rank r's tensors and their optimizer state

Per-rank ("sharded") tensors are those each DDP rank holds its own rows of, Partial FC's class centres:
every rank then calls :func:`save_checkpoint` and writes its own ``rank<r>.pt`` (no gather: a rank's
shard never leaves it), and resuming needs the same world size. :func:`full_state_dict` puts the shards
back together (rank order, dim 0) for analysis or a single-process run. The checkpoint folder must then
lie on a file system that every rank sees (as resuming already requires).

Writes are atomic: the folder (rank files included) is written under a temporary name and renamed into
place once complete, so a process killed at any moment leaves either the previous or the new checkpoint,
never a torn one.
"""

from __future__ import annotations

import os
import random
import shutil
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, load_model, save_model
from torch import nn

from facekit import distributed

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
RANK_FILE = "rank{}.pt"
LAST = "last"
_PREVIOUS = ".last.previous"  # the old ``last`` during the swap; used if a kill lands between two renames


@dataclass(frozen=True)
class TrainState:
    """What :func:`load_checkpoint` restores besides the weights.

    step: optimizer steps completed (the next step to run); epoch: the epoch of that next step;
    rng: one RNG snapshot per rank (see :func:`capture_rng_state`); extra: the caller's ``extra_state``.
    """

    path: Path
    step: int
    epoch: int
    rng: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)


def capture_rng_state() -> dict[str, Any]:
    """This process's torch / CUDA / numpy / python RNG states, as plain types and tensors."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, mt_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos},
        "numpy_gauss": [has_gauss, gauss],
        "python": {"version": version, "state": list(mt_state), "gauss": py_gauss},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    has_gauss, gauss = state["numpy_gauss"]
    keys = np_state["keys"].numpy().astype(np.uint32)
    np.random.set_state((np_state["kind"], keys, np_state["pos"], has_gauss, gauss))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))


def save_checkpoint(
    root: Path,
    method: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    epoch: int,
    extra_state: dict[str, Any] | None = None,
    *,
    rng_states: list[dict[str, Any]] | None = None,
    keep_step: bool = False,
    sharded: Collection[str] = (),
) -> Path:
    """Write ``root/last`` atomically (and ``root/step-NNNNNNN`` if ``keep_step``); returns ``root/last``.

    ``step`` counts completed optimizer steps. ``rng_states`` holds one snapshot per rank (default: this
    process's). ``extra_state`` must hold plain Python values and tensors (it is read with
    ``weights_only=True``). Only rank 0 writes (other ranks return at once), unless ``sharded`` names
    per-rank tensors of ``method.state_dict()``: then every rank must call it (a collective); each writes
    ``rank<r>.pt`` into the temporary folder, rank 0 adds the rest once all are on disk and renames it,
    and every rank returns once the checkpoint is in place.
    """
    root, sharded = Path(root), set(sharded)
    if not (sharded or distributed.is_main()):
        return root / LAST
    weights = method.state_dict()
    if not sharded <= weights.keys():
        raise ValueError(f"sharded names {sorted(sharded - weights.keys())} are not in {type(method).__name__}'s state")
    optimizer_state, local_optimizer_state = _split_optimizer_state(method, optimizer, sharded)
    tmp = _temporary_folder(root, shared=bool(sharded))
    if sharded:
        shard_file = tmp / RANK_FILE.format(distributed.rank())
        torch.save(
            {"tensors": {n: weights[n] for n in sorted(sharded)}, "optimizer": local_optimizer_state}, shard_file
        )
        _fsync(shard_file)
        distributed.barrier()  # every shard is on disk before rank 0 commits the folder
    if distributed.is_main():
        _save_weights(method, tmp / MODEL_FILE, sharded)
        state = {
            "step": step,
            "epoch": epoch,
            "optimizer": optimizer_state,
            "rng": rng_states if rng_states is not None else [capture_rng_state()],
            "extra": extra_state or {},
            "sharded": sorted(sharded),
            "world_size": distributed.world_size(),
        }
        torch.save(state, tmp / STATE_FILE)
        for name in (MODEL_FILE, STATE_FILE):
            _fsync(tmp / name)
        _swap_in(tmp, root, f"step-{step:07d}" if keep_step else None)
    if sharded:
        distributed.barrier()  # in place before any rank goes on
    return root / LAST


def _save_weights(method: nn.Module, path: Path, exclude: set[str]) -> None:
    """safetensors' ``save_model`` (shared tensors stored once) of ``method`` without the tensors ``exclude``;
    no metadata (safetensors writes a metadata map in any order, so the same weights would not give the same
    bytes; the step and epoch are in the training state)."""

    def drop(_module: nn.Module, state: dict[str, Any], _prefix: str, _metadata: Any) -> None:
        for name in exclude:
            del state[name]

    hook = method.register_state_dict_post_hook(drop)
    try:
        save_model(method, str(path))
    finally:
        hook.remove()


def _swap_in(tmp: Path, root: Path, keep_as: str | None) -> None:
    """Rename the complete folder ``tmp`` to ``root/last`` (and hard-link a copy to ``root/keep_as``)."""
    last, previous = root / LAST, root / _PREVIOUS
    if last.exists():
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(last, previous)
    os.replace(tmp, last)
    _fsync(root)
    shutil.rmtree(previous, ignore_errors=True)
    if keep_as is not None:
        _link_copy(last, root / keep_as)


def _temporary_folder(root: Path, shared: bool) -> Path:
    """A new empty folder ``root/.tmp-<random>`` made by rank 0; with ``shared``, every rank gets its path."""
    name = [None]
    if distributed.is_main():
        root.mkdir(parents=True, exist_ok=True)
        name = [f".tmp-{uuid.uuid4().hex}"]
        (root / name[0]).mkdir()
    if shared and distributed.is_distributed():
        dist.broadcast_object_list(name, src=0)
    return root / name[0]


def _split_optimizer_state(
    method: nn.Module, optimizer: torch.optim.Optimizer, sharded: set[str]
) -> tuple[dict[str, Any], dict[int, Any]]:
    """(``optimizer.state_dict()`` without the state of the parameters named ``sharded``, that state by index)."""
    state = optimizer.state_dict()
    wanted = {id(p) for n, p in method.named_parameters() if n in sharded}
    local = set()
    for group, packed in zip(optimizer.param_groups, state["param_groups"], strict=True):
        local |= {i for p, i in zip(group["params"], packed["params"], strict=True) if id(p) in wanted}
    per_param = state["state"]
    state["state"] = {i: v for i, v in per_param.items() if i not in local}
    return state, {i: v for i, v in per_param.items() if i in local}


def find_checkpoint(path: Path) -> Path | None:
    """The checkpoint folder at ``path`` (a checkpoint itself, or a root holding ``last``), or None."""
    path = Path(path)
    for candidate in (path, path / LAST, path / _PREVIOUS):
        if (candidate / MODEL_FILE).is_file() and (candidate / STATE_FILE).is_file():
            return candidate
    return None


def load_checkpoint(
    path: Path, method: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, sharded: Collection[str] = ()
) -> TrainState:
    """Load weights into ``method`` (strict) and, if given, the optimizer state; returns the rest.

    ``path`` is a checkpoint folder or a root holding ``last/``. ``sharded``: this process's per-rank
    tensors (as given to :func:`save_checkpoint`); they must match the checkpoint's, with the same world
    size, and come from this rank's ``rank<r>.pt``. RNG states are returned, not applied: see
    :func:`restore_rng_state`.
    """
    found = _find(path)
    state = torch.load(found / STATE_FILE, map_location="cpu", weights_only=True)
    saved, saved_world, world = set(state.get("sharded", ())), state.get("world_size", 1), distributed.world_size()
    if saved != set(sharded) or (saved and saved_world != world):
        raise ValueError(
            f"{found}: written by {saved_world} process(es) with per-rank tensors {sorted(saved)}; this run has "
            f"{world} process(es) with per-rank tensors {sorted(sharded)}: resume with {saved_world} process(es), "
            "or start a new run from full_state_dict()"
        )
    device = next(iter(method.state_dict().values())).device
    missing, unexpected = load_model(method, found / MODEL_FILE, strict=not saved, device=str(device))
    shard: dict[str, Any] = {"tensors": {}, "optimizer": {}}
    if saved:
        shard = torch.load(found / RANK_FILE.format(distributed.rank()), map_location="cpu", weights_only=True)
        method.load_state_dict(shard["tensors"], strict=False)
        if set(missing) != saved or unexpected:
            raise RuntimeError(f"{found}: missing keys {sorted(set(missing) - saved)}, unexpected {sorted(unexpected)}")
    if optimizer is not None:
        optimizer_state = state["optimizer"]
        optimizer_state["state"] |= shard["optimizer"]
        optimizer.load_state_dict(optimizer_state)
    return TrainState(path=found, step=state["step"], epoch=state["epoch"], rng=state["rng"], extra=state["extra"])


def full_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's weights on the CPU with every per-rank tensor whole: the ranks' shards concatenated
    along dim 0 in rank order (Partial FC: all class centres ``[C, D]``, row = class id). It loads into the
    method built in one process (e.g. ``FineTune``'s ``head.weight``)."""
    found = _find(path)
    weights = load_file(found / MODEL_FILE)
    state = torch.load(found / STATE_FILE, map_location="cpu", weights_only=True)
    if state.get("sharded"):
        files = [found / RANK_FILE.format(r) for r in range(state["world_size"])]
        shards = [torch.load(f, map_location="cpu", weights_only=True, mmap=True)["tensors"] for f in files]
        weights |= {name: torch.cat([s[name] for s in shards]) for name in state["sharded"]}
    return weights


def _find(path: Path) -> Path:
    found = find_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"{path}: no checkpoint ({MODEL_FILE} + {STATE_FILE}) here or in {path}/{LAST}")
    return found


def _link_copy(src: Path, dst: Path) -> None:
    """Hard-link the files of ``src`` into a new folder ``dst`` (written under a temporary name first)."""
    tmp = dst.with_name(f".tmp-{uuid.uuid4().hex}")
    tmp.mkdir()
    for f in src.iterdir():
        os.link(f, tmp / f.name)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
