"""The ``probe@RUN`` and ``probe_controls`` stages: frozen-feature probes on the held-out people.

Every face of ``finetune.shards`` whose identity ``split.file`` holds out (people no training stage saw) is
embedded and scored by :func:`facekit.eval.probes.probe` (leave-one-out kNN, linear probe, pair verification;
seed ``probe.seed``):

- ``facekit probe RUN`` (a run of ``pretrain.runs``) → ``<probe.out>/RUN.json``: the exported backbone
  (``learned``; none for a ``random_init`` run), each kept checkpoint of its pre-training
  (``checkpoints``: ``{step: metrics}``, the learning curve over pre-training length; the last is the exported
  backbone), and the same
  architecture at ``probe.random_init_seeds`` random inits (``random_init``: mean / std / min / max, and each
  seed's ``runs``). Each backbone is embedded as :func:`facekit.eval.knn.embed_faces` does (its natural
  feature, its spec's normalisation).
- ``facekit probe controls`` → ``<probe.out>/controls.json``: raw pixels (32 × 32 RGB, a floor), the
  ``verify.reference`` ONNX model (a trained recognition model, the ceiling) and every fine-tuned backbone of
  ``finetune.runs`` (``finetuned/<run>``; ``finetuned/scratch`` is the positive control: supervised training
  on the training people, probed the same way).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from safetensors.torch import load_model
from torch import nn
from tqdm import tqdm

from facekit.assets import resolve_model
from facekit.config import Params, PathsParams
from facekit.eval.embedder import OnnxEmbedder
from facekit.eval.knn import ShardFaces, embed_faces, load_faces
from facekit.eval.probes import probe, spread
from facekit.nn import backbones
from facekit.nn.backbones import RANDOM_INIT
from facekit.nn.landmark_vit import needs_landmarks
from facekit.stages import split
from facekit.stages.pretrain import build_method
from facekit.train.checkpoint import MODEL_FILE

CONTROLS = "controls"
PIXELS_SIZE = 32  # raw-pixel features: the face resized to 32 x 32 RGB (3,072 values)
_STEP_FOLDER = re.compile(r"step-(\d+)$")


def held_out_faces(params: Params, *, mesh: bool) -> ShardFaces:
    """The faces of ``finetune.shards`` whose identity is held out (``split.file``); ``mesh``: with LAFS's
    196 mesh landmarks."""
    shards = Path(params.finetune.shards)
    held = split.held_out(params)
    if not held:
        raise ValueError("split.holdout_identities holds out nobody: the probes score held-out people only")
    faces = load_faces(shards, mesh=mesh)
    table = split.identity_table(shards)
    keep = np.isin(faces.labels, [table.index(n) for n in held])
    rows = torch.from_numpy(np.flatnonzero(keep))
    return ShardFaces(faces.images[rows], faces.labels[keep], None if faces.mesh is None else faces.mesh[rows])


def checkpoint_steps(run_dir: Path) -> dict[int, Path]:
    """``{step: checkpoint folder}`` of the kept checkpoints ``run_dir/checkpoints/step-NNNNNNN``."""
    folders = (run_dir / "checkpoints").glob("step-*")
    return {int(m.group(1)): f for f in folders if (m := _STEP_FOLDER.search(f.name))}


def checkpoint_backbone(params: Params, name: str, folder: Path) -> nn.Module:
    """The backbone that pre-training run ``name`` would export from the checkpoint ``folder``."""
    method, _ = build_method(params.pretrain.run(name))
    load_model(method, folder / MODEL_FILE, strict=False)
    return method.export_backbone()


def probe_run(params: Params, paths: PathsParams, name: str, *, progress: bool = True) -> str:
    """The stage ``probe@name``: write ``<probe.out>/<name>.json`` (see the module docstring)."""
    run = params.pretrain.run(name)
    run_dir = Path(params.pretrain.out) / name
    if not (run_dir / backbones.SPEC_FILE).is_file():
        raise FileNotFoundError(f"{run_dir}: no exported backbone; run `facekit pretrain {name}` first")
    spec = backbones.read(run_dir)
    trained = backbones.load(run_dir)
    faces = held_out_faces(params, mesh=needs_landmarks(trained))
    seed, norm = params.probe.seed, (spec.mean, spec.std)

    def scores(backbone: nn.Module) -> dict[str, float]:
        return probe(embed_faces(backbone, faces, norm, batch_size=params.probe.batch_size), faces.labels, seed)

    report: dict[str, Any] = {"run": name, "method": run.method, "backbone": spec.name, "faces": len(faces.labels)}
    report["identities"] = len(np.unique(faces.labels))
    inits = []
    seeds = range(params.probe.random_init_seeds)
    for init_seed in tqdm(seeds, desc=f"probe {name} random init", disable=not progress):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            inits.append(scores(backbones.build(spec)))
    report["random_init"] = {**spread(inits), "runs": inits}
    if run.method != RANDOM_INIT:
        report["learned"] = scores(trained)
        steps = checkpoint_steps(run_dir)
        last = max(steps, default=None)  # the run's last checkpoint is the exported backbone: scored once
        report["checkpoints"] = {
            str(step): report["learned"] if step == last else scores(checkpoint_backbone(params, name, steps[step]))
            for step in tqdm(sorted(steps), desc=f"probe {name} checkpoints", disable=not progress)
        }
    out = Path(params.probe.out) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    learned = report.get("learned", {}).get("knn_top1")
    shown = f"kNN {learned:.3f} learned, " if learned is not None else ""
    rand = report["random_init"]["knn_top1"]
    baseline = f"{rand['mean']:.3f} ± {rand['std']:.3f} random init"
    return f"probe {name}: {shown}{baseline} ({len(faces.labels)} faces) -> {out}"


def pixel_features(faces: ShardFaces) -> np.ndarray:
    """Raw pixels: each face ``[3, H, W]`` resized (area) to 32 × 32, flattened → float64 ``[N, 3072]``."""
    images = faces.images.permute(0, 2, 3, 1).numpy()
    small = [cv2.resize(im, (PIXELS_SIZE, PIXELS_SIZE), interpolation=cv2.INTER_AREA) for im in images]
    return np.stack(small).reshape(len(images), -1).astype(np.float64) / 255.0


def probe_controls(params: Params, paths: PathsParams, *, progress: bool = True) -> str:
    """The stage ``probe_controls``: write ``<probe.out>/controls.json`` (see the module docstring)."""
    faces = held_out_faces(params, mesh=True)
    seed = params.probe.seed
    report: dict[str, Any] = {"pixels": probe(pixel_features(faces), faces.labels, seed)}
    if params.verify.reference:
        reference = OnnxEmbedder(resolve_model(params.verify.reference))
        report["reference"] = probe(reference.embed(faces.images.permute(0, 2, 3, 1).numpy()), faces.labels, seed)
    for name in tqdm(params.finetune.runs, desc="probe fine-tuned", disable=not progress):
        run_dir = Path(params.finetune.out) / name
        if not (run_dir / backbones.SPEC_FILE).is_file():
            raise FileNotFoundError(f"{run_dir}: no fine-tuned backbone; run `facekit finetune {name}` first")
        spec = backbones.read(run_dir)
        norm, batch = (spec.mean, spec.std), params.probe.batch_size
        embedded = embed_faces(backbones.load(run_dir), faces, norm, batch_size=batch)
        report[f"finetuned/{name}"] = probe(embedded, faces.labels, seed)
    out = Path(params.probe.out) / f"{CONTROLS}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    knn = ", ".join(f"{k} {v['knn_top1']:.3f}" for k, v in report.items())
    return f"probe controls: kNN {knn} -> {out}"
