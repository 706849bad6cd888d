import csv
import json
import math

import pytest
import timm
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from train_toy import ToyMethod, ToySamples, toy_config

from facekit.config import PretrainParams, TrainConfig
from facekit.methods.base import StepValues
from facekit.methods.camd import CAMD
from facekit.methods.fra import FRA
from facekit.train.loop import train
from facekit.train.optim import param_groups
from facekit.train.schedules import cosine_schedule


def _rows(out_dir) -> list[dict[str, str]]:
    with (out_dir / "train_log.csv").open() as f:
        return list(csv.DictReader(f))


def _losses(out_dir) -> list[float]:
    return [float(r["loss"]) for r in _rows(out_dir)]


def test_loss_goes_down_and_logs_are_written(tmp_path) -> None:
    result = train(ToyMethod(), ToySamples(), toy_config(tmp_path, epochs=6, log_every=4, lr=3e-2))
    rows = _rows(tmp_path)
    assert list(rows[0]) == ["step", "epoch", "loss", "mse", "grad_norm", "lr"]
    assert [int(r["step"]) for r in rows] == list(range(3, 48, 4))
    first, last = float(rows[0]["loss"]), float(rows[-1]["loss"])
    assert last < 0.25 * first
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"steps", "steps_run", "skipped_steps", "final_loss"}  # what the inputs reproduce
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert set(timing) == {"images_per_s", "wall_time_s"} and timing["images_per_s"] == result.images_per_s
    assert (metrics["steps"], metrics["skipped_steps"], metrics["final_loss"]) == (48, 0, last)
    assert (result.steps, result.final_loss) == (48, last) and result.images_per_s > 0
    assert (tmp_path / "checkpoints" / "last" / "model.safetensors").is_file()


def test_lr_follows_the_schedule_with_blr_and_accumulation(tmp_path) -> None:
    cfg = toy_config(tmp_path, lr=None, blr=0.256, batch_size=4, accum_steps=2, min_lr=1e-4, warmup_epochs=1)
    train(ToyMethod(), ToySamples(), cfg)  # global batch 8 -> lr 0.008; 8 steps per epoch, 16 in all
    expected = cosine_schedule(0.256 * 8 / 256, 1e-4, 16, warmup_steps=8)
    assert [float(r["lr"]) for r in _rows(tmp_path)] == pytest.approx(expected.tolist(), rel=1e-12)


def test_step_schedule_sets_the_optimizer_lr_of_every_step(tmp_path) -> None:
    seen: list[list[float]] = []
    hook = register_optimizer_step_pre_hook(lambda opt, *_: seen.append([g["lr"] for g in opt.param_groups]))
    try:  # global batch 8 -> lr 0.008; 8 steps per epoch: warm-up over 4 steps, ×0.1 at steps 8 and 12
        cfg = toy_config(tmp_path, lr=None, blr=0.256, lr_schedule="step", lr_milestones=(1, 1.5))
        train(ToyMethod(), ToySamples(), cfg)
    finally:
        hook.remove()
    expected = [0.0, 0.002, 0.004, 0.006] + [0.008] * 4 + [0.0008] * 4 + [0.00008] * 4
    assert len(seen) == 16 and all(len(set(lrs)) == 1 for lrs in seen)  # the same lr in every group
    assert [lrs[0] for lrs in seen] == pytest.approx(expected, rel=1e-12, abs=0)
    assert [float(r["lr"]) for r in _rows(tmp_path)] == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lr_schedule": "linear"}, r"lr_schedule must be one of \('cosine', 'step'\), got 'linear'"),
        ({"lr_milestones": (8,)}, r"lr_milestones \(8,\) need lr_schedule 'step'"),
        ({"lr_schedule": "step", "lr_milestones": (12, 8)}, "strictly increasing, got \\(12, 8\\)"),
        ({"lr_schedule": "step", "lr_milestones": (8, 20)}, r"lr_milestones \[20\] outside \(0, epochs=20\)"),
        ({"lr_schedule": "step", "lr_milestones": (1, 8), "warmup_epochs": 2}, r"\[1\] .* inside the warm-up"),
        ({"lr_schedule": "step", "min_lr": 1e-5}, "min_lr .* cosine schedule's floor"),
        ({"lr_schedule": "step", "lr_gamma": 0.0}, "lr_gamma must be > 0"),
        ({"lr_schedule": "step", "lr_milestones": 8}, "lr_milestones must be a list of epochs, got 8"),
    ],
)
def test_config_rejects_bad_lr_schedules(tmp_path, overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(epochs=20, batch_size=2, out_dir=tmp_path, lr=0.1, **overrides)


def test_yaml_milestone_lists_become_tuples(tmp_path) -> None:
    train = {"epochs": 20, "batch_size": 8, "lr": 0.1, "lr_schedule": "step", "lr_milestones": [8, 12, 16]}
    cfg = PretrainParams(out=str(tmp_path), train=train, runs={"ir100": {"method": "finetune"}}).run("ir100").train
    assert cfg.lr_milestones == (8, 12, 16) and isinstance(cfg.lr_milestones, tuple)


def test_clean_stop_and_resume_match_an_uninterrupted_run_with_any_worker_count(tmp_path) -> None:
    full = train(ToyMethod(dropout=0.3), ToySamples(), toy_config(tmp_path / "full"))
    cut = tmp_path / "cut"
    train(ToyMethod(dropout=0.3), ToySamples(), toy_config(cut, max_steps=11, num_workers=2))  # stops mid-epoch 1
    assert len(_rows(cut)) == 11
    resumed_method = ToyMethod(dropout=0.3)
    resumed = train(resumed_method, ToySamples(), toy_config(cut, checkpoint_every=4))
    assert (resumed.steps, resumed.steps_run) == (16, 5) and resumed_method.after_step_calls == 5
    assert _losses(cut) == pytest.approx(_losses(tmp_path / "full"), abs=1e-6, rel=0)
    assert resumed.final_loss == pytest.approx(full.final_loss, abs=1e-6)


def test_accumulating_two_micro_batches_gives_the_gradient_of_the_doubled_batch(tmp_path) -> None:
    one, two = ToyMethod(), ToyMethod()
    train(one, ToySamples(), toy_config(tmp_path / "one", batch_size=8, max_steps=1))
    train(two, ToySamples(), toy_config(tmp_path / "two", batch_size=4, accum_steps=2, max_steps=1))
    assert one.first_grads.keys() == two.first_grads.keys() and len(one.first_grads) == 4
    for name, grad in one.first_grads.items():
        torch.testing.assert_close(two.first_grads[name], grad, atol=1e-6, rtol=0)
    assert _losses(tmp_path / "one") == pytest.approx(_losses(tmp_path / "two"), abs=1e-6)


def test_a_nan_step_is_skipped_and_counted(tmp_path) -> None:
    reference, skipping = ToyMethod(nan_steps=frozenset({3})), ToyMethod(nan_steps=frozenset({3}))
    train(reference, ToySamples(), toy_config(tmp_path / "ref", max_steps=3))
    result = train(skipping, ToySamples(), toy_config(tmp_path / "nan", max_steps=4, log_every=4))
    assert result.skipped_steps == 1 and skipping.after_step_calls == reference.after_step_calls == 3
    for a, b in zip(reference.state_dict().values(), skipping.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # weights and EMA target unchanged by the skipped step
    assert json.loads((tmp_path / "nan" / "metrics.json").read_text())["skipped_steps"] == 1
    finite = _losses(tmp_path / "ref")  # the one logged window (steps 0-3) averages the three finite steps
    assert _losses(tmp_path / "nan") == pytest.approx([sum(finite) / 3], rel=1e-6)


class LogsItsMomentum(ToyMethod):
    """Returns a scheduled value as a Python float, as the methods do (no tensor made inside the forward)."""

    def forward(self, batch: dict, hp: StepValues) -> dict:
        return {**super().forward(batch, hp), "momentum": hp.momentum}


def test_a_scheduled_value_returned_as_a_float_is_logged(tmp_path) -> None:
    train(LogsItsMomentum(), ToySamples(), toy_config(tmp_path, max_steps=3))
    expected = cosine_schedule(0.9, 1.0, 16)[:3]  # toy_config: EMA momentum 0.9 -> 1 over 16 steps
    assert [float(r["momentum"]) for r in _rows(tmp_path)] == pytest.approx(expected.tolist(), rel=1e-6)


def test_persistent_nan_raises(tmp_path) -> None:
    method = ToyMethod(nan_steps=frozenset(range(2, 16)))
    with pytest.raises(FloatingPointError, match="3 consecutive steps with a non-finite loss"):
        train(method, ToySamples(), toy_config(tmp_path, max_nonfinite_steps=3))
    assert method.after_step_calls == 2


def test_param_groups_exclude_1d_and_the_methods_no_weight_decay_and_decay_layers() -> None:
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, embed_dim=16, depth=2, num_heads=2, num_classes=0)
    method = ToyMethod()
    method.encoder = vit
    method.export_backbone = lambda: vit  # a method whose backbone is a timm ViT
    groups = param_groups(method, layer_decay=0.5)
    scale = {id(p): (g["lr_scale"], g["wd_scale"]) for g in groups for p in g["params"]}
    named = dict(method.named_parameters())
    # timm's matcher: stem 0, block 0 -> 1, block 1 and the final norm -> 2; the top 3 holds the rest
    assert scale[id(named["encoder.pos_embed"])] == (0.125, 1.0)  # the method (not the ViT) decides: decayed
    assert scale[id(named["encoder.cls_token"])] == (0.125, 1.0)
    assert scale[id(named["encoder.patch_embed.proj.weight"])] == (0.125, 1.0)
    assert scale[id(named["encoder.blocks.0.attn.qkv.weight"])] == (0.25, 1.0)
    assert scale[id(named["encoder.blocks.1.norm1.weight"])] == (0.5, 0.0)
    assert scale[id(named["net.0.weight"])] == (1.0, 1.0) and scale[id(named["net.0.bias"])] == (1.0, 0.0)
    assert "target.0.weight" in named and id(named["target.0.weight"]) not in scale  # frozen: not optimised
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in method.parameters())
    method.no_weight_decay = lambda: {"encoder.pos_embed"}
    wd = {id(p): g["wd_scale"] for g in param_groups(method) for p in g["params"]}
    assert (wd[id(named["encoder.pos_embed"])], wd[id(named["encoder.cls_token"])]) == (0.0, 1.0)


def test_config_needs_exactly_one_learning_rate(tmp_path) -> None:
    with pytest.raises(ValueError, match="exactly one of lr and blr"):
        TrainConfig(epochs=1, batch_size=2, out_dir=tmp_path)


def test_bf16_autocast_on_cpu_when_asked(tmp_path) -> None:
    train(ToyMethod(), ToySamples(), toy_config(tmp_path / "fp32", max_steps=2))
    train(ToyMethod(), ToySamples(), toy_config(tmp_path / "bf16", max_steps=2, amp=True))
    fp32, bf16 = _losses(tmp_path / "fp32"), _losses(tmp_path / "bf16")
    assert fp32 != bf16 and bf16 == pytest.approx(fp32, abs=0.02)


def test_gradients_are_clipped_to_clip_grad(tmp_path) -> None:
    method = ToyMethod()
    cfg = toy_config(tmp_path, optimizer="momentum", momentum=0.0, weight_decay=0.0, clip_grad=1e-3, max_steps=1)
    before = {n: p.detach().clone() for n, p in method.named_parameters() if p.requires_grad}
    train(method, ToySamples(), cfg)
    clipped = torch.linalg.vector_norm(torch.stack([g.norm() for g in method.first_grads.values()]))
    assert clipped.item() == pytest.approx(1e-3, rel=1e-5)
    assert float(_rows(tmp_path)[0]["grad_norm"]) > 1e-2  # the log shows the norm before clipping
    lr = float(_rows(tmp_path)[0]["lr"])
    for name, p in method.named_parameters():
        if p.requires_grad:  # plain SGD: the update is lr times the clipped gradient
            torch.testing.assert_close(p.detach(), before[name] - lr * method.first_grads[name], atol=1e-7, rtol=0)


class _MomentumRecorder(ToyMethod):
    """The toy method, keeping the ``hp.momentum`` of every step it takes."""

    def __init__(self) -> None:
        super().__init__()
        self.momenta: list[float] = []

    def after_step(self, hp: StepValues) -> None:
        self.momenta.append(hp.momentum)
        super().after_step(hp)


@pytest.mark.parametrize(("recipe", "halfway"), [(CAMD.recipe, 0.9975), (FRA.recipe, 0.998)], ids=["camd", "fra"])
def test_ema_momentum_is_the_released_cosine_from_the_recipes_base_to_one(recipe, halfway, tmp_path) -> None:
    """CAMD's and BYOL's (FRA's) ``1 - (1 - base) (1 + cos(pi t / T)) / 2`` with t / T = step / steps, as
    released: the base at the first step, the midpoint at step T / 2, and short of 1 at the last."""
    base = recipe["ema_momentum"]
    method = _MomentumRecorder()
    train(method, ToySamples(n=64), toy_config(tmp_path, epochs=1, ema_momentum=base))  # 64 / 8 = 8 steps
    steps = 8
    expected = [1 - (1 - base) * (1 + math.cos(math.pi * t / steps)) / 2 for t in range(steps)]
    assert method.momenta == pytest.approx(expected, rel=0, abs=1e-15)
    assert method.momenta[0] == pytest.approx(base, abs=1e-15)
    assert method.momenta[4] == pytest.approx(halfway, abs=1e-15)
    last = 1 - (1 - base) * (1 - math.cos(math.pi / 8)) / 2  # cos(7 pi / 8) = -cos(pi / 8)
    assert method.momenta[-1] == pytest.approx(last, abs=1e-15) and method.momenta[-1] < 1.0


def test_a_checkpoint_is_the_same_bytes_every_time(tmp_path) -> None:
    """The same run twice writes byte-identical weights and checkpoints (dvc.lock hashes them)."""
    for name in ("a", "b"):
        train(ToyMethod(), ToySamples(), toy_config(tmp_path / name, epochs=1))
    for path in sorted((tmp_path / "a").rglob("*")):
        if path.is_file() and path.name not in ("timing.json", "train_config.json"):  # the speed; out_dir
            assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes(), path
