"""The commands of the identity split and the frozen-feature probes (registered by :mod:`facekit.cli`):
``facekit split``, ``facekit probe RUN`` / ``facekit probe controls`` and ``facekit probe-board``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from facekit.config import Params


def _params(args: argparse.Namespace) -> Params:
    from facekit.config import load_params  # imported by the command: the CLI starts fast

    return load_params(args.params)


def _cmd_split(args: argparse.Namespace) -> str:
    from facekit.stages import split

    params = _params(args)
    return split.run(params, params.paths)


def _cmd_probe(args: argparse.Namespace) -> str:
    from facekit.stages import probe

    params = _params(args)
    if args.run == probe.CONTROLS:
        return probe.probe_controls(params, params.paths, progress=not args.quiet)
    return probe.probe_run(params, params.paths, args.run, progress=not args.quiet)


def _cmd_probe_board(args: argparse.Namespace) -> str:
    from facekit.stages import probe_board

    params = _params(args)
    return probe_board.run(params, params.paths)


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Add ``split``, ``probe`` and ``probe-board`` to the ``facekit`` sub-commands."""

    def params_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameter file (default: params.yaml)")
        p.add_argument("--quiet", action="store_true", help="no progress bars (the summary line is still printed)")

    p = sub.add_parser("split", help="hold out split.holdout_identities of the shards' people: write split.file")
    params_option(p)
    p.set_defaults(func=_cmd_split)

    p = sub.add_parser("probe", help="frozen-feature probes (kNN, linear, verification) on the held-out people")
    p.add_argument("run", metavar="RUN", help="a run of pretrain.runs, or 'controls' (pixels, reference, fine-tuned)")
    params_option(p)
    p.set_defaults(func=_cmd_probe)

    p = sub.add_parser("probe-board", help="the probes' and held-out verification's leaderboard, table and plot")
    params_option(p)
    p.set_defaults(func=_cmd_probe_board)
