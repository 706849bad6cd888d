"""Pair-list parsing (the real LFW View-2 file, CSV) and .bin building from aligned faces, photos and shards."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from facekit.cli import main
from facekit.data.images import decode_image, encode_jpeg
from facekit.data.ops.align import align_face
from facekit.data.ops.detect import create_detector, select_face
from facekit.data.record import FaceRecord
from facekit.data.shards import ShardWriter
from facekit.data.sources.verification_bin import load_verification_bin
from facekit.eval.make_bin import AlignedFaces, build_bin, read_lfw_pairs, read_pairs, read_pairs_csv

# ---------------------------------------------------------------- parsers


def test_lfw_protocol_file_has_6000_pairs_in_10_folds(assets: Path) -> None:
    path = assets / "protocols" / "lfw_pairs.txt"
    pairs = read_pairs(path)
    assert len(pairs) == 6000 and pairs.n_folds == 10
    folds = pairs.issame.reshape(10, 600)
    assert folds[:, :300].all() and not folds[:, 300:].any()  # each fold: 300 same, then 300 different
    assert (pairs.first[0], pairs.second[0]) == ("Abel_Pacheco/Abel_Pacheco_0001", "Abel_Pacheco/Abel_Pacheco_0004")
    # Independently: 3-field lines are same-person pairs, 4-field lines different-person pairs, in file order.
    lines = [line.split() for line in path.read_text().splitlines()[1:]]
    assert [len(f) == 3 for f in lines] == pairs.issame.tolist()
    persons = [(a.split("/")[0], b.split("/")[0]) for a, b in zip(pairs.first, pairs.second, strict=True)]
    assert all((x == y) == same for (x, y), same in zip(persons, pairs.issame, strict=True))
    last = lines[-1]
    assert pairs.second[-1] == f"{last[2]}/{last[2]}_{int(last[3]):04d}"


def test_lfw_parser_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "pairs.txt"
    cases = {
        "A 1 2\n": "line 1 must be the header",
        "1 1\nA 1 2\nA 1 B\n": "line 3: invalid literal",
        "1 1\nA 1 2\nA 1 B 2 7\n": "line 3: expected 'name idx1 idx2'",
        "1 1\nA 1 2\n": "1 x 2 x 1 = 2 pairs, found 1",
        "1 1\nA 1 B 2\nA 1 2\n": "1 same pairs, then 1 different",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_lfw_pairs(path)
    with pytest.raises(FileNotFoundError, match="pair list not found"):
        read_pairs(tmp_path / "missing.txt")


def test_pairs_csv(assets: Path, tmp_path: Path) -> None:
    pairs = read_pairs(assets / "faces" / "deepface" / "pairs.csv")
    assert len(pairs) == 280 and int(pairs.issame.sum()) == 140 and pairs.n_folds is None
    assert (pairs.first[0], pairs.second[0], pairs.issame[0]) == ("img38", "img39", True)
    assert len(pairs.names()) == len(set(pairs.first) | set(pairs.second))
    bad = tmp_path / "bad.csv"
    bad.write_text("file_x,file_y\na.jpg,b.jpg\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['same'\]"):
        read_pairs_csv(bad)
    bad.write_text("file_x,file_y,same\na.jpg,b.jpg,maybe\n")
    with pytest.raises(ValueError, match="line 2: same must be"):
        read_pairs_csv(bad)


# ---------------------------------------------------------------- building .bin sets from the deepface photos


@pytest.fixture(scope="module")
def deepface(assets: Path) -> dict:
    """Every photo's largest face, detected with SCRFD and aligned to the ArcFace 112 crop (BGR)."""
    folder = assets / "faces" / "deepface"
    with open(folder / "identities.csv") as f:
        identity = {r["file"]: int(r["identity_id"]) for r in csv.DictReader(f)}
    detector = create_detector("scrfd", assets / "models" / "scrfd_500m_bnkps.onnx")
    crops = {}
    for file in identity:
        img = decode_image((folder / file).read_bytes())
        dets = detector.detect(img)
        crops[file] = align_face(img, dets.landmarks[select_face(dets, min_size=0)], size=112)[0]
    return {"folder": folder, "identity": identity, "crops": crops, "detector": detector}


def write_lfw_style(deepface: dict, root: Path) -> tuple[Path, list[tuple[str, str, bool]]]:
    """Aligned crops as ``Person_XX/Person_XX_000k.jpg`` and a LFW-format pairs.txt: 2 folds of 70 + 70.

    Same pairs: all 140 within-identity pairs; different pairs: 140 random cross-identity pairs.
    """
    names: dict[int, list[str]] = {}
    for file, ident in deepface["identity"].items():
        person = f"Person_{ident:02d}"
        names.setdefault(ident, []).append(file)
        (root / person).mkdir(parents=True, exist_ok=True)
        (root / person / f"{person}_{len(names[ident]):04d}.jpg").write_bytes(encode_jpeg(deepface["crops"][file]))
    same = [
        (i, a, b) for i, files in names.items() for a in range(1, len(files) + 1) for b in range(a + 1, len(files) + 1)
    ]
    rng = np.random.default_rng(0)
    ids = sorted(names)
    diff = []
    while len(diff) < 140:
        i, j = rng.choice(ids, 2, replace=False)
        diff.append((int(i), int(rng.integers(1, len(names[i]) + 1)), int(j), int(rng.integers(1, len(names[j]) + 1))))
    lines, expected = ["2\t70"], []
    for fold in range(2):
        for i, a, b in same[70 * fold : 70 * fold + 70]:
            lines.append(f"Person_{i:02d}\t{a}\t{b}")
            expected.append((f"Person_{i:02d}/Person_{i:02d}_{a:04d}", f"Person_{i:02d}/Person_{i:02d}_{b:04d}", True))
        for i, a, j, b in diff[70 * fold : 70 * fold + 70]:
            lines.append(f"Person_{i:02d}\t{a}\tPerson_{j:02d}\t{b}")
            expected.append((f"Person_{i:02d}/Person_{i:02d}_{a:04d}", f"Person_{j:02d}/Person_{j:02d}_{b:04d}", False))
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root / "pairs.txt", expected


def test_lfw_style_folder_to_bin(deepface: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs_txt, expected = write_lfw_style(deepface, tmp_path / "lfw")
    out = tmp_path / "lfw_like.bin"
    assert main(["eval", "make-bin", str(pairs_txt), str(out), "--folder", str(tmp_path / "lfw")]) == 0
    assert "280 pairs (140 same), 0 dropped" in capsys.readouterr().out
    vbin = load_verification_bin(out)  # through the restricted unpickler
    assert len(vbin) == 280
    assert vbin.issame.tolist() == [same for _, _, same in expected]
    for i in (0, 69, 70, 139, 140, 279):  # aligned 112 x 112 files go in byte for byte
        a, b, _ = vbin.pair(i)
        assert a == (tmp_path / "lfw" / f"{expected[i][0]}.jpg").read_bytes()
        assert b == (tmp_path / "lfw" / f"{expected[i][1]}.jpg").read_bytes()
    assert decode_image(vbin.images[5]).shape == (112, 112, 3)


def test_photos_are_detected_and_aligned(deepface: dict, tmp_path: Path) -> None:
    files = ["img1.jpg", "img2.jpg", "img38.jpg"]
    for file in files:
        shutil.copyfile(deepface["folder"] / file, tmp_path / file)
    names = ["img1", "img2", "img38", "nobody"]
    with pytest.raises(ValueError, match="is not an aligned 112x112 face; pass a detector"):
        AlignedFaces.from_folder(tmp_path, names)
    faces = AlignedFaces.from_folder(tmp_path, names, detector=deepface["detector"])
    for file in files:
        assert faces.images[file[:-4]] == encode_jpeg(deepface["crops"][file])
    assert list(faces.failed) == ["nobody"] and "no image" in faces.failed["nobody"]
    pairs = read_pairs_csv_text(tmp_path, "img1.jpg,img2.jpg,1\nimg1.jpg,nobody.jpg,0\nimg2.jpg,img38.jpg,0\n")
    with pytest.raises(ValueError, match="pair 1 \\(img1, nobody\\): no image"):
        build_bin(pairs, faces, tmp_path / "x.bin")
    report = build_bin(pairs, faces, tmp_path / "x.bin", strict=False)
    assert (report.pairs, report.same, list(report.dropped)) == (2, 1, [1])
    assert load_verification_bin(tmp_path / "x.bin").issame.tolist() == [True, False]


def read_pairs_csv_text(folder: Path, rows: str):
    path = folder / "pairs.csv"
    path.write_text("file_x,file_y,same\n" + rows)
    return read_pairs_csv(path)


def test_masked_variants_from_shards(deepface: dict, assets: Path, tmp_path: Path) -> None:
    """Every other record gets a masked twin (lower half grey); masked sets swap twins in, or drop the pair."""
    shard = tmp_path / "part-00000.lmdb"
    twins: dict[str, bytes] = {}
    originals: dict[str, bytes] = {}
    with ShardWriter(shard, meta={"identities": [f"id{i:02d}" for i in range(13)]}) as writer:
        for k, (file, crop) in enumerate(sorted(deepface["crops"].items())):
            stem, masked = file[:-4], None
            if k % 2 == 0:
                covered = crop.copy()
                covered[60:] = 128
                masked = twins[stem] = encode_jpeg(covered)
            originals[stem] = encode_jpeg(crop)
            ident = deepface["identity"][file]
            writer.put(
                FaceRecord(
                    key=f"sample/id{ident:02d}/{stem}",
                    image=originals[stem],
                    identity=ident,
                    landmarks=np.zeros((5, 2), np.float32),
                    bbox=np.zeros(4, np.float32),
                    det_score=0.9,
                    num_faces=1,
                    source="sample",
                    source_sha256="0" * 64,
                    mask="surgical" if masked else None,
                    masked_image=masked,
                )
            )
    faces = AlignedFaces.from_shards(shard)
    pairs = read_pairs(assets / "faces" / "deepface" / "pairs.csv")
    plain = build_bin(pairs, faces, tmp_path / "plain.bin")
    assert plain.pairs == 280 and not plain.dropped
    assert load_verification_bin(tmp_path / "plain.bin").images[:2] == [originals["img38"], originals["img39"]]

    second = build_bin(pairs, faces, tmp_path / "second.bin", masked="second", strict=False)
    keep = [i for i, b in enumerate(pairs.second) if b in twins]
    vbin = load_verification_bin(tmp_path / "second.bin")
    assert second.pairs == len(vbin) == len(keep) and sorted(second.dropped) == sorted(set(range(280)) - set(keep))
    assert vbin.images[0::2] == [originals[pairs.first[i]] for i in keep]
    assert vbin.images[1::2] == [twins[pairs.second[i]] for i in keep]
    assert vbin.issame.tolist() == pairs.issame[keep].tolist()

    both = build_bin(pairs, faces, tmp_path / "both.bin", masked="both", strict=False)
    assert both.pairs == sum(a in twins and b in twins for a, b in zip(pairs.first, pairs.second, strict=True))
    with pytest.raises(ValueError, match="no masked twin"):
        build_bin(pairs, faces, tmp_path / "strict.bin", masked="second")


def test_face_lookup_by_key_suffix() -> None:
    faces = AlignedFaces(images={"a/p/x": b"1", "b/q/x": b"2", "b/q/y": b"3"}, masked={"b/q/y": b"4"})
    assert faces.get("q/x") == b"2" and faces.get("y") == b"3" and faces.get("y", masked=True) == b"4"
    assert faces.get("a/p/x") == b"1" and faces.get("z") is None and faces.get("q/x", masked=True) is None
    with pytest.raises(ValueError, match="ambiguous"):
        faces.get("x")
