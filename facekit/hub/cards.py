"""The dataset card (``README.md`` of an export): what a reader needs to trust and reuse the data.

YAML header (parsed by the Hub): licence, tags, task categories, size category and the ``configs`` entry
naming the Parquet files. Body: the counts, the sources and their licences, the parameters that made the
data (the shards' ``params_hash`` and the ``params.yaml`` sections), and the lineage: the md5 of every
dependency and output of the DVC stages that made the shards, read from ``dvc.lock``.

The card is checked against its inputs rather than trusted: a lineage stage missing from ``dvc.lock``, or
a ``params.yaml`` section that differs from what ``dvc.lock`` recorded (the shards were made with other
parameters), is an error. The lineage readers and tables are shared with the model card
(:mod:`facekit.hub.models`).
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow.compute as pc
import yaml
from huggingface_hub import DatasetCard, DatasetCardData

from facekit import __version__
from facekit.data.ops.landmarks import DENSE_KEY
from facekit.data.shards import read_index
from facekit.hub.datasets import CARD_NAME, DATA_DIR, SPLIT, parquet_files

#: The DVC stages whose outputs lead to the packed shards, in order.
LINEAGE_STAGES = ("sample", "detect_align", "landmarks", "masks", "pack")
#: The params.yaml sections these stages read.
PARAM_SECTIONS = ("sample", "source", "detect", "align", "sharding", "landmarks", "masks", "pack")
TAGS = ("faces", "face-recognition", "aligned-faces", "facial-landmarks", "masked-faces", "facekit")
TASK_CATEGORIES = ("image-classification", "image-feature-extraction")
#: The Hub's size categories: (upper bound on rows, name).
SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
)


@dataclass(frozen=True)
class SourceInfo:
    """A raw source as the card names it: what it is and its licence (a Hub licence id)."""

    description: str
    license: str


#: Sources facekit knows, by the ``source`` name the records carry.
KNOWN_SOURCES = {
    "sample": SourceInfo(
        "deepface sample photos: web photos of public figures from serengil/deepface `tests/unit/dataset`",
        "mit",
    ),
}

FIELDS = (
    ("key", "string", "stable record key `<source>/<identity>/<photo>`"),
    ("image", "Image (JPEG bytes)", "aligned face crop, RGB"),
    ("masked_image", "Image (JPEG bytes) or null", "synthetic masked twin of `image` (same geometry)"),
    ("identity", "ClassLabel", "identity (-1 = unlabelled)"),
    ("landmarks", "float32 [5, 2]", "the five ArcFace points in crop pixels"),
    (DENSE_KEY, "float16 [468, 2] or null", "MediaPipe face-mesh points in crop pixels"),
    ("bbox", "float32 [4]", "x1, y1, x2, y2 of the detection in the source photo"),
    ("det_score", "float64", "detector confidence"),
    ("num_faces", "int32", "faces the detector found in the source photo"),
    ("mask", "string or null", "mask type drawn on `masked_image`"),
    ("source", "string", "raw source name"),
    ("source_sha256", "string", "sha256 of the source photo file"),
)


def size_category(rows: int) -> str:
    """The Hub's ``size_categories`` value for ``rows`` records."""
    return next((name for bound, name in SIZE_CATEGORIES if rows < bound), "n>1B")


def read_lineage(
    dvc_lock: Path, stages: tuple[str, ...] = LINEAGE_STAGES, optional: tuple[str, ...] = ()
) -> dict[str, dict[str, Any]]:
    """``{stage: {"cmd", "deps": [(path, md5)], "outs": [(path, md5)], "params": {section: values}}}``.

    ``stages`` must all be recorded; ``optional`` stages are added when recorded (e.g. ``pretrain@mae``).
    Raises FileNotFoundError / ValueError naming ``dvc_lock`` when it is missing, malformed, or lacks a stage.
    """
    dvc_lock = Path(dvc_lock)
    if not dvc_lock.is_file():
        raise FileNotFoundError(f"{dvc_lock}: no dvc.lock here; run `dvc repro` to record the lineage")
    try:
        recorded = (yaml.safe_load(dvc_lock.read_text()) or {}).get("stages")
    except (yaml.YAMLError, AttributeError) as e:
        raise ValueError(f"{dvc_lock}: not a dvc.lock file: {e}") from None
    if not isinstance(recorded, dict):
        raise ValueError(f"{dvc_lock}: not a dvc.lock file (no 'stages' mapping)")
    lineage = {}
    for stage in (*stages, *(s for s in optional if s in recorded)):
        entry = recorded.get(stage)
        if not isinstance(entry, dict):
            raise ValueError(f"{dvc_lock}: stage {stage!r} is not recorded; run `dvc repro {stage}` first")
        files = {}
        for kind in ("deps", "outs"):
            files[kind] = []
            for item in entry.get(kind) or []:
                if not isinstance(item, dict) or "md5" not in item:
                    raise ValueError(f"{dvc_lock}: stage {stage!r} has a {kind} entry without md5: {item!r}")
                files[kind].append((item["path"], item["md5"]))
        params = (entry.get("params") or {}).get("params.yaml") or {}
        lineage[stage] = {"cmd": entry.get("cmd", ""), **files, "params": params}
    return lineage


def read_param_sections(params_path: Path, lineage: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The data sections of ``params_path`` as written there, plus every parameter ``lineage``'s stages
    recorded (DVC's dotted names too, e.g. ``pretrain.runs.mae``), checked against that record.

    Raises ValueError when a section differs from what ``dvc.lock`` recorded for a stage.
    """
    params_path = Path(params_path)
    if not params_path.is_file():
        raise FileNotFoundError(f"parameter file not found: {params_path}")
    try:
        values = yaml.safe_load(params_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{params_path}: not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{params_path}: not a mapping of parameter sections")
    sections = {name: values[name] for name in PARAM_SECTIONS if name in values}
    for stage, entry in (lineage or {}).items():
        for name, recorded in entry["params"].items():
            current = _param_value(values, name)
            if current != recorded:
                raise ValueError(
                    f"{params_path}: section {name!r} differs from what dvc.lock recorded for stage {stage!r}; "
                    "its outputs were made with other parameters (run `dvc repro` first)"
                )
            sections.setdefault(name, current)
    return sections


def _param_value(values: dict[str, Any], name: str) -> Any:
    """``values[a][b]`` for DVC's parameter name ``a.b``; None when it is not there."""
    for part in name.split("."):
        if not isinstance(values, dict) or part not in values:
            return None
        values = values[part]
    return values


def _counts(dataset: datasets.Dataset) -> dict[str, int]:
    """Row counts read from the Arrow columns (no image or landmark is decoded)."""
    columns = dataset.with_format("arrow")
    labels = columns["identity"]
    return {
        "faces": dataset.num_rows,
        "identities": len(pc.unique(pc.filter(labels, pc.greater_equal(labels, 0)))),
        "unlabelled": pc.sum(pc.less(labels, 0)).as_py() or 0,
        "masked twins": dataset.num_rows - columns["masked_image"].null_count,
        "with dense landmarks": dataset.num_rows - columns[DENSE_KEY].null_count,
    }


def markdown_table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    """A Markdown table: one header row, then one row per tuple."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _card_license(sources: list[str], license: str | None) -> str:
    if license:
        return license
    licenses = {KNOWN_SOURCES[s].license if s in KNOWN_SOURCES else "other" for s in sources}
    return licenses.pop() if len(licenses) == 1 else "other"


def build_dataset_card(
    dataset: datasets.Dataset,
    index: dict[str, Any],
    *,
    lineage: dict[str, dict[str, Any]] | None,
    param_sections: dict[str, Any],
    license: str | None = None,
    repo_id: str | None = None,
) -> DatasetCard:
    """The card of an exported ``dataset`` made from the shard set described by ``index`` (``index.json``)."""
    counts = _counts(dataset)
    sources = sorted(dataset.unique("source"))
    data = DatasetCardData(
        license=_card_license(sources, license),
        tags=list(TAGS),
        task_categories=list(TASK_CATEGORIES),
        size_categories=[size_category(counts["faces"])],
        pretty_name=f"facekit faces ({', '.join(sources)})",
        configs=[{"config_name": "default", "data_files": [{"split": SPLIT, "path": f"{DATA_DIR}/{SPLIT}-*"}]}],
    )
    source_rows = [
        (s, *(astuple(KNOWN_SOURCES[s]) if s in KNOWN_SOURCES else ("not described", "unknown"))) for s in sources
    ]
    names = dataset.features["identity"].names
    parts = [
        f"# {data.pretty_name}",
        "Aligned face crops with 5-point and dense landmarks and synthetic masked twins, made by "
        f"facekit {__version__} from packed LMDB shards (schema version "
        f"{index['schema_version']}). Images are the JPEG bytes of the shards, embedded in Parquet.",
        "## Counts",
        markdown_table(("what", "count"), [*counts.items(), ("identity names", len(names))]),
        "## Sources",
        markdown_table(("source", "what", "licence"), source_rows),
        "## Fields",
        markdown_table(("column", "type", "meaning"), list(FIELDS)),
        "## Parameters",
        f"Shards `params_hash` **{index['params_hash']}**, shard-set `content_hash` `{index['content_hash']}`. "
        "The `params.yaml` sections of the stages that made them:",
        "```yaml\n" + yaml.safe_dump(param_sections, sort_keys=False).rstrip() + "\n```",
        "## Lineage",
        lineage_text(lineage),
        "## Usage",
        "```python\nfrom datasets import load_dataset\n\n"
        f'ds = load_dataset("{repo_id or "<repo_id>"}", split="{SPLIT}")\n'
        'ds[0]["image"]  # PIL image; ds.features["identity"].names maps labels to identities\n```',
    ]
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(parts) + "\n")


def lineage_text(lineage: dict[str, dict[str, Any]] | None) -> str:
    """Markdown: each stage's command and a table of the md5 of every dependency and output."""
    if not lineage:
        return "Not recorded: built without DVC."
    rows = [
        (stage, kind[:-1], f"`{path}`", f"`{md5}`")
        for stage, entry in lineage.items()
        for kind in ("deps", "outs")
        for path, md5 in entry[kind]
    ]
    commands = ", ".join(f"`{stage}`: `{entry['cmd']}`" for stage, entry in lineage.items())
    return f"DVC stages (from `dvc.lock`) {commands}. md5 of every dependency and output:\n\n" + markdown_table(
        ("stage", "kind", "path", "md5"), rows
    )


def write_dataset_card(
    export_dir: Path,
    dataset: datasets.Dataset,
    shards_dir: Path,
    *,
    dvc_lock: Path | None = None,
    params_path: Path | None = None,
    license: str | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write ``export_dir/README.md`` for ``dataset`` exported from ``shards_dir``; return its path.

    ``dvc_lock`` None: no lineage (shards built without DVC). ``params_path`` None: only the params hash.
    """
    export_dir = Path(export_dir)
    parquet_files(export_dir)
    lineage = read_lineage(dvc_lock) if dvc_lock is not None else None
    sections = read_param_sections(params_path, lineage) if params_path is not None else {}
    card = build_dataset_card(
        dataset, read_index(shards_dir), lineage=lineage, param_sections=sections, license=license, repo_id=repo_id
    )
    path = export_dir / CARD_NAME
    card.save(path)
    return path
