"""The downstream stage (``facekit eval <task>``): one backbone scored on one task by one protocol.

It gathers the task's faces (a dataset in its published layout through :data:`facekit.data.downstream.READERS`,
or the labels the lineage derives from its shards, :mod:`facekit.data.downstream.derived`), builds the backbone
(a run folder's exported backbone, the same backbone at its random init, or the ONNX reference model, which only
a linear probe can use), runs the protocol (:mod:`facekit.train.downstream`) and scores the test predictions
with the task's standard metric (:mod:`facekit.eval.downstream_metrics`), for the trained head, the untrained
head and the prior (the train split's majority class / mean target, no image seen). The result is one JSON file.

Backbones: ``RUN_DIR`` (``backbone.json`` + weights; a ``random_init`` export counts as a random init),
``random:RUN_DIR`` (its spec built after ``manual_seed(run seed)``, as pre-training starts) or ``reference``
(``--reference-model``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facekit.assets import resolve_model
from facekit.data.downstream import READERS
from facekit.data.downstream.crops import crop_items, resize_set
from facekit.data.downstream.derived import DERIVED_TASKS, derive
from facekit.data.ops.landmarks import MESH_196
from facekit.eval import downstream_metrics as metrics
from facekit.eval.embedder import OnnxEmbedder
from facekit.eval.knn import random_init_backbone, run_spec
from facekit.nn import backbones
from facekit.nn.backbones import DEFAULT_NORMALIZATION, Stats
from facekit.nn.downstream_heads import BackboneFeatures
from facekit.nn.landmark_vit import needs_landmarks
from facekit.train.downstream import FrozenFeatures, ProtocolConfig, TaskData, run_protocol

DERIVED = "derived"
REFERENCE = "reference"
RANDOM_PREFIX = "random:"
#: The NME normalisation of each alignment dataset (its benchmark's), keyed by reader name.
NME_NORMALISATION = {
    DERIVED: "inter_ocular",
    "300w": "inter_ocular",
    "300vw": "inter_ocular",
    "wflw": "inter_ocular",
    "lapa_landmarks": "inter_ocular",
    "cofw": "inter_pupil",
    "aflw19": "diagonal",
}
#: task -> (the metric the leaderboard shows, whether higher is better).
PRIMARY = {
    "expression": ("top1", True),
    "attributes": ("mean_accuracy", True),
    "alignment": ("nme", False),
    "parsing": ("mean_f1", True),
    "pose": ("mae", False),
}


@dataclass(frozen=True)
class Evaluation:
    """What ``facekit eval <task>`` was asked: task, backbone (see the module docstring), dataset (``derived``
    or a reader name), data (the shards for ``derived``, else the dataset root), the protocol's settings;
    resplit: 0, or a fraction of the items held out as the test split instead of the dataset's own splits
    (seeded by the protocol's seed; for a handful of real items that all sit in one split)."""

    task: str
    backbone: str
    dataset: str
    data: Path
    config: ProtocolConfig
    resplit: float = 0.0
    reference_model: str = "models/mobilefacenet_128d.onnx"
    mesh_model: str = "models/mediapipe_face_landmark_468.tflite"

    def check(self) -> None:
        """Every setting checked before work starts (ValueError / FileNotFoundError naming it)."""
        if self.task not in PRIMARY:
            raise ValueError(f"unknown task {self.task!r}; tasks: {', '.join(PRIMARY)}")
        if self.dataset != DERIVED:
            reader = READERS.get(self.dataset)
            if reader is None:
                raise ValueError(f"unknown dataset {self.dataset!r}; datasets: {DERIVED}, {', '.join(READERS)}")
            if reader.task != self.task:
                raise ValueError(f"dataset {self.dataset!r} is a {reader.task} dataset, not {self.task}")
        elif self.task not in DERIVED_TASKS:
            raise ValueError(f"no derived labels for {self.task}")
        if not 0.0 <= self.resplit < 1.0:
            raise ValueError(f"resplit must be a fraction in [0, 1), got {self.resplit}")
        if not self.data.exists():
            raise FileNotFoundError(f"{self.data} not found (--data: the shards, or the dataset root)")
        if self.backbone == REFERENCE:
            if self.config.protocol != "linear":
                raise ValueError("the reference model is an ONNX embedding: only --protocol linear can use it")
            resolve_model(self.reference_model)
        elif self.backbone.startswith(RANDOM_PREFIX):
            run_spec(self.backbone.removeprefix(RANDOM_PREFIX))  # the spec and the seed its run started from
        else:
            backbones.read(self.backbone)
            backbones.weights_file(self.backbone)


def load_encoder(evaluation: Evaluation) -> tuple[BackboneFeatures | FrozenFeatures, tuple[Stats, Stats], int, dict]:
    """(encoder, input normalisation, input size, description) of the evaluation's backbone."""
    if evaluation.backbone == REFERENCE:
        embedder = OnnxEmbedder(resolve_model(evaluation.reference_model))
        size = embedder.input_hw[0]
        dim = embedder.embed(np.zeros((1, size, size, 3), np.uint8)).shape[1]
        described = {"name": REFERENCE, "model": Path(evaluation.reference_model).name, "init": "trained"}
        return FrozenFeatures(embedder.embed, dim), DEFAULT_NORMALIZATION, size, described
    run_dir = Path(evaluation.backbone.removeprefix(RANDOM_PREFIX))
    spec = backbones.read(run_dir)
    random = evaluation.backbone.startswith(RANDOM_PREFIX)
    module = random_init_backbone(run_dir) if random else backbones.load(run_dir)
    described = {
        "name": run_dir.name,
        "run_dir": str(run_dir),
        "method": spec.method,
        "architecture": spec.name,
        "init": "random" if random or spec.method == backbones.RANDOM_INIT else "trained",
    }
    return BackboneFeatures(module), (spec.mean, spec.std), spec.input_size, described


def load_task_data(evaluation: Evaluation, size: int, with_mesh: bool, progress: bool) -> tuple[TaskData, list[str]]:
    """The task's faces at ``size`` px and the names of its classes / attributes / points / angles."""
    task = evaluation.task
    if evaluation.dataset == DERIVED:
        mesh_model = resolve_model(evaluation.mesh_model) if task == "pose" else None
        derived = derive(evaluation.data, task, mesh_model=mesh_model, progress=progress)  # type: ignore[arg-type]
        images, targets = resize_set(derived.images, derived.targets, task, size)
        landmarks = derived.meshes[:, MESH_196] * (size / derived.images.shape[1]) if with_mesh else None
        data = TaskData(task, images, targets, derived.split, derived.num_classes, landmarks)
        return data, list(derived.class_names)
    if with_mesh:
        raise ValueError("a LAFS backbone of the mesh source needs each face's mesh: use --dataset derived")
    reader = READERS[evaluation.dataset]
    scan = reader.scan(evaluation.data)
    if not scan.items:
        raise ValueError(f"{evaluation.data}: no {evaluation.dataset} items ({len(scan.rejected)} rejected)")
    images, targets, split = crop_items(scan.items, size)
    names = list(reader.classes) or [str(i) for i in range(reader.landmarks or 0)]
    num_outputs = reader.landmarks if task == "alignment" else len(reader.classes)
    return TaskData(task, images, targets, split, int(num_outputs or 0)), names


def held_out_split(n: int, fraction: float, seed: int) -> np.ndarray:
    """``[n]`` splits: a seeded ``fraction`` of the items (at least one) "test", the rest "train"."""
    split = np.full(n, "train", dtype=object)
    split[np.random.default_rng(seed).permutation(n)[: max(1, round(fraction * n))]] = "test"
    return split.astype(str)


def prior_predictions(data: TaskData, train_index: np.ndarray, n_test: int) -> np.ndarray:
    """Predictions that see no image: the train items' majority class (per pixel for parsing, per attribute)
    or mean target (alignment, pose), repeated for the ``n_test`` test items."""
    train = data.targets[train_index]
    if data.task in ("expression", "parsing"):
        counts = np.stack([(train == c).sum(0) for c in range(data.num_outputs)])
        prior = counts.argmax(0).astype(train.dtype)
    elif data.task == "attributes":
        prior = (train.mean(0) > 0.5).astype(np.int8)
    else:
        prior = train.mean(0).astype(np.float32)
    return np.broadcast_to(prior, (n_test, *prior.shape)).copy()


def score(task: str, dataset: str, pred: np.ndarray, gt: np.ndarray, num_outputs: int) -> dict[str, float]:
    """The task's standard metrics of test predictions (``PRIMARY[task][0]`` among them)."""
    if task == "expression":
        return metrics.classification_scores(pred, gt, num_outputs)
    if task == "attributes":
        return {"mean_accuracy": metrics.attribute_accuracy(pred, gt)[1]}
    if task == "alignment":
        norm = NME_NORMALISATION.get(dataset, "inter_ocular")
        nmes = metrics.nme(pred, gt, norm, gt.shape[1])
        out = {"nme": float(nmes.mean()), "normalisation": norm}
        for threshold in (0.08, 0.10):
            out[f"fr_{threshold:.2f}"] = metrics.failure_rate(nmes, threshold)
            out[f"auc_{threshold:.2f}"] = metrics.ced_auc(nmes, threshold)
        return out
    if task == "parsing":
        per_class, mean = metrics.parsing_f1(pred, gt, num_outputs)
        return {"mean_f1": mean, **{f"f1_{c}": float(v) for c, v in enumerate(per_class)}}
    mae = metrics.pose_mae(pred, gt)
    return {"mae": mae["mean"], **{k: mae[k] for k in ("yaw", "pitch", "roll", "kept")}}


def run(evaluation: Evaluation, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """Score the evaluation (module docstring), write the JSON to ``out`` and return it."""
    evaluation.check()
    encoder, normalization, size, described = load_encoder(evaluation)
    with_mesh = isinstance(encoder, BackboneFeatures) and needs_landmarks(encoder.backbone)
    data, names = load_task_data(evaluation, size, with_mesh, progress)
    if evaluation.resplit:
        data = replace(data, split=held_out_split(len(data.split), evaluation.resplit, evaluation.config.seed))
    result = run_protocol(data, encoder, normalization, evaluation.config, progress=progress)
    gt = data.targets[result.test_index]
    prior = prior_predictions(data, result.train_index, len(gt))
    primary, higher = PRIMARY[evaluation.task]
    report: dict[str, Any] = {
        "task": evaluation.task,
        "dataset": evaluation.dataset,
        "backbone": described,
        "protocol": asdict(evaluation.config),
        "resplit": evaluation.resplit,
        "primary": primary,
        "higher_is_better": higher,
        "n_train": len(result.train_index),
        "n_test": len(gt),
        "image_size": size,
        "classes": names,
        "trained": score(evaluation.task, evaluation.dataset, result.predictions, gt, data.num_outputs),
        "untrained": score(evaluation.task, evaluation.dataset, result.untrained, gt, data.num_outputs),
        "prior": score(evaluation.task, evaluation.dataset, prior, gt, data.num_outputs),
        "train_loss": {"first_epoch": result.losses[0], "last_epoch": result.losses[-1]},
        "torch_threads": torch.get_num_threads(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    return report


def default_out(task: str, backbone: str) -> Path:
    """``metrics/downstream/<task>_<name>.json``: name = the run folder's name (``random_<name>`` at random init)."""
    name = Path(backbone.removeprefix(RANDOM_PREFIX)).name
    return Path("metrics/downstream") / f"{task}_{'random_' if backbone.startswith(RANDOM_PREFIX) else ''}{name}.json"


def summary(report: dict[str, Any], out: Path) -> str:
    """The one-line summary of a report."""
    key = report["primary"]
    trained, untrained, prior = (report[k][key] for k in ("trained", "untrained", "prior"))
    backbone = report["backbone"]
    who = f"{backbone['name']} ({backbone['init']})"
    return (
        f"{report['task']} on {report['dataset']}, {who}, {report['protocol']['protocol']}: {key} {trained:.4f} "
        f"(untrained head {untrained:.4f}, prior {prior:.4f}; {report['n_train']} train / {report['n_test']} test) "
        f"-> {out}"
    )
