"""The downstream-task commands (registered under ``facekit eval`` by :mod:`facekit.cli`): ``facekit eval
expression | attributes | alignment | parsing | pose`` and ``facekit eval board``."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_eval_downstream(args: argparse.Namespace) -> str:
    from facekit.eval_commands import downstream_command

    return downstream_command(args)


def _cmd_eval_board(args: argparse.Namespace) -> str:
    from facekit.eval_commands import board_command

    return board_command(args)


def register_cli(esub: argparse._SubParsersAction) -> None:
    """``facekit eval <task>`` for every downstream task, and ``facekit eval board``."""
    from facekit.train.downstream import DEFAULT_LR, PROTOCOLS, ProtocolConfig

    defaults = ProtocolConfig()
    helps = {
        "expression": "expression classes: top-1 and mean per-class accuracy",
        "attributes": "binary face attributes: mean accuracy",
        "alignment": "landmark alignment: NME, failure rate and AUC at 8%% / 10%%",
        "parsing": "face parsing: per-class F1 and mean F1 without background",
        "pose": "head pose: yaw / pitch / roll MAE in degrees",
    }
    for task, text in helps.items():
        p = esub.add_parser(task, help=f"{text}, of a backbone by linear probe or fine-tuning")
        p.add_argument(
            "--backbone",
            required=True,
            help="a run folder (backbone.json + weights), random:RUN_DIR (its backbone at random init) or reference",
        )
        p.add_argument("--dataset", default="derived", help="'derived' (labels from the shards) or a dataset reader")
        p.add_argument("--data", type=Path, default=Path("data/shards"), help="the shards, or the dataset's root")
        p.add_argument("--protocol", choices=PROTOCOLS, default=defaults.protocol, help="frozen backbone or not")
        p.add_argument("--few-shot", type=float, default=defaults.few_shot, help="seeded fraction of the train split")
        p.add_argument(
            "--resplit", type=float, default=0.0, help="hold out this seeded fraction as test, not the dataset's splits"
        )
        p.add_argument("--epochs", type=int, default=defaults.epochs, help=f"default {defaults.epochs}")
        p.add_argument("--batch-size", type=int, default=defaults.batch_size, help=f"default {defaults.batch_size}")
        p.add_argument("--lr", type=float, default=None, help=f"head learning rate (default {DEFAULT_LR[task]:g})")
        p.add_argument("--hidden", type=int, default=0, help="MLP width of the expression head (0: linear)")
        p.add_argument("--seed", type=int, default=defaults.seed, help="head init, few-shot subset, batch order")
        p.add_argument("--reference-model", default="models/mobilefacenet_128d.onnx", help="ONNX of 'reference'")
        p.add_argument(
            "--mesh-model", default="models/mediapipe_face_landmark_468.tflite", help="face mesh (derived pose)"
        )
        p.add_argument("--out", type=Path, default=None, help="result JSON (default metrics/downstream/TASK_NAME.json)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(func=_cmd_eval_downstream)

    p = esub.add_parser("board", help="one table: recognition and every downstream task per backbone")
    p.add_argument("--results", type=Path, default=Path("metrics/downstream"), help="folder of eval <task> JSONs")
    p.add_argument("--recognition", type=Path, default=None, help="a recognition leaderboard.json (if it exists)")
    p.add_argument("--out", type=Path, default=Path("metrics/board"), help="writes OUT.json and OUT.md")
    p.set_defaults(func=_cmd_eval_board)
