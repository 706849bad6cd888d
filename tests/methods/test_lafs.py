"""LAFS: landmark patches by hand, landmark augmentations, landmarks through crops and flips, both landmark
sources, real mesh landmarks from a shard, forward/backward and training without a process group."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from facekit.data.dataset import FaceShardDataset
from facekit.data.images import decode_jpeg_rgb
from facekit.data.ops.landmarks import MESH_196
from facekit.data.record import FaceRecord
from facekit.data.views import ViewRecipe
from facekit.methods.base import METHODS, StepValues
from facekit.methods.lafs import LAFS, LAFSViews
from facekit.nn.landmark_patches import (
    LandmarkCNN,
    jitter_landmarks,
    landmark_patches,
    landmarks_in_view,
    sample_landmarks,
)
from facekit.nn.vit import patchify

TINY = dict(embed_dim=32, depth=1, num_heads=2)  # LAFS_BACKBONE otherwise: 112 px, 196 positions, Linear(192)
HEAD = dict(out_dim=64, head_hidden_dim=64, head_bottleneck_dim=16)


def _hp(step: int = 0, momentum: float = 0.996) -> StepValues:
    return StepValues(step=step, epoch=0.0, progress=0.0, lr=1e-3, weight_decay=0.0, momentum=momentum)


def _tiny_lafs(**overrides) -> LAFS:
    return LAFS(backbone_kwargs=TINY, n_local=2, **{**HEAD, **overrides})


def _collate(items: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([item[k] for item in items]) for k in items[0] if isinstance(items[0][k], torch.Tensor)}


# ---------------------------------------------------------------- patches and landmark augmentations


def test_patch_at_an_integer_landmark_is_the_image_slice_around_it() -> None:
    images = torch.randn(2, 3, 40, 32)
    points = torch.tensor([[[10.0, 20.0], [4.0, 4.0]], [[27.0, 35.0], [0.0, 0.0]]])  # (x, y)
    patches = landmark_patches(images, points, patch_size=8)
    assert patches.shape == (2, 2, 192)
    by_hand = images[0, :, 16:24, 6:14].permute(1, 2, 0).reshape(-1)  # rows y-4..y+3, columns x-4..x+3
    assert torch.allclose(patches[0, 0], by_hand, atol=1e-4)  # up to float32 rounding of the sampling grid
    assert torch.allclose(patches[1, 0], images[1, :, 31:39, 23:31].permute(1, 2, 0).reshape(-1), atol=1e-4)
    corner = patches[1, 1].reshape(8, 8, 3)  # centred on pixel (0, 0): 4 rows/columns fall outside -> zeros
    assert corner[:4].abs().max() < 1e-5 and corner[:, :4].abs().max() < 1e-5
    assert torch.allclose(corner[4:, 4:], images[1, :, :4, :4].permute(1, 2, 0), atol=1e-4)
    half = landmark_patches(images, points + torch.tensor([0.5, 0.0]), 8)[0, 0].reshape(8, 8, 3)
    between = (images[0, :, 16:24, 6:14] + images[0, :, 16:24, 7:15]) / 2  # bilinear halfway to the right
    assert torch.allclose(half, between.permute(1, 2, 0), atol=1e-5)


def test_landmarks_on_the_regular_grid_give_the_plain_vit_patches() -> None:
    images = torch.randn(2, 3, 112, 112)
    centres = torch.arange(14.0) * 8 + 4
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    grid = torch.stack([xx, yy], dim=-1).reshape(1, 196, 2).expand(2, -1, -1)
    assert torch.allclose(landmark_patches(images, grid), patchify(images, 8), atol=1e-4)


def test_patches_pass_gradients_to_images_and_points() -> None:
    images = torch.randn(1, 3, 16, 16, requires_grad=True)
    points = torch.tensor([[[7.3, 8.6]]], requires_grad=True)
    landmark_patches(images, points).square().sum().backward()
    assert images.grad is not None and torch.count_nonzero(images.grad) > 0
    assert points.grad is not None and torch.all(points.grad != 0)


def test_jitter_and_subset_shapes_and_statistics() -> None:
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(4, 196, 2, generator=gen) * 111
    jittered = jitter_landmarks(points, 5.0, generator=gen)
    assert jittered.shape == (4, 196, 2)
    assert (jittered - points).std().item() == pytest.approx(5.0, rel=0.1)
    assert torch.equal(jitter_landmarks(points, 0.0), points)
    subset = sample_landmarks(points, 36, generator=gen)
    assert subset.shape == (4, 36, 2)
    rows = [{tuple(p) for p in points[b].tolist()} for b in range(4)]
    assert all(tuple(p) in rows[b] for b in range(4) for p in subset[b].tolist())  # drawn from each own row
    weights = torch.zeros(4, 196)
    weights[:, 3] = 1.0
    weights[1] = 0.0  # no allowed point: drawn uniformly
    only_three = sample_landmarks(points, 50, weights, generator=gen)  # with replacement: 50 > 1 allowed point
    assert torch.equal(only_three[0], points[0, 3].expand(50, 2))
    assert len({tuple(p) for p in only_three[1].tolist()}) > 10
    method = _tiny_lafs()
    images = torch.randn(4, 3, 112, 112)
    assert method.view_patches(images, points).shape == (4, 196, 192)
    assert method.view_patches(images, points, subset=36).shape == (4, 36, 192)


# ---------------------------------------------------------------- landmarks through crops and flips


def test_landmarks_in_view_by_hand() -> None:
    points = np.array([[10.0, 20.0], [55.5, 55.5]])
    box = (0.25, 0.5, 0.5, 0.25, 0.0)  # top 28, left 56, height 56, width 28 of a 112 face; view 112
    out = landmarks_in_view(points, box, (112, 112), 112)
    assert out[0] == pytest.approx([(10 - 56 + 0.5) * 4 - 0.5, (20 - 28 + 0.5) * 2 - 0.5])
    flipped = landmarks_in_view(points, (*box[:4], 1.0), (112, 112), 112)
    assert flipped[:, 0] == pytest.approx(111 - out[:, 0]) and flipped[:, 1] == pytest.approx(out[:, 1])


def test_a_bright_dot_lands_where_its_landmark_goes_through_crop_and_flip() -> None:
    rgb = np.zeros((112, 112, 3), dtype=np.uint8)
    rgb[60:63, 40:43] = 255  # a 3 × 3 dot centred on pixel (x 41, y 61)
    recipe = ViewRecipe(112, scale=(0.4, 1.0), normalize=False)
    np.random.seed(3)
    flips = set()
    for _ in range(8):
        view, box = recipe.augment(rgb)
        flips.add(int(box[4]))
        weight = view[..., 0].astype(np.float64)
        if weight.sum() == 0:
            continue  # the dot was cropped away
        ys, xs = np.mgrid[:112, :112]
        centroid = np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()
        expected = landmarks_in_view(np.array([[41.0, 61.0]]), box, (112, 112), 112)[0]
        assert centroid == pytest.approx(expected, abs=0.6), box
    assert flips == {0, 1}


# ---------------------------------------------------------------- real mesh landmarks from a shard


def test_mesh_landmarks_come_from_the_shard_and_follow_each_crop(
    meshed_shard: Path, meshed_faces: list[FaceRecord]
) -> None:
    method = _tiny_lafs()
    views = pickle.loads(pickle.dumps(method.views()))
    assert isinstance(views, LAFSViews) and views.takes_record
    dataset = FaceShardDataset(meshed_shard, transform=views)
    np.random.seed(0)
    item = dataset[1]
    mesh = meshed_faces[1].extra["dense_landmarks"][MESH_196].astype(np.float32)
    for name in ("global_0", "global_1", "local_0", "local_1"):
        assert item[name].shape == (3, 112, 112) and item[f"{name}_landmarks"].shape == (196, 2)
        expected = landmarks_in_view(mesh, item[f"{name}_box"].numpy(), (112, 112), 112)
        assert np.allclose(item[f"{name}_landmarks"].numpy(), expected, atol=1e-4)
    # token 0 (brow row, image-left) sits up-left of token 195 (chin row, image-right) unless flipped
    box, points = item["global_0_box"], item["global_0_landmarks"]
    assert points[0, 1] < points[195, 1]
    assert (points[0, 0] < points[195, 0]) == (box[4] == 0)

    loader = DataLoader(dataset, batch_size=4, collate_fn=_collate)
    batch = next(iter(loader))
    out = method(batch, _hp())
    assert torch.isfinite(out["loss"]) and not dist.is_initialized()


def test_a_record_without_mesh_landmarks_is_a_clear_error(meshed_faces: list[FaceRecord]) -> None:
    views = _tiny_lafs().views()
    bare = meshed_faces[0].replace(extra={})
    with pytest.raises(ValueError, match=r"deepface/.*dense_landmarks.*landmarks stage"):
        views(decode_jpeg_rgb(bare.image), bare)


# ---------------------------------------------------------------- learned landmarks


def test_learned_landmarks_span_the_clean_view_and_the_frozen_head_loads_from_safetensors(tmp_path: Path) -> None:
    head = LandmarkCNN()
    points = head.eval()(torch.randn(3, 3, 112, 112))
    assert points.shape == (3, 196, 2)
    assert torch.allclose(points.flatten(1).amin(1), torch.zeros(3)) and torch.allclose(
        points.flatten(1).amax(1), torch.full((3,), 111.0)
    )
    weights = tmp_path / "landmarks.safetensors"
    save_file(head.state_dict(), weights)
    method = _tiny_lafs(landmarks="learned", landmark_weights=str(weights))
    method.train()
    assert method.landmark_head is not None and not method.landmark_head.training
    assert all(not p.requires_grad for p in method.landmark_head.parameters())
    assert torch.equal(method.landmark_head.output_layer[1].weight, head.output_layer[1].weight)
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        _tiny_lafs(landmarks="learned", landmark_weights=str(tmp_path / "nope.safetensors"))
    save_file({"w": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=r"other\.safetensors: not a LandmarkCNN"):
        _tiny_lafs(landmarks="learned", landmark_weights=str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="landmark_weights"):
        _tiny_lafs(landmarks="learned")


def test_learned_views_cut_clean_and_augmented_copies_of_one_crop() -> None:
    crop = ViewRecipe(112, scale=(0.4, 1.0))
    identity = ViewRecipe(112, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0.0)
    views = LAFSViews(crop, (identity, identity), identity, n_local=1, landmarks="learned")
    assert not views.takes_record
    np.random.seed(0)
    out = views(np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8))
    for name in ("global_0", "global_1", "local_0"):
        assert torch.equal(out[name], out[f"{name}_clean"])  # no photometric change: the same crop
    default = _tiny_lafs(landmarks="learned", train_landmark_head=True).views()
    out = default(np.random.default_rng(1).integers(0, 256, (112, 112, 3), dtype=np.uint8))
    assert not torch.equal(out["global_0"], out["global_0_clean"])  # global 0 is always blurred


def test_learned_forward_backward_trains_the_head_only_when_asked() -> None:
    method = _tiny_lafs(landmarks="learned", train_landmark_head=True)
    np.random.seed(0)
    views = method.views()
    batch = _collate([views(np.random.randint(0, 256, (112, 112, 3), dtype=np.uint8)) for _ in range(2)])
    loss = method(batch, _hp())["loss"]
    loss.backward()
    assert math.isfinite(loss.item()) and not dist.is_initialized()
    assert method.landmark_head is not None
    assert method.landmark_head.output_layer[1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.teacher.parameters())
    assert method.student.backbone.patch_embed.proj.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- defaults and training


def test_defaults_follow_the_released_code() -> None:
    method = METHODS.create("lafs", backbone_kwargs=TINY, **HEAD)
    vit = method.student.backbone
    assert (vit.img_size, vit.patch_size, vit.num_patches, vit.patch_embed.proj.in_features) == (112, 8, 196, 192)
    assert (method.n_local, method.num_local_landmarks, method.landmark_jitter) == (8, 36, 5.0)
    assert method.schedules(4, 1)["teacher_temp"][0] == pytest.approx(0.07)  # 0.07 -> 0.04 over 30 epochs
    assert method.schedules(31 * 2, 2)["teacher_temp"][-1] == pytest.approx(0.04)
    with pytest.raises(ValueError, match="patch_embed='linear'"):
        LAFS(backbone_kwargs={**TINY, "patch_embed": "conv"}, **HEAD)


def test_a_few_steps_on_a_fixed_batch_of_real_faces_lower_the_loss(meshed_shard: Path) -> None:
    torch.manual_seed(0)
    method = _tiny_lafs(freeze_last_layer=0, landmark_jitter=0.0, warmup_teacher_temp=0.04)
    np.random.seed(0)
    batch = next(
        iter(DataLoader(FaceShardDataset(meshed_shard, transform=method.views()), batch_size=4, collate_fn=_collate))
    )
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    losses = []
    for step in range(10):
        hp = _hp(step=step, momentum=0.99)
        torch.manual_seed(0)  # the same local subsets every step
        loss = method(batch, hp)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_step(hp)
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses
