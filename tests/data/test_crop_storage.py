"""``align.storage`` and ``align.decode`` on real photos: every storage round-trips through a shard and both
readers, PNG keeps the float crop's rounding exactly, 4:4:4 loses less than 4:2:0, a bad setting is one error."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from facekit.config import AlignParams, DetectParams, load_params
from facekit.data.dataset import FaceShardDataset
from facekit.data.images import (
    CROP_STORAGES,
    ImageError,
    crop_size,
    crop_storage,
    decode_crop_rgb,
    decode_image,
    decode_image_reduced,
    encode_crop,
)
from facekit.data.loader import FaceBatches
from facekit.data.ops.align import align_face, alignment_template, estimate_similarity
from facekit.data.ops.detect import select_face
from facekit.data.ops.detect_align import align_record, load_detector
from facekit.data.record import FaceRecord, RawRecord
from facekit.data.shards import ShardWriter

DETECT = DetectParams()
#: large photos (decoded reduced for detection) and a small one (decoded at full size)
PHOTOS = ("img1.jpg", "img23.jpg", "img25.jpg")


@pytest.fixture(scope="module")
def photos(assets: Path) -> dict[str, bytes]:
    return {name: (assets / "faces/deepface" / name).read_bytes() for name in PHOTOS}


@pytest.fixture(scope="module")
def float_crops(photos: dict[str, bytes]) -> dict[str, np.ndarray]:
    return {name: _float_crop(data) for name, data in photos.items()}


def _float_crop(data: bytes) -> np.ndarray:
    """[112, 112, 3] float32 BGR: the bilinear warp of the full-size decode, with the landmarks that detect_align
    detects (on the reduced decode, mapped to full-size pixels)."""
    view = decode_image_reduced(data, min_side=DETECT.input_size)
    dets = load_detector(DETECT).detect(view.pixels)
    landmarks = view.to_full(dets.landmarks[select_face(dets, min_size=DETECT.min_face_size)])
    m = estimate_similarity(landmarks, alignment_template(112))
    return cv2.warpAffine(decode_image(data).astype(np.float32), m, (112, 112), flags=cv2.INTER_LINEAR)


def _record(data: bytes, **align: str) -> FaceRecord:
    record = align_record(RawRecord("t/photo", data), DETECT, AlignParams(**align))
    assert isinstance(record, FaceRecord), record
    return record


def test_png_of_the_full_decode_is_the_rounded_float_crop(
    photos: dict[str, bytes], float_crops: dict[str, np.ndarray]
) -> None:
    """``storage: png, decode: full`` stores exactly ``rint`` of the float crop; the reduced decode does not."""
    for name, data in photos.items():
        expected = np.rint(float_crops[name]).astype(np.uint8)
        record = _record(data, storage="png", decode="full")
        assert crop_storage(record.image) == "png"
        np.testing.assert_array_equal(decode_crop_rgb(record.image)[..., ::-1], expected, err_msg=name)
        reduced = decode_crop_rgb(_record(data, storage="png").image)[..., ::-1]
        if decode_image_reduced(data, min_side=DETECT.input_size).reduction > 1:
            assert np.abs(reduced.astype(np.float32) - expected).mean() > 0.2, name


def test_align_face_rounds_the_float_warp_even_at_the_border(photos: dict[str, bytes]) -> None:
    """A face cut by the photo's edge: black outside, the rounded float warp inside (no region artefact)."""
    img = decode_image(photos["img25.jpg"])
    landmarks = alignment_template(112) * 2.0 - 60.0  # a face hanging over the top-left corner
    crop, m = align_face(img, landmarks)
    expected = cv2.warpAffine(img.astype(np.float32), m, (112, 112), flags=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(crop, np.rint(expected).astype(np.uint8))
    assert (crop[:5, :5] == 0).all() and crop[-5:, -5:].any()


def test_jpeg444_loses_less_than_jpeg420_on_real_faces(
    photos: dict[str, bytes], float_crops: dict[str, np.ndarray]
) -> None:
    """Mean absolute error against the float crop (q95: ~2.5 grey levels with 4:2:0, ~15% less with 4:4:4)."""
    errors = {}
    for storage in ("jpeg", "jpeg444"):
        errors[storage] = [
            np.abs(decode_crop_rgb(_record(data, storage=storage, decode="full").image)[..., ::-1] - float_crops[name])
            for name, data in photos.items()
        ]
    mean = {storage: float(np.mean(e)) for storage, e in errors.items()}
    assert mean["jpeg444"] < 0.92 * mean["jpeg"], mean
    assert all(a.mean() < b.mean() for a, b in zip(errors["jpeg444"], errors["jpeg"], strict=True)), mean


@pytest.mark.parametrize("storage", CROP_STORAGES)
def test_each_storage_round_trips_through_a_shard_and_both_readers(
    photos: dict[str, bytes], tmp_path: Path, storage: str
) -> None:
    records = [_record(data, storage=storage).replace(key=f"t/{i}") for i, data in enumerate(photos.values())]
    twin = encode_crop(decode_crop_rgb(records[0].image)[..., ::-1] // 2, crop_storage(records[0].image))
    records[0] = records[0].replace(mask="surgical", masked_image=twin)
    with ShardWriter(tmp_path / "s.lmdb", meta={"identities": []}) as writer:
        for record in records:
            writer.put(record)
    dataset = FaceShardDataset(tmp_path / "s.lmdb")
    batch = FaceBatches(dataset, flip_p=0.0)[list(range(len(records)))]
    for i, record in enumerate(records):
        assert crop_storage(record.image) == storage and crop_size(record.image) == (112, 112)
        rgb = decode_crop_rgb(dataset.readers[0][i].image)
        np.testing.assert_array_equal(dataset[i]["image"].numpy(), rgb.transpose(2, 0, 1))
        np.testing.assert_array_equal(batch["image"][i].numpy(), rgb.transpose(2, 0, 1))
    assert crop_storage(dataset.readers[0][0].masked_image) == storage


def test_the_readers_refuse_a_truncated_png(photos: dict[str, bytes]) -> None:
    png = _record(photos["img25.jpg"], storage="png").image
    for cut in (len(png) // 2, len(png) - 12):
        with pytest.raises(ImageError, match="corrupt_image"):
            decode_crop_rgb(png[:cut])
    with pytest.raises(ImageError, match="not_an_image"):
        crop_storage(b"GIF89a")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("storage", "webp", "align.storage must be one of 'jpeg', 'jpeg444', 'png', got 'webp'"),
        ("decode", "half", "align.decode must be one of 'reduced', 'full', got 'half'"),
    ],
)
def test_a_bad_storage_or_decode_is_one_error_naming_the_key(
    tmp_path: Path, key: str, value: str, message: str
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"align": {key: value}}))
    with pytest.raises(ValueError, match=message):
        load_params(path)
