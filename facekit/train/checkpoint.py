"""Training checkpoints: weights in safetensors, the rest of the training state in a small torch file.

A checkpoint is a folder ``root/last/`` (and, on request, a hard-linked copy ``root/step-NNNNNNN/``)::

    model.safetensors   the method's state dict (tied / shared tensors stored once)
    train_state.pt      optimizer state, step, epoch, RNG states (torch, CUDA, numpy, python) per rank,
                        and the caller's ``extra_state`` (sampler position, counters ...)

Writes are atomic: the folder is written under a temporary name and renamed into place, so a process
killed at any moment leaves either the previous or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import os
import random
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_model
from torch import nn

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
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


@dataclass(frozen=True)
class LoadReport:
    """Outcome of :func:`load_backbone_weights` (names as in the target module)."""

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]  # present on both sides with different shapes: not loaded


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
) -> Path:
    """Write ``root/last`` atomically (and ``root/step-NNNNNNN`` if ``keep_step``); returns ``root/last``.

    ``step`` counts completed optimizer steps. ``rng_states`` holds one snapshot per rank (default: this
    process's). ``extra_state`` must hold plain Python values and tensors (it is read with
    ``weights_only=True``).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    save_model(method, str(tmp / MODEL_FILE), metadata={"step": str(step), "epoch": str(epoch)})
    state = {
        "step": step,
        "epoch": epoch,
        "optimizer": optimizer.state_dict(),
        "rng": rng_states if rng_states is not None else [capture_rng_state()],
        "extra": extra_state or {},
    }
    torch.save(state, tmp / STATE_FILE)
    for name in (MODEL_FILE, STATE_FILE):
        _fsync(tmp / name)
    last, previous = root / LAST, root / _PREVIOUS
    if last.exists():
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(last, previous)
    os.replace(tmp, last)
    _fsync(root)
    shutil.rmtree(previous, ignore_errors=True)
    if keep_step:
        _link_copy(last, root / f"step-{step:07d}")
    return last


def find_checkpoint(path: Path) -> Path | None:
    """The checkpoint folder at ``path`` (a checkpoint itself, or a root holding ``last``), or None."""
    path = Path(path)
    for candidate in (path, path / LAST, path / _PREVIOUS):
        if (candidate / MODEL_FILE).is_file() and (candidate / STATE_FILE).is_file():
            return candidate
    return None


def load_checkpoint(path: Path, method: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> TrainState:
    """Load weights into ``method`` (strict) and, if given, the optimizer state; returns the rest.

    ``path`` is a checkpoint folder or a root holding ``last/``. RNG states are returned, not applied:
    see :func:`restore_rng_state`.
    """
    found = find_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"{path}: no checkpoint ({MODEL_FILE} + {STATE_FILE}) here or in {path}/{LAST}")
    device = next(iter(method.state_dict().values())).device
    load_model(method, found / MODEL_FILE, strict=True, device=str(device))
    state = torch.load(found / STATE_FILE, map_location="cpu", weights_only=True)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return TrainState(path=found, step=state["step"], epoch=state["epoch"], rng=state["rng"], extra=state["extra"])


def load_backbone_weights(path: Path, module: nn.Module, prefix_map: dict[str, str] | None = None) -> LoadReport:
    """Load weights for fine-tuning into ``module`` (non-strict) and report what matched.

    ``path``: a ``.safetensors`` file, a checkpoint folder (or its root), or a torch file whose dict may
    nest the weights under ``"model"`` / ``"state_dict"``. ``prefix_map`` renames keys by prefix, first
    match wins (``{"encoder.": ""}`` loads a method's encoder into a bare backbone); with a map, keys
    matching none of its prefixes are ignored. Tensors with a different shape are reported, not loaded.
    """
    source = _read_state_dict(Path(path))
    if prefix_map is not None:
        renamed = {}
        for key, tensor in source.items():
            prefix = next((p for p in prefix_map if key.startswith(p)), None)
            if prefix is not None:
                renamed[prefix_map[prefix] + key[len(prefix) :]] = tensor
        source = renamed
    target = module.state_dict()
    fits = {k: v for k, v in source.items() if k in target and v.shape == target[k].shape}
    module.load_state_dict(fits, strict=False)
    loaded_storage = {target[k].data_ptr() for k in fits}
    missing = [k for k in target if k not in fits and target[k].data_ptr() not in loaded_storage]
    return LoadReport(
        loaded=sorted(fits),
        missing=sorted(missing),
        unexpected=sorted(k for k in source if k not in target),
        mismatched=sorted(k for k in source if k in target and k not in fits),
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    checkpoint = find_checkpoint(path) if path.is_dir() else None
    if checkpoint is not None:
        path = checkpoint / MODEL_FILE
    if path.suffix == ".safetensors":
        return load_file(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    return obj


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
