"""Typed parameter sections read from ``params.yaml`` (the file DVC tracks).

Each section is a frozen dataclass; unknown keys are an error with a suggestion, so a typo in
params.yaml never silently falls back to a default. The runs of ``pretrain`` and ``finetune`` are resolved
when the file is loaded: each becomes a :class:`RunConfig` (method name, method keyword arguments and a
checked :class:`TrainConfig`). ``section_hash`` gives the stable hash stored in every shard's metadata, so
a shard says which parameters made it.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from facekit.config.train import TrainConfig
from facekit.config.values import check_value


@dataclass(frozen=True)
class PathsParams:
    """``paths:`` in params.yaml: where the stages write; dvc.yaml reads the same values (``${paths.aligned}``).

    The report of stage ``S`` is ``<metrics>/S.json`` (its rejections ``<metrics>/S.rejections.jsonl``), that
    of training run ``R`` ``<metrics>/<pretrain|finetune>_R.json``, its scores ``<metrics>/verify/R.json``.
    """

    source_manifest: str = "data/source_manifest.jsonl"  # scan: one line per entry of the source
    aligned: str = "data/aligned"  # detect_align: per-shard LMDBs of aligned faces
    landmarks: str = "data/landmarks"  # landmarks: the same faces with dense landmarks
    masked: str = "data/masked"  # masks: the same faces, some with a masked twin; what pack reads
    shards: str = "data/shards"  # pack: the final shards and their index.json
    metrics: str = "metrics"  # stage reports (DVC metrics)
    plots: str = "plots"  # pictures of the faces, ROC curves (DVC plots)

    def report(self, stage: str) -> Path:
        """The report file of ``stage``: ``<metrics>/<stage>.json``."""
        return Path(self.metrics) / f"{stage}.json"

    def plot(self, name: str) -> Path:
        """The picture ``<plots>/<name>.png``."""
        return Path(self.plots) / f"{name}.png"

    def run_report(self, stage: str, run: str) -> Path:
        """The report of training run ``run`` of ``stage`` (pretrain, finetune): ``<metrics>/<stage>_<run>.json``;
        its loss curve is the ``.csv`` beside it."""
        return Path(self.metrics) / f"{stage}_{run}.json"

    def verify_report(self, run: str) -> Path:
        """The verification scores of ``run``: ``<metrics>/verify/<run>.json``."""
        return Path(self.metrics) / "verify" / f"{run}.json"

    def verify_plots(self, run: str) -> Path:
        """The folder of ``run``'s ROC curves: ``<plots>/verify/<run>``."""
        return Path(self.plots) / "verify" / run

    def table(self, name: str) -> Path:
        """The Markdown table ``<metrics>/<name>.md``."""
        return Path(self.metrics) / f"{name}.md"


@dataclass(frozen=True)
class SampleParams:
    """The ``sample`` stage: copy the shared sample photos into an identity-folder layout."""

    photos: str = "faces/deepface"  # relative to the assets root
    out: str = "data/raw/sample"


#: source.type -> its own keys of ``source:`` besides type, path and name (with their defaults)
SOURCE_TYPE_KEYS: dict[str, dict[str, Any]] = {
    "folder": {"layout": "vggface2", "bbox_csv": None, "landmarks_csv": None},
    "recordio": {"channel_order": "bgr"},
    "laion": {"max_member_bytes": 20_000_000},
    "hf": {"split": "train", "image_column": "image", "label_column": "label"},
}


@dataclass(frozen=True)
class SourceParams:
    """Which raw source the lineage reads (see ``facekit.data.sources.open_source``).

    Besides ``type``, ``path`` and ``name``, each type has its own keys (:data:`SOURCE_TYPE_KEYS`); a key of
    another type is an error. ``folder``: ``layout``, ``bbox_csv``, ``landmarks_csv`` (VGGFace2's loose CSVs);
    ``recordio``: ``channel_order`` (MS1MV3 bgr, WebFace4M rgb); ``laion``: ``max_member_bytes``; ``hf``:
    ``split``, ``image_column``, ``label_column`` ("" = no labels). ``path`` of ``laion`` is a folder of tars
    or a glob pattern.
    """

    type: Literal["folder", "recordio", "laion", "hf"] = "folder"
    path: str = "data/raw/sample"
    name: str = "sample"
    layout: Literal["vggface2", "webface"] | None = None
    bbox_csv: str | None = None
    landmarks_csv: str | None = None
    channel_order: Literal["bgr", "rgb"] | None = None
    max_member_bytes: int | None = None
    split: str | None = None
    image_column: str | None = None
    label_column: str | None = None

    def __post_init__(self) -> None:
        own = SOURCE_TYPE_KEYS[self.type]
        for key in (k for keys in SOURCE_TYPE_KEYS.values() for k in keys):
            if key not in own and getattr(self, key) is not None:
                types = [t for t, keys in SOURCE_TYPE_KEYS.items() if key in keys]
                raise ValueError(
                    f"source.{key} is a key of source type {types[0]}, not {self.type}; "
                    f"{self.type} takes {', '.join(own)}"
                )

    def spec(self) -> dict[str, Any]:
        """The ``open_source`` spec: type, path, name and the type's own keys (defaults where not given)."""
        spec: dict[str, Any] = {"type": self.type, "path": self.path, "name": self.name}
        for key, default in SOURCE_TYPE_KEYS[self.type].items():
            value = default if getattr(self, key) is None else getattr(self, key)
            if value is not None:  # the loose CSVs only when given
                spec[key] = value
        if spec.get("label_column") == "":
            spec["label_column"] = None  # an hf dataset without labels
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


#: How aligned crops and their masked twins are stored (``align.storage``): JPEG with 4:2:0 chroma (the
#: smallest and fastest to decode), JPEG with full-resolution chroma, or lossless PNG (the crop's exact pixels).
CropStorage = Literal["jpeg", "jpeg444", "png"]


@dataclass(frozen=True)
class AlignParams:
    """Similarity alignment of the 5 landmarks onto the ArcFace template."""

    size: int = 112
    face_fraction: float = 1.0  # 1.0 = ArcFace crop; e.g. 224 with 0.75 leaves margin for SSL methods
    jpeg_quality: int = 95
    # how crops and masked twins are stored: jpeg (4:2:0 chroma) | jpeg444 (full chroma) | png (lossless)
    storage: CropStorage = "jpeg"
    # reduced: align a large JPEG from its DCT-reduced decode while that still holds the crop's resolution;
    # full: always from the full-size decode (sharper by ~1 grey level, ~2x the decode time of a large photo)
    decode: Literal["reduced", "full"] = "reduced"


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
    # pairs for the masked-vs-holistic accuracy report: "auto" (from the faces' identities), a pair list
    # (relative to the assets root when not found as given), or "" = off
    quality_pairs: str = "auto"
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


#: TrainConfig fields a stage sets itself: the run's folder (``<section>.out/<run>``) and progress bars
SET_BY_STAGE = ("out_dir", "progress")


@dataclass(frozen=True)
class RunConfig:
    """One run of ``pretrain.runs`` or ``finetune.runs``, resolved when params.yaml is loaded.

    The stage builds ``METHODS.create(method, **method_kwargs)`` (the registry checks the keywords) and
    trains it with ``train``: the section's ``train`` updated by the run's own, writing to
    ``<section>.out/<name>``.
    """

    section: str
    name: str
    method: str
    method_kwargs: dict[str, Any]
    train: TrainConfig

    @property
    def where(self) -> str:
        """The run's params.yaml key, e.g. ``pretrain.runs.mae`` (error messages start with it)."""
        return f"{self.section}.runs.{self.name}"


class _RunsSection:
    """What ``pretrain`` and ``finetune`` share: ``runs`` resolved to :class:`RunConfig` s, looked up by name."""

    section: ClassVar[str]
    runs: dict[str, RunConfig]

    def run(self, name: str) -> RunConfig:
        """The run ``name``; an unknown name is a ValueError with a suggestion."""
        if name not in self.runs:
            raise ValueError(_unknown_run(self.section, name, self.runs))
        return self.runs[name]


@dataclass(frozen=True)
class PretrainParams(_RunsSection):
    """``pretrain:`` in params.yaml: self-supervised runs on the packed shards (``facekit pretrain RUN``).

    ``train`` holds :class:`TrainConfig` fields shared by every run; ``runs`` is given as params.yaml has it,
    a run name -> ``{"method": registry name (default: the run name), <method keyword arguments>, "train":
    {TrainConfig overrides}}``, and held resolved (:class:`RunConfig`; the TrainConfig keys and values are
    checked here, the method's keywords when it is built). ``nproc_per_node > 1`` runs ``facekit pretrain``
    under torchrun (one process per GPU).
    """

    section: ClassVar[str] = "pretrain"
    shards: str = "data/shards"
    out: str = "data/runs/pretrain"
    nproc_per_node: int = 1
    train: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, RunConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_section(self)
        runs = {name: _resolve_run(self, name, settings) for name, settings in self.runs.items()}
        object.__setattr__(self, "runs", runs)


#: FineTune keyword arguments the finetune stage sets itself (``num_classes``: the shards' identity table)
FINETUNE_SET_BY_STAGE = ("init_from", "num_classes", "method")


@dataclass(frozen=True)
class FinetuneParams(_RunsSection):
    """``finetune:`` in params.yaml: face-recognition fine-tuning of pre-trained backbones (``facekit finetune RUN``).

    Run ``R`` starts from the pre-training export ``pretrained/R`` and trains
    :class:`facekit.methods.finetune.FineTune` with the keyword arguments ``method`` updated by the run's own
    keys (a run's ``backbone_kwargs`` replaces ``method``'s), ``init_from`` = ``pretrained/R`` and (added by
    the stage) ``num_classes`` from the shards' identity table; its TrainConfig is ``train`` updated by the
    run's ``train``. ``runs`` is given as params.yaml has it and held resolved (:class:`RunConfig`).
    Outputs: ``out/R``.
    """

    section: ClassVar[str] = "finetune"
    shards: str = "data/shards"
    pretrained: str = "data/runs/pretrain"
    out: str = "data/runs/finetune"
    nproc_per_node: int = 1
    method: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, RunConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_section(self)
        if not isinstance(self.method, dict):
            raise ValueError(f"finetune.method must be a mapping of FineTune arguments, got {self.method!r}")
        _set_by_stage(self.method, FINETUNE_SET_BY_STAGE, "finetune.method")
        runs = {}
        for name, settings in self.runs.items():
            if isinstance(settings, dict):
                _set_by_stage(settings, FINETUNE_SET_BY_STAGE, f"finetune.runs.{name}")
                init_from = str(Path(self.pretrained) / name)
                settings = {**self.method, **settings, "method": "finetune", "init_from": init_from}
            runs[name] = _resolve_run(self, name, settings)
        object.__setattr__(self, "runs", runs)


@dataclass(frozen=True)
class VerifyParams:
    """``verify:`` verification sets built from the packed shards and the models they score.

    ``pairs``: ``"auto"`` (balanced pairs drawn from the shards' identities,
    :func:`facekit.eval.identity_pairs.identity_pairs`) or a pair list (a ``file_x,file_y,same`` CSV or LFW
    ``pairs.txt``; relative to the assets root when not found as given) naming faces of the shards;
    ``facekit eval sets`` writes ``sets/<name>.bin`` (holistic) and ``sets/<name>_masked.bin`` (the second
    face of each pair replaced by its synthetic masked twin; pairs without a twin are dropped).
    ``facekit verify RUN`` scores ``finetune.out/RUN`` on every ``.bin`` there.
    With held-out people (``split.holdout_identities``) the sets hold only pairs of two of them, so models
    are scored on people no training stage saw.
    """

    pairs: str = "auto"
    name: str = "sample"
    sets: str = "data/eval"
    flip: bool = True
    folds: int = 10
    reference: str = "models/mobilefacenet_128d.onnx"  # an external ONNX model scored for the leaderboard; "" = none


@dataclass(frozen=True)
class SplitParams:
    """``split:`` the one statement of who is held out: the people no training stage (pre-training,
    fine-tuning) sees, and the only people verification and the probes score.

    ``holdout_identities``: names of the shards' identity table, or a count N (the N names whose
    SHA-256 of ``"<seed>:<name>"`` is smallest, :func:`~facekit.eval.identity_pairs.choose_holdout`); the
    ``split`` stage (:mod:`facekit.stages.split`) writes the choice to ``file``, which every training stage reads.
    """

    holdout_identities: list[str] | int = 0
    seed: int = 0
    file: str = "data/split.json"


@dataclass(frozen=True)
class ProbeParams:
    """``probe:`` frozen-feature probes of backbones on the held-out people (:mod:`facekit.stages.probe`).

    ``random_init_seeds``: inits of each backbone's architecture probed as its baseline (mean ± std);
    ``seed``: the linear probe's half split and the different-person pairs; ``out``: one report per probed run.
    """

    random_init_seeds: int = 5
    seed: int = 0
    batch_size: int = 64
    out: str = "metrics/probe"

    def __post_init__(self) -> None:
        if self.random_init_seeds < 2:
            raise ValueError(f"probe.random_init_seeds must be >= 2 (a spread needs two), got {self.random_init_seeds}")
        if self.batch_size < 1:
            raise ValueError(f"probe.batch_size must be >= 1, got {self.batch_size}")


def _check_section(section: PretrainParams | FinetuneParams) -> None:
    """The checks of a section with ``train`` and ``runs`` mappings and ``nproc_per_node``."""
    name = section.section
    if not isinstance(section.train, dict):
        raise ValueError(f"{name}.train must be a mapping of TrainConfig fields, got {section.train!r}")
    if not isinstance(section.runs, dict):
        raise ValueError(f"{name}.runs must map run names to settings, got {section.runs!r}")
    if section.nproc_per_node < 1:
        raise ValueError(f"{name}.nproc_per_node must be >= 1, got {section.nproc_per_node}")
    _check_train_keys(section.train, f"{name}.train")


def _resolve_run(section: PretrainParams | FinetuneParams, name: str, settings: Any) -> RunConfig:
    """Run ``name`` of ``section`` from its params.yaml mapping."""
    where = f"{section.section}.runs.{name}"
    if not isinstance(settings, dict) or not isinstance(settings.get("train", {}), dict):
        raise ValueError(f"{where} must be a mapping (with an optional 'train' mapping)")
    kwargs = dict(settings)
    method = kwargs.pop("method", name)
    overrides = kwargs.pop("train", None) or {}
    _check_train_keys(overrides, f"{where}.train")
    merged = {**section.train, **overrides}
    required = [f.name for f in dataclasses.fields(TrainConfig) if f.default is dataclasses.MISSING]
    missing = [key for key in required if key not in merged and key not in SET_BY_STAGE]
    if missing:
        raise ValueError(f"{where}.train: {', '.join(missing)} missing (set in {section.section}.train or here)")
    try:
        train = TrainConfig(**merged, out_dir=Path(section.out) / name)
    except (TypeError, ValueError) as e:  # TypeError: a value of the wrong type (a string epochs ...)
        raise ValueError(f"{where}: {e}") from None
    return RunConfig(section.section, name, method, kwargs, train)


def _check_train_keys(values: dict[str, Any], where: str) -> None:
    _set_by_stage(values, SET_BY_STAGE, where)
    _check_keys(values, [f.name for f in dataclasses.fields(TrainConfig) if f.name not in SET_BY_STAGE], where)


def _set_by_stage(values: dict[str, Any], keys: Iterable[str], where: str) -> None:
    for key in keys:
        if key in values:
            raise ValueError(f"{where}.{key} is set by the stage; remove it")


def _unknown_run(section: str, name: str, runs: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(runs), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {section} run {name!r}{hint}; params.yaml defines: {', '.join(runs) or 'none'}"


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
    split: SplitParams = field(default_factory=SplitParams)
    probe: ProbeParams = field(default_factory=ProbeParams)


def _check_keys(values: Mapping[str, Any], known: list[str], where: str) -> None:
    """Unknown keys of ``values`` (the mapping at params.yaml key ``where``, "" = the top) are a ValueError
    naming each, e.g. ``pretrain.runs.mae.train.lrr: unknown key (did you mean 'lr'?)``."""
    problems = []
    for key in (k for k in values if k not in known):
        close = difflib.get_close_matches(str(key), known, 1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"{where}.{key}: unknown key{hint}" if where else f"{key}: unknown key{hint}")
    if problems:
        raise ValueError("; ".join(problems))


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's floats (what DVC reads): ``1e-3`` is a number, not the string PyYAML makes it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"train.lr=1e-3"`` -> ``("train.lr", 0.001)``: a dotted key and a YAML value."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"--set expects KEY=VALUE with a dotted KEY, got {text!r}")
    return key, yaml.load(value, Loader=_Loader)


def load_params(path: Path | str = "params.yaml", overrides: Mapping[str, Any] | None = None) -> Params:
    """Read ``params.yaml``; missing sections and keys take the defaults above.

    ``overrides`` maps dotted keys to values (``{"pretrain.runs.mae.train.lr": 1e-3}``, as ``facekit
    pretrain mae --set train.lr=1e-3`` gives), set before anything is checked; missing mappings below a run
    are created, a run that params.yaml does not define is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"parameter file not found: {path}")
    try:
        values = yaml.load(path.read_text(), Loader=_Loader) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{path}:{where}: not valid YAML: {problem}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(values).__name__}")
    for key, value in (overrides or {}).items():
        _set_key(values, key, value)
    sections = {f.name: f.default_factory for f in dataclasses.fields(Params)}
    _check_keys(values, list(sections), "")
    built = {}
    for name, cls in sections.items():
        section = values.get(name) or {}
        if not isinstance(section, dict):
            raise ValueError(f"{path}: {name} must be a mapping of keys, got {section!r}")
        _check_keys(section, [f.name for f in dataclasses.fields(cls)], name)
        hints = typing.get_type_hints(cls)
        for key, value in section.items():
            check_value(value, hints[key], f"{name}.{key}")
        built[name] = cls(**section)
    return Params(**built)


def _set_key(values: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``values[a][b]...[z] = value`` for ``dotted = "a.b...z"``, creating mappings on the way, but
    never a run (``<section>.runs.<name>`` must exist)."""
    *parents, last = dotted.split(".")
    node = values
    for depth, key in enumerate(parents):
        if key not in node or node[key] is None:
            if depth == 2 and parents[1] == "runs":
                raise ValueError(_unknown_run(parents[0], key, node))
            node[key] = {}
        if not isinstance(node[key], dict):
            raise ValueError(f"{'.'.join(parents[: depth + 1])} is not a mapping: cannot set {dotted}")
        node = node[key]
    node[last] = value


def section_hash(*sections: Any) -> str:
    """sha256 (first 16 hex) of the given parameter sections, stable across runs and machines."""
    payload = json.dumps([dataclasses.asdict(s) for s in sections], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
