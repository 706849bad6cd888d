"""The ``facekit`` command line: one command, sub-commands per area.

Every data command reads ``params.yaml`` (the file DVC tracks), shows progress on long work and ends
with a one-line summary. Errors a user can fix (a missing file, a bad parameter, missing assets) are
printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from facekit import __version__


def _add_params_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="parameter file with the stage sections (default: params.yaml)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars (the summary line is still printed)")


def _cmd_sample(args: argparse.Namespace) -> str:
    from facekit.config import load_params
    from facekit.data.stages.steps import sample_step

    return sample_step(load_params(args.params), report=args.report).summary()


def _cmd_detect_align(args: argparse.Namespace) -> str:
    from facekit.config import load_params
    from facekit.data.stages.steps import detect_align_step

    params = load_params(args.params)
    report = detect_align_step(params, out=args.out, report=args.report, grid=args.grid, progress=not args.quiet)
    return report.summary()


def _cmd_pack(args: argparse.Namespace) -> str:
    from facekit.config import load_params
    from facekit.data.stages.steps import pack_step

    params = load_params(args.params)
    report = pack_step(
        params, aligned=args.aligned, out=args.out, report=args.report, grid=args.grid, progress=not args.quiet
    )
    return report.summary() + f" -> {args.out} ({report.extra['shards']:.0f} shard(s))"


def _cmd_to_rec(args: argparse.Namespace) -> str:
    from facekit.data.sources import IdentityFolderSource
    from facekit.data.sources.recordio import source_to_recordio

    source = IdentityFolderSource(args.folder, name=args.name, layout=args.layout)
    count, rejections = source_to_recordio(source, args.rec, header_layout=not args.plain)
    for r in rejections:
        print(f"rejected {r.key}: {r.reason} {r.detail}", file=sys.stderr)
    return f"to-rec: read {count + len(rejections)}, written {count}, rejected {len(rejections)} -> {args.rec}"


def _cmd_inspect(args: argparse.Namespace) -> str:
    from facekit.data.shards import read_index, verify_shard

    index = read_index(args.shards)
    for entry in index["shards"]:
        info = verify_shard(args.shards / entry["name"])
        print(f"{entry['name']}: {info.count} records, {info.nbytes / 1e6:.1f} MB, hash {info.content_hash[:12]} ok")
    return (
        f"{args.shards}: {index['count']} faces, {len(index['identities'])} identities, "
        f"{len(index['shards'])} shard(s), content hash {index['content_hash'][:16]} verified"
    )


def _data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="the data lineage: raw photos → aligned faces → LMDB shards")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="STEP")

    p = dsub.add_parser("sample", help="copy the shared sample photos into data/raw/sample (identity folders)")
    _add_params_option(p)
    p.add_argument("--report", type=Path, default=Path("metrics/sample.json"), help="metrics file to write")
    p.set_defaults(func=_cmd_sample)

    p = dsub.add_parser("detect-align", help="detect faces and align them onto the ArcFace template, per shard")
    _add_params_option(p)
    p.add_argument("--out", type=Path, default=Path("data/aligned"), help="folder for the per-shard LMDBs")
    p.add_argument("--report", type=Path, default=Path("metrics/detect_align.json"), help="metrics file")
    p.add_argument("--grid", type=Path, default=Path("plots/detect_align.png"), help="PNG grid of aligned faces")
    p.set_defaults(func=_cmd_detect_align)

    p = dsub.add_parser("pack", help="de-duplicate and pack aligned faces into size-limited LMDB shards")
    _add_params_option(p)
    p.add_argument("--aligned", type=Path, default=Path("data/aligned"), help="output of detect-align")
    p.add_argument("--out", type=Path, default=Path("data/shards"), help="folder for the final shards")
    p.add_argument("--report", type=Path, default=Path("metrics/pack.json"), help="metrics file")
    p.add_argument("--grid", type=Path, default=Path("plots/faces.png"), help="PNG grid of packed faces")
    p.set_defaults(func=_cmd_pack)

    p = dsub.add_parser("to-rec", help="convert an identity-folder dataset to insightface RecordIO")
    p.add_argument("folder", type=Path, help="root with one sub-folder per identity")
    p.add_argument("rec", type=Path, help="output .rec path (.idx and property are written beside it)")
    p.add_argument("--name", default="folder", help="source name used as the key prefix")
    p.add_argument("--layout", choices=["vggface2", "webface"], default="vggface2", help="folder layout")
    p.add_argument("--plain", action="store_true", help="no header records (plain layout)")
    p.set_defaults(func=_cmd_to_rec)

    p = dsub.add_parser("inspect", help="verify every shard's content hash and print a summary")
    p.add_argument("shards", type=Path, help="folder holding index.json and the shards")
    p.set_defaults(func=_cmd_inspect)


def build_parser() -> argparse.ArgumentParser:
    from facekit.assets import register_cli as assets_cli

    parser = argparse.ArgumentParser(prog="facekit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"facekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _data_commands(sub)
    assets_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Data commands return their summary line, printed with the elapsed time."""
    from facekit.assets import AssetsError

    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int | str] = args.func
    start = time.perf_counter()
    try:
        result = func(args)
    except (FileNotFoundError, ValueError, KeyError, AssetsError) as e:
        print(f"facekit: error: {e}", file=sys.stderr)
        return 2
    if isinstance(result, str):
        print(f"{result} [{time.perf_counter() - start:.1f}s]")
        return 0
    return result


if __name__ == "__main__":
    sys.exit(main())
