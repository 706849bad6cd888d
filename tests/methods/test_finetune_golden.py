"""FineTune golden forward: backbone embedding -> margin head over Partial FC -> cross-entropy.

Released code: FaceT (``zyainfal/Joint-Holistic-and-Masked-Face-Recognition`` @ 3126602: ``code/loss/face_losses.py``
ArcFace and MagFace, ``code/loss/partial_fc.py`` PartialFCSGD, ``code/data/data_pipe.py`` MaskedImageFolder,
``code/VIT/mim_pytorch.py`` prompts chosen by ``ismask``) and insightface ``arcface_torch``
(``deepinsight/insightface`` @ 7fadd42: ``recognition/arcface_torch/losses.py`` CombinedMarginLoss / ArcFace /
CosFace, ``partial_fc_v2.py`` PartialFC_V2).

Two kinds of reference: the whole ``FineTune.forward`` against the released formulas written out here
(per-row embeddings picked from all-holistic and all-masked passes, the released centre sampling replayed from
the same seed, the margins, the scale, a log-sum-exp cross-entropy, MagFace's g); and facekit's Partial FC
against numbers printed by the released modules themselves, run outside the project on :func:`golden_tensors`
(one gloo process on the CPU, ``Tensor.cuda`` made the identity)::

    pfc = PartialFC_V2(margin, 4, 10, sample_rate)            # or FaceT's PartialFCSGD(margin, 4, 10, rate)
    pfc.weight.data.copy_(centres); torch.manual_seed(0); loss = pfc(emb, labels)  # FaceT: (emb, labels, sgd)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facekit.data.images import encode_jpeg
from facekit.data.record import FaceRecord
from facekit.methods.base import StepValues
from facekit.methods.finetune import FaceRecognitionView, FineTune
from facekit.nn.margins import MARGINS, ArcFace, MagFace
from facekit.nn.partial_fc import PartialFC

TINY = {"img_size": 32, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_prompts": 2, "head_dim": 16}
HP = StepValues(step=0, epoch=0.0, progress=0.0, lr=1e-3, weight_decay=0.0, momentum=0.0)
NUM_CLASSES = 12


# ---------------------------------------------------------------- the released formulas, by hand


def _target_logit(name: str, kwargs: dict, cos: float, norm: float) -> float:
    """The released target logit for one row: FaceT's ArcFace / MagFace, arcface_torch's CosFace /
    CombinedMarginLoss(1, m2, 0) (FaceT's copy: ArcFace's rule past π)."""
    theta = math.acos(cos)
    if name == "cosface":
        return kwargs.get("s", 64.0) * (cos - kwargs.get("m", 0.4))
    if name in ("arcface", "combined"):
        s, m = kwargs.get("s", 64.0), kwargs.get("m", kwargs.get("m2", 0.5))
        return s * (math.cos(theta + m) if cos > math.cos(math.pi - m) else cos - math.sin(math.pi - m) * m)
    assert name == "magface"
    a = min(max(norm, 10.0), 110.0)
    m = 0.45 + (0.8 - 0.45) * (a - 10.0) / (110.0 - 10.0)
    return 64.0 * (math.cos(theta + m) if cos > math.cos(math.pi - m) else cos)  # margin_am = 0


def _released_loss(name: str, kwargs: dict, emb: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor):
    """Mean over rows of ``logsumexp(logits) − target logit`` (+ MagFace's ``35·mean(a/110² + 1/a)``), float64.
    Returns (loss, ce, g or None)."""
    s = kwargs.get("s", 64.0)
    e, w = emb.double(), centres.double()
    cos = (e / e.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).T
    rows = []
    for i, y in enumerate(labels.tolist()):
        logits = [s * c for c in cos[i].tolist()]
        logits[y] = _target_logit(name, kwargs, cos[i, y].item(), e[i].norm().item())
        top = max(logits)
        rows.append(top + math.log(sum(math.exp(v - top) for v in logits)) - logits[y])
    ce = sum(rows) / len(rows)
    if name != "magface":
        return ce, ce, None
    a = [min(max(n, 10.0), 110.0) for n in e.norm(dim=1).tolist()]
    g = 35.0 * sum(x / 110.0**2 + 1.0 / x for x in a) / len(a)
    return ce + g, ce, g


def _released_sample(labels: torch.Tensor, num_classes: int, num_sample: int, seed: int) -> torch.Tensor:
    """PartialFC_V2.sample: ``perm = rand(C); perm[positives] = 2; topk(num_sample)``, sorted."""
    torch.manual_seed(seed)
    perm = torch.rand(num_classes)
    perm[torch.unique(labels)] = 2.0
    return perm.topk(num_sample).indices.sort().values


def _method(margin: str, kwargs: dict, sample_rate: float) -> FineTune:
    torch.manual_seed(0)
    method = FineTune(NUM_CLASSES, backbone="facet_base", backbone_kwargs=TINY, margin=margin, margin_kwargs=kwargs,
                      sample_rate=sample_rate).eval()  # fmt: skip
    with torch.no_grad():
        method.backbone.head[0].weight.mul_(12.0)  # embedding norms across MagFace's clamp [10, 110]
        method.head.weight.normal_(0.0, 1.0)
    return method


CASES = [
    ("arcface", {}, 1.0),
    ("arcface", {"s": 32.0, "m": 0.3}, 0.5),
    ("cosface", {}, 1.0),
    ("cosface", {"s": 30.0, "m": 0.35}, 0.5),
    ("combined", {"m1": 1.0, "m2": 0.3, "m3": 0.0}, 1.0),
    ("magface", {}, 1.0),
    ("magface", {}, 0.5),
]


@pytest.mark.parametrize(("margin", "kwargs", "sample_rate"), CASES)
def test_forward_is_the_released_margin_softmax_over_the_sampled_centres(
    margin: str, kwargs: dict, sample_rate: float
) -> None:
    method = _method(margin, kwargs, sample_rate)
    g = torch.Generator().manual_seed(1)
    images = torch.rand(6, 3, 32, 32, generator=g) * 2 - 1
    ismask = torch.tensor([0, 1, 1, 0, 1, 0])
    labels = torch.tensor([3, 7, 3, 11, 0, 5])
    torch.manual_seed(5)
    out = method({"image": images, "ismask": ismask, "identity": labels}, HP)
    # the released model picks each sample's prompts by its ismask: rows of an all-holistic and an all-masked pass
    holistic, masked = method.backbone(images, ismask=torch.zeros(6)), method.backbone(images, ismask=torch.ones(6))
    emb = torch.where(ismask[:, None].bool(), masked, holistic)
    norms = emb.norm(dim=1)
    assert norms.min() < 10 < norms.max() < 110 or margin != "magface", norms  # both sides of the clamp
    index = _released_sample(labels, NUM_CLASSES, int(sample_rate * NUM_CLASSES), seed=5)
    assert set(labels.tolist()) <= set(index.tolist()) and len(index) == int(sample_rate * NUM_CLASSES)
    columns = torch.searchsorted(index, labels)
    loss, ce, mag_g = _released_loss(margin, kwargs, emb, method.head.weight.detach()[index], columns)
    assert out["loss"].item() == pytest.approx(loss, rel=1e-5, abs=1e-5)
    assert out["ce"].item() == pytest.approx(ce, rel=1e-5, abs=1e-5)
    assert ("mag_g" in out) == (mag_g is not None)
    if mag_g is not None:
        assert out["mag_g"].item() == pytest.approx(mag_g, rel=1e-5)
    out["loss"].backward()
    unsampled = torch.ones(NUM_CLASSES, dtype=torch.bool)
    unsampled[index] = False
    grad = method.head.weight.grad
    assert grad[unsampled].abs().sum() == 0 and (grad[index].abs().sum(1) > 0).all()


def test_masked_images_take_the_masked_prompts_and_holistic_ones_the_holistic_prompts() -> None:
    """The batch's ``ismask`` reaches the backbone row by row: swapping it changes exactly the swapped rows."""
    method = _method("arcface", {}, 1.0)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    labels = torch.tensor([0, 1, 2, 3])
    seen = []
    method.head.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    for ismask in (torch.tensor([0, 1, 0, 1]), torch.tensor([1, 1, 0, 0])):
        method({"image": images, "ismask": ismask, "identity": labels}, HP)
    holistic, masked = method.backbone(images, ismask=torch.zeros(4)), method.backbone(images, ismask=torch.ones(4))
    torch.testing.assert_close(seen[0], torch.stack([holistic[0], masked[1], holistic[2], masked[3]]))
    torch.testing.assert_close(seen[1], torch.stack([masked[0], masked[1], holistic[2], holistic[3]]))
    assert (holistic - masked).abs().max() > 1e-3


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_masked_twin_is_drawn_with_probability_masked_faces(rate: float) -> None:
    """FaceT's MaskedImageFolder: the masked twin with probability ``masked_faces``, then ``ismask`` 1."""
    rgb = np.full((112, 112, 3), 100, np.uint8)
    record = FaceRecord(key="x", image=encode_jpeg(rgb), identity=0, landmarks=np.zeros((5, 2), np.float32),
                        bbox=np.zeros(4, np.float32), det_score=1.0, num_faces=1, source="deepface", source_sha256="",
                        mask="surgical", masked_image=encode_jpeg(rgb // 2))  # fmt: skip
    view = FaceRecognitionView(112, masked_faces=rate)
    np.random.seed(3)
    flags = [int(view(rgb, record)["ismask"]) for _ in range(1500)]
    assert abs(np.mean(flags) - rate) <= 4 * math.sqrt(rate * (1 - rate) / len(flags)) + 1e-12, np.mean(flags)


# ---------------------------------------------------------------- against the released modules' own numbers


def golden_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(centres [10, 4] in a cone, embeddings [6, 4] with norms 5..150, labels [6]); rows 4 and 5 point away
    from their centres: θ + m > π for ArcFace on row 4, for MagFace on rows 4 and 5."""
    c, d = torch.arange(10, dtype=torch.float64)[:, None], torch.arange(4, dtype=torch.float64)[None]
    centres = 1.0 + 0.5 * torch.sin(0.9 * c + 1.7 * d + 0.3)
    labels = torch.tensor([1, 4, 4, 7, 9, 2])
    i = torch.arange(6, dtype=torch.float64)[:, None]
    directions = centres[labels] + 0.8 * torch.cos(1.1 * i + 0.5 * d)
    directions[4] = -centres[9] + 0.1 * torch.cos(1.1 * 4 + 0.5 * d[0])
    directions[5] = -centres[2] + 0.9 * torch.cos(1.1 * 5 + 0.5 * d[0])
    norms = torch.tensor([5.0, 30.0, 80.0, 150.0, 40.0, 100.0], dtype=torch.float64)
    return centres.float(), (F.normalize(directions, dim=1) * norms[:, None]).float(), labels


#: per-row norms of the embeddings' gradient under the released FaceT ArcFace() and MagFace(), sample rate 1
FACET_ARCFACE_GRAD = [1.2289248, 0.2829140, 0.0699279, 0.0335365, 0.1645038, 0.0822058]
FACET_MAGFACE_GRAD = [1.1442623, 0.2879418, 0.0882994, 0.0444501, 0.1645342, 0.0347831]
#: (facekit margin, kwargs, sample rate, the released module, its loss, its gradient's row norms or None)
RELEASED = [
    ("cosface", {}, 1.0, "arcface_torch CosFace(64, 0.4)", 34.7422943, None),
    ("combined", {"m1": 1.0, "m2": 0.0, "m3": 0.4}, 1.0, "arcface_torch CombinedMarginLoss(64, 1, 0, 0.4)", 34.7422943,
     None),
    ("cosface", {}, 0.8, "arcface_torch CosFace(64, 0.4)", 33.6076279, None),
    ("arcface", {}, 1.0, "FaceT ArcFace()", 25.6097546, FACET_ARCFACE_GRAD),
    ("arcface", {}, 0.8, "FaceT ArcFace()", 24.4750900, None),
    ("combined", {"m1": 1.0, "m2": 0.5, "m3": 0.0}, 1.0, "FaceT CombinedMarginLoss(64, 1, 0.5, 0)", 25.6097546, None),
    ("magface", {}, 1.0, "FaceT MagFace()", 26.3479786, FACET_MAGFACE_GRAD),
    ("magface", {}, 0.8, "FaceT MagFace()", 25.2133083, None),
]  # fmt: skip


@pytest.mark.parametrize(("margin", "kwargs", "sample_rate", "released", "loss", "grad_norms"), RELEASED)
def test_partial_fc_gives_the_released_loss(
    margin: str, kwargs: dict, sample_rate: float, released: str, loss: float, grad_norms: list[float] | None
) -> None:
    centres, emb, labels = golden_tensors()
    pfc = PartialFC(MARGINS.create(margin, **kwargs), 10, 4, sample_rate=sample_rate)
    pfc.weight.data.copy_(centres)
    emb.requires_grad_(True)
    torch.manual_seed(0)  # the released sampling keeps the 5 positives and centres 0, 5, 6
    out = pfc(emb, labels)
    assert out["loss"].item() == pytest.approx(loss, rel=1e-6), released
    out["loss"].backward()
    if grad_norms is not None:
        assert emb.grad.norm(dim=1).tolist() == pytest.approx(grad_norms, rel=1e-5), released


def test_arcface_beyond_pi_follows_facet() -> None:
    """Released logits on cosines near π (rows: labels 0, 0, 0, 1; MagFace norms 10, 60, 110, 35).
    facekit's ArcFace is FaceT's (``cos θ − m·sin m`` past π − m), not arcface_torch @ 7fadd42's plain
    ``cos(θ + m)``; the two agree where θ + m ≤ π (rows 1 and 2 here; on :func:`golden_tensors`' rows 0-3 both give
    the loss 17.7013149, arcface_torch with a straight-through gradient)."""
    cos = torch.tensor([[-0.95, 0.1], [-0.85, 0.2], [-0.75, 0.3], [0.3, -0.99]])
    labels = torch.tensor([0, 0, 0, 1])
    facet_arcface = [[-76.141617, 6.4], [-63.903889, 12.8], [-62.419014, 19.2], [19.2, -78.701614]]
    arcface_torch = [[-62.937855, 6.4], [-63.903889, 12.8], [-62.419018, 19.2], [19.2, -59.932034]]
    facet_magface = [[-60.8, 6.4], [-54.4, 12.8], [-48.0, 19.2], [19.2, -63.36]]
    ours = ArcFace().margin(cos, labels, torch.ones(4))
    torch.testing.assert_close(ours, torch.tensor(facet_arcface), atol=2e-5, rtol=0)
    assert ours[1:3, 0].tolist() == pytest.approx([arcface_torch[1][0], arcface_torch[2][0]], abs=2e-5)
    assert abs(ours[0, 0].item() - arcface_torch[0][0]) > 10 and abs(ours[3, 1].item() - arcface_torch[3][1]) > 10
    magface = MagFace().margin(cos, labels, torch.tensor([10.0, 60.0, 110.0, 35.0]))
    torch.testing.assert_close(magface, torch.tensor(facet_magface), atol=2e-5, rtol=0)
    centres, emb, golden_labels = golden_tensors()
    pfc = PartialFC(ArcFace(), 10, 4)
    pfc.weight.data.copy_(centres)
    assert pfc(emb[:4], golden_labels[:4])["loss"].item() == pytest.approx(17.7013149, rel=1e-6)


def test_cross_entropy_is_not_capped_where_the_released_clamps_the_target_probability() -> None:
    """arcface_torch's DistCrossEntropy clamps the target's probability at 1e-30, capping a row's loss at
    −log(1e-30) = 69.08 (its gradient is the plain softmax's); facekit reports the exact cross-entropy."""
    pfc = PartialFC(MARGINS.create("cosface"), 2, 2)
    pfc.weight.data.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    emb = torch.tensor([[20.0, 0.0]], requires_grad=True)  # cos 1 with centre 0, −1 with its own centre 1
    out = pfc(emb, torch.tensor([1]))
    exact = 64 * 1.0 - 64 * (-1.0 - 0.4) + math.log1p(math.exp(64 * (-1.4) - 64))
    assert out["loss"].item() == pytest.approx(exact, rel=1e-6) and exact > -math.log(1e-30)
