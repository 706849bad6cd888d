"""The deliberate deviations from the released code that no other test sees (``docs/deviations.md``): each test
checks facekit's side of one row, on a tiny configuration."""

from __future__ import annotations

import numpy as np
import torch
from timm.layers import DropPath
from torch import nn

from facekit.config import TrainConfig
from facekit.methods.base import StepValues
from facekit.methods.camd import CAMD
from facekit.methods.fra import FRA
from facekit.methods.lafs import LAFS, LAFS_BACKBONE
from facekit.nn.iresnet import IResNet
from facekit.train.optim import build_optimizer


def _hp(step: int = 0, momentum: float = 0.99) -> StepValues:
    return StepValues(step=step, epoch=0.0, progress=0.0, lr=1e-3, weight_decay=0.0, momentum=momentum)


def _views_batch(views, n: int = 2, size: int = 64) -> dict[str, torch.Tensor]:
    np.random.seed(0)
    items = [views(np.random.randint(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


# ---------------------------------------------------------------- CAMD


def _tiny_camd() -> CAMD:
    vit = dict(img_size=32, embed_dim=16, depth=4, num_heads=2)
    return CAMD("vit_small_patch16_224", vit, decoder_dim=16, decoder_heads=2, distill_layers=(1, 3))


def test_camd_decoder_embed_reads_the_encoders_final_layernorm() -> None:
    """Both branches feed ``decoder_embed`` the ViT's final LayerNorm output (the released encoder has no final
    norm there): with that norm's bias set to 3, every token reaching either ``decoder_embed`` averages 3."""
    torch.manual_seed(0)
    method = _tiny_camd()
    with torch.no_grad():
        method.backbone.norm.bias.fill_(3.0)
        method.target_backbone.norm.bias.fill_(3.0)
    seen: dict[str, torch.Tensor] = {}
    for name in ("decoder_embed", "target_decoder_embed"):
        getattr(method, name).register_forward_hook(lambda m, args, out, name=name: seen.update({name: args[0]}))
    method(_views_batch(method.views()), _hp())
    for name, tokens in seen.items():
        assert torch.allclose(tokens.mean(-1), torch.full(tokens.shape[:-1], 3.0), atol=1e-4), name


def test_camd_target_keeps_no_mask_token() -> None:
    """The released momentum branch also averages the mask token, which it never reads; facekit has none."""
    names = [name for name, _ in _tiny_camd().named_parameters()]
    assert "mask_token" in names
    assert not [n for n in names if n.startswith("target_") and "mask_token" in n]


# ---------------------------------------------------------------- LAFS


def _tiny_lafs(**overrides) -> LAFS:
    head = dict(out_dim=32, head_hidden_dim=32, head_bottleneck_dim=8, n_local=1)
    return LAFS(backbone_kwargs=dict(embed_dim=32, depth=3, num_heads=2), **{**head, **overrides})


def test_lafs_attention_is_scaled_per_head() -> None:
    """Scores are scaled by head_dim^−½ (timm's Block); the released ViT scales by the full width, dim^−½
    (LAFS's 768 wide ViT: 0.125 here, 0.036 released)."""
    method = _tiny_lafs()
    for vit in (method.student.backbone, method.teacher.backbone):
        assert {block.attn.scale for block in vit.blocks} == {16**-0.5}
    assert LAFS_BACKBONE["embed_dim"] // LAFS_BACKBONE["num_heads"] == 64


def test_lafs_backbone_has_no_dropout_and_its_drop_path_grows_linearly() -> None:
    """Released: dropout 0.1 after attention and MLP, embedding dropout 0.1, and drop-path 0.1 on every
    residual of the student and the teacher. facekit: no dropout; the student's drop-path grows from 0 at
    the first block to 0.1 at the last (timm / DINO), and the teacher has none (DINO)."""
    method = _tiny_lafs()
    for network in (method.student, method.teacher):
        assert all(m.p == 0.0 for m in network.modules() if isinstance(m, nn.Dropout))
    student = [b.drop_path1 for b in method.student.backbone.blocks]
    assert isinstance(student[0], nn.Identity)
    assert [p.drop_prob for p in student[1:]] == [0.05, 0.1]
    assert not [m for m in method.teacher.modules() if isinstance(m, DropPath)]


def test_lafs_local_subsets_draw_only_landmarks_inside_the_view() -> None:
    """A landmark cropped out of a view gives a zero patch; the released subset draws from all 196 points
    (its learned landmarks are always inside the view), facekit's only from those inside."""
    torch.manual_seed(0)
    method = _tiny_lafs(landmark_jitter=0.0)
    images = torch.ones(2, 3, 112, 112)
    points = torch.rand(2, 196, 2) * 100 + 6
    points[:, ::2, 0] = -40.0  # every other landmark left of the view
    every = method.view_patches(images, points)
    assert (every[:, ::2].abs().sum(-1) == 0).all() and (every[:, 1::2].abs().sum(-1) > 0).all()
    local = method.view_patches(images, points, subset=36)
    assert local.shape == (2, 36, 192) and (local.abs().sum(-1) > 0).all()


# ---------------------------------------------------------------- FRA (LEWEL / BYOL lineage)


def test_lars_applies_the_learning_rate_after_the_momentum_buffer(tmp_path) -> None:
    """timm's Lars (the loop's ``optimizer: lars``) keeps the momentum of raw gradients and multiplies by
    this step's lr; the released LARS accumulates lr-scaled gradients. A 1-d parameter (no adaptation)
    over two steps at lr 1 then 0.5 shows the difference."""
    module = nn.Module()
    module.bias = nn.Parameter(torch.zeros(3))
    cfg = TrainConfig(epochs=1, batch_size=1, out_dir=tmp_path, optimizer="lars", lr=1.0, momentum=0.9)
    optimizer = build_optimizer(module, cfg, lr=1.0)
    g1, g2 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-1.0, 0.5, 2.0])
    for lr, grad in ((1.0, g1), (0.5, g2)):
        for group in optimizer.param_groups:
            group["lr"] = lr
        module.bias.grad = grad.clone()
        optimizer.step()
    timm_rule = -(1.0 * g1 + 0.5 * (0.9 * g1 + g2))
    released_rule = -(1.0 * g1 + (0.9 * g1 + 0.5 * g2))
    assert torch.allclose(module.bias.detach(), timm_rule)
    assert not torch.allclose(module.bias.detach(), released_rule)


def test_fra_moves_proto_in_the_online_neck_only_and_has_no_teacher_center() -> None:
    """``proto`` moves in the online neck only (the released target carried a copy it never used), and the
    teacher ``center`` of the released code (never updated, always 0) is left out."""
    torch.manual_seed(0)
    trunk = dict(backbone="resnet18", backbone_kwargs={"channels": (8, 16, 32, 64)}, dim=8, hidden_dim=16)
    method = FRA(**trunk, image_size=64, attn_dropout=0.0)
    online, target = method.neck.proto.clone(), method.target_neck.proto.clone()
    method(_views_batch(method.views()), _hp())
    assert not torch.equal(method.neck.proto, online) and torch.equal(method.target_neck.proto, target)
    assert not [name for name, _ in method.named_buffers() if "center" in name]


# ---------------------------------------------------------------- arcface_torch


def test_iresnet_has_no_dropout_layer() -> None:
    """insightface's iResNet ends with an optional dropout (p 0 by default, so the identity); facekit has none."""
    assert not [m for m in IResNet((1, 1, 1, 1), embedding_size=8, img_size=16).modules() if isinstance(m, nn.Dropout)]
