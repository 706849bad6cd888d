"""Verification pairs and held-out people chosen from a source's own identity labels.

With ``verify.pairs: auto`` (and ``masks.quality_pairs: auto``) the pairs come from the shards' identities, so
any source that has identity labels gets verification sets without a hand-made pair list;
``split.holdout_identities: N`` picks the N people no training stage sees by a seeded hash of their names (the
choice depends only on the set of names and the seed, not on their order in the identity table).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np

from facekit.eval.make_bin import PairList

#: The value of ``verify.pairs`` / ``masks.quality_pairs`` that asks for :func:`identity_pairs`.
AUTO = "auto"


def choose_holdout(identities: Sequence[str], setting: Sequence[str] | int, seed: int, key: str) -> list[str]:
    """The identity names ``setting`` holds out, sorted: the names it lists (each must be in ``identities``),
    or for an int N the N names whose SHA-256 of ``"<seed>:<name>"`` is smallest; at least one identity must be
    left for training. ``key`` names the setting in errors."""
    known = set(identities)
    if isinstance(setting, int):
        if not 0 <= setting < len(known):
            raise ValueError(f"{key}: {setting} of {len(known)} identities; leave at least one to train on")
        return sorted(sorted(known, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())[:setting])
    unknown = sorted(set(setting) - known)
    if unknown:
        raise ValueError(f"{key}: {unknown} are not in the shards' identity table")
    if set(setting) >= known:
        raise ValueError(f"{key} holds out every identity: nothing left to train on")
    return sorted(setting)


def identity_pairs(identity_of: Mapping[str, str], *, max_same: int = 3000, seed: int = 0) -> PairList:
    """Balanced pairs over faces labelled by identity (``identity_of``: face name -> identity).

    Same pairs: every two faces of one identity, or ``max_same`` of them drawn without repeats (each pair
    equally likely); then as many different pairs, two faces of two identities drawn uniformly without
    repeats. Shuffled (``seed``), no protocol folds. Raises ValueError when no same pair or no different pair
    exists (fewer than two faces of any one identity, or a single identity).
    """
    rng = np.random.default_rng(seed)
    names = sorted(identity_of)
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(identity_of[name], []).append(name)
    sizes = np.array([len(g) for g in groups.values()])
    same_total = int((sizes * (sizes - 1) // 2).sum())
    if same_total == 0 or len(groups) < 2:
        raise ValueError(
            f"{len(names)} faces of {len(groups)} identities make no verification pairs: "
            "at least two identities and one with two faces are needed"
        )
    same = _draw_same(list(groups.values()), same_total, max_same, rng)
    different = _draw_different(names, identity_of, len(same), rng)
    pairs = [(a, b, True) for a, b in same] + [(a, b, False) for a, b in different]
    order = rng.permutation(len(pairs))
    return PairList(
        [pairs[i][0] for i in order], [pairs[i][1] for i in order], np.array([pairs[i][2] for i in order], bool)
    )


def _draw_same(groups: list[list[str]], total: int, wanted: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Every same pair when there are at most ``wanted``, else ``wanted`` distinct ones, uniformly."""
    if total <= wanted:
        return [pair for group in groups for pair in combinations(group, 2)]
    weights = np.array([len(g) * (len(g) - 1) / 2 for g in groups]) / total
    chosen: set[tuple[str, str]] = set()
    while len(chosen) < wanted:
        group = groups[rng.choice(len(groups), p=weights)]
        i, j = sorted(rng.choice(len(group), 2, replace=False))
        chosen.add((group[i], group[j]))
    return sorted(chosen)


def _draw_different(
    names: list[str], identity_of: Mapping[str, str], wanted: int, rng: np.random.Generator
) -> list[tuple[str, str]]:
    """``wanted`` distinct pairs of faces of two identities (all of them when there are fewer)."""
    counts = np.unique([identity_of[n] for n in names], return_counts=True)[1]
    possible = (len(names) ** 2 - int((counts**2).sum())) // 2
    if possible <= wanted:
        return [(a, b) for a, b in combinations(names, 2) if identity_of[a] != identity_of[b]]
    chosen: set[tuple[str, str]] = set()
    while len(chosen) < wanted:
        i, j = sorted(rng.choice(len(names), 2, replace=False))
        if identity_of[names[i]] != identity_of[names[j]]:
            chosen.add((names[i], names[j]))
    return sorted(chosen)
