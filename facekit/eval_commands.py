"""The handlers of ``facekit eval`` and ``facekit export`` (their parsers are in :mod:`facekit.cli`): each
turns parsed arguments into calls of the evaluation library (:mod:`facekit.eval`) or, for the downstream tasks,
of their stages (:mod:`facekit.stages.downstream`), which take plain arguments and know nothing of the command
line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facekit.assets import resolve_model
from facekit.data.ops.detect import FaceDetector, create_detector
from facekit.eval.benchmarks import FaceSizeError, evaluate_bin, evaluate_pairs, write_metrics, write_reports, write_roc
from facekit.eval.embedding_model import load_embedding_model
from facekit.eval.export import OnnxParityError, export_run
from facekit.eval.ijb import evaluate_ijb
from facekit.eval.knn import representation_check
from facekit.eval.make_bin import AlignedFaces, build_bin, read_pairs

#: Default detector files (inside the assets folder) for ``--detector``.
DETECTOR_MODELS = {"scrfd": "models/scrfd_500m_bnkps.onnx", "retinaface": "models/retinaface_mbnet0.25.onnx"}


def _detector(args: argparse.Namespace) -> FaceDetector | None:
    if args.detector is None:
        return None
    return create_detector(args.detector, resolve_model(args.detector_model or DETECTOR_MODELS[args.detector]))


def _run_bin(args: argparse.Namespace) -> str:
    model = load_embedding_model(args.model, num_threads=args.threads)
    try:
        results = [
            evaluate_bin(p, model, flip=not args.no_flip, n_folds=args.folds, resize=args.resize) for p in args.bins
        ]
    except FaceSizeError as e:
        raise ValueError(f"{e}; pass --resize to resize the faces to the model's input") from None
    write_reports(results, args.metrics, args.plots, title=f"{Path(args.model).stem}: verification ROC")
    return "\n".join(r.summary() for r in results)


def _run_pairs(args: argparse.Namespace) -> str:
    model = load_embedding_model(args.model, num_threads=args.threads)
    result = evaluate_pairs(
        args.folder, args.pairs, model, detector=_detector(args), flip=not args.no_flip, n_folds=args.folds
    )
    title = f"{Path(args.model).stem} on {result.name}: verification ROC, AUC {result.verification.auc:.3f}"
    write_reports([result], args.metrics, args.plots, title=title)
    return result.summary()


def _run_make_bin(args: argparse.Namespace) -> str:
    if (args.folder is None) == (args.shards is None):
        raise ValueError("give exactly one face source: --folder or --shards")
    pairs = read_pairs(args.pairs)
    if args.shards is not None:
        faces = AlignedFaces.from_shards(args.shards)
    else:
        faces = AlignedFaces.from_folder(args.folder, pairs.names(), detector=_detector(args))
    return build_bin(pairs, faces, args.out, masked=args.masked, strict=not args.drop_missing).summary()


def _run_ijb(args: argparse.Namespace) -> str:
    model = load_embedding_model(args.model, num_threads=args.threads)
    result = evaluate_ijb(
        args.meta_dir,
        args.images_dir,
        model,
        target=args.target,
        flip=not args.no_flip,
        detector_score_weighting=not args.no_detector_score,
    )
    write_metrics({result.target: result.metrics()}, args.metrics)
    write_roc(
        {result.target: (result.fpr, result.tpr)},
        args.plots,
        title=f"{Path(args.model).stem} on {result.target.upper()}: 1:1 ROC, AUC {result.auc:.3f}",
    )
    return result.summary()


def eval_command(args: argparse.Namespace) -> str:
    """Run a parsed ``facekit eval <bin | pairs | make-bin | ijb>`` command."""
    commands = {"bin": _run_bin, "pairs": _run_pairs, "make-bin": _run_make_bin, "ijb": _run_ijb}
    return commands[args.eval_command](args)


def knn_command(args: argparse.Namespace) -> str:
    """``facekit eval knn RUN_DIR [--shards] [--k] [--metrics]``."""
    result = representation_check(args.run_dir, args.shards, k=args.k)
    if args.metrics is not None:
        write_metrics({Path(args.run_dir).name: result}, args.metrics)
    return (
        f"knn {args.run_dir}: {args.k}-NN identity accuracy {result['knn_accuracy']:.3f} learned, "
        f"{result['knn_accuracy_random_init']:.3f} random init, chance {result['chance']:.3f} "
        f"({result['n']:.0f} faces, {result['identities']:.0f} identities)"
    )


def export_command(args: argparse.Namespace) -> int | str:
    """Run a parsed ``facekit export onnx`` command; 1 on a failed parity check."""
    try:
        report = export_run(args.run_dir, args.out)
    except OnnxParityError as e:
        print(f"facekit: export failed the parity check: {e}", file=sys.stderr)
        return 1
    return report.summary()


def downstream_command(args: argparse.Namespace) -> str:
    """``facekit eval <task>`` (expression ... pose): one backbone, one task, one protocol."""
    from facekit.stages import downstream
    from facekit.train.downstream import ProtocolConfig

    config = ProtocolConfig(
        protocol=args.protocol,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        few_shot=args.few_shot,
        hidden=args.hidden,
        seed=args.seed,
    )
    task, backbone = args.eval_command, args.backbone
    evaluation = downstream.Evaluation(
        task, backbone, args.dataset, args.data, config, args.resplit, args.reference_model, args.mesh_model
    )
    out = args.out or downstream.default_out(task, backbone)
    return downstream.summary(downstream.run(evaluation, out, progress=not args.quiet), out)


def board_command(args: argparse.Namespace) -> str:
    """``facekit eval board``: the downstream results joined with the recognition leaderboard."""
    from facekit.stages import downstream_board

    return downstream_board.run(args.results, args.recognition, args.out)
