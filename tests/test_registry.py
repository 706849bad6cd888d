"""``Registry.create`` checks keyword arguments against the factory's signature, for every registry: an
unknown one is an error naming it, with a suggestion, before anything is built."""

from __future__ import annotations

import pytest

from facekit.methods.base import METHODS
from facekit.nn.backbones import BACKBONES
from facekit.nn.margins import MARGINS
from facekit.nn.vit import ViT
from facekit.registry import Registry, UnknownKeywordError, keywords


class Head:
    def __init__(self, dim: int, *, scale: float = 1.0) -> None:
        self.dim, self.scale = dim, scale


def test_a_keyword_the_factory_does_not_take_is_named_with_a_suggestion() -> None:
    heads: Registry[Head] = Registry("head")
    heads.register("head")(Head)

    @heads.register("wide_head")
    def wide_head(**overrides: float) -> Head:  # a preset: its class's keywords count
        return Head(**{"dim": 1024, **overrides})

    @heads.register("any_head")
    def any_head(**kwargs: float) -> Head | None:  # open-ended: nothing to check against
        return None

    assert heads.create("head", dim=8, scale=2.0).scale == 2.0
    with pytest.raises(UnknownKeywordError, match=r"head 'head' does not take 'scael' \(did you mean 'scale'\?\)"):
        heads.create("head", dim=8, scael=2.0)
    with pytest.raises(ValueError, match=r"head 'wide_head' does not take 'dimm' \(did you mean 'dim'\?\), 'x'; "):
        heads.create("wide_head", dimm=8, x=1)
    with pytest.raises(TypeError, match=r"its parameters: dim, scale$"):
        heads.create("head", dim=8, size=3)
    assert heads.create("any_head", anything=1) is None
    assert keywords(Head) == (["dim", "scale"], False) and keywords(any_head) == ([], True)


@pytest.mark.parametrize(
    ("registry", "name", "kwargs", "message"),
    [
        (BACKBONES, "vit_small_patch16_224", {"dpth": 2}, "backbone 'vit_small_patch16_224' does not take 'dpth' "),
        (MARGINS, "arcface", {"margn": 0.5}, "margin 'arcface' does not take 'margn' "),
        (METHODS, "facet_mae", {"mask_ration": 0.5}, r"method 'facet_mae' does not take 'mask_ration' \(did you"),
    ],
)
def test_every_registry_checks_keywords(registry: Registry, name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(UnknownKeywordError, match=message):
        registry.create(name, **kwargs)


def test_presets_take_their_classes_keywords_and_open_ended_factories_are_not_checked() -> None:
    names, open_ended = keywords(BACKBONES.get("vit_small_patch16_224"))
    assert not open_ended and names == keywords(ViT)[0]
    assert keywords(BACKBONES.get("resnet18"))[1]  # timm ResNet keyword arguments pass through
