"""Typed parameter sections read from ``params.yaml`` (the file DVC tracks).

Each section is a frozen dataclass; unknown keys are an error with a suggestion, so a typo in
params.yaml never silently falls back to a default. ``section_hash`` gives the stable hash stored in
every shard's metadata, so a shard says which parameters made it.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


@dataclass(frozen=True)
class PathsParams:
    """``paths:`` in params.yaml: where the data stages write; dvc.yaml reads the same values (``${paths.aligned}``).

    The report of stage ``S`` is ``<metrics>/S.json`` (its rejections ``<metrics>/S.rejections.jsonl``).
    """

    aligned: str = "data/aligned"  # detect_align: per-shard LMDBs of aligned faces
    landmarks: str = "data/landmarks"  # landmarks: the same faces with dense landmarks
    masked: str = "data/masked"  # masks: the same faces, some with a masked twin; what pack reads
    shards: str = "data/shards"  # pack: the final shards and their index.json
    metrics: str = "metrics"  # stage reports (DVC metrics)
    plots: str = "plots"  # pictures of the faces (DVC plots)

    def report(self, stage: str) -> Path:
        """The report file of ``stage``: ``<metrics>/<stage>.json``."""
        return Path(self.metrics) / f"{stage}.json"

    def plot(self, name: str) -> Path:
        """The picture ``<plots>/<name>.png``."""
        return Path(self.plots) / f"{name}.png"


@dataclass(frozen=True)
class SampleParams:
    """The ``sample`` stage: copy the shared sample photos into an identity-folder layout."""

    photos: str = "faces/deepface"  # relative to the assets root
    out: str = "data/raw/sample"


@dataclass(frozen=True)
class SourceParams:
    """Which raw source the lineage reads (see ``facekit.data.sources.open_source``)."""

    type: Literal["folder", "recordio"] = "folder"
    path: str = "data/raw/sample"
    name: str = "sample"
    layout: Literal["vggface2", "webface"] = "vggface2"
    channel_order: Literal["bgr", "rgb"] = "bgr"  # RecordIO only: MS1MV3 bgr, WebFace4M rgb

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"type": self.type, "path": self.path, "name": self.name}
        if self.type == "folder":
            spec["layout"] = self.layout
        else:
            spec["channel_order"] = self.channel_order
        return spec


@dataclass(frozen=True)
class DetectParams:
    """Face detection (ONNX Runtime) and which face to keep."""

    detector: Literal["scrfd", "retinaface"] = "scrfd"
    model: str = "models/scrfd_500m_bnkps.onnx"  # absolute, relative to cwd, or to the assets root
    input_size: int = 640
    score_threshold: float = 0.5
    nms_threshold: float = 0.4
    min_face_size: float = 20.0  # shorter side of the box, source pixels
    select: Literal["largest", "score"] = "largest"
    max_pixels: int = 50_000_000  # larger images are rejected before decoding
    assume_aligned: bool = False  # source is already aligned (MS1MV2/3, WebFace .rec): skip detection


@dataclass(frozen=True)
class AlignParams:
    """Similarity alignment of the 5 landmarks onto the ArcFace template."""

    size: int = 112
    face_fraction: float = 1.0  # 1.0 = ArcFace crop; e.g. 224 with 0.75 leaves margin for SSL methods
    jpeg_quality: int = 95


@dataclass(frozen=True)
class ShardingParams:
    """How work is split and how many processes run it."""

    num_shards: int = 4
    workers: int = 2


@dataclass(frozen=True)
class PackParams:
    """Final LMDB shards."""

    max_shard_bytes: int = 2_000_000_000
    dedupe: bool = True  # identical source files: keep the first key, reject the rest
    grid_size: int = 48  # faces in the sample grid


@dataclass(frozen=True)
class LandmarkParams:
    """``landmarks:`` in params.yaml."""

    model: str = "models/mediapipe_face_landmark_468.tflite"  # absolute, relative to cwd, or to the assets root
    min_presence: float = 0.5  # face-presence probability below this: mesh_failed
    max_disagreement: float = 0.25  # mesh vs detector five points, fraction of the inter-ocular distance
    on_failure: Literal["reject", "keep"] = "reject"  # keep: write the face without dense landmarks
    face_fraction: float = 0.8  # the ArcFace template's share of the mesh's 192 frame (margin for the mesh)


MASK_KINDS = ("surgical", "N95", "KN95", "cloth", "gas")


@dataclass(frozen=True)
class MaskParams:
    """``masks:`` in params.yaml."""

    masks_dir: str = "masks"  # folder with masks.cfg + PNGs: absolute, relative to cwd, or to the assets root
    fraction: float = 0.5  # share of images (or identities) that get a masked twin
    by: Literal["image", "identity"] = "image"  # identity: all images of a selected identity (unlabelled: per image)
    kinds: tuple[str, ...] = MASK_KINDS
    seed: int = 0
    yaw_threshold: float = 0.3  # |head_yaw| beyond this takes a side-view template (they are drawn for ~0.5-0.8)
    jpeg_quality: int = 95
    # verification pairs (relative to the assets root) for the masked-vs-holistic accuracy report; "" = off
    quality_pairs: str = "faces/deepface/pairs.csv"
    quality_model: str = "models/mobilefacenet_128d.onnx"

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", tuple(self.kinds))  # params.yaml gives a list
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"masks.fraction must be in [0, 1], got {self.fraction}")
        if self.by not in ("image", "identity"):
            raise ValueError(f"masks.by must be 'image' or 'identity', got {self.by!r}")
        if not self.kinds:
            raise ValueError("masks.kinds must name at least one mask kind")
        if self.seed < 0:
            raise ValueError(f"masks.seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class DownloadParams:
    """The ``download`` stage: LAION-Face metadata parquet → img2dataset-style tar shards."""

    parquet: str = "data/raw/laion_face/meta.parquet"
    out: str = "data/raw/laion_face/tars"
    shard_size: int = 10_000
    workers: int = 16
    timeout_s: float = 10.0
    retries: int = 2


@dataclass(frozen=True)
class PretrainParams:
    """``pretrain:`` in params.yaml: self-supervised runs on the packed shards (``facekit pretrain RUN``).

    ``train`` holds :class:`facekit.train.loop.TrainConfig` fields shared by every run; ``runs`` maps a run
    name to ``{"method": registry name (default: the run name), <method keyword arguments>, "train":
    {TrainConfig overrides}}``. Keys are checked against the method and TrainConfig when a run is built
    (:func:`facekit.train.pretrain.build_run`). ``nproc_per_node > 1`` runs ``facekit pretrain`` under
    torchrun (one process per GPU).
    """

    shards: str = "data/shards"
    out: str = "data/runs/pretrain"
    nproc_per_node: int = 1
    train: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_runs(self, "pretrain")


@dataclass(frozen=True)
class FinetuneParams:
    """``finetune:`` in params.yaml: face-recognition fine-tuning of pre-trained backbones (``facekit finetune RUN``).

    Run ``R`` starts from the pre-training export ``pretrained/R`` and trains
    :class:`facekit.methods.finetune.FineTune` with the keyword arguments ``method`` updated by the run's own
    keys (a run's ``backbone_kwargs`` replaces ``method``'s) and ``num_classes`` from the shards' identity
    table; its TrainConfig is ``train`` updated by the run's ``train``. Outputs: ``out/R``.
    """

    shards: str = "data/shards"
    pretrained: str = "data/runs/pretrain"
    out: str = "data/runs/finetune"
    nproc_per_node: int = 1
    method: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_runs(self, "finetune")
        if not isinstance(self.method, dict):
            raise ValueError(f"finetune.method must be a mapping of FineTune arguments, got {self.method!r}")


@dataclass(frozen=True)
class VerifyParams:
    """``verify:`` verification sets built from the packed shards and the models they score.

    ``pairs`` (a ``file_x,file_y,same`` CSV or LFW ``pairs.txt``; relative to the assets root when not found
    as given) names faces of the shards; ``facekit eval sets`` writes ``sets/<name>.bin`` (holistic) and
    ``sets/<name>_masked.bin`` (the second face of each pair replaced by its synthetic masked twin; pairs
    without a twin are dropped). ``facekit verify RUN`` scores ``finetune.out/RUN`` on every ``.bin`` there.
    ``holdout_identities``: identity names (the shards' identity table) kept out of fine-tuning; the sets
    then hold only pairs of two such identities, so models are scored on people they were not trained on.
    """

    pairs: str = "faces/deepface/pairs.csv"
    name: str = "sample"
    sets: str = "data/eval"
    flip: bool = True
    folds: int = 10
    reference: str = "models/mobilefacenet_128d.onnx"  # an external ONNX model scored for the leaderboard; "" = none
    holdout_identities: list[str] = field(default_factory=list)


def _check_runs(section: Any, name: str) -> None:
    """The shared checks of a section with ``train`` and ``runs`` mappings and ``nproc_per_node``."""
    if not isinstance(section.train, dict):
        raise ValueError(f"{name}.train must be a mapping of TrainConfig fields, got {section.train!r}")
    if not isinstance(section.runs, dict):
        raise ValueError(f"{name}.runs must map run names to settings, got {section.runs!r}")
    for run_name, run in section.runs.items():
        if not isinstance(run, dict) or not isinstance(run.get("train", {}), dict):
            raise ValueError(f"{name}.runs.{run_name} must be a mapping (with an optional 'train' mapping)")
    if section.nproc_per_node < 1:
        raise ValueError(f"{name}.nproc_per_node must be >= 1, got {section.nproc_per_node}")


@dataclass(frozen=True)
class Params:
    paths: PathsParams = field(default_factory=PathsParams)
    sample: SampleParams = field(default_factory=SampleParams)
    source: SourceParams = field(default_factory=SourceParams)
    detect: DetectParams = field(default_factory=DetectParams)
    align: AlignParams = field(default_factory=AlignParams)
    sharding: ShardingParams = field(default_factory=ShardingParams)
    landmarks: LandmarkParams = field(default_factory=LandmarkParams)
    masks: MaskParams = field(default_factory=MaskParams)
    pack: PackParams = field(default_factory=PackParams)
    download: DownloadParams = field(default_factory=DownloadParams)
    pretrain: PretrainParams = field(default_factory=PretrainParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    verify: VerifyParams = field(default_factory=VerifyParams)


def _check_keys(values: dict[str, Any], known: list[str], where: str) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        hints = [
            f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, 1)) else repr(k)
            for k in unknown
        ]
        raise ValueError(f"unknown parameter(s) in {where}: {', '.join(hints)}")


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read ``params.yaml``; missing sections and keys take the defaults above."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"parameter file not found: {path}")
    values = yaml.safe_load(path.read_text()) or {}
    sections = {f.name: f.default_factory for f in dataclasses.fields(Params)}
    _check_keys(values, list(sections), path.name)
    built = {}
    for name, cls in sections.items():
        section = values.get(name) or {}
        _check_keys(section, [f.name for f in dataclasses.fields(cls)], f"{path.name}: {name}")
        built[name] = cls(**section)
    return Params(**built)


def section_hash(*sections: Any) -> str:
    """sha256 (first 16 hex) of the given parameter sections, stable across runs and machines."""
    payload = json.dumps([dataclasses.asdict(s) for s in sections], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
