"""Synthetic masks on the real sample faces: the templates, coverage at mesh landmarks, recolouring and
left/right views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facekit.config import MASK_KINDS
from facekit.data.images import decode_jpeg_rgb
from facekit.data.ops.landmarks import DENSE_KEY, LEFT_EYE, MOUTH_LEFT, MOUTH_RIGHT, NOSE_TIP, RIGHT_EYE
from facekit.data.ops.masks import (
    MaskTemplateError,
    choose_mask,
    draw_mask,
    head_yaw,
    load_templates,
    mask_anchor_points,
    recolour,
)
from facekit.data.record import FaceRecord


@pytest.fixture(scope="module")
def templates(assets: Path) -> dict:
    return load_templates(assets / "masks")


def _at(img: np.ndarray, xy: np.ndarray) -> float:
    return float(img[round(float(xy[1])), round(float(xy[0]))])


def test_load_templates_reads_every_mask_and_refuses_broken_files(
    assets: Path, templates: dict, tmp_path: Path
) -> None:
    assert len(templates) == 21
    assert {t.kind for t in templates.values()} == set(MASK_KINDS)
    for kind in MASK_KINDS:
        assert {t.view for t in templates.values() if t.kind == kind} == {"front", "left", "right"}, kind
    surgical = templates["surgical_blue_left"]
    assert surgical.rgba.shape == (356, 570, 4) and surgical.anchors.shape == (6, 2)
    np.testing.assert_array_equal(surgical.anchors[1], [130, 9])
    with pytest.raises(MaskTemplateError, match=r"no masks\.cfg"):
        load_templates(tmp_path)
    (tmp_path / "surgical.png").write_bytes((assets / "masks/surgical.png").read_bytes())
    cfg = (assets / "masks/masks.cfg").read_text().split("\n\n")[0]  # the [surgical] section
    (tmp_path / "masks.cfg").write_text(cfg.replace("mask_e:     295, 470", "mask_e:     295"))
    with pytest.raises(MaskTemplateError, match=r"\[surgical\]: mask_e must be 'x, y'"):
        load_templates(tmp_path)
    (tmp_path / "masks.cfg").write_text(cfg.replace("surgical.png", "gone.png"))
    with pytest.raises(MaskTemplateError, match="cannot read template image"):
        load_templates(tmp_path)


def test_masks_cover_nose_and_mouth_and_leave_the_eyes(deepface_meshed: list[FaceRecord], templates: dict) -> None:
    """Every kind, in the view chosen for each face's yaw, on every face with landmarks."""
    rng = np.random.default_rng(0)
    for record in deepface_meshed:
        if DENSE_KEY not in record.extra:
            continue
        face, points = decode_jpeg_rgb(record.image), record.extra[DENSE_KEY].astype(np.float32)
        for kind in MASK_KINDS:
            template, _ = choose_mask(rng, templates, head_yaw(points), (kind,), 0.3)
            masked, alpha = draw_mask(face, points, template)
            where = f"{record.key} {template.name}"
            for index in (NOSE_TIP, MOUTH_LEFT, MOUTH_RIGHT):
                assert _at(alpha, points[index]) > 0.5, (where, index)
            for eye in (LEFT_EYE, RIGHT_EYE):
                assert _at(alpha, points[eye].mean(0)) < 0.1, (where, "eye")
            np.testing.assert_array_equal(masked[alpha == 0], face[alpha == 0])
            covered = alpha > 0.99
            assert np.abs(masked[covered].astype(int) - face[covered]).mean() > 10, where


def test_recolouring_keeps_the_shading(templates: dict) -> None:
    rgba = templates["cloth"].rgba
    red = recolour(rgba, (200, 30, 30))
    opaque = rgba[..., 3] > 127
    np.testing.assert_array_equal(red[..., 3], rgba[..., 3])
    assert (red[opaque][:, 0] >= red[opaque][:, 1]).all()  # red everywhere on the fabric
    lum_before = rgba[opaque][:, :3].astype(float).mean(1)
    assert np.corrcoef(lum_before, red[opaque][:, 0])[0, 1] > 0.95  # folds stay where they were


def test_side_views_follow_the_sign_of_yaw_on_a_mirrored_face(
    deepface_meshed: list[FaceRecord], templates: dict
) -> None:
    turned = 0
    for record in deepface_meshed:
        if DENSE_KEY not in record.extra:
            continue
        face, points = decode_jpeg_rgb(record.image), record.extra[DENSE_KEY].astype(np.float32)
        mirrored = points.copy()
        mirrored[:, 0] = face.shape[1] - mirrored[:, 0]
        yaw, yaw_mirrored = head_yaw(points), head_yaw(mirrored)
        assert yaw_mirrored == pytest.approx(-yaw, abs=1e-6)
        anchors = mask_anchor_points(mirrored)
        assert anchors[0, 0] < anchors[2, 0] and anchors[3, 0] < anchors[5, 0]  # left anchors stay on the left
        if abs(yaw) <= 0.3:
            continue
        turned += 1
        view, view_mirrored = ("left", "right") if yaw < 0 else ("right", "left")
        template, _ = choose_mask(np.random.default_rng(1), templates, yaw, MASK_KINDS, 0.3)
        flipped, _ = choose_mask(np.random.default_rng(1), templates, yaw_mirrored, MASK_KINDS, 0.3)
        assert (template.view, flipped.view) == (view, view_mirrored), record.key
        assert template.kind == flipped.kind
        _, alpha = draw_mask(np.ascontiguousarray(face[:, ::-1]), mirrored, flipped)
        assert _at(alpha, mirrored[NOSE_TIP]) > 0.5 and _at(alpha, mirrored[LEFT_EYE].mean(0)) < 0.1
    assert turned >= 2  # measured: 2 sample faces beyond |yaw| 0.3
