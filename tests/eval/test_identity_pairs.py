"""Pairs and held-out people drawn from identity labels: hand-checked on small label sets."""

from __future__ import annotations

import hashlib

import pytest

from facekit.eval.identity_pairs import choose_holdout, identity_pairs


def as_set(pairs) -> set[tuple[str, str, bool]]:
    return {(min(a, b), max(a, b), bool(s)) for a, b, s in zip(pairs.first, pairs.second, pairs.issame, strict=True)}


def test_small_sets_give_every_same_pair_and_as_many_different_ones() -> None:
    labels = {"a1": "A", "a2": "A", "a3": "A", "b1": "B", "b2": "B", "c1": "C"}
    pairs = identity_pairs(labels)
    got = as_set(pairs)
    assert len(got) == len(pairs) == 8  # no repeats
    assert {p[:2] for p in got if p[2]} == {("a1", "a2"), ("a1", "a3"), ("a2", "a3"), ("b1", "b2")}
    different = [p for p in got if not p[2]]
    assert len(different) == 4 and all(labels[a] != labels[b] for a, b, _ in different)
    assert identity_pairs(labels).first == pairs.first  # seeded
    assert as_set(identity_pairs(dict(reversed(labels.items())))) == got  # the input order does not matter
    assert identity_pairs(labels, seed=1).first != pairs.first


def test_large_sets_are_capped_and_balanced() -> None:
    labels = {f"{i}/{k}": str(i) for i in range(30) for k in range(12)}  # 30 x C(12, 2) = 1980 same pairs
    pairs = identity_pairs(labels, max_same=500)
    got = as_set(pairs)
    same = [p for p in got if p[2]]
    assert len(got) == len(pairs) == 1000 and len(same) == 500
    assert all((labels[a] == labels[b]) == s for a, b, s in got)
    assert len({labels[a] for a, _, _ in same}) > 20  # drawn over the identities, not the first few
    assert len(identity_pairs(labels)) == 2 * 1980  # under the cap: every same pair


@pytest.mark.parametrize(
    "labels",
    [{"a1": "A", "a2": "A"}, {"a1": "A", "b1": "B", "c1": "C"}, {}],
    ids=["one identity", "singletons", "none"],
)
def test_labels_without_pairs_are_an_error(labels: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="make no verification pairs"):
        identity_pairs(labels)


def test_holdout_by_count_is_the_smallest_seeded_hashes_whatever_the_order() -> None:
    names = [f"n{i:04d}" for i in range(50)]
    by_hash = sorted(names, key=lambda n: hashlib.sha256(f"7:{n}".encode()).hexdigest())
    assert choose_holdout(names, 3, 7, "k") == sorted(by_hash[:3])
    assert choose_holdout(list(reversed(names)), 3, 7, "k") == sorted(by_hash[:3])
    assert choose_holdout(names, 3, 8, "k") != choose_holdout(names, 3, 7, "k")
    assert choose_holdout(names, 0, 7, "k") == []
    assert choose_holdout(names, ["n0007", "n0001"], 7, "k") == ["n0001", "n0007"]
    for setting, message in ((50, "50 of 50"), (-1, "-1 of 50"), (["zz"], "not in the shards"), (names, "every")):
        with pytest.raises(ValueError, match=rf"^k.*{message}"):
            choose_holdout(names, setting, 7, "k")
