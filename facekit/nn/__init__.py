"""Network building blocks: the backbone registry (ViTs, IR nets, ResNets), position embeddings, masking, EMA, heads."""

from facekit.nn.backbones import BACKBONES
from facekit.nn.ema import copy_as_target, ema_update
from facekit.nn.facet import DeepNormBlock, PromptsPool, deepnorm_alpha, deepnorm_beta
from facekit.nn.heads import DINOHead, MLPHead
from facekit.nn.iresnet import IResNet
from facekit.nn.masking import block_mask, random_keep
from facekit.nn.pos_embed import sincos_1d, sincos_2d
from facekit.nn.vit import ViT, ViTOutput, patchify, unpatchify

__all__ = [
    "BACKBONES",
    "DINOHead",
    "DeepNormBlock",
    "IResNet",
    "MLPHead",
    "PromptsPool",
    "ViT",
    "ViTOutput",
    "block_mask",
    "copy_as_target",
    "deepnorm_alpha",
    "deepnorm_beta",
    "ema_update",
    "patchify",
    "random_keep",
    "sincos_1d",
    "sincos_2d",
    "unpatchify",
]
