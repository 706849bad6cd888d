"""DINO: the loss over view pairs, centring, teacher temperature, frozen last layer, EMA, views, training."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import Dataset

from facekit.config import TrainConfig
from facekit.methods.base import METHODS, StepValues
from facekit.methods.dino import DINO, dino_loss, target_entropy, update_center
from facekit.train.loop import train

TINY = dict(img_size=32, embed_dim=32, depth=1, num_heads=2)  # 4 × 4 tokens of 8 px
HEAD = dict(out_dim=64, head_hidden_dim=64, head_bottleneck_dim=16)


def _hp(step: int = 0, epoch: float = 0.0, momentum: float = 0.996, **extra: float) -> StepValues:
    return StepValues(step=step, epoch=epoch, progress=0.0, lr=1e-3, weight_decay=0.0, momentum=momentum, extra=extra)


def _tiny_dino(**overrides) -> DINO:
    return DINO(backbone_kwargs=TINY, local_size=16, n_local=3, **{**HEAD, **overrides})


def _batch(method: DINO, n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    np.random.seed(seed)
    views = method.views()
    items = [views(np.random.randint(0, 256, (112, 112, 3), dtype=np.uint8)) for _ in range(n)]
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


# ---------------------------------------------------------------- loss and centre


def _loss_by_hand(student, teacher, center, ts: float, tt: float) -> tuple[float, int]:
    """DINO's cross-entropy with explicit loops over view pairs, samples and classes (float64)."""
    total, terms = 0.0, 0
    num_views, batch, k = student.shape
    for g in range(teacher.shape[0]):
        for v in range(num_views):
            if v == g:
                continue
            pair = 0.0
            for b in range(batch):
                t = [math.exp((float(teacher[g, b, i]) - float(center[i])) / tt) for i in range(k)]
                s = [math.exp(float(student[v, b, i]) / ts) for i in range(k)]
                pair += -sum(t[i] / sum(t) * math.log(s[i] / sum(s)) for i in range(k))
            total += pair / batch
            terms += 1
    return total / terms, terms


def test_dino_loss_matches_explicit_loops_over_the_18_pairs() -> None:
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(10, 3, 5, generator=gen), torch.randn(2, 3, 5, generator=gen)
    center = 0.3 * torch.randn(5, generator=gen)
    expected, terms = _loss_by_hand(student, teacher, center, 0.1, 0.04)
    assert terms == 18
    assert dino_loss(student, teacher, center, 0.1, 0.04).item() == pytest.approx(expected, rel=1e-5)
    assert dino_loss(student, teacher, center[None], 0.1, 0.04).item() == pytest.approx(expected, rel=1e-5)


def test_loss_stays_float32_under_bf16_autocast() -> None:
    gen = torch.Generator().manual_seed(2)
    student, teacher, center = torch.randn(4, 3, 8, generator=gen), torch.randn(2, 3, 8, generator=gen), torch.zeros(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = dino_loss(student, teacher, center, 0.1, 0.04)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(dino_loss(student, teacher, center, 0.1, 0.04).item(), rel=1e-6)


def test_same_view_pairs_are_left_out() -> None:
    # Student views 2, 3 are uniform (CE = log 6 against any teacher), so only (teacher 0, student 1) and
    # (teacher 1, student 0) carry information; (0, 0) and (1, 1) must not appear, whatever they would be.
    gen = torch.Generator().manual_seed(1)
    teacher, center = torch.randn(2, 1, 6, generator=gen), 0.2 * torch.randn(6, generator=gen)
    student = torch.zeros(4, 1, 6)
    student[:2] = 3 * torch.randn(2, 1, 6, generator=gen)

    def ce(t: torch.Tensor, s: torch.Tensor) -> float:
        return float(-(torch.softmax((t - center) / 0.05, -1) * torch.log_softmax(s / 0.1, -1)).sum())

    expected = (ce(teacher[0], student[1]) + ce(teacher[1], student[0]) + 4 * math.log(6)) / 6
    assert dino_loss(student, teacher, center, 0.1, 0.05).item() == pytest.approx(expected, rel=1e-5)
    with_same = (6 * expected + ce(teacher[0], student[0]) + ce(teacher[1], student[1])) / 8
    assert with_same != pytest.approx(expected, rel=1e-3)


def test_update_center_is_the_ema_of_the_teacher_mean() -> None:
    center = torch.tensor([[1.0, -2.0, 0.5]])
    logits = torch.tensor([[0.0, 1.0, 2.0], [4.0, 3.0, -2.0]])
    update_center(center, logits.sum(0), 2, 0.9)
    expected = 0.9 * torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.tensor([2.0, 2.0, 0.0])
    assert torch.allclose(center[0], expected)


def test_target_entropy_reads_ln_k_for_uniform_targets_and_zero_for_one_hot() -> None:
    center = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    same = torch.full((2, 3, 4), 0.5)  # every output equals the centre: uniform targets
    assert target_entropy(same, center, 0.04).item() == pytest.approx(math.log(4))
    peaked = torch.tensor([[[10.0, 0.5, 0.5, 0.5]]])  # one output far above the others at τ = 0.04
    assert target_entropy(peaked, center, 0.04).item() == pytest.approx(0.0, abs=1e-6)
    two_way = torch.tensor([[[0.5, 0.5, 0.5 - 1e3, 0.5 - 1e3]]])  # two equal outputs, two suppressed
    assert target_entropy(two_way, center, 0.07).item() == pytest.approx(math.log(2))


def test_forward_reports_the_teacher_entropy_of_its_batch() -> None:
    method = _tiny_dino()
    batch = _batch(method)
    with torch.no_grad():
        teacher = method.logits(batch)[1]
    out = method(batch, _hp(teacher_temp=0.05))
    assert out["teacher_entropy"].item() == pytest.approx(target_entropy(teacher, method.center, 0.05).item())
    assert 0.0 < out["teacher_entropy"].item() <= math.log(HEAD["out_dim"]) + 1e-5


def test_method_updates_the_center_in_after_step_only_and_without_a_process_group() -> None:
    """Only the applied step's teacher outputs reach the centre: a skipped step's (a forward without
    after_step) are dropped by the next step, and a caller passing the same step number again starts anew."""
    method = _tiny_dino(center_momentum=0.9)
    batch, other = _batch(method), _batch(method, seed=1)
    with torch.no_grad():  # [2, B, K], deterministic: the teacher has no drop-path
        teacher, teacher_other = method.logits(batch)[1], method.logits(other)[1]
    method(other, _hp(step=0))
    assert not dist.is_initialized() and torch.count_nonzero(method.center) == 0
    method(batch, _hp(step=1))  # step 0 was "skipped": its outputs are dropped
    method.after_step(_hp(step=1, momentum=1.0))
    expected = 0.1 * teacher.reshape(-1, HEAD["out_dim"]).mean(0)
    assert torch.allclose(method.center[0], expected, atol=1e-6)
    method(other, _hp(step=1))  # the same step number once more: a new step all the same
    method.after_step(_hp(step=1, momentum=1.0))
    expected = 0.9 * expected + 0.1 * teacher_other.reshape(-1, HEAD["out_dim"]).mean(0)
    assert torch.allclose(method.center[0], expected, atol=1e-6)


# ---------------------------------------------------------------- schedules, freezing, EMA


def test_teacher_temperature_warms_up_per_epoch() -> None:
    method = _tiny_dino(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=3)
    values = method.schedules(total_steps=10, steps_per_epoch=2)["teacher_temp"]
    assert values == pytest.approx([0.04, 0.04, 0.055, 0.055, 0.07, 0.07, 0.07, 0.07, 0.07, 0.07])
    batch = _batch(method)
    assert method(batch, _hp(epoch=1.5))["teacher_temp"] == pytest.approx(0.055)  # no hp.extra: by epoch
    assert method(batch, _hp(teacher_temp=0.06))["teacher_temp"] == pytest.approx(0.06)
    assert _tiny_dino(warmup_teacher_temp_epochs=0).schedules(3, 1)["teacher_temp"] == pytest.approx([0.07] * 3)


def test_last_layer_gradients_are_dropped_during_the_first_epoch_only() -> None:
    method = _tiny_dino(freeze_last_layer=1)
    batch = _batch(method)
    for epoch, frozen in ((0.0, True), (0.99, True), (1.0, False)):
        method.zero_grad(set_to_none=True)
        method(batch, _hp(epoch=epoch))["loss"].backward()
        method.before_optimizer_step(_hp(epoch=epoch))
        direction = method.student.head.last_layer.parametrizations.weight.original1
        assert (direction.grad is None) == frozen
        assert method.student.head.mlp[0].weight.grad is not None


class _Faces(Dataset):
    def __init__(self, views, n: int = 8) -> None:
        self.views = views
        self.images = np.random.default_rng(0).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.views(self.images[i])


def test_loop_keeps_the_last_layer_fixed_in_epoch_one_and_trains_it_after(tmp_path: Path) -> None:
    def run(out: Path, max_steps: int | None) -> DINO:
        torch.manual_seed(0)
        method = _tiny_dino(freeze_last_layer=1)
        cfg = TrainConfig(epochs=2, batch_size=4, out_dir=out, lr=1e-3, max_steps=max_steps, progress=False)
        train(method, _Faces(method.views()), cfg)
        return method

    torch.manual_seed(0)
    initial = _tiny_dino(freeze_last_layer=1).student.state_dict()
    last = "head.last_layer.parametrizations.weight.original1"
    after_epoch_1 = run(tmp_path / "one", max_steps=2).student.state_dict()  # 8 faces / 4 = 2 steps per epoch
    assert torch.equal(after_epoch_1[last], initial[last])
    assert not torch.equal(after_epoch_1["head.mlp.0.weight"], initial["head.mlp.0.weight"])
    after_epoch_2 = run(tmp_path / "two", max_steps=None).student.state_dict()
    assert not torch.equal(after_epoch_2[last], initial[last])


def test_after_step_moves_the_teacher_by_ema() -> None:
    method = _tiny_dino()
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    student = method.student.state_dict()
    method.after_step(_hp(momentum=0.9))
    for name, value in method.teacher.state_dict().items():
        assert torch.allclose(value, 0.9 * before[name] + 0.1 * student[name], atol=1e-6), name


# ---------------------------------------------------------------- views, networks, training


def test_views_give_two_globals_and_n_locals_and_survive_pickling() -> None:
    method = _tiny_dino()
    views = pickle.loads(pickle.dumps(method.views()))
    out = views(np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8))
    assert sorted(k for k in out if not k.endswith("_box")) == ["global_0", "global_1", "local_0", "local_1", "local_2"]
    assert out["global_0"].shape == (3, 32, 32) and out["local_2"].shape == (3, 16, 16)
    assert out["global_1_box"].shape == (5,)


def test_network_matches_the_backbone_at_its_size_and_runs_local_crops() -> None:
    method = _tiny_dino()
    net = method.teacher
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(net.features(x), net.backbone(x), atol=1e-6)
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, HEAD["out_dim"])
    assert METHODS.create("dino", backbone_kwargs=TINY, **HEAD).n_local == 8


def test_a_few_steps_on_a_fixed_batch_lower_the_loss() -> None:
    torch.manual_seed(0)
    method = _tiny_dino(freeze_last_layer=0)
    batch = _batch(method)
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.0)
    losses = []
    for step in range(12):
        hp = _hp(step=step, momentum=0.99)
        loss = method(batch, hp)["loss"]
        optimizer.zero_grad()
        loss.backward()
        method.before_optimizer_step(hp)
        optimizer.step()
        method.after_step(hp)
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses


def test_self_distillation_gives_each_of_eight_image_classes_a_confident_prototype() -> None:
    """A positive control for the loss, centring, sharpening and EMA together: views of 8 random images
    (noise added, locals from a corner) end up with confident teacher targets (entropy far below ln K), the
    same prototype for every noisy view of an image, and several distinct prototypes (neither collapse)."""
    torch.manual_seed(0)
    backbone = {**TINY, "embed_dim": 64, "depth": 2, "drop_path_rate": 0.0}
    method = DINO(backbone_kwargs=backbone, local_size=16, n_local=2, teacher_temp=0.04, **HEAD)
    images = torch.randn(8, 3, 32, 32)

    def noisy(x: torch.Tensor) -> torch.Tensor:
        return x + 0.5 * torch.randn_like(x)

    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=5e-4, weight_decay=0.04)
    entropies = []
    for step in range(120):
        x = images[torch.randint(0, 8, (32,))]
        batch = {f"global_{i}": noisy(x) for i in range(2)}
        batch |= {f"local_{i}": F.interpolate(noisy(x[..., :24, :24]), size=16, mode="bilinear") for i in range(2)}
        hp = _hp(step=step, epoch=step / 10, momentum=0.99)
        out = method(batch, hp)
        optimizer.zero_grad()
        out["loss"].backward()
        method.before_optimizer_step(hp)
        optimizer.step()
        method.after_step(hp)
        entropies.append(out["teacher_entropy"].item())
    with torch.no_grad():  # the teacher's prototype for 8 fresh noisy views of each image: [8 views, 8 images]
        views = method.teacher(noisy(images.repeat(8, 1, 1, 1))).sub(method.center).argmax(-1).view(8, 8)
    prototype = views.mode(dim=0).values  # [8]: each image's most frequent prototype
    assert entropies[-1] < 0.3 < 0.5 * entropies[0] and entropies[0] < math.log(HEAD["out_dim"])
    assert (views == prototype).float().mean() >= 0.9
    assert len(set(prototype.tolist())) >= 5
