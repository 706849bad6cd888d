"""Margin heads: each head's logits on hand-built cosines against its formula evaluated here with ``math``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facekit.nn.margins import MARGINS, ArcFace, CombinedMargin, CosFace, CurricularFace, MagFace

# rows: an easy target, a hard target, a target with θ + 0.5 > π (cos −0.95: θ ≈ 2.82), and a row with no target
COS = torch.tensor(
    [
        [0.80, 0.10, -0.20, 0.30],
        [0.05, -0.40, 0.60, 0.20],
        [0.10, 0.20, 0.30, -0.95],
        [0.50, 0.40, -0.30, 0.20],
    ]
)
LABELS = torch.tensor([0, 2, 3, -1])
NORMS = torch.ones(4)


def arcface_target(c: float, m: float, s: float = 64.0) -> float:
    theta = math.acos(c)
    return s * (math.cos(theta + m) if theta + m < math.pi else c - m * math.sin(m))


def expected(cos: torch.Tensor, labels: torch.Tensor, target_fn, s: float = 64.0) -> torch.Tensor:
    out = [[s * c for c in row] for row in cos.tolist()]
    for i, y in enumerate(labels.tolist()):
        if y >= 0:
            out[i][y] = target_fn(cos[i, y].item())
    return torch.tensor(out)


def test_arcface_matches_formula_including_theta_plus_m_beyond_pi() -> None:
    logits = ArcFace().margin(COS, LABELS, NORMS)
    torch.testing.assert_close(logits, expected(COS, LABELS, lambda c: arcface_target(c, 0.5)))
    assert logits[2, 3].item() == pytest.approx(64 * (-0.95 - 0.5 * math.sin(0.5)), rel=1e-6)  # the θ + m > π branch
    assert logits[3].tolist() == pytest.approx((64 * COS[3]).tolist())  # label −1: only scaled


def test_arcface_easy_margin_keeps_negative_cosines() -> None:
    logits = ArcFace(easy_margin=True).margin(COS, LABELS, NORMS)
    easy = expected(COS, LABELS, lambda c: 64 * (math.cos(math.acos(c) + 0.5) if c > 0 else c))
    torch.testing.assert_close(logits, easy)


def test_cosface_matches_formula() -> None:
    logits = CosFace().margin(COS, LABELS, NORMS)
    torch.testing.assert_close(logits, expected(COS, LABELS, lambda c: 64 * (c - 0.4)))


def test_full_fc_head_normalises_embeddings_and_centres() -> None:
    torch.manual_seed(0)
    head = CosFace(8, 5, s=30.0, m=0.2)
    emb, labels = torch.randn(3, 8) * 7, torch.tensor([4, 0, 4])
    cos = torch.tensor(
        [[float(F.cosine_similarity(e, w, dim=0)) for w in head.weight.detach()] for e in emb], dtype=torch.float32
    )
    want = 30 * cos
    want[torch.arange(3), labels] -= 30 * 0.2
    torch.testing.assert_close(head(emb, labels), want, atol=1e-5, rtol=1e-5)
    out = head.loss(emb, labels)
    assert out["loss"].item() == pytest.approx(F.cross_entropy(want, labels).item(), rel=1e-5)
    with pytest.raises(ValueError, match=r"\[B, 8\]"):
        head(torch.randn(3, 6), labels)
    with pytest.raises(ValueError, match="without class centres"):
        CosFace()(emb, labels)


def test_combined_margin_reduces_to_arcface_and_cosface() -> None:
    cos = torch.rand(6, 5) * 2 - 1
    cos[0, 1] = -0.97  # θ + 0.5 > π
    labels = torch.tensor([1, 0, 4, 2, 3, 3])
    norms = torch.ones(6)
    arc = CombinedMargin(m1=1, m2=0.5, m3=0).margin(cos, labels, norms)  # via arccos, not ArcFace's closed form
    torch.testing.assert_close(arc, ArcFace().margin(cos, labels, norms), atol=1e-4, rtol=1e-5)
    cosface = CombinedMargin(m1=1, m2=0, m3=0.4).margin(cos, labels, norms)
    torch.testing.assert_close(cosface, CosFace().margin(cos, labels, norms), atol=1e-4, rtol=1e-5)


def test_combined_margin_general_m1() -> None:
    cos = torch.tensor([[0.9, 0.0], [-0.2, 0.3]])  # θ = 0.451 -> 2θ + 0.1 < π; θ = 1.772 -> 2θ + 0.1 > π
    logits = CombinedMargin(s=10.0, m1=2.0, m2=0.1, m3=0.05).margin(cos, torch.tensor([0, 0]), torch.ones(2))
    assert logits[0, 0].item() == pytest.approx(10 * (math.cos(2 * math.acos(0.9) + 0.1) - 0.05), rel=1e-5)
    assert logits[1, 0].item() == pytest.approx(10 * (-0.2 - 0.1 * math.sin(0.1) - 0.05), rel=1e-5)
    assert logits[:, 1].tolist() == pytest.approx([0.0, 3.0])


def test_curricularface_modulates_hard_negatives_and_updates_t() -> None:
    head = CurricularFace()
    labels = torch.tensor([0, 2, 3])
    cos = COS[:3]
    logits = head.margin(cos, labels, NORMS[:3])
    t1 = 0.01 * (0.80 + 0.60 - 0.95) / 3  # updated before use, from the raw target cosines
    assert head.t.item() == pytest.approx(t1, rel=1e-5)

    def row(i: int, y: int, t: float) -> list[float]:
        target = arcface_target(cos[i, y].item(), 0.5, s=1.0)
        return [
            64 * target if j == y else 64 * (c * (t + c) if c > target else c) for j, c in enumerate(cos[i].tolist())
        ]

    want = torch.tensor([row(i, y, t1) for i, y in enumerate(labels.tolist())])
    torch.testing.assert_close(logits, want)
    # row 1: target cos(acos(0.6) + 0.5) ≈ 0.143, so the negative 0.2 is hard and 0.05 is easy
    assert logits[1, 3].item() == pytest.approx(64 * 0.2 * (t1 + 0.2), rel=1e-5)
    assert logits[1, 0].item() == pytest.approx(64 * 0.05, rel=1e-5)
    head.margin(cos, labels, NORMS[:3])
    assert head.t.item() == pytest.approx(0.99 * t1 + t1, rel=1e-5)
    head.eval()
    head.margin(cos, labels, NORMS[:3])
    assert head.t.item() == pytest.approx(0.99 * t1 + t1, rel=1e-5)  # frozen in eval mode


def test_curricularface_hard_negatives_past_pi_compare_with_the_plain_cos_theta_plus_m() -> None:
    """Target cos −0.95 (θ + 0.5 > π): the mask compares with the plain cos(θ + m) = −0.98296, as the official
    code and FaceT (before the rule), not with the target logit −0.95 − 0.5·sin 0.5 = −1.18971. t = 0 (eval)."""
    head = CurricularFace().eval()
    logits = head.margin(torch.tensor([[-0.95, -0.99, -0.97, 0.2]]), torch.tensor([0]), torch.ones(1))
    # −0.99 is easy (below −0.98296); −0.97 and 0.2 are hard: cos·(t + cos) with t = 0
    assert logits[0].tolist() == pytest.approx(
        [64 * (-0.95 - 0.5 * math.sin(0.5)), -63.36, 64 * 0.9409, 2.56], abs=1e-4
    )


def test_magface_margin_is_linear_in_the_clamped_norm() -> None:
    head = MagFace()
    norms = torch.tensor([5.0, 10.0, 60.0, 110.0, 300.0])
    assert head.adaptive_margin(norms).tolist() == pytest.approx([0.45, 0.45, 0.625, 0.8, 0.8])
    cos = torch.tensor([[0.7, 0.1], [0.3, 0.2]])
    logits = head.margin(cos, torch.tensor([0, 1]), torch.tensor([10.0, 110.0]))
    assert logits[0, 0].item() == pytest.approx(64 * math.cos(math.acos(0.7) + 0.45), rel=1e-5)
    assert logits[1, 1].item() == pytest.approx(64 * math.cos(math.acos(0.2) + 0.8), rel=1e-5)
    assert [logits[0, 1].item(), logits[1, 0].item()] == pytest.approx([6.4, 19.2])


def test_either_side_of_theta_plus_m_equal_pi_arcface_penalises_and_magface_keeps_cos() -> None:
    """Hand values at angles near π. ArcFace (m 0.5, FaceT's rule): cos θ − m·sin m past π − m. MagFace (FaceT's
    ``margin_am`` 0): cos θ past π − m(a), where the ArcFace rule would give 64·(cos θ − m·sin m) instead."""
    labels = torch.zeros(2, dtype=torch.long)
    arc = ArcFace().margin(torch.tensor([[-0.87, 0.1], [-0.89, 0.1]]), labels, torch.ones(2))
    # θ = acos(−0.87) = 2.6260: θ + 0.5 = 3.1260 < π -> 64·cos(3.1260); θ = acos(−0.89) = 2.6681: 3.1681 > π
    assert arc[:, 0].tolist() == pytest.approx([-63.99222, 64 * (-0.89 - 0.5 * math.sin(0.5))], abs=1e-4)
    assert arc[1, 0].item() == pytest.approx(-72.30162, abs=1e-4)
    cos = torch.tensor([[-0.88, 0.1], [-0.95, 0.1], [-0.65, 0.3], [-0.75, 0.3]])
    mag = MagFace().margin(cos, torch.zeros(4, dtype=torch.long), torch.tensor([10.0, 10.0, 110.0, 200.0]))
    # m = 0.45: θ + m = 3.0967 < π, then 3.2740 > π; m = 0.8: θ + m = 3.0784 < π, then 3.2189 > π
    assert mag[:, 0].tolist() == pytest.approx([-63.93540, -60.8, -63.87218, -48.0], abs=1e-4)
    assert mag[:, 1].tolist() == pytest.approx([6.4, 6.4, 19.2, 19.2], abs=1e-5)


def test_magface_regulariser_and_loss_use_the_raw_norm() -> None:
    head = MagFace(4, 3)
    g = head.regularizers(torch.tensor([10.0, 110.0, 2.0]))["mag_g"]
    per = [10 / 110**2 + 1 / 10, 110 / 110**2 + 1 / 110, 10 / 110**2 + 1 / 10]  # 2 clamps to 10
    assert g.item() == pytest.approx(35 * sum(per) / 3, rel=1e-6)
    emb = torch.tensor([[30.0, 40.0, 0.0, 0.0]], requires_grad=True)  # norm 50
    out = head.loss(emb, torch.tensor([1]))
    assert out["mag_g"].item() == pytest.approx(35 * (50 / 110**2 + 1 / 50), rel=1e-6)
    assert out["loss"].item() == pytest.approx((out["ce"] + out["mag_g"]).item())
    out["loss"].backward()
    assert torch.isfinite(emb.grad).all()


@pytest.mark.parametrize("name", ["arcface", "cosface", "combined", "curricularface", "magface"])
def test_gradients_finite_when_an_embedding_equals_its_centre(name: str) -> None:
    torch.manual_seed(0)
    head = MARGINS.create(name, embedding_size=6, num_classes=4)
    emb = (head.weight.detach()[[2, 0]] * 20).requires_grad_(True)  # cos = 1 with its own centre
    out = head.loss(emb, torch.tensor([2, 0]))
    out["loss"].backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()
    assert emb.grad.abs().sum() > 0
