"""The ``masks`` stage: faces with dense landmarks -> the same faces, some with a synthetic masked twin.

Runs after ``landmarks`` (before ``pack``). Per shard (:func:`masks_shard`, a pure function of the
parameters and the shard id) it reads ``in_dir/shard-NNNNN.lmdb`` and writes ``out_dir/shard-NNNNN.lmdb``
with every record; for a ``fraction`` of the images (or of the identities) it draws a mask
(:func:`~facekit.data.ops.masks.draw_mask`) and stores it in ``masked_image`` (encoded like its crop,
``align.storage``) and the template name in ``mask``. Selection, template, colour and pixels depend only
on ``(seed, key)`` (or ``(seed, identity)`` for the selection by identity), never on sharding or order.

Records without dense landmarks are written without a twin and counted (``no_landmarks``); the report's
extra always reconciles: ``masked + not_selected + no_landmarks == written``, and ``masked_<kind>``
counts the twins per mask kind. :func:`mask_quality_report` measures what the masks do to a recogniser.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from facekit.assets import asset_path, resolve_model
from facekit.config import MaskParams, Params, PathsParams, section_hash
from facekit.data.grid import save_grid
from facekit.data.images import crop_storage, decode_crop_rgb, encode_crop
from facekit.data.ops.landmarks import DENSE_KEY
from facekit.data.ops.masks import MaskTemplate, is_selected, load_templates, mask_face
from facekit.data.record import FaceRecord
from facekit.data.report import StageReport, withdraw_report
from facekit.data.shards import ShardReader, ShardWriter, read_index
from facekit.eval.embedder import OnnxEmbedder
from facekit.eval.identity_pairs import AUTO, identity_pairs
from facekit.eval.make_bin import read_pairs
from facekit.eval.verification import verify
from facekit.stages.shard_folders import shard_to_shard_ids
from facekit.stages.shard_map import ShardMap, process_map
from facekit.stages.sharding import shard_name


def resolve_masks_dir(masks_dir: str) -> Path:
    """The templates folder from params: absolute, relative to the working directory, or to the assets root."""
    path = Path(masks_dir)
    if path.is_absolute() or path.is_dir():
        return path
    return resolve_model(f"{masks_dir}/masks.cfg").parent


@lru_cache(maxsize=2)
def _templates(masks_dir: str) -> dict[str, MaskTemplate]:
    """The templates, loaded once per process."""
    return load_templates(resolve_masks_dir(masks_dir))


def stage_hash(params: Params, mparams: MaskParams) -> str:
    """Hash of the parameters that change this stage's output (crop geometry and mask parameters)."""
    return section_hash(params.align, mparams)


def _counts(mparams: MaskParams) -> dict[str, float]:
    return {"masked": 0, "not_selected": 0, "no_landmarks": 0, **{f"masked_{k}": 0 for k in mparams.kinds}}


def masks_shard(params: Params, mparams: MaskParams, shard_id: int, in_dir: Path, out_dir: Path) -> StageReport:
    """Copy ``in_dir/shard-NNNNN.lmdb`` to ``out_dir/shard-NNNNN.lmdb``, adding masked twins.

    Unselected records and records without dense landmarks are written with ``mask`` and
    ``masked_image`` cleared. Nothing is rejected: ``read == written``.
    """
    name = shard_name(shard_id)
    reader = ShardReader(in_dir / f"{name}.lmdb")
    meta = {**reader.meta, "stage": "masks", "params_hash": stage_hash(params, mparams)}
    for reserved in ("schema_version", "count", "content_hash"):
        meta.pop(reserved, None)
    templates = _templates(mparams.masks_dir)
    report = StageReport("masks", extra=_counts(mparams))
    with ShardWriter(out_dir / f"{name}.lmdb", meta=meta) as writer:
        for record in reader:
            report.read += 1
            points = record.extra.get(DENSE_KEY)
            twin: dict = {"mask": None, "masked_image": None}
            if points is None:
                report.extra["no_landmarks"] += 1
            elif not is_selected(mparams, record.key, record.identity):
                report.extra["not_selected"] += 1
            else:
                masked, template = mask_face(decode_crop_rgb(record.image), points, record.key, templates, mparams)
                twin_image = encode_crop(masked[..., ::-1], crop_storage(record.image), mparams.jpeg_quality)
                twin = {"mask": template.name, "masked_image": twin_image}
                report.extra["masked"] += 1
                report.extra[f"masked_{template.kind}"] += 1
            writer.put(record.replace(**twin))
            report.written += 1
    reader.close()
    return report.check()


def run_masks(
    params: Params,
    mparams: MaskParams,
    in_dir: Path,
    out_dir: Path,
    *,
    progress: bool = True,
    shard_map: ShardMap | None = None,
) -> StageReport:
    """All shards of ``in_dir`` (in ``params.sharding.workers`` processes unless ``shard_map`` says otherwise)."""
    _templates(mparams.masks_dir)  # a missing or broken template folder fails here, before any work
    ids = shard_to_shard_ids("masks", in_dir, out_dir, "run the landmarks stage first")
    run = shard_map or process_map(params.sharding.workers)
    total = StageReport("masks", extra=_counts(mparams))
    with tqdm(total=len(ids), desc="masks", unit="shard", disable=not progress) as bar:
        for rep in run(masks_shard, [(params, mparams, i, in_dir, out_dir) for i in ids]):
            total.merge(rep)
            bar.set_postfix(masked=int(total.extra["masked"]))
            bar.update()
    return total.check()


def _shard_paths(shards: Path | Sequence[Path]) -> list[Path]:
    """Shard paths from a folder (its ``index.json``, else its ``shard-*.lmdb``) or a list of paths."""
    if not isinstance(shards, (str, Path)):
        return [Path(p) for p in shards]
    folder = Path(shards)
    if (folder / "index.json").is_file():
        return [folder / entry["name"] for entry in read_index(folder)["shards"]]
    return sorted(folder.glob("shard-*.lmdb"))


def _fit(face: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``face`` [H, W, 3] resized to ``hw`` (area averaging) when it is not that size already."""
    if face.shape[:2] == hw:
        return face
    return cv2.resize(face, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)


def mask_quality_report(
    shards: Path | Sequence[Path],
    embedder_path: Path,
    pairs_file: Path | None,
    *,
    mparams: MaskParams | None = None,
) -> dict[str, float | int | str]:
    """10-fold verification accuracy with holistic and masked faces, on the pairs of ``pairs_file`` (a CSV or
    LFW pair list; a name matches the record whose key is it or ends in ``/name``), or with None on balanced
    pairs drawn from the faces' identity labels (:func:`~facekit.eval.identity_pairs.identity_pairs`).

    Every face with dense landmarks is masked for this (as :func:`mask_face` draws it for its key,
    whatever ``fraction`` says); pairs with a face missing or without landmarks are left out and
    counted. Returns ``pairs``, ``pairs_left_out`` and ``accuracy_holistic`` (holistic vs holistic),
    ``accuracy_masked_vs_holistic`` (first face masked), ``accuracy_masked_vs_masked``; or, when no pair
    has both faces (a pair list of other photos, a source without identities), ``{"quality_skipped": why}``.
    """
    mparams = mparams or MaskParams()
    templates = _templates(mparams.masks_dir)
    embedder = OnnxEmbedder(embedder_path)
    h, w = embedder.input_hw
    keys, identities, holistic, masked = [], [], [], []
    for path in _shard_paths(shards):
        for record in ShardReader(path):
            points = record.extra.get(DENSE_KEY)
            if points is None:
                continue
            face = decode_crop_rgb(record.image)
            twin, _ = mask_face(face, points, record.key, templates, mparams)
            keys.append(record.key)
            identities.append(record.identity)
            holistic.append(_fit(face, (h, w)))
            masked.append(_fit(twin, (h, w)))
    row_of = {key.rsplit("/", 1)[-1]: i for i, key in enumerate(keys)} | {key: i for i, key in enumerate(keys)}
    try:
        listed = (
            read_pairs(pairs_file)
            if pairs_file
            else identity_pairs({key: str(label) for key, label in zip(keys, identities, strict=True) if label >= 0})
        )
    except ValueError as e:
        return {"quality_skipped": str(e)}
    rows = zip(listed.first, listed.second, listed.issame, strict=True)
    pairs = [(row_of[a], row_of[b], bool(same)) for a, b, same in rows if a in row_of and b in row_of]
    if not pairs:
        return {"quality_skipped": f"no pair of {pairs_file} has both faces (with dense landmarks) in the shards"}
    emb_h, emb_m = embedder.embed(np.stack(holistic)), embedder.embed(np.stack(masked))
    x, y = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    same = np.array([p[2] for p in pairs])
    return {
        "pairs": len(pairs),
        "pairs_left_out": len(listed) - len(pairs),
        "accuracy_holistic": verify(emb_h[x], emb_h[y], same).accuracy,
        "accuracy_masked_vs_holistic": verify(emb_m[x], emb_h[y], same).accuracy,
        "accuracy_masked_vs_masked": verify(emb_m[x], emb_m[y], same).accuracy,
    }


def save_mask_grid(records: Sequence[FaceRecord], path: Path, *, count: int = 24) -> Path:
    """A PNG of up to ``count`` faces with a masked twin, each holistic beside masked (4 pairs a row,
    112-pixel cells: 896 pixels wide), labelled with the face's identity and the mask's kind."""
    faces: list[np.ndarray] = []
    labels: list[str] = []
    for record in records:
        if record.masked_image is None:
            continue
        if len(faces) == 2 * count:
            break
        faces += [decode_crop_rgb(record.image), decode_crop_rgb(record.masked_image)]
        labels += [f"id {record.identity}", f"{record.mask} mask"]
    return save_grid(faces, path, columns=8, labels=labels)


def run(params: Params, paths: PathsParams, *, shard_map: ShardMap | None = None, progress: bool = True) -> StageReport:
    """The stage: every face of ``paths.landmarks`` into ``paths.masked``, some with a masked twin; the report
    ``<metrics>/masks.json`` (with ``masks.quality_pairs`` set, the masked-face accuracy drop too) and the
    holistic / masked pairs ``<plots>/masks.png``."""
    withdraw_report(paths.report("masks"))
    out = Path(paths.masked)
    result = run_masks(params, params.masks, Path(paths.landmarks), out, progress=progress, shard_map=shard_map)
    shards = sorted(out.glob("shard-*.lmdb"))
    if params.masks.quality_pairs:
        setting = params.masks.quality_pairs
        pairs_file = None if setting == AUTO else asset_path(setting)
        model = resolve_model(params.masks.quality_model)
        result.extra.update(mask_quality_report(shards, model, pairs_file, mparams=params.masks))
    result.write(paths.report("masks"))
    save_mask_grid([r for path in shards for r in ShardReader(path)], paths.plot("masks"))
    return result
