"""Every default constant of every method and recipe, pinned against the released code it comes from.

One row per constant: facekit's value, read from the code (constructor defaults through ``inspect.signature``,
``recipe`` class attributes as the loop resolves them over :class:`TrainConfig`'s defaults, presets, view
recipes), and where the released value is written (``repo@commit:path:line``). A row with a fourth element
pins a deliberate deviation (``docs/deviations.md``): facekit's value first, the released value last, and the
test checks both, so a row cannot claim a deviation that is not there.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from functools import partial
from types import SimpleNamespace
from typing import Any
from unittest.mock import patch

import pytest

from facekit.config import TrainConfig
from facekit.data.augment import solarize
from facekit.data.views import IMAGENET_MEAN, IMAGENET_STD, VGGFACE2_MEAN, VGGFACE2_STD, ViewRecipe
from facekit.methods.camd import CAMD, MASK_FRACTION, CAMDViews
from facekit.methods.dino import DINO, DINO_FACE_BACKBONE, dino_recipes
from facekit.methods.finetune import FINETUNE_RECIPES, FaceRecognitionView, FineTune
from facekit.methods.fra import FRA, HEATMAP_EPS
from facekit.methods.lafs import LAFS, LAFS_BACKBONE, photometric_recipes
from facekit.methods.mae import FACET_MAE, MAE
from facekit.methods.mcf import MCF
from facekit.nn import backbones
from facekit.nn.margins import ArcFace, CombinedMargin, CosFace, CurricularFace, MagFace
from facekit.nn.partial_fc import PartialFC

MAE_REPO = "facebookresearch/mae@efb2a80"
DINO_REPO = "facebookresearch/dino@7c446df"
LAFS_REPO = "szlbiubiubiu/LAFS_CVPR2024@320c57d"
MCF_REPO = "nomewang/MCF@bc8706f"
CAMD_REPO = "mumumu-wss/CAMD@537a7cb"
FRA_REPO = "zaczgao/Facial_Region_Awareness@791434b"
FACET_REPO = "zyainfal/Joint-Holistic-and-Masked-Face-Recognition@3126602"
ARCFACE_REPO = "deepinsight/insightface@7fadd42"  # paths under recognition/arcface_torch/

_NOT_A_DEVIATION = object()


@dataclasses.dataclass(frozen=True)
class Pin:
    """One constant: how to read facekit's value, the value it must have, the released source, and (for a
    deliberate deviation only) the released value it departs from."""

    name: str
    read: Callable[[], Any]
    value: Any
    source: str
    released: Any = _NOT_A_DEVIATION


Row = tuple[Any, ...]  # (key, value, "path:line") or (key, facekit's value, "path:line", released value)


def pins(prefix: str, repo: str, read: Callable[[Any], Any], rows: list[Row]) -> list[Pin]:
    """One :class:`Pin` per row, named ``prefix.key``, reading facekit's value with ``read(key)``."""
    return [Pin(f"{prefix}.{row[0]}", partial(read, row[0]), row[1], f"{repo}:{row[2]}", *row[3:]) for row in rows]


def arg(fn: Callable[..., Any], name: str) -> Any:
    """The default of parameter ``name`` of a class or function."""
    return inspect.signature(fn).parameters[name].default


_TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


def train_value(settings: Mapping[str, Any], field: str) -> Any:
    """What the loop runs TrainConfig ``field`` with for these settings: theirs, else TrainConfig's default
    (KeyError for a field TrainConfig does not have, or a required one the settings leave out)."""
    return {**_TRAIN_DEFAULTS, **settings}[field]


def recipe(method: type, field: str) -> Any:
    return train_value(getattr(method, "recipe", {}), field)


def preset(name: str, key: str) -> Any:
    """The ViT keyword argument ``key`` a registered backbone preset passes (read without building it)."""
    with patch.object(backbones, "ViT", side_effect=lambda **kwargs: kwargs):
        return backbones.BACKBONES.get(name)()[key]


def view_value(make: Callable[[], dict[str, ViewRecipe]], key: str) -> Any:
    """``"<view>.<attr>"``: that view's recipe attribute; ``"<attr>"``: the set of it over every view."""
    views = make()
    if "." in key:
        name, attr = key.split(".")
        return getattr(views[name], attr)
    return {getattr(v, key) for v in views.values()}


def _dino_views() -> dict[str, ViewRecipe]:
    scales = arg(DINO, "global_scale"), arg(DINO, "local_scale")
    size, local = DINO_FACE_BACKBONE["img_size"], arg(DINO, "local_size")
    (g0, g1), loc = dino_recipes(size, local, *scales, arg(DINO, "mean"), arg(DINO, "std"))
    return {"global_0": g0, "global_1": g1, "local": loc}


def _lafs_views() -> dict[str, ViewRecipe]:
    (g0, g1), loc = photometric_recipes(LAFS_BACKBONE["img_size"], arg(LAFS, "mean"), arg(LAFS, "std"))
    return {"global_0": g0, "global_1": g1, "local": loc}


def _camd_views() -> dict[str, ViewRecipe]:
    views = CAMDViews().views
    return {"view1": views.recipe1, "view2": views.recipe2}


def _fra_views() -> dict[str, ViewRecipe]:
    views = FRA.views(SimpleNamespace(image_size=arg(FRA, "image_size"), mean=FRA.mean, std=FRA.std, normalize=True))
    return {"view1": views.recipe1, "view2": views.recipe2}


def _mae_views() -> dict[str, ViewRecipe]:
    defaults = {k: arg(MAE, k) for k in ("crop_scale", "mean", "std")}
    stub = SimpleNamespace(encoder=SimpleNamespace(img_size=224), **defaults)
    return {"image": MAE.views(stub).recipe}


def _shared_views() -> dict[str, ViewRecipe]:
    return {"default": ViewRecipe(1)}


JITTER = (0.4, 0.4, 0.2, 0.1)
FACET_FT, IR100_FT = FINETUNE_RECIPES["facet_base"], FINETUNE_RECIPES["ir100"]
FACET_TRAIN = partial(train_value, FACET_FT["train"])
IR100_TRAIN = partial(train_value, IR100_FT["train"])

PINS: list[Pin] = [
    *pins("views", DINO_REPO, partial(view_value, _shared_views), [
        ("jitter", {JITTER}, "main_dino.py:424"),
        ("blur_sigma", {(0.1, 2.0)}, "utils.py:40"),
        ("hflip_p", {0.5}, "main_dino.py:422"),
        ("ratio", {(3 / 4, 4 / 3)}, "main_dino.py:436"),  # torchvision's RandomResizedCrop default
    ]),
    *pins("views", DINO_REPO, partial(arg, solarize), [("threshold", 128, "utils.py:66")]),
    # ---------------------------------------------------------------- MAE
    *pins("mae", MAE_REPO, partial(arg, MAE), [
        ("mask_ratio", 0.75, "main_pretrain.py:53"),
        ("norm_pix_loss", False, "PRETRAIN.md:11", True),
        ("decoder_dim", 512, "models_mae.py:27"),
        ("decoder_depth", 8, "models_mae.py:27"),
        ("decoder_heads", 16, "models_mae.py:27"),
        ("decoder_mlp_ratio", 4.0, "models_mae.py:28"),
        ("mask_token_std", 0.02, "models_mae.py:80"),
        ("mean", IMAGENET_MEAN, "main_pretrain.py:127"),
        ("std", IMAGENET_STD, "main_pretrain.py:127"),
        ("backbone", "vit_small_patch16_224", "main_pretrain.py:47", "vit_large_patch16"),
    ]),
    *pins("mae.views", MAE_REPO, partial(view_value, _mae_views), [
        ("scale", {(0.2, 1.0)}, "main_pretrain.py:124"),
        ("interpolation", {"bicubic"}, "main_pretrain.py:124"),
    ]),
    *pins("mae.recipe", MAE_REPO, partial(recipe, MAE), [
        ("batch_size", 4096, "PRETRAIN.md:18"),  # 64 per GPU × 64 GPUs, one process here
        ("epochs", 800, "PRETRAIN.md:13"),
        ("warmup_epochs", 40, "PRETRAIN.md:14"),
        ("blr", 1.5e-4, "PRETRAIN.md:15"),
        ("weight_decay", 0.05, "PRETRAIN.md:15"),
        ("betas", (0.9, 0.95), "main_pretrain.py:180"),
        ("min_lr", 0.0, "main_pretrain.py:68"),
    ]),
    # ---------------------------------------------------------------- FaceT: MAE preset, FaceT-B, fine-tuning
    *pins("facet_mae", FACET_REPO, FACET_MAE.__getitem__, [
        ("decoder_dim", 516, "code/VIT/mim_pytorch.py:254"),
        ("decoder_depth", 8, "code/VIT/mim_pytorch.py:277"),
        ("decoder_heads", 12, "code/VIT/mim_pytorch.py:278"),
        ("decoder_mlp_ratio", 3.0, "code/VIT/mim_pytorch.py:279"),
        ("mask_token_std", 1.0, "code/VIT/mim_pytorch.py:271"),
        ("decoder_pos_on_visible", False, "code/VIT/mim_pytorch.py:332"),
        ("norm_pix_loss", False, "code/VIT/mim_pytorch.py:346"),
        ("crop_scale", None, "code/data/data_pipe.py:41"),
        ("mean", (0.5, 0.5, 0.5), "code/data/data_pipe.py:44"),
        ("std", (0.5, 0.5, 0.5), "code/data/data_pipe.py:44"),
    ]),
    *pins("facet_base", FACET_REPO, partial(preset, "facet_base"), [
        ("img_size", 112, "code/VIT/mim_pytorch.py:382"),
        ("patch_size", 8, "code/VIT/mim_pytorch.py:381"),
        ("embed_dim", 768, "code/VIT/mim_pytorch.py:381"),
        ("depth", 12, "code/VIT/mim_pytorch.py:381"),
        ("num_heads", 12, "code/VIT/mim_pytorch.py:381"),
        ("head_dim", 512, "code/VIT/mim_pytorch.py:384"),
        ("num_prompts", 32, "code/VIT/mim_pytorch.py:161"),
        ("pos_embed_std", 0.0, "code/VIT/mim_pytorch.py:388"),
    ]),
    *pins("facet_ft", FACET_REPO, FACET_FT.__getitem__, [
        ("margin", "magface", "code/README.md:24"),
        ("sample_rate", 0.1, "code/trainer.py:328"),
        ("masked_faces", 0.1, "code/README.md:24"),
    ]),
    *pins("facet_ft.backbone_kwargs", FACET_REPO, FACET_FT["backbone_kwargs"].__getitem__, [
        ("drop_path_rate", 0.1, "code/README.md:24"),
        ("num_prompts", 32, "code/VIT/mim_pytorch.py:161"),
    ]),
    *pins("facet_ft.train", FACET_REPO, FACET_TRAIN, [
        ("epochs", 10, "code/README.md:24"),
        ("batch_size", 256, "code/README.md:24"),
        ("optimizer", "adamw", "code/README.md:24"),
        ("blr", 1e-3, "code/trainer.py:307"),
        ("betas", (0.9, 0.999), "code/README.md:24"),
        ("weight_decay", 0.05, "code/README.md:24"),
        ("layer_decay", 0.75, "code/README.md:24"),
        ("warmup_epochs", 1, "code/README.md:24"),
        ("min_lr", 1e-5, "code/trainer.py:94"),
        ("clip_grad", 1.0, "code/README.md:24"),
    ]),
    *pins("facet_ft.view", FACET_REPO, partial(arg, FaceRecognitionView), [
        ("crop_scale", None, "code/data/data_pipe.py:41"),
        ("mean", (0.5, 0.5, 0.5), "code/data/data_pipe.py:44"),
    ]),
    *pins("ir100_ft", FACET_REPO, IR100_FT.__getitem__, [
        ("margin", "magface", "code/README.md:30"),
        ("sample_rate", 0.1, "code/trainer.py:326"),
        ("masked_faces", 0.1, "code/README.md:30"),
    ]),
    *pins("ir100_ft.train", FACET_REPO, IR100_TRAIN, [
        ("epochs", 20, "code/README.md:30"),
        ("batch_size", 768, "code/README.md:30"),
        ("optimizer", "sgd", "code/optim_factory.py:145"),  # timm's "sgd" is Nesterov, as FaceT's
        ("blr", 0.025, "code/README.md:30"),
        ("momentum", 0.9, "code/README.md:30"),
        ("weight_decay", 5e-4, "code/README.md:30"),
        ("warmup_epochs", 1, "code/README.md:30"),
        ("lr_schedule", "step", "code/trainer.py:338"),
        ("lr_milestones", (8, 12, 16), "code/utils.py:405"),
        ("lr_gamma", 0.1, "code/utils.py:420"),
    ]),
    # ---------------------------------------------------------------- margin heads and Partial FC
    *pins("arcface", ARCFACE_REPO, partial(arg, ArcFace), [
        ("s", 64.0, "recognition/arcface_torch/losses.py:63"),
        ("m", 0.5, "recognition/arcface_torch/losses.py:63"),
    ]),
    *pins("cosface", ARCFACE_REPO, partial(arg, CosFace), [
        ("s", 64.0, "recognition/arcface_torch/losses.py:89"),
        ("m", 0.4, "recognition/arcface_torch/losses.py:89"),
    ]),
    *pins("combined", ARCFACE_REPO, partial(arg, CombinedMargin), [
        ("s", 64.0, "recognition/arcface_torch/train_v2.py:108"),
        ("m1", 1.0, "recognition/arcface_torch/configs/base.py:10"),
        ("m2", 0.5, "recognition/arcface_torch/configs/base.py:10"),
        ("m3", 0.0, "recognition/arcface_torch/configs/base.py:10"),
    ]),
    *pins("partial_fc", ARCFACE_REPO, partial(arg, PartialFC), [
        ("sample_rate", 1.0, "recognition/arcface_torch/partial_fc_v2.py:36"),
    ]),
    *pins("finetune", ARCFACE_REPO, partial(arg, FineTune), [
        ("sample_rate", 1.0, "recognition/arcface_torch/configs/base.py:19"),
        ("margin", "arcface", "recognition/arcface_torch/configs/base.py:10"),
    ]),
    *pins("curricularface", FACET_REPO, partial(arg, CurricularFace), [
        ("s", 64.0, "code/loss/face_losses.py:50"),
        ("m", 0.5, "code/loss/face_losses.py:50"),
        ("t_momentum", 0.01, "code/loss/face_losses.py:74"),
    ]),
    *pins("magface", FACET_REPO, partial(arg, MagFace), [
        ("s", 64.0, "code/loss/face_losses.py:15"),
        ("l_a", 10.0, "code/loss/face_losses.py:15"),
        ("u_a", 110.0, "code/loss/face_losses.py:15"),
        ("l_m", 0.45, "code/loss/face_losses.py:15"),
        ("u_m", 0.8, "code/loss/face_losses.py:15"),
        ("lambda_g", 35.0, "code/loss/face_losses.py:15"),
    ]),
]  # fmt: skip

PINS += [
    # ---------------------------------------------------------------- DINO (DINO-face: the LAFS repository's)
    *pins("dino", DINO_REPO, partial(arg, DINO), [
        ("backbone", "vit_small_patch16_224", "main_dino.py:45"),
        ("out_dim", 65536, "main_dino.py:55"),
        ("norm_last_layer", True, "main_dino.py:57"),
        ("head_hidden_dim", 2048, "vision_transformer.py:258"),
        ("head_bottleneck_dim", 256, "vision_transformer.py:258"),
        ("head_layers", 3, "vision_transformer.py:258"),
        ("warmup_teacher_temp", 0.04, "main_dino.py:68"),
        ("teacher_temp", 0.07, "README.md:197"),
        ("warmup_teacher_temp_epochs", 30, "README.md:197"),
        ("student_temp", 0.1, "main_dino.py:365"),
        ("center_momentum", 0.9, "main_dino.py:366"),
        ("freeze_last_layer", 1, "main_dino.py:93"),
        ("n_local", 8, "main_dino.py:112"),
        ("global_scale", (0.4, 1.0), "main_dino.py:108"),
        ("local_scale", (0.05, 0.4), "main_dino.py:115"),
    ]),
    *pins("dino", LAFS_REPO, partial(arg, DINO), [
        ("local_size", 48, "lafs_train.py:776"),
        ("mean", IMAGENET_MEAN, "lafs_train.py:755"),
        ("std", IMAGENET_STD, "lafs_train.py:755"),
    ]),
    *pins("dino.backbone_kwargs", LAFS_REPO, DINO_FACE_BACKBONE.__getitem__, [
        ("img_size", 112, "lafs_train.py:760"),
        ("patch_size", 8, "lafs_train.py:39"),
        ("drop_path_rate", 0.1, "lafs_train.py:94"),
    ]),
    *pins("dino.views", DINO_REPO, partial(view_value, _dino_views), [
        ("jitter", {JITTER}, "main_dino.py:424"),
        ("jitter_p", {0.8}, "main_dino.py:425"),
        ("gray_p", {0.2}, "main_dino.py:427"),
        ("interpolation", {"bicubic"}, "main_dino.py:436"),
        ("global_0.blur_p", 1.0, "main_dino.py:438"),
        ("global_0.solarize_p", 0.0, "main_dino.py:435"),
        ("global_1.blur_p", 0.1, "main_dino.py:445"),
        ("global_1.solarize_p", 0.2, "main_dino.py:446"),
        ("local.blur_p", 0.5, "main_dino.py:454"),
        ("local.solarize_p", 0.0, "main_dino.py:451"),
    ]),
    *pins("dino.recipe", DINO_REPO, partial(recipe, DINO), [
        ("optimizer", "adamw", "main_dino.py:103"),
        ("blr", 5e-4, "main_dino.py:96"),  # lr per 256 images (main_dino.py:239)
        ("min_lr", 1e-6, "main_dino.py:101"),
        ("warmup_epochs", 10, "main_dino.py:99"),
        ("weight_decay", 0.04, "main_dino.py:82"),
        ("weight_decay_end", 0.4, "main_dino.py:84"),
        ("clip_grad", 3.0, "main_dino.py:87"),
        ("clip_mode", "per_parameter", "utils.py:132"),
        ("ema_momentum", 0.996, "main_dino.py:61"),
        ("ema_momentum_end", 1.0, "main_dino.py:250"),
    ]),
    # ---------------------------------------------------------------- LAFS
    *pins("lafs", LAFS_REPO, partial(arg, LAFS), [
        ("out_dim", 100_000, "lafs_train.py:44"),
        ("norm_last_layer", True, "lafs_train.py:46"),
        ("warmup_teacher_temp", 0.07, "lafs_train.py:57"),
        ("teacher_temp", 0.04, "lafs_train.py:60"),
        ("warmup_teacher_temp_epochs", 30, "lafs_train.py:63"),
        ("student_temp", 0.1, "lafs_train.py:628"),
        ("center_momentum", 0.9, "lafs_train.py:629"),
        ("freeze_last_layer", 1, "lafs_train.py:82"),
        ("n_local", 8, "lafs_train.py:101"),
        ("crop_scale", (0.4, 1.0), "lafs_train.py:853"),  # the local crops too
        ("landmark_jitter", 5.0, "face_pre_pro/ViT_face.py:1361"),
        ("num_local_landmarks", 36, "face_pre_pro/ViT_face.py:1366"),
        ("mean", (0.5, 0.5, 0.5), "lafs_train.py:802"),
        ("std", (0.5, 0.5, 0.5), "lafs_train.py:802"),
    ]),
    *pins("lafs.backbone_kwargs", LAFS_REPO, LAFS_BACKBONE.__getitem__, [
        ("img_size", 112, "lafs_train.py:808"),
        ("patch_size", 8, "lafs_train.py:39"),
        ("embed_dim", 768, "lafs_train.py:324"),
        ("depth", 12, "lafs_train.py:325"),
        ("num_heads", 12, "lafs_train.py:326", 11),
        ("mlp_ratio", 2048 / 768, "lafs_train.py:328"),
        ("qkv_bias", False, "face_pre_pro/ViT_face.py:147"),
        ("pos_embed_std", 1.0, "face_pre_pro/ViT_face.py:611"),
        ("drop_path_rate", 0.1, "face_pre_pro/ViT_face.py:107"),
    ]),
    *pins("lafs.views", LAFS_REPO, partial(view_value, _lafs_views), [
        ("jitter", {JITTER}, "lafs_train.py:795"),
        ("jitter_p", {0.8}, "lafs_train.py:796"),
        ("gray_p", {0.2}, "lafs_train.py:798"),
        ("global_0.blur_p", 1.0, "lafs_train.py:823"),
        ("global_0.solarize_p", 0.0, "lafs_train.py:820"),
        ("global_1.blur_p", 0.1, "lafs_train.py:845"),
        ("global_1.solarize_p", 0.2, "lafs_train.py:846"),
        ("local.blur_p", 0.5, "lafs_train.py:868"),
        ("local.solarize_p", 0.0, "lafs_train.py:865"),
    ]),
    *pins("lafs.recipe", LAFS_REPO, partial(recipe, LAFS), [
        ("epochs", 41, "lafs_train.py:81"),
        ("batch_size", 164, "lafs_train.py:79"),  # 82 per GPU × 2 GPUs (README.md:66), one process here
        ("optimizer", "adamw", "lafs_train.py:92"),
        ("blr", 5e-4, "lafs_train.py:85"),  # lr per 256 images (lafs_train.py:412)
        ("min_lr", 1e-6, "lafs_train.py:90"),
        ("warmup_epochs", 10, "lafs_train.py:88"),
        ("weight_decay", 0.04, "lafs_train.py:71"),
        ("weight_decay_end", 0.4, "lafs_train.py:73"),
        ("clip_grad", 3.0, "lafs_train.py:76"),
        ("clip_mode", "per_parameter", "lafs_train.py:595"),
        ("ema_momentum", 0.996, "lafs_train.py:50"),
    ]),
    # ---------------------------------------------------------------- MCF
    *pins("mcf", MCF_REPO, partial(arg, MCF), [
        ("backbone", "vit_base_patch16_224", "README.md:45"),
        ("mask_ratio", 0.75, "README.md:47"),
        ("decoder_dim", 512, "models_mcf.py:381"),
        ("decoder_depth", 8, "models_mcf.py:381"),
        ("decoder_heads", 16, "models_mcf.py:381"),
        ("decoder_mlp_ratio", 4.0, "models_mcf.py:121"),
        ("proj_dim", 256, "models_mcf.py:139"),
        ("proj_hidden_dim", 4096, "models_mcf.py:139"),
        ("temperature", 0.2, "main_pretrain.py:94"),
        ("teacher_arch", "vit_base_patch16_224", "models_moco.py:108"),
        ("teacher_layers", (2, 5, 8, 11), "models_moco.py:36"),
        ("teacher_norm_axis", "token", "models_moco.py:145"),
        ("perceptual_weight", 1000.0, "models_mcf.py:349"),
        ("contrastive_weight", 1.0, "models_mcf.py:349"),
        ("pixel_loss_weight", 0.0, "models_mcf.py:349"),
        ("mean", IMAGENET_MEAN, "main_pretrain.py:137"),
        ("std", IMAGENET_STD, "main_pretrain.py:137"),
        ("momentum", 0.99, "models_mcf.py:351"),  # in every forward, i.e. per micro-batch (models_mcf.py:326)
    ]),
    *pins("mcf.recipe", MCF_REPO, partial(recipe, MCF), [
        ("batch_size", 512, "README.md:43"),  # 64 per GPU × 8 GPUs (README.md:42), one process here
        ("accum_steps", 8, "README.md:44"),
        ("min_lr", 0.0, "main_pretrain.py:68"),
        ("clip_grad", None, "engine_pretrain.py:47"),
        ("amp", True, "engine_pretrain.py:37"),
        ("epochs", 16, "README.md:48"),
        ("warmup_epochs", 1, "README.md:49"),
        ("blr", 1.5e-4, "README.md:50"),
        ("weight_decay", 0.05, "README.md:51"),
        ("betas", (0.9, 0.95), "main_pretrain.py:194"),
    ]),
    # ---------------------------------------------------------------- CAMD
    *pins("camd", CAMD_REPO, partial(arg, CAMD), [
        ("backbone", "vit_base_patch16_224", "run_CAMD_pretrain.sh:43"),
        ("decoder_dim", 768, "run_CAMD_pretrain.sh:44"),
        ("decoder_heads", 16, "models_CAMD.py:75"),
        ("mlp_ratio", 4.0, "models_CAMD.py:76"),
        ("projector_depth", 2, "CAMD_pretrain.py:110"),
        ("predictor_depth", 4, "CAMD_pretrain.py:111"),
        ("distill_layers", (2, 5, 8, 11), "run_CAMD_pretrain.sh:30"),
        ("top_k", 2, "run_CAMD_pretrain.sh:28"),
        ("neg_weight", 0.02, "run_CAMD_pretrain.sh:57"),
        ("unigrad_weight", 1.0, "run_CAMD_pretrain.sh:24"),
        ("global_weight", 0.25, "run_CAMD_pretrain.sh:25"),
        ("distill_weights", (0.1, 0.01), "CAMD_pretrain_engine.py:74"),  # 0.1: run_CAMD_pretrain.sh:26
        ("distill_threshold", 1.0, "CAMD_pretrain_engine.py:73"),
        ("global_mean", "batch", "models_CAMD.py:565"),
        ("global_norm_target", False, "models_CAMD.py:568"),
        ("crop_scale", (0.08, 0.6), "run_CAMD_pretrain.sh:37"),
    ]),
    *pins("camd", CAMD_REPO, {"num_masked": round(196 * MASK_FRACTION), "mean_std": (CAMD.mean, CAMD.std)}.get, [
        ("num_masked", 118, "run_CAMD_pretrain.sh:51"),
        ("mean_std", (VGGFACE2_MEAN, VGGFACE2_STD), "CAMD_pretrain.py:174"),
    ]),
    *pins("camd.views", CAMD_REPO, partial(view_value, _camd_views), [
        ("jitter", {JITTER}, "CAMD_pretrain.py:155"),
        ("jitter_p", {0.8}, "CAMD_pretrain.py:155"),
        ("gray_p", {0.2}, "CAMD_pretrain.py:156"),
        ("interpolation", {"bicubic"}, "CAMD_pretrain.py:150"),
        ("view1.scale", (0.08, 0.6), "CAMD_pretrain.py:102"),
        ("view1.blur_p", 1.0, "CAMD_pretrain.py:157"),
        ("view1.solarize_p", 0.0, "CAMD_pretrain.py:157"),
        ("view2.scale", (1.0, 1.0), "CAMD_pretrain.py:151"),
        ("view2.blur_p", 0.1, "CAMD_pretrain.py:164"),
        ("view2.solarize_p", 0.2, "CAMD_pretrain.py:165"),
    ]),
    *pins("camd.recipe", CAMD_REPO, partial(recipe, CAMD), [
        ("batch_size", 1024, "run_CAMD_pretrain.sh:17"),
        ("epochs", 400, "run_CAMD_pretrain.sh:20"),
        ("warmup_epochs", 5, "run_CAMD_pretrain.sh:47"),
        ("blr", 3.125e-5, "run_CAMD_pretrain.sh:22"),
        ("betas", (0.9, 0.95), "CAMD_pretrain.py:135"),
        ("weight_decay", 0.05, "run_CAMD_pretrain.sh:52"),
        ("clip_grad", 1.0, "run_CAMD_pretrain.sh:55"),
        ("ema_momentum", 0.995, "run_CAMD_pretrain.sh:32"),
        ("min_lr", 0.0, "CAMD_pretrain.py:65"),
    ]),
    # ---------------------------------------------------------------- FRA
    *pins("fra", FRA_REPO, partial(arg, FRA), [
        ("backbone", "resnet50", "README.md:38"),
        ("dim", 256, "main.py:105"),
        ("hidden_dim", 4096, "main.py:113"),
        ("num_regions", 8, "README.md:44"),
        ("scale", 1.0, "main.py:121"),
        ("proto_momentum", 0.9, "models/fra.py:118"),
        ("attn_heads", 8, "models/fra.py:113"),
        ("attn_depth", 2, "models/fra.py:114"),
        ("attn_dropout", 0.1, "models/fra.py:113"),
        ("inst_weight", 0.5, "README.md:43"),
        ("neg_weight", 0.02, "models/fra.py:242"),
        ("cluster_weight", 0.1, "README.md:44"),
        ("student_temp", 0.1, "models/fra.py:235"),
        ("teacher_temp", 0.04, "README.md:44"),
        ("sinkhorn_iters", 3, "models/fra.py:19"),
        ("image_size", 224, "main.py:239"),
    ]),
    *pins("fra", FRA_REPO, {"heatmap_eps": HEATMAP_EPS, "mean_std": (FRA.mean, FRA.std)}.get, [
        ("heatmap_eps", 1e-7, "models/fra.py:104"),
        ("mean_std", (VGGFACE2_MEAN, VGGFACE2_STD), "data/transforms.py:21"),
    ]),
    *pins("fra.views", FRA_REPO, partial(view_value, _fra_views), [
        ("scale", {(0.2, 1.0)}, "data/transforms.py:191"),
        ("interpolation", {"bilinear"}, "data/transforms.py:191"),
        ("jitter", {JITTER}, "data/transforms.py:195"),
        ("jitter_p", {0.8}, "data/transforms.py:196"),
        ("gray_p", {0.2}, "data/transforms.py:197"),
        ("view1.blur_p", 1.0, "data/transforms.py:198"),
        ("view1.solarize_p", 0.0, "data/transforms.py:199"),
        ("view2.blur_p", 0.1, "data/transforms.py:211"),
        ("view2.solarize_p", 0.2, "data/transforms.py:212"),
    ]),
    *pins("fra.recipe", FRA_REPO, partial(recipe, FRA), [
        ("batch_size", 512, "README.md:40"),
        ("epochs", 50, "README.md:40"),
        ("warmup_epochs", 10, "README.md:40"),
        ("optimizer", "lars", "main.py:208"),
        ("lr", 0.9, "README.md:40"),
        ("momentum", 0.9, "main.py:66"),
        ("weight_decay", 1e-6, "README.md:40"),
        ("amp", True, "README.md:45"),
        ("sync_batchnorm", True, "README.md:42"),
        ("ema_momentum", 0.996, "README.md:41"),
    ]),
]  # fmt: skip


def test_every_pin_is_named_once() -> None:
    names = [pin.name for pin in PINS]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})


@pytest.mark.parametrize("pin", PINS, ids=[pin.name for pin in PINS])
def test_default_matches_the_released_value(pin: Pin) -> None:
    """facekit's value is the released one, or, for a listed deviation, facekit's own and not the released one."""
    value = pin.read()
    assert value == pin.value, f"{pin.name}: facekit has {value!r}, expected {pin.value!r} ({pin.source})"
    if pin.released is not _NOT_A_DEVIATION:
        assert value != pin.released, f"{pin.name} is listed as a deviation but equals the released value"
