"""A trained embedding backbone → a Hugging Face model folder (weights, config, card), pushed and loaded back.

The folder is what goes to the Hub, file for file::

    <folder>/model.safetensors   the run's backbone.safetensors, byte for byte
    <folder>/config.json         how to rebuild the network (registry, backbone name, keyword arguments) and
                                 what it expects and returns (input size, mean / std, embedding size)
    <folder>/README.md           model card: verification results (also as the Hub's ``model-index``), usage,
                                 the ``params.yaml`` sections and the DVC lineage (md5 of every input and output)

:func:`from_pretrained` rebuilds the network from a folder or a Hub repo and loads the weights strictly: it
embeds faces exactly as :func:`facekit.nn.backbones.load` does for the run folder (``config.json`` is the
run's backbone spec plus a few fields). The input is float32 ``[B, 3, S, S]`` RGB faces aligned on the
ArcFace template (``S = config["input_size"]``, 112), ``(pixels / 255 - mean) / std``; the output is
``[B, D]`` (``D = config["embedding_size"]``), compared by cosine similarity.

Card building reads ``dvc.lock`` with :mod:`facekit.hub.cards` (which needs the ``hf`` extra); loading a
model needs only torch, safetensors and huggingface_hub.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, snapshot_download
from torch import nn

from facekit import __version__
from facekit.hub.tokens import check_repo_id, hub_call, push_folder
from facekit.nn import backbones
from facekit.nn.landmark_vit import needs_landmarks

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
#: Everything an upload sends (and all that a model folder holds).
MODEL_FILES = (CARD_NAME, CONFIG_NAME, WEIGHTS_NAME)
DEFAULT_LICENSE = "other"
TAGS = ("facekit", "face-recognition", "face-verification", "image-feature-extraction")
PIPELINE_TAG = "image-feature-extraction"
#: DVC stages (``<stage>@<run>``) of a run that join the data stages in its lineage when dvc.lock records them.
RUN_STAGES = ("pretrain", "finetune", "verify")
#: ``write_metrics`` names a TAR ``tar_at_far_<far>`` (e.g. ``tar_at_far_1e-3``).
#: The usage lines of a model that takes each face's landmarks as a second input (LAFS, mesh landmarks).
LANDMARK_USAGE = (
    "# landmarks: float32 [B, 196, 2], each face's 196 mesh points (x, y) in crop pixels: the MediaPipe mesh\n"
    "# vertices facekit.data.ops.landmarks.MESH_196 of the face's dense landmarks\n"
)
TAR_KEY = re.compile(r"tar_at_far_(.+)")


def read_verification(paths: Sequence[Path]) -> dict[str, dict[str, float]]:
    """``{set: {metric: value}}`` of verification metrics files (``write_metrics``' format), in order.

    Every set needs a numeric ``accuracy``; a set named in two files, or anything else malformed, is a
    ValueError naming the file.
    """
    results: dict[str, dict[str, float]] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"metrics file not found: {path}")
        try:
            sets = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from None
        if not isinstance(sets, dict) or not sets:
            raise ValueError(f"{path}: expected a JSON object {{set: {{metric: value}}}}")
        for name, metrics in sets.items():
            if not isinstance(metrics, dict) or not all(_is_number(v) for v in metrics.values()):
                raise ValueError(f"{path}: set {name!r} is not a mapping of metric names to numbers")
            if "accuracy" not in metrics:
                raise ValueError(f"{path}: set {name!r} has no 'accuracy'; not a verification metrics file")
            for key in metrics:
                if (match := TAR_KEY.fullmatch(key)) and not _is_far(match.group(1)):
                    raise ValueError(f"{path}: set {name!r}: {key!r} names no FAR")
            if name in results:
                raise ValueError(f"{path}: set {name!r} also comes from an earlier metrics file")
            results[name] = {k: float(v) for k, v in metrics.items()}
    return results


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_far(text: str) -> bool:
    try:
        return 0 < float(text) <= 1
    except ValueError:
        return False


def _tar_columns(results: dict[str, dict[str, float]]) -> list[tuple[str, str]]:
    """(metric key, FAR text) of every TAR in ``results``, smallest FAR first."""
    found = {(key, m.group(1)) for metrics in results.values() for key in metrics if (m := TAR_KEY.fullmatch(key))}
    return sorted(found, key=lambda key_far: float(key_far[1]))


def verification_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per set, accuracy ± std over the folds and each TAR@FAR (– where not measured)."""
    from facekit.hub.cards import markdown_table

    tars = _tar_columns(results)
    rows = []
    for name, m in results.items():
        pairs = f"{m['pairs']:.0f}" if "pairs" in m else "–"
        accuracy = f"{m['accuracy']:.4f}" + (f" ± {m['accuracy_std']:.4f}" if "accuracy_std" in m else "")
        rows.append((name, pairs, accuracy, *(f"{m[k]:.4f}" if k in m else "–" for k, _ in tars)))
    return markdown_table(("set", "pairs", "accuracy", *(f"TAR@FAR={far}" for _, far in tars)), rows)


def _eval_results(results: dict[str, dict[str, float]]) -> list[EvalResult]:
    """The Hub's ``model-index`` entries: per set, the accuracy and each TAR@FAR."""
    out = []
    for name, metrics in results.items():
        values = [("accuracy", "Accuracy (10-fold)", metrics["accuracy"])]
        values += [(key, f"TAR@FAR={far}", metrics[key]) for key, far in _tar_columns({name: metrics})]
        out += [
            EvalResult(
                task_type=PIPELINE_TAG,
                task_name="Face verification",
                dataset_type=name,
                dataset_name=name,
                metric_type=metric_type,
                metric_name=metric_name,
                metric_value=value,
            )
            for metric_type, metric_name, value in values
        ]
    return out


def build_model_card(
    config: dict[str, Any],
    results: dict[str, dict[str, float]],
    *,
    lineage: dict[str, dict[str, Any]] | None,
    param_sections: dict[str, Any],
    metrics_paths: Sequence[Path] = (),
    license: str = DEFAULT_LICENSE,
    repo_id: str | None = None,
) -> ModelCard:
    """The card of a model folder whose ``config.json`` is ``config``; ``results`` as :func:`read_verification`."""
    from facekit.hub.cards import lineage_text

    model_name = repo_id.split("/")[-1] if repo_id else f"facekit-{config['run']}"
    data = ModelCardData(
        license=license,
        library_name="facekit",
        pipeline_tag=PIPELINE_TAG,
        tags=list(dict.fromkeys([*TAGS, config["backbone"], config["method"]])),
        model_name=model_name if results else None,  # the model-index's name; no index, no name
        eval_results=_eval_results(results) or None,
    )
    if results:
        files = ", ".join(f"`{Path(p).as_posix()}`" for p in metrics_paths)
        verification = (
            "Face verification with cosine scores: accuracy is the mean ± std over the folds (threshold chosen "
            f"on the other folds), TAR@FAR read from the ROC of all pairs. From {files}.\n\n"
            + verification_table(results)
        )
    else:
        verification = "No verification results were published with this model."
    call = "model(x, landmarks)" if config.get("landmark_input") else "model(x)"
    usage = (
        "```python\nimport torch\nfrom facekit.hub.models import from_pretrained\n\n"
        f'model = from_pretrained("{repo_id or "<owner>/<name>"}")  # eval mode, CPU\n'
        f"# faces: uint8 [B, {config['input_size']}, {config['input_size']}, 3] RGB crops aligned on the "
        "ArcFace 5-point template\n"
        f"mean, std = torch.tensor({list(config['mean'])}), torch.tensor({list(config['std'])})\n"
        "x = ((torch.as_tensor(faces).float() / 255 - mean) / std).permute(0, 3, 1, 2)\n"
        + (LANDMARK_USAGE if config.get("landmark_input") else "")
        + "with torch.no_grad():\n"
        f"    embeddings = torch.nn.functional.normalize({call}, dim=1)  # [B, {config['embedding_size']}]\n"
        "similarity = embeddings @ embeddings.T  # cosine similarity\n```"
    )
    params = (
        "```yaml\n" + yaml.safe_dump(param_sections, sort_keys=False).rstrip() + "\n```"
        if param_sections
        else "Not recorded."
    )
    parts = [
        f"# {model_name}",
        f"Face embedding network `{config['backbone']}` ({config['num_parameters']:,} parameters, "
        f"{config['embedding_size']}-d embeddings of {config['input_size']}×{config['input_size']} aligned "
        f"faces), trained by facekit {config['facekit_version']} with the `{config['method']}` method "
        f"(run `{config['run']}`).",
        "## Verification",
        verification,
        "## Usage",
        usage,
        "## Network",
        f"`{CONFIG_NAME}` (rebuilt with `{config['registry']}`):\n\n```json\n" + json.dumps(config, indent=2) + "\n```",
        "## Parameters",
        params,
        "## Lineage",
        lineage_text(lineage),
    ]
    if lineage and not any(stage.endswith(f"@{config['run']}") for stage in lineage):
        parts.append(f"The run `{config['run']}` itself is not in `dvc.lock`: it was trained outside DVC.")
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(parts) + "\n")


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace a folder that holds anything but an earlier model folder (a wrong ``--out``)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir}: output path exists and is not a folder")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in MODEL_FILES)
    if foreign:
        raise ValueError(f"{out_dir}: not an earlier model folder (holds {foreign[:5]}); choose an empty or new one")


def run_lineage(dvc_lock: Path, run_dir: Path, run: str) -> dict[str, dict[str, Any]]:
    """The data stages of ``dvc_lock`` and, when it records them, the run's own: the ``pretrain@<run>`` /
    ``finetune@<run>`` stage whose outputs hold ``run_dir``, the one of them whose outputs that stage read
    (a fine-tuning run's pre-training), and ``verify@<run>`` if it read ``run_dir``. A pre-training run
    thus leaves out the fine-tuning and verification of the same name, which come after it.
    """
    from facekit.hub.cards import LINEAGE_STAGES, read_lineage

    lineage = read_lineage(dvc_lock, LINEAGE_STAGES, tuple(f"{stage}@{run}" for stage in RUN_STAGES))
    run_path = Path(os.path.relpath(Path(run_dir).resolve(), Path(dvc_lock).resolve().parent)).as_posix()
    deps = {stage: {path for path, _ in entry["deps"]} for stage, entry in lineage.items()}
    outs = {stage: {path for path, _ in entry["outs"]} for stage, entry in lineage.items()}
    producers = {stage for stage in lineage if stage not in LINEAGE_STAGES and run_path in outs[stage]}
    read = set().union(*(deps[stage] for stage in producers))

    def belongs(stage: str) -> bool:
        if stage in LINEAGE_STAGES or stage in producers:
            return True
        if not producers:  # the run was trained outside DVC: no record of it ties to these weights
            return False
        return run_path in deps[stage] if stage.startswith("verify@") else bool(outs[stage] & read)

    return {stage: entry for stage, entry in lineage.items() if belongs(stage)}


def save_model_folder(
    run_dir: Path,
    out_dir: Path,
    metrics_paths: Sequence[Path] = (),
    dvc_lock: Path | None = None,
    params_path: Path | None = None,
    *,
    license: str = DEFAULT_LICENSE,
    repo_id: str | None = None,
) -> Path:
    """Write the model folder of a trained run (see the module docstring) to ``out_dir``; return it.

    ``out_dir`` is replaced as a whole and must be new or hold only an earlier model folder. The lineage is
    :func:`run_lineage` of ``dvc_lock`` (None: no lineage); ``params_path``'s sections are checked against it.
    """
    from facekit.hub.cards import read_param_sections

    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    spec = backbones.read(run_dir)
    weights = backbones.weights_file(run_dir)
    results = read_verification(metrics_paths)
    run = spec.run or Path(run_dir).resolve().name
    lineage = run_lineage(dvc_lock, run_dir, run) if dvc_lock is not None else None
    sections = read_param_sections(params_path, lineage) if params_path is not None else {}
    model = backbones.build(spec, weights)
    network = {k: v for k, v in spec.to_json().items() if k not in ("run", "method")}
    config = {
        "library_name": "facekit",
        "facekit_version": __version__,
        **network,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "landmark_input": needs_landmarks(model),
        "run": run,
        "method": spec.method or "unknown",
    }
    card = build_model_card(
        config,
        results,
        lineage=lineage,
        param_sections=sections,
        metrics_paths=metrics_paths,
        license=license,
        repo_id=repo_id,
    )
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copyfile(weights, tmp / WEIGHTS_NAME)
    (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    card.save(tmp / CARD_NAME)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def model_files(folder: Path) -> list[tuple[str, int]]:
    """(name, bytes) of every file an upload of ``folder`` sends; FileNotFoundError naming a missing one."""
    folder = Path(folder)
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: no {missing}; build it with save_model_folder first")
    return [(name, (folder / name).stat().st_size) for name in MODEL_FILES]


def from_pretrained(
    repo_id_or_path: str | Path,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
) -> nn.Module:
    """The embedding network of a model folder, or of a Hub model repo (downloaded with ``snapshot_download``
    into ``cache_dir``, at ``revision``), weights loaded strictly, in eval mode on the CPU.

    ``[B, 3, S, S]`` normalised faces (see ``config.json``) -> ``[B, D]``. A failed download raises a
    :class:`~facekit.hub.tokens.HubError` with the token redacted.
    """
    folder = Path(repo_id_or_path)
    if not folder.is_dir():
        repo_id = str(repo_id_or_path)
        try:
            check_repo_id(repo_id)
        except ValueError as e:
            raise ValueError(f"{repo_id}: no such model folder, and {e}") from None
        folder = Path(
            hub_call(
                f"download model {repo_id}",
                token,
                snapshot_download,
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
            )
        )
    config_path = folder / CONFIG_NAME
    if not config_path.is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{folder}: no {CONFIG_NAME} and {WEIGHTS_NAME}; not a facekit model folder")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path}: not valid JSON: {e}") from None
    return backbones.build(backbones.spec_from_json(config, config_path), folder / WEIGHTS_NAME).eval()


def push_model(
    folder: Path,
    repo_id: str,
    *,
    private: bool = True,
    api: HfApi | None = None,
    token: str | None = None,
) -> str:
    """Create the model repo ``repo_id`` if missing and upload the model folder's files in one commit.

    Sends exactly :func:`model_files`; the token is the caller's or huggingface_hub's lookup (``HF_TOKEN``,
    the stored login); failures raise a redacted :class:`~facekit.hub.tokens.HubError`. Returns the repo URL.
    """
    folder = Path(folder)
    model_files(folder)
    return push_folder(
        folder,
        repo_id,
        repo_type="model",
        private=private,
        allow_patterns=MODEL_FILES,
        commit_message="facekit: model weights, config and model card",
        api=api,
        token=token,
    )
