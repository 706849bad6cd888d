"""FRA golden forward: ``FRA.forward`` against the released ``FRAB`` computation, written out here.

The reference follows ``zaczgao/Facial_Region_Awareness`` @ 791434b (``models/fra.py`` ``FRAB`` with
``mask_type="attn"``, ``models/transformers/*``, ``utils/init.py``) on the method's own parameters: only the
ResNet trunk is called as a building block; the necks (Conv1d-BN-ReLU-Conv1d), the DETR decoder, the sine
positions, the heatmaps, the region pooling, Sinkhorn and the losses are explicit loops / einsums in float64.
The views are 64×96 so that the feature maps (2×3) are not square and rows cannot pass for columns.

The released ``FRAB`` itself, run outside the project (a script importing ``models/fra.py`` @ 791434b with
``classy_vision``'s ``is_distributed_training_run`` and ``fvcore``'s ``c2_xavier_fill`` stubbed, dropout set to 0,
facekit's weights renamed into it, ``attn_heads=8`` as its transformer has), gives on :func:`_setup`'s weights and
views the same loss, inst, obj and clu as ``FRA.forward`` and :func:`_reference` (4.3236456, 2.3008552,
1.8833693, 1.3942101) and the same gradients to 2e-5 relative.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from facekit.methods.base import StepValues
from facekit.methods.fra import FRA, MLP1D

TINY: dict = dict(
    backbone="resnet18", backbone_kwargs={"channels": (16, 32, 64, 128)}, dim=16, hidden_dim=32, num_regions=4,
    attn_heads=2, image_size=64, attn_dropout=0.0,
)  # fmt: skip
# the released constants, written out here: FRAB_EMAN / ObjectNeck / TransformerPredictor defaults and main.py
INST_WEIGHT, NEG_WEIGHT, CLUSTER_WEIGHT = 0.5, 0.02, 0.1
STUDENT_TEMP, TEACHER_TEMP, SINKHORN_ITERS = 0.1, 0.04, 3
HEATMAP_EPS, PROTO_MOMENTUM, BASE_MOMENTUM = 1e-7, 0.9, 0.996


def _hp(step: int = 0, momentum: float = 0.996) -> StepValues:
    return StepValues(step=step, epoch=0.0, progress=0.0, lr=1e-3, weight_decay=0.0, momentum=momentum)


def _d(t: torch.Tensor) -> torch.Tensor:
    return t.double()


# ---------------------------------------------------------------- the released pieces, by hand


def _mlp1d(mlp: MLP1D, x: torch.Tensor) -> torch.Tensor:
    """Released ``MLP1D`` in train mode: x ``[B, C, L]`` -> ``[B, D, L]``; BN over (B, L), biased variance."""
    conv1, bn, conv2 = mlp[0], mlp[1], mlp[3]
    h = torch.einsum("oc,bcl->bol", _d(conv1.weight[:, :, 0]), x)
    mean, var = h.mean(dim=(0, 2), keepdim=True), h.var(dim=(0, 2), unbiased=False, keepdim=True)
    h = (h - mean) / torch.sqrt(var + 1e-5) * _d(bn.weight)[None, :, None] + _d(bn.bias)[None, :, None]
    return torch.einsum("oh,bhl->bol", _d(conv2.weight[:, :, 0]), h.clamp(min=0))


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * _d(norm.weight) + _d(norm.bias)


def _attention(mha: nn.MultiheadAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``nn.MultiheadAttention`` by hand: q ``[B, Lq, D]``, k / v ``[B, Lk, D]`` -> ``[B, Lq, D]``."""
    heads, dim = mha.num_heads, q.shape[-1]
    w, b = _d(mha.in_proj_weight).chunk(3), _d(mha.in_proj_bias).chunk(3)
    split = [(x @ wi.T + bi).unflatten(-1, (heads, dim // heads)) for x, wi, bi in zip((q, k, v), w, b, strict=True)]
    scores = torch.einsum("bqhd,bkhd->bhqk", split[0], split[1]) / math.sqrt(dim // heads)
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), split[2]).flatten(2)
    return out @ _d(mha.out_proj.weight).T + _d(mha.out_proj.bias)


def _sine_positions(h: int, w: int, dim: int) -> torch.Tensor:
    """DETR's ``PositionEmbeddingSine(dim / 2, normalize=True)`` -> ``[h·w, dim]`` (row-major tokens)."""
    half = dim // 2
    pos = torch.zeros(h * w, dim, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            y, x = (i + 1) / (h + 1e-6) * 2 * math.pi, (j + 1) / (w + 1e-6) * 2 * math.pi
            for c in range(half):
                freq = 10000 ** (2 * (c // 2) / half)
                trig = math.sin if c % 2 == 0 else math.cos
                pos[i * w + j, c], pos[i * w + j, half + c] = trig(y / freq), trig(x / freq)
    return pos


def _mask_embeddings(predictor: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Released ``TransformerPredictor`` (0 encoder layers, post-norm decoder, final norm, 3-layer MLP)."""
    b, _, h, w = x.shape
    memory = torch.einsum("dc,bchw->bhwd", _d(predictor.input_proj.weight[:, :, 0, 0]), x)
    memory = (memory + _d(predictor.input_proj.bias)).reshape(b, h * w, -1)
    pos = _sine_positions(h, w, memory.shape[-1])
    query_pos = _d(predictor.query_embed.weight).expand(b, -1, -1)
    tgt = torch.zeros_like(query_pos)
    for layer in predictor.layers:
        q = tgt + query_pos
        tgt = _layer_norm(layer.norm1, tgt + _attention(layer.self_attn, q, q, tgt))
        tgt = _layer_norm(layer.norm2, tgt + _attention(layer.cross_attn, tgt + query_pos, memory + pos, memory))
        linear1, linear2 = layer.ffn[0], layer.ffn[3]
        hidden = (tgt @ _d(linear1.weight).T + _d(linear1.bias)).clamp(min=0)
        tgt = _layer_norm(layer.norm3, tgt + hidden @ _d(linear2.weight).T + _d(linear2.bias))
    out = _layer_norm(predictor.norm, tgt)
    linears = [m for m in predictor.mask_embed if isinstance(m, nn.Linear)]
    for i, linear in enumerate(linears):
        out = out @ _d(linear.weight).T + _d(linear.bias)
        out = out.clamp(min=0) if i < len(linears) - 1 else out
    return out  # [B, K, D]


def _neck(neck: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Released ``ObjectNeck.forward`` (train): x ``[B, C, h, w]`` -> z_g ``[B, D]``, regions ``[B, K, D]``,
    dots ``[B, K, h, w]``, embed ``[B, K, D]``."""
    b, c, h, w = x.shape
    z_g = _mlp1d(neck.proj, x.mean(dim=(2, 3))[:, :, None])[:, :, 0]
    pixels = _mlp1d(neck.proj_pixel, x.reshape(b, c, h * w))  # [B, D, hw]
    embed = _mask_embeddings(neck.proj_attn, x)
    centre = F.normalize(embed.mean(0), dim=1)  # the batch-mean embeddings, [K, D]
    dots = torch.einsum("kd,bdp->bkp", centre, F.normalize(pixels, dim=1))
    attn = dots.softmax(dim=1) + HEATMAP_EPS  # scale 1
    slots = torch.einsum("bcp,bkp->bck", x.reshape(b, c, h * w), attn / attn.sum(dim=2, keepdim=True))
    regions = _mlp1d(neck.proj_obj, slots).transpose(1, 2)
    return {"z_g": z_g, "regions": regions, "dots": dots.reshape(b, -1, h, w), "embed": embed}


def _byol(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 2 - 2 * (F.normalize(pred, dim=-1) * F.normalize(target, dim=-1)).sum() / pred.shape[0]


def _unigrad(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Released ``compute_unigrad_loss`` on ``[B, K, D]``: pos (BYOL over all B·K rows) + 0.02·neg."""
    p, t = F.normalize(pred, dim=-1), F.normalize(target, dim=-1)
    b, k, _ = p.shape
    pos = _byol(p.reshape(b * k, -1), t.reshape(b * k, -1))
    neg = sum((p[i, q] @ t[i, r]) ** 2 for i in range(b) for q in range(k) for r in range(k) if r != q) / (b * k * k)
    return pos + NEG_WEIGHT * neg


def _sinkhorn(probs: torch.Tensor) -> torch.Tensor:
    q = probs.T.clone()  # [K, N]
    k, n = q.shape
    q /= q.sum()
    for _ in range(SINKHORN_ITERS):
        q /= q.sum(dim=1, keepdim=True) * k
        q /= q.sum(dim=0, keepdim=True) * n
    return (q * n).T


def _self_distill(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Released ``self_distill`` on dots ``[B, K, h, w]``: per pixel, Sinkhorn'd sharp teacher vs student,
    plus the mean-entropy term ``Σ p̄ log p̄ + log K``."""
    k = student.shape[1]
    s, t = student.permute(0, 2, 3, 1).reshape(-1, k), teacher.permute(0, 2, 3, 1).reshape(-1, k)
    log_p = (s / STUDENT_TEMP).log_softmax(-1)
    ce = -(_sinkhorn((t / TEACHER_TEMP).softmax(-1)) * log_p).sum(-1).mean()
    p_bar = log_p.exp().mean(0)
    return ce + (p_bar * p_bar.log()).sum() + math.log(k)


def _reference(method: FRA, view1: torch.Tensor, view2: torch.Tensor) -> dict[str, torch.Tensor]:
    """Released ``FRAB.forward``: online views 1 and 2, target views 1 and 2 (no gradient), the losses."""
    online = [_neck(method.neck, _d(method.backbone.forward_features(v))) for v in (view1, view2)]
    with torch.no_grad():
        target = [_neck(method.target_neck, _d(method.target_backbone.forward_features(v))) for v in (view1, view2)]
    inst, obj = [], []
    for o, t in ((online[0], target[1]), (online[1], target[0])):
        pred = _mlp1d(method.predictor, o["z_g"][:, :, None])[:, :, 0]
        pred_obj = _mlp1d(method.predictor_obj, o["regions"].transpose(1, 2)).transpose(1, 2)
        inst.append(_byol(pred, t["z_g"]))
        obj.append(_unigrad(pred_obj, t["regions"]))
    cluster = 0.5 * (
        _self_distill(online[0]["dots"], target[0]["dots"]) + _self_distill(online[1]["dots"], target[1]["dots"])
    )
    parts = {
        "inst": INST_WEIGHT * (inst[0] + inst[1]),
        "obj": (1 - INST_WEIGHT) * (obj[0] + obj[1]),
        "cluster": cluster,
    }
    means = F.normalize(online[0]["embed"].mean(0), dim=1)
    k = means.shape[0]
    region_cos = sum(means[i] @ means[j] for i in range(k) for j in range(k) if i != j) / (k * (k - 1))
    loss = parts["inst"] + parts["obj"] + CLUSTER_WEIGHT * parts["cluster"]
    means = [o["embed"].detach().mean(0) for o in online]
    return {"loss": loss, **parts, "region_cos": region_cos, "embed_means": means}  # fmt: skip


def _setup(seed: int = 0) -> tuple[FRA, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    method = FRA(**TINY)
    for module in (method.target_backbone, method.target_neck):  # a target that differs from the online net
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(seed + 1)
    return method, torch.randn(4, 3, 64, 96, generator=g), torch.randn(4, 3, 64, 96, generator=g)


# ---------------------------------------------------------------- the tests


def test_forward_loss_each_term_gradients_and_proto_match_the_released_computation() -> None:
    method, view1, view2 = _setup()
    proto0, target_proto0 = method.neck.proto.clone(), method.target_neck.proto.clone()
    out = method({"view1": view1, "view2": view2}, _hp(momentum=0.9975))
    want = _reference(method, view1, view2)
    for name in ("loss", "inst", "obj", "cluster", "region_cos"):
        assert out[name].item() == pytest.approx(want[name].item(), rel=1e-5, abs=1e-5), name
    assert out["momentum"] == pytest.approx(0.9975)
    assert want["cluster"].item() > 0.01 and want["obj"].item() > 0.01  # every term is in play
    # gradients: the stop-gradients and the batch-mean embeddings' path as released
    named = dict(method.named_parameters())
    names = ["backbone.conv1.weight", "neck.proj_attn.query_embed.weight", "neck.proj_pixel.0.weight",
             "neck.proj_attn.layers.0.cross_attn.in_proj_weight", "neck.proj_obj.3.weight", "predictor.0.weight",
             "predictor_obj.3.weight"]  # fmt: skip
    got = torch.autograd.grad(out["loss"], [named[n] for n in names])
    expected = torch.autograd.grad(want["loss"], [named[n] for n in names])
    for name, a, b in zip(names, got, expected, strict=True):
        assert (a.double() - b).abs().max() <= 1e-4 * b.abs().max(), name
    # proto: an EMA (0.9) of the batch-mean online embeddings, view 1 then view 2; the target's own is unused
    m1, m2 = want["embed_means"]
    proto = PROTO_MOMENTUM * (PROTO_MOMENTUM * _d(proto0) + (1 - PROTO_MOMENTUM) * m1) + (1 - PROTO_MOMENTUM) * m2
    torch.testing.assert_close(_d(method.neck.proto), proto, rtol=1e-5, atol=1e-6)
    assert torch.equal(method.target_neck.proto, target_proto0)


def test_the_target_branch_gets_no_gradient_even_when_its_parameters_could_take_one() -> None:
    method, view1, view2 = _setup()
    targets = [p for m in (method.target_backbone, method.target_neck) for p in m.parameters()]
    for p in targets:
        p.requires_grad_(True)
    method({"view1": view1, "view2": view2}, _hp())["loss"].backward()
    assert all(p.grad is None for p in targets)
    assert method.neck.proj_attn.query_embed.weight.grad.abs().sum() > 0


def test_after_step_is_the_released_byol_update_of_the_target_parameters() -> None:
    """Released ``FRAB.momentum_update`` after step k of K: ``m = 1 − (1 − 0.996)(cos(πk/K) + 1)/2``,
    ``t ← m·t + (1 − m)·o`` for every parameter of the backbone and the neck; buffers and predictors untouched."""
    method = _setup()[0]
    assert method.schedules(10, 5) == {}  # no momentum of its own: the loop's hp.momentum (the run's settings)
    k, total = 3, 10
    momentum = 1 - (1 - BASE_MOMENTUM) * (math.cos(math.pi * k / total) + 1) / 2
    with torch.no_grad():
        for p in method.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    before = {n: t.detach().clone() for n, t in method.state_dict().items()}
    online = dict(method.named_parameters())
    method.after_step(_hp(step=k, momentum=momentum))
    after = method.state_dict()
    for prefix in ("target_backbone.", "target_neck."):
        buffers = {n for n, _ in getattr(method, prefix[:-1]).named_buffers()}
        for name, _ in getattr(method, prefix[:-1]).named_parameters():
            source = online[prefix.removeprefix("target_") + name]
            expected = momentum * before[prefix + name] + (1 - momentum) * source.detach()
            torch.testing.assert_close(after[prefix + name], expected, rtol=1e-6, atol=1e-7, msg=prefix + name)
        for name in buffers:
            assert torch.equal(after[prefix + name], before[prefix + name]), prefix + name
    for name in before:
        if not name.startswith("target_"):
            assert torch.equal(after[name], before[name]), name


def test_mlp1d_init_is_caffe2_msra_fill_kaiming_normal_fan_out() -> None:
    """Released ``utils/init.py``: every Conv1d of the necks and predictors gets ``kaiming_normal_(fan_out, relu)``,
    BN weight 1, bias 0: std ``sqrt(2 / out_channels)``."""
    torch.manual_seed(0)
    method = FRA(**{**TINY, "dim": 64, "hidden_dim": 512})
    for name in ("neck.proj", "neck.proj_pixel", "neck.proj_obj", "predictor", "predictor_obj"):
        mlp = method.get_submodule(name)
        for conv in (mlp[0], mlp[3]):
            std = math.sqrt(2 / conv.out_channels)
            assert conv.weight.std().item() == pytest.approx(std, rel=0.05), name
            assert abs(conv.weight.mean().item()) < 0.1 * std, name
        assert torch.equal(mlp[1].weight, torch.ones(512)) and torch.equal(mlp[1].bias, torch.zeros(512))


def test_views_are_the_released_vggface2_views() -> None:
    """Released ``data/transforms.py`` ``get_vggface_tranforms(224)``: RandomResizedCrop(224, (0.2, 1)), flip,
    ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2, blur σ 0.1-2 (p 1 / 0.1), solarize (p 0 / 0.2), VGGFace2
    mean / std."""
    views = FRA().views()
    common = {"size": 224, "scale": (0.2, 1.0), "ratio": (3 / 4, 4 / 3), "interpolation": "bilinear", "hflip_p": 0.5,
              "jitter": (0.4, 0.4, 0.2, 0.1), "jitter_p": 0.8, "gray_p": 0.2, "blur_sigma": (0.1, 2.0),
              "mean": (0.5231, 0.4044, 0.3489), "std": (0.2536, 0.2194, 0.2070)}  # fmt: skip
    for recipe, blur_p, solarize_p in ((views.recipe1, 1.0, 0.0), (views.recipe2, 0.1, 0.2)):
        got = {name: getattr(recipe, name) for name in common}
        assert got == common and (recipe.blur_p, recipe.solarize_p) == (blur_p, solarize_p)
