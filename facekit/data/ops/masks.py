"""Synthetic face masks: draw an RGBA mask template onto a face, guided by its 468-point face mesh.

A template (``masks/*.png`` from the assets, anchors in ``masks/masks.cfg``) carries six anchor points:
left cheek top, nose bridge, right cheek top, left jaw, chin, right jaw ("left" = image left). A
homography maps them onto the same six points of the face mesh (:data:`MASK_ANCHORS_MESH`), the RGBA
template is warped with it and alpha-composited onto the face. Side-view templates (``*_left``,
``*_right``) are picked by :func:`head_yaw`. Images are RGB uint8 ``[H, W, 3]``; mesh points are in
the same pixel frame. Nothing here runs the mesh model: points come from the landmarks stage.
:func:`is_selected` and :func:`mask_face` are the seeded draws of the ``masks`` stage for one record
(which faces get a twin, which template and colour), functions of ``(seed, key)`` only.
"""

from __future__ import annotations

import configparser
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from PIL import Image

from facekit.config import MaskParams

View = Literal["front", "left", "right"]

#: [6] MediaPipe face-mesh indices of the mask anchors, in ``masks.cfg`` order ``mask_a`` … ``mask_f``:
#: 93 left cheek (face contour, a third of the way from the eyes to the mouth), 197 nose bridge (halfway
#: between the inner eye corners and the nose tip), 323 right cheek, 172 left jaw angle, 152 chin,
#: 397 right jaw angle. "Left" is image left on an unmirrored mesh (the subject's right).
MASK_ANCHORS_MESH = np.array([93, 197, 323, 172, 152, 397], dtype=np.int64)
#: The same anchors with left and right exchanged: used when the mesh was mirrored (index 93 on the right).
_MIRRORED_ANCHORS = MASK_ANCHORS_MESH[[2, 1, 0, 5, 4, 3]]
#: Mesh indices used by :func:`head_yaw`: nose tip, leftmost and rightmost face contour at eye level.
NOSE_TIP, CONTOUR_LEFT, CONTOUR_RIGHT = 1, 234, 454

_ANCHOR_KEYS = ("mask_a", "mask_b", "mask_c", "mask_d", "mask_e", "mask_f")
#: Mask kinds whose fabric may be recoloured (the others are rigid, printed or black).
RECOLOURABLE_KINDS = frozenset({"surgical", "cloth"})
#: Fabric colours :func:`choose_mask` picks from when it recolours (RGB).
FABRIC_COLOURS: tuple[tuple[int, int, int], ...] = (
    (235, 235, 235),
    (40, 40, 45),
    (120, 170, 215),
    (70, 110, 80),
    (200, 120, 150),
    (150, 35, 45),
    (225, 200, 120),
    (90, 80, 150),
)
#: The warped template keeps about this many template pixels per output pixel before the final warp.
_OVERSAMPLE = 2.0


class MaskTemplateError(ValueError):
    """``masks.cfg`` or a template image is missing or malformed."""


@dataclass(frozen=True)
class MaskTemplate:
    """One mask template.

    name:    section name in ``masks.cfg`` (e.g. ``"surgical_blue_left"``).
    rgba:    [H, W, 4] uint8 RGBA template image (straight alpha).
    anchors: [6, 2] float32 template pixels of left cheek top, nose bridge, right cheek top, left jaw,
             chin, right jaw.
    view:    ``"front"``, ``"left"`` (nose towards image left, for faces turned that way) or ``"right"``.
    kind:    mask type, the name's first word: ``"surgical"``, ``"N95"``, ``"KN95"``, ``"cloth"``, ``"gas"``.
    """

    name: str
    rgba: np.ndarray
    anchors: np.ndarray
    view: View
    kind: str


def load_templates(masks_dir: Path) -> dict[str, MaskTemplate]:
    """Read ``masks_dir/masks.cfg`` and every template it names (PNG beside it); name -> template.

    Sections without a ``template`` (``empty``, ``inpaint`` in MaskTheFace's file) are not masks and are
    left out. Raises :class:`MaskTemplateError` for a missing or unparsable file, a missing anchor or
    image, or an image without an alpha channel.
    """
    masks_dir = Path(masks_dir)
    cfg_path = masks_dir / "masks.cfg"
    if not cfg_path.is_file():
        raise MaskTemplateError(f"{cfg_path}: no masks.cfg here (expected the assets' masks/ folder)")
    cfg = configparser.ConfigParser(delimiters=(":",), comment_prefixes=(";", "#"))
    try:
        cfg.read_string(cfg_path.read_text())
    except (configparser.Error, UnicodeDecodeError) as e:
        raise MaskTemplateError(f"{cfg_path}: cannot parse: {e}") from None
    templates = {}
    for name in cfg.sections():
        section = cfg[name]
        if "template" not in section:
            continue
        where = f"{cfg_path} [{name}]"
        anchors = np.array([_parse_point(section, key, where) for key in _ANCHOR_KEYS], dtype=np.float32)
        image_path = masks_dir / Path(section["template"]).name
        try:
            with Image.open(image_path) as img:
                if "A" not in img.getbands():
                    raise MaskTemplateError(f"{where}: {image_path.name} has no alpha channel")
                rgba = np.asarray(img.convert("RGBA"))
        except (OSError, SyntaxError) as e:
            raise MaskTemplateError(f"{where}: cannot read template image {image_path}: {e}") from None
        view: View = "left" if name.endswith("_left") else "right" if name.endswith("_right") else "front"
        templates[name] = MaskTemplate(name, rgba, anchors, view, name.split("_")[0])
    if not templates:
        raise MaskTemplateError(f"{cfg_path}: no section with a template")
    return templates


def _parse_point(section: configparser.SectionProxy, key: str, where: str) -> tuple[float, float]:
    if key not in section:
        raise MaskTemplateError(f"{where}: missing anchor {key}")
    try:
        x, y = (float(v) for v in section[key].split(","))
    except ValueError:
        raise MaskTemplateError(f"{where}: {key} must be 'x, y', got {section[key]!r}") from None
    return x, y


def _as_mesh(points: np.ndarray) -> np.ndarray:
    """Validate mesh points [468, 2|3] and return their x, y as [468, 2] float64."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] != 468 or pts.shape[1] not in (2, 3):
        raise ValueError(f"mesh points must have shape [468, 2] or [468, 3], got {pts.shape}")
    if not np.isfinite(pts[:, :2]).all():
        raise ValueError("mesh points contain NaN or infinite values")
    return pts[:, :2]


def mask_anchor_points(points: np.ndarray) -> np.ndarray:
    """The six mask anchors of a face mesh [468, 2|3] -> [6, 2] float32, ordered as in ``masks.cfg``.

    Left and right are taken by image position, so a mirrored mesh (points flipped with their indices
    kept) still gets its left anchors on the image left.
    """
    pts = _as_mesh(points)
    left_first = pts[MASK_ANCHORS_MESH[0], 0] <= pts[MASK_ANCHORS_MESH[2], 0]
    return pts[MASK_ANCHORS_MESH if left_first else _MIRRORED_ANCHORS].astype(np.float32)


def head_yaw(points: np.ndarray) -> float:
    """Signed head yaw of a face mesh [468, 2|3] as a ratio in [-1, 1] (only x, y are used).

    Where the nose tip sits between the leftmost and rightmost face contour at eye level, measured along
    the line joining them: 0 for a frontal face, positive when the nose is right of the face centre in
    the image (the face turned towards image right), negative when it is left. Mirroring the face
    flips the sign. About 0.2 corresponds to a noticeably turned head.
    """
    pts = _as_mesh(points)
    a, b = pts[CONTOUR_LEFT], pts[CONTOUR_RIGHT]
    left, right = (a, b) if a[0] <= b[0] else (b, a)
    axis = right - left
    width2 = float(axis @ axis)
    if width2 < 1e-6:
        raise ValueError("degenerate mesh: the face contour points coincide")
    t = float((pts[NOSE_TIP] - left) @ axis) / width2
    return float(np.clip(2.0 * t - 1.0, -1.0, 1.0))


def choose_mask(
    rng: np.random.Generator,
    templates: dict[str, MaskTemplate],
    yaw: float,
    kinds: tuple[str, ...],
    yaw_threshold: float,
) -> tuple[MaskTemplate, tuple[int, int, int] | None]:
    """Pick a template and an optional fabric colour for a face with :func:`head_yaw` ``yaw``.

    The view follows the yaw: ``"left"`` below ``-yaw_threshold``, ``"right"`` above it, else
    ``"front"`` (front when no template of ``kinds`` has that view). The kind is uniform over ``kinds``
    having that view, then the template uniform within the kind; recolourable kinds
    (:data:`RECOLOURABLE_KINDS`) get a colour from :data:`FABRIC_COLOURS` half of the time (``None``
    keeps the template's own). Every draw comes from ``rng``.
    """
    unknown = sorted(set(kinds) - {t.kind for t in templates.values()})
    if unknown or not kinds:
        have = sorted({t.kind for t in templates.values()})
        raise ValueError(f"unknown mask kind(s) {unknown or list(kinds)}; the templates have {have}")
    view: View = "left" if yaw < -yaw_threshold else "right" if yaw > yaw_threshold else "front"
    candidates = [t for _, t in sorted(templates.items()) if t.kind in kinds and t.view == view]
    if not candidates:
        candidates = [t for _, t in sorted(templates.items()) if t.kind in kinds and t.view == "front"]
    if not candidates:
        raise ValueError(f"no template of kind(s) {list(kinds)} for the {view!r} or front view")
    kind_names = sorted({t.kind for t in candidates})
    kind = kind_names[int(rng.integers(len(kind_names)))]
    of_kind = [t for t in candidates if t.kind == kind]
    template = of_kind[int(rng.integers(len(of_kind)))]
    colour = None
    if template.kind in RECOLOURABLE_KINDS and rng.random() < 0.5:
        colour = FABRIC_COLOURS[int(rng.integers(len(FABRIC_COLOURS)))]
    return template, colour


def recolour(rgba: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """The template [H, W, 4] uint8 in another fabric colour, keeping its shading -> [H, W, 4] uint8.

    Each pixel becomes ``colour * luminance / reference``, the reference being the bright fabric
    (90th percentile of the luminance where alpha > 0.5), so folds and edges stay darker. Alpha is kept.
    """
    rgb = rgba[..., :3].astype(np.float32)
    lum = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    opaque = lum[rgba[..., 3] > 127]
    reference = max(float(np.percentile(opaque, 90)) if opaque.size else 255.0, 1.0)
    shaded = np.asarray(colour, np.float32) * (lum / reference)[..., None]
    out = rgba.copy()
    out[..., :3] = np.clip(np.rint(shaded), 0, 255).astype(np.uint8)
    return out


def draw_mask(
    face_rgb: np.ndarray,
    points: np.ndarray,
    template: MaskTemplate,
    color: tuple[int, int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``template`` on a face; returns (masked [H, W, 3] uint8 RGB, alpha [H, W] float32 in [0, 1]).

    face_rgb: [H, W, 3] uint8 RGB; points: [468, 2|3] face mesh in the same pixels; ``color`` recolours
    the fabric (see :func:`recolour`). The homography (least squares over the six anchors) maps the
    template's anchors onto :func:`mask_anchor_points`; the template is first shrunk (area averaging)
    to about twice the output resolution so large templates do not alias, then warped with premultiplied
    alpha (no dark fringes) and composited: ``out = face * (1 - alpha) + mask``.
    """
    face = np.asarray(face_rgb)
    if face.dtype != np.uint8 or face.ndim != 3 or face.shape[2] != 3:
        raise ValueError(f"face must be [H, W, 3] uint8 RGB, got {face.dtype} {face.shape}")
    dst = mask_anchor_points(points)
    rgba = template.rgba if color is None else recolour(template.rgba, color)
    src = template.anchors.astype(np.float64)
    span = np.linalg.norm(src[[0, 3]].mean(0) - src[[2, 5]].mean(0))
    shrink = min(1.0, _OVERSAMPLE * float(np.linalg.norm(dst[[0, 3]].mean(0) - dst[[2, 5]].mean(0))) / span)
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    premult = np.concatenate([rgba[..., :3].astype(np.float32) * alpha, alpha], axis=2)
    if shrink < 1.0:
        h, w = rgba.shape[:2]
        size = (max(1, round(w * shrink)), max(1, round(h * shrink)))
        premult = cv2.resize(premult, size, interpolation=cv2.INTER_AREA)
        src = src * (np.array(size, np.float64) / (w, h))
    homography, _ = cv2.findHomography(src, dst.astype(np.float64), 0)
    if homography is None:
        raise ValueError("degenerate mask anchors: no homography maps the template onto the face")
    h, w = face.shape[:2]
    warped = cv2.warpPerspective(
        premult, homography, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    a = np.clip(warped[..., 3], 0.0, 1.0)
    out = face.astype(np.float32) * (1.0 - a[..., None]) + warped[..., :3]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), a


def _rng(seed: int, *parts: str) -> np.random.Generator:
    """A generator determined by ``seed`` and the strings ``parts`` only (sha256 of them)."""
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def is_selected(mparams: MaskParams, key: str, identity: int) -> bool:
    """Whether the record gets a masked twin: a uniform draw from ``(seed, key)`` (``by="image"``) or
    ``(seed, identity)`` (``by="identity"``, unlabelled records with identity < 0 fall back to the key)
    below ``fraction``."""
    if mparams.by == "identity" and identity >= 0:
        return bool(_rng(mparams.seed, "select-identity", str(identity)).random() < mparams.fraction)
    return bool(_rng(mparams.seed, "select-image", key).random() < mparams.fraction)


def mask_face(
    face_rgb: np.ndarray, points: np.ndarray, key: str, templates: dict[str, MaskTemplate], mparams: MaskParams
) -> tuple[np.ndarray, MaskTemplate]:
    """The masked twin of one face (template and colour drawn from ``(seed, key)``).

    face_rgb: [H, W, 3] uint8 RGB; points: [468, 2|3] mesh in the same pixels.
    Returns (masked [H, W, 3] uint8 RGB, the template drawn).
    """
    rng = _rng(mparams.seed, "draw", key)
    template, colour = choose_mask(rng, templates, head_yaw(points), mparams.kinds, mparams.yaw_threshold)
    masked, _ = draw_mask(face_rgb, points, template, colour)
    return masked, template
