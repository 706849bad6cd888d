"""Per-iteration schedules, precomputed as numpy arrays (one value per optimizer step, DINO style).

Every helper takes an optional linear warm-up: for ``i < warmup_steps`` the value is
``warmup_start + (base - warmup_start) * i / warmup_steps``, so it reaches ``base`` at ``i = warmup_steps``,
the first step after the warm-up (MAE's ``lr * epoch / warmup_epochs`` per iteration, as CAMD, MCF and
BYOL/FRA warm up). DINO, LAFS and FaceT warm up with ``np.linspace(start, base, warmup_steps)``, which
reaches ``base`` one step earlier (``i / (warmup_steps - 1)``): their warm-up steps take at most
``base / warmup_steps`` less here.

After the warm-up the shape runs over the ``n = total_steps - warmup_steps`` remaining steps at progress
``j / n`` (step ``warmup_steps + j``): it starts at ``base`` and approaches ``final`` without reaching it,
as every released code base's cosine does (DINO's ``cosine_scheduler``, MAE's ``adjust_learning_rate``,
BYOL's momentum, CAMD, FaceT). Examples::

    lr = cosine_schedule(1.5e-4, 1e-6, total, warmup_steps=5 * steps_per_epoch)
    ema_momentum = cosine_schedule(0.996, 1.0, total)
    teacher_temp = constant(0.04, total, warmup_steps=30 * steps_per_epoch, warmup_start=0.07)
    lr = step_schedule(0.1, [8 * steps_per_epoch, 12 * steps_per_epoch], 0.1, total)  # no ``final``
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _warmup(base: float, total_steps: int, warmup_steps: int, warmup_start: float) -> np.ndarray:
    """The warm-up part, ``[warmup_steps]``: linear from ``warmup_start`` towards ``base``."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    return warmup_start + (base - warmup_start) * np.arange(warmup_steps, dtype=np.float64) / max(warmup_steps, 1)


def _progress(n: int) -> np.ndarray:
    """``[n]`` values ``j / n``, ``j = 0 .. n - 1``: from 0 towards 1, never 1."""
    return np.arange(n, dtype=np.float64) / max(n, 1)


def cosine_schedule(
    base: float, final: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0
) -> np.ndarray:
    """Linear warm-up, then a half cosine from ``base`` to ``final``; ``[total_steps]`` float64.

    After the warm-up, at step ``warmup_steps + j`` of ``n = total_steps - warmup_steps`` steps:
    ``final + (base - final) * (1 + cos(pi * j / n)) / 2``.
    """
    head = _warmup(base, total_steps, warmup_steps, warmup_start)
    tail = final + (base - final) * 0.5 * (1.0 + np.cos(np.pi * _progress(total_steps - warmup_steps)))
    return np.concatenate([head, tail])


def linear_schedule(
    base: float, final: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0
) -> np.ndarray:
    """Linear warm-up, then a straight line from ``base`` towards ``final`` (``base + (final - base) * j / n``);
    ``[total_steps]`` float64."""
    head = _warmup(base, total_steps, warmup_steps, warmup_start)
    tail = base + (final - base) * _progress(total_steps - warmup_steps)
    return np.concatenate([head, tail])


def constant(value: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0) -> np.ndarray:
    """Linear warm-up, then ``value``; ``[total_steps]`` float64."""
    head = _warmup(value, total_steps, warmup_steps, warmup_start)
    return np.concatenate([head, np.full(total_steps - warmup_steps, value, dtype=np.float64)])


def step_schedule(
    base: float,
    milestones_steps: Sequence[int],
    gamma: float,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_start: float = 0.0,
) -> np.ndarray:
    """Linear warm-up, then ``base`` times ``gamma`` per milestone passed; ``[total_steps]`` float64.

    After the warm-up, step ``i`` takes ``base * gamma ** k`` with ``k`` the number of milestones ``<= i``
    (torch's ``MultiStepLR``, per optimizer step). Milestones are step indices, sorted, in
    ``[warmup_steps, total_steps]`` (one at ``total_steps`` never applies; a repeated one counts twice).
    """
    head = _warmup(base, total_steps, warmup_steps, warmup_start)
    milestones = np.asarray(milestones_steps, dtype=np.int64)
    if milestones.ndim != 1 or np.any(np.diff(milestones) < 0):
        raise ValueError(f"milestones_steps must be a sorted list of steps, got {list(milestones_steps)}")
    if milestones.size and (milestones[0] < warmup_steps or milestones[-1] > total_steps):
        raise ValueError(
            f"milestones_steps must lie in [warmup_steps={warmup_steps}, total_steps={total_steps}], "
            f"got {milestones.tolist()}"
        )
    passed = np.searchsorted(milestones, np.arange(warmup_steps, total_steps), side="right")
    return np.concatenate([head, base * float(gamma) ** passed])
