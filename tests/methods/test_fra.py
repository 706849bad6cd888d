"""FRA: loss formulas on hand-built tensors, Sinkhorn, heatmaps, proto and target EMAs, LARS groups, training."""

from __future__ import annotations

import copy
import math
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from timm.optim import Lars

from facekit.config import TrainConfig
from facekit.methods.base import METHODS, StepValues
from facekit.methods.fra import (
    FRA,
    byol_loss,
    cluster_loss,
    region_cosine,
    region_heatmaps,
    region_loss,
    save_heatmap_figure,
    sine_positions,
    sinkhorn,
)
from facekit.nn.backbones import BACKBONES
from facekit.nn.resnet import ResNetTrunk
from facekit.train.optim import build_optimizer
from facekit.train.schedules import cosine_schedule

TINY_TRUNK: dict = {"channels": (16, 32, 64, 128)}  # a narrow ResNet-18: 128 channels out
TINY: dict = dict(backbone="resnet18", backbone_kwargs=TINY_TRUNK, dim=16, hidden_dim=32, image_size=64)  # 2×2 maps


def _hp(step: int = 0, momentum: float = 0.996) -> StepValues:
    return StepValues(step=step, epoch=0.0, progress=0.0, lr=1e-3, weight_decay=0.0, momentum=momentum)


def _momenta(steps: int) -> list[float]:
    """The loop's ``hp.momentum`` over ``steps`` steps of the released recipe (0.996 to 1)."""
    return cosine_schedule(FRA.recipe["ema_momentum"], 1.0, steps).tolist()


def _batch(method: FRA, n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    np.random.seed(seed)
    views = method.views()
    items = [views(np.random.randint(0, 256, (112, 112, 3), dtype=np.uint8)) for _ in range(n)]
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


# ---------------------------------------------------------------- losses on hand-built tensors


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_byol_loss_hand_values_and_formula() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert byol_loss(x, 3 * x).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(x, -x).item() == pytest.approx(4.0)
    assert byol_loss(x, x.flip(1)).item() == pytest.approx(2.0)  # orthogonal rows
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    expected = 2 - 2 * np.mean([_cos(p[i].numpy(), t[i].numpy()) for i in range(5)])
    assert byol_loss(p, t).item() == pytest.approx(expected, rel=1e-5)


def test_region_loss_equals_pos_plus_002_neg_computed_by_hand() -> None:
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(3, 4, 6, generator=g), torch.randn(3, 4, 6, generator=g)
    b, k, _ = pred.shape
    p, t = pred.double().numpy(), target.double().numpy()
    pos = 2 - 2 * np.mean([_cos(p[i, j], t[i, j]) for i in range(b) for j in range(k)])
    neg_rows = [sum(_cos(p[i, j], t[i, o]) ** 2 for o in range(k) if o != j) / k for i in range(b) for j in range(k)]
    expected = pos + 0.02 * np.mean(neg_rows)
    assert region_loss(pred, target).item() == pytest.approx(expected, rel=1e-5)
    assert region_loss(pred, target, neg_weight=0.5).item() == pytest.approx(pos + 0.5 * np.mean(neg_rows), rel=1e-5)


def test_region_loss_hand_values() -> None:
    eye = torch.eye(4).expand(2, 4, 4)  # 4 orthogonal regions, prediction = target
    assert region_loss(eye, eye).item() == pytest.approx(0.0, abs=1e-6)
    same = torch.ones(2, 4, 3)  # 4 identical regions: neg = (K - 1) / K
    assert region_loss(same, same).item() == pytest.approx(0.02 * 3 / 4, abs=1e-6)


def _sinkhorn_by_hand(probs: np.ndarray, iters: int) -> np.ndarray:
    q = probs.T.astype(np.float64).copy()  # [K, N]
    k, n = q.shape
    q /= q.sum()
    for _ in range(iters):
        for r in range(k):
            q[r] /= q[r].sum() * k
        for c in range(n):
            q[:, c] /= q[:, c].sum() * n
    return (q * n).T


def test_sinkhorn_rows_sum_to_one_and_columns_to_n_over_k() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.9, 0.05, 0.05],
                          [0.4, 0.4, 0.2]])  # fmt: skip
    out = sinkhorn(probs, iters=3)
    assert torch.allclose(out.sum(1), torch.ones(6), atol=1e-6)
    assert np.allclose(out.numpy(), _sinkhorn_by_hand(probs.numpy(), 3), atol=1e-6)
    assert (out.sum(0) - 2.0).abs().max() < 0.3  # three iterations: near 6 / 3 per region
    converged = sinkhorn(probs, iters=200)
    assert torch.allclose(converged.sum(0), torch.full((3,), 2.0), atol=1e-4)
    assert torch.allclose(converged.sum(1), torch.ones(6), atol=1e-6)
    uniform = torch.full((4, 2), 0.5)  # already balanced: unchanged
    assert torch.allclose(sinkhorn(uniform), uniform)


def test_cluster_loss_equals_its_formula() -> None:
    g = torch.Generator().manual_seed(2)
    student, teacher = torch.rand(10, 4, generator=g) * 2 - 1, torch.rand(10, 4, generator=g) * 2 - 1
    s, t = student.double().numpy(), teacher.double().numpy()
    log_p = s / 0.1 - np.log(np.exp(s / 0.1).sum(1, keepdims=True))
    teacher_probs = np.exp(t / 0.04) / np.exp(t / 0.04).sum(1, keepdims=True)
    q = _sinkhorn_by_hand(teacher_probs, 3)
    cross_entropy = -(q * log_p).sum(1).mean()
    p_bar = np.exp(log_p).mean(0)
    expected = cross_entropy + math.log(4) + (p_bar * np.log(p_bar)).sum()  # CE + log K − H(p̄)
    assert cluster_loss(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    cluster_loss(student, teacher).backward()
    assert student.grad is not None and teacher.grad is None


def test_heatmaps_are_a_softmax_over_regions_plus_eps() -> None:
    g = torch.Generator().manual_seed(3)
    embeddings, pixels = torch.randn(8, 16, generator=g), torch.randn(2, 16, 3, 3, generator=g)
    dots, maps = region_heatmaps(embeddings, pixels, scale=0.5)
    assert maps.shape == dots.shape == (2, 8, 3, 3)
    assert torch.allclose(maps.sum(1), torch.full((2, 3, 3), 1 + 8e-7), atol=1e-6)
    expected = _cos(embeddings[5].numpy(), pixels[1, :, 2, 0].numpy())
    assert dots[1, 5, 2, 0].item() == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(maps - 1e-7, (dots / 0.5).softmax(1))


def test_region_cosine_by_hand() -> None:
    # batch means (1, 0), (0, 1), (1, 1): pairwise cosines 0, 1/√2, 1/√2 → mean over ordered pairs √2 / 3
    embed = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    assert region_cosine(embed).item() == pytest.approx(math.sqrt(2) / 3, rel=1e-6)
    assert region_cosine(torch.ones(2, 8, 4)).item() == pytest.approx(1.0)


def test_equal_region_embeddings_get_no_gradient_so_the_heatmaps_stay_flat() -> None:
    """With the K mask embeddings equal (nearly so at init), every heatmap is 1/K and no loss term moves them."""
    torch.manual_seed(0)
    method = FRA(**TINY)
    batch = _batch(method)
    leaves = []

    def equal_rows(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        leaf = out[:, :1].detach().expand_as(out).clone().requires_grad_()  # [B, K, D], K equal rows
        leaves.append(leaf)
        return leaf

    for neck in (method.neck, method.target_neck):
        neck.proj_attn.register_forward_hook(equal_rows)
    out = method(batch, _hp())
    assert out["region_cos"].item() == pytest.approx(1.0)
    online = leaves[:2]  # view 1, view 2 (the target's come next, without gradient)
    for grad in torch.autograd.grad(out["loss"], online):
        assert grad.abs().max() < 1e-6
    heatmaps = method.neck(method.backbone.forward_features(method._input(batch["view1"]))).heatmaps
    assert torch.allclose(heatmaps, torch.full_like(heatmaps, 1 / 8), atol=1e-6)


def test_sine_positions_match_detr_formula() -> None:
    pos = sine_positions(2, 3, 8)  # [6, 8]: rows in channels 0-3, columns in 4-7
    assert pos.shape == (6, 8)
    y, x = 2 / 2 * 2 * math.pi, 1 / 3 * 2 * math.pi  # token (1, 0)
    freqs = [1.0, 1.0, 100.0, 100.0]  # 1e4 ** (2 * (j // 2) / 4)
    row = [math.sin(y / freqs[0]), math.cos(y / freqs[1]), math.sin(y / freqs[2]), math.cos(y / freqs[3])]
    col = [math.sin(x / freqs[0]), math.cos(x / freqs[1]), math.sin(x / freqs[2]), math.cos(x / freqs[3])]
    assert np.allclose(pos[3].numpy(), row + col, atol=1e-5)


# ---------------------------------------------------------------- EMAs (the loop's schedule: tests/train/test_loop.py)


def test_the_recipe_starts_the_loops_ema_momentum_at_byols_base(tmp_path) -> None:
    assert TrainConfig(**FRA.recipe, out_dir=tmp_path).ema_momentum == 0.996


def test_after_step_moves_target_parameters_only() -> None:
    torch.manual_seed(0)
    method = FRA(**TINY)
    online, target = dict(method.named_parameters()), dict(method.target_backbone.named_parameters())
    with torch.no_grad():
        online["backbone.conv1.weight"].add_(1.0)
        method.backbone.bn1.running_mean.add_(5.0)
    before = target["conv1.weight"].detach().clone()
    method.after_step(_hp(step=3, momentum=0.998))  # the loop's hp.momentum halfway from 0.996 to 1
    expected = 0.998 * before + 0.002 * online["backbone.conv1.weight"].detach()
    assert torch.allclose(target["conv1.weight"], expected, atol=1e-6)
    assert torch.equal(method.target_backbone.bn1.running_mean, torch.zeros(64))  # buffers not averaged
    head = method.neck.proj_attn.query_embed.weight
    assert torch.allclose(method.target_neck.proj_attn.query_embed.weight, head, atol=1e-6)  # unchanged online


def test_proto_is_an_ema_of_the_batch_mean_embeddings_once_per_online_view() -> None:
    torch.manual_seed(0)
    method = FRA(**TINY, attn_dropout=0.0)
    batch = _batch(method, n=3)
    neck = method.neck
    proto0 = neck.proto.clone()
    with torch.no_grad():
        means = [neck.proj_attn(method.backbone.forward_features(batch[v])).mean(0) for v in ("view1", "view2")]
    method(batch, _hp())
    expected = 0.9 * (0.9 * proto0 + 0.1 * means[0]) + 0.1 * means[1]
    assert torch.allclose(neck.proto, expected, atol=1e-5)
    embed = torch.randn(5, *proto0.shape)
    before = neck.proto.clone()
    neck.update_proto(embed)
    assert torch.allclose(neck.proto, 0.9 * before + 0.1 * embed.mean(0), atol=1e-6)
    method.eval()
    with torch.no_grad():
        method(batch, _hp())
    assert torch.allclose(neck.proto, 0.9 * before + 0.1 * embed.mean(0), atol=1e-6)  # eval: no update


# ---------------------------------------------------------------- the Method


def test_views_shapes_and_pickling() -> None:
    views = pickle.loads(pickle.dumps(FRA(**TINY).views()))
    np.random.seed(0)
    out = views(np.random.randint(0, 256, (112, 112, 3), dtype=np.uint8))
    assert out["view1"].shape == out["view2"].shape == (3, 64, 64) and out["view1"].dtype == torch.float32
    assert out["view1_box"].shape == (5,)


def test_forward_backward_finite_and_no_gradient_on_the_target() -> None:
    torch.manual_seed(0)
    method = METHODS.create("fra", **TINY)
    batch = _batch(method)
    out = method(batch, _hp())
    assert set(out) == {"loss", "inst", "obj", "cluster", "region_cos", "momentum"}
    assert 0.9 < out["region_cos"].item() <= 1.0  # the K region embeddings start out nearly equal
    assert torch.isfinite(out["loss"]) and out["loss"].ndim == 0
    parts = out["inst"] + out["obj"] + 0.1 * out["cluster"]
    assert out["loss"].item() == pytest.approx(parts.item(), rel=1e-5)
    out["loss"].backward()
    named = dict(method.named_parameters())
    for name in ("backbone.conv1.weight", "neck.proj.0.weight", "neck.proj_pixel.0.weight", "neck.proj_obj.3.weight",
                 "neck.proj_attn.query_embed.weight", "neck.proj_attn.input_proj.weight", "predictor.0.weight",
                 "predictor_obj.3.weight"):  # fmt: skip
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name
    for name, p in named.items():
        if name.startswith("target_"):
            assert not p.requires_grad and p.grad is None, name
    with pytest.raises(ValueError, match="view1"):
        method({"image": batch["view1"]}, _hp())


def test_eval_heatmaps_from_proto_sum_to_one_over_regions() -> None:
    torch.manual_seed(0)
    method = FRA(**TINY).eval()
    images = _batch(method, n=2)["view1"]
    maps = method.heatmaps(images)
    assert maps.shape == (2, 8, 2, 2)
    assert torch.allclose(maps.sum(1), torch.full((2, 2, 2), 1 + 8e-7), atol=1e-6)
    x = method.backbone.forward_features(images)
    pixels = method.neck.proj_pixel(x.flatten(2)).view(2, -1, 2, 2)
    assert torch.allclose(maps, region_heatmaps(method.neck.proto, pixels)[1], atol=1e-6)


def test_lars_through_the_loops_groups_skips_bias_and_norm_adaptation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    method = FRA(**TINY)
    cfg = TrainConfig(epochs=1, batch_size=2, out_dir=tmp_path, optimizer="lars", lr=0.9, weight_decay=1e-6)
    recipe = TrainConfig(**FRA.recipe, out_dir=tmp_path)  # the released recipe is a valid loop config
    assert (recipe.optimizer, recipe.lr, recipe.weight_decay, recipe.momentum) == ("lars", 0.9, 1e-6, 0.9)
    optimizer = build_optimizer(method, cfg, lr=0.9)
    assert isinstance(optimizer, Lars) and optimizer.defaults["trust_coeff"] == 0.001
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in method.named_parameters():
        if p.requires_grad:
            assert (id(p) in decayed) == (p.ndim > 1), name  # biases, BN and LayerNorm: wd 0, so no LARS
    bias, weight = method.neck.proj[1].bias, method.neck.proj[0].weight
    before_bias, before_weight = bias.detach().clone(), weight.detach().clone()
    for p in method.parameters():
        p.grad = torch.full_like(p, 0.5) if p.requires_grad else None
    optimizer.step()
    assert torch.allclose(bias, before_bias - 0.9 * 0.5)  # plain SGD step (first momentum buffer = grad)
    grad = torch.full_like(weight, 0.5)
    trust = 0.001 * before_weight.norm() / (grad.norm() + 1e-6 * before_weight.norm() + 1e-8)
    assert torch.allclose(weight, before_weight - 0.9 * trust * (grad + 1e-6 * before_weight), atol=1e-7)


def test_a_few_optimizer_steps_lower_the_loss_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    method = FRA(**TINY, attn_dropout=0.0)
    batch = _batch(method)
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step, momentum in enumerate(_momenta(6)):
        hp = _hp(step=step, momentum=momentum)
        loss = method(batch, hp)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_step(hp)
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_export_backbone_is_the_resnet_trunk_and_loads_into_a_fresh_one() -> None:
    torch.manual_seed(0)
    method = FRA(**TINY)
    trunk = method.export_backbone()
    assert isinstance(trunk, ResNetTrunk) and trunk is method.backbone
    fresh = BACKBONES.create("resnet18", **TINY_TRUNK)
    fresh.load_state_dict(trunk.state_dict())
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(fresh.eval()(x), trunk.eval()(x))
    assert fresh(x).shape == (2, 128)


def test_resnet50_trunk_matches_torchvision_without_pool_and_fc() -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None).eval()
    trunk = BACKBONES.create("resnet50").eval()
    result = trunk.load_state_dict(reference.state_dict(), strict=False)
    assert result.missing_keys == [] and sorted(result.unexpected_keys) == ["fc.bias", "fc.weight"]
    with torch.no_grad():
        assert trunk.forward_features(torch.randn(1, 3, 224, 224)).shape == (1, 2048, 7, 7)
        x = torch.randn(2, 3, 96, 96)
        expected = torch.nn.Sequential(*list(reference.children())[:-2])(x)
        assert torch.allclose(trunk.forward_features(x), expected, atol=1e-5)
    with pytest.raises(KeyError, match="resnet50"):
        BACKBONES.create("resnet5")


def test_heatmap_figure_over_a_real_face(assets: Path, tmp_path: Path) -> None:
    photo = next(iter(sorted((assets / "faces" / "deepface").rglob("*.jpg"))))
    face = cv2.resize(cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB), (64, 64))
    torch.manual_seed(0)
    method = FRA(**TINY).eval()
    image = torch.from_numpy(face).permute(2, 0, 1)[None]  # uint8: normalised inside
    path = save_heatmap_figure(face, method.heatmaps(image)[0], tmp_path / "fig" / "heatmaps.png")
    png = cv2.imread(str(path))
    assert png is not None and png.shape == (660, 880, 3)  # 10 panels: 3 rows × 4 of 2.2 in at 100 dpi
    assert png.std() > 10
    with pytest.raises(ValueError, match="heatmaps"):
        save_heatmap_figure(face, np.zeros((8, 2)), tmp_path / "bad.png")


def test_heatmap_figure_shows_weights_far_below_one(tmp_path: Path) -> None:
    """FRA's maps live near 1/K (scale 1): region 0 at 0.14 on the left, 0.12 on the right must show as red vs blue."""
    maps = np.full((8, 2, 2), 0.87 / 7, np.float32)
    maps[0, :, 0], maps[0, :, 1], maps[1:, :, 1] = 0.14, 0.12, 0.88 / 7
    png = cv2.imread(str(save_heatmap_figure(np.full((64, 64, 3), 128, np.uint8), maps, tmp_path / "h.png")))
    row, col = png.shape[0] // 6, png.shape[1] * 5 // 8  # the centre of region 0's panel (row 0, column 2 of 4)
    left, right = png[row, col - 40].astype(int), png[row, col + 40].astype(int)  # BGR
    assert left[2] - left[0] > 60 and right[0] - right[2] > 60, (left, right)


# ---------------------------------------------------------------- positive controls


def test_cluster_loss_alone_pulls_near_equal_regions_apart_when_teacher_and_student_agree() -> None:
    """The symmetry FRA starts from (8 near-equal region embeddings, cosine ~0.99) is unstable under the
    cluster loss when the teacher sees the student's own scores: the sharper teacher (0.04 vs 0.1)
    separates the regions. Hand-built: embeddings ``[8, 32]`` and fixed pixel projections."""
    torch.manual_seed(0)
    embeddings = (torch.randn(32) + 0.1 * torch.randn(8, 32)).requires_grad_()
    pixels = torch.randn(4, 32, 8, 16)
    optimizer = torch.optim.SGD([embeddings], lr=1.0)
    start = region_cosine(embeddings[None].detach()).item()
    losses = []
    for _ in range(100):
        dots, _ = region_heatmaps(embeddings, pixels)
        scores = dots.permute(0, 2, 3, 1).reshape(-1, 8)
        loss = cluster_loss(scores, scores)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    end = region_cosine(embeddings[None].detach()).item()
    assert start > 0.99 and end < 0.9, (start, end)
    assert losses[-1] < losses[0] - 0.3, (losses[0], losses[-1])


@pytest.mark.slow
def test_instance_branch_learns_the_invariance_its_views_teach() -> None:
    """A positive control for the online / target networks, predictors and EMA together: 8 smooth random
    patterns, each view shifted by its own random colour offset (as strong as the pattern). A random trunk's
    nearest neighbour often follows the colour; after 100 steps it follows the pattern."""
    torch.manual_seed(0)
    patterns = F.interpolate(torch.randn(8, 3, 8, 8), size=32, mode="bilinear")

    def views(index: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        offset = torch.randn(len(index), 3, 1, 1, generator=generator)
        return patterns[index] + offset + 0.2 * torch.randn(len(index), 3, 32, 32, generator=generator)

    def nearest_neighbour_accuracy(trunk: ResNetTrunk) -> float:
        index = torch.arange(8).repeat(8)  # 8 views of each pattern
        with torch.no_grad():
            embedded = F.normalize(trunk.eval()(views(index, torch.Generator().manual_seed(1))), dim=1)
        similarity = (embedded @ embedded.T).fill_diagonal_(-2)
        return (index[similarity.argmax(1)] == index).float().mean().item()

    method = FRA(backbone="resnet18", dim=64, hidden_dim=256, image_size=32)
    at_init = nearest_neighbour_accuracy(copy.deepcopy(method.backbone))
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-4)
    method.train()
    for step, momentum in enumerate(_momenta(100)):
        index = torch.randint(0, 8, (32,))
        hp = _hp(step=step, momentum=momentum)
        loss = method({"view1": views(index), "view2": views(index)}, hp)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_step(hp)
    learned = nearest_neighbour_accuracy(method.backbone)
    assert at_init < 0.8 and learned > 0.85, (at_init, learned)
