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


def _cmd_landmarks(args: argparse.Namespace) -> str:
    from facekit.config import load_params
    from facekit.data.stages.steps import landmarks_step

    params = load_params(args.params)
    report = landmarks_step(params, aligned=args.aligned, out=args.out, report=args.report, progress=not args.quiet)
    return report.summary() + f" (median mesh agreement {report.extra.get('median_agreement', float('nan')):.3f})"


def _cmd_masks(args: argparse.Namespace) -> str:
    from facekit.config import load_params
    from facekit.data.stages.steps import masks_step

    params = load_params(args.params)
    report = masks_step(
        params, landmarks=args.landmarks, out=args.out, report=args.report, grid=args.grid, progress=not args.quiet
    )
    accuracy = {k.removeprefix("accuracy_"): v for k, v in report.extra.items() if k.startswith("accuracy_")}
    quality = ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items())
    return report.summary() + f" ({report.extra.get('masked', 0):.0f} masked twins{'; ' + quality if quality else ''})"


def _cmd_download(args: argparse.Namespace) -> str:
    from facekit.config import load_params
    from facekit.data.download import FetchOptions, download

    p = load_params(args.params).download
    options = FetchOptions(timeout_s=p.timeout_s, retries=p.retries)
    report = download(
        Path(p.parquet),
        Path(p.out),
        shard_size=p.shard_size,
        workers=p.workers,
        options=options,
        report_path=args.report,
    )
    return report.summary()


def _cmd_verify_raw(args: argparse.Namespace) -> int:
    from facekit.data.verify_raw import KNOWN_COUNTS, verify_raw

    expected = dict(KNOWN_COUNTS[args.expect]) if args.expect else {}
    for key in ("identities", "images", "tars", "tolerance"):
        if getattr(args, key) is not None:
            expected[key] = getattr(args, key)
    report = verify_raw(args.kind, args.path, expected or None)
    print(report.message())
    return 0 if report.ok else 1


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
    from facekit.data.verify_raw import KNOWN_COUNTS

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

    p = dsub.add_parser("landmarks", help="dense MediaPipe face-mesh landmarks for every aligned face")
    _add_params_option(p)
    p.add_argument("--aligned", type=Path, default=Path("data/aligned"), help="output of detect-align")
    p.add_argument("--out", type=Path, default=Path("data/landmarks"), help="folder for the per-shard LMDBs")
    p.add_argument("--report", type=Path, default=Path("metrics/landmarks.json"), help="metrics file")
    p.set_defaults(func=_cmd_landmarks)

    p = dsub.add_parser("masks", help="draw synthetic masked twins of a fraction of the faces")
    _add_params_option(p)
    p.add_argument("--landmarks", type=Path, default=Path("data/landmarks"), help="output of landmarks")
    p.add_argument("--out", type=Path, default=Path("data/masked"), help="folder for the per-shard LMDBs")
    p.add_argument("--report", type=Path, default=Path("metrics/masks.json"), help="metrics file")
    p.add_argument("--grid", type=Path, default=Path("plots/masks.png"), help="PNG of holistic / masked pairs")
    p.set_defaults(func=_cmd_masks)

    p = dsub.add_parser("pack", help="de-duplicate and pack aligned faces into size-limited LMDB shards")
    _add_params_option(p)
    p.add_argument("--aligned", type=Path, default=Path("data/masked"), help="per-shard LMDBs to pack")
    p.add_argument("--out", type=Path, default=Path("data/shards"), help="folder for the final shards")
    p.add_argument("--report", type=Path, default=Path("metrics/pack.json"), help="metrics file")
    p.add_argument("--grid", type=Path, default=Path("plots/faces.png"), help="PNG grid of packed faces")
    p.set_defaults(func=_cmd_pack)

    p = dsub.add_parser("download", help="download LAION-Face images listed in a parquet into tar shards")
    _add_params_option(p)
    p.add_argument("--report", type=Path, default=Path("metrics/download.json"), help="metrics file")
    p.set_defaults(func=_cmd_download)

    p = dsub.add_parser("verify-raw", help="check a hand-obtained dataset's layout and counts")
    p.add_argument("kind", choices=["vggface2", "webface", "recordio", "laion"], help="dataset layout")
    p.add_argument("path", type=Path, help="dataset root (.rec file for recordio, tar folder for laion)")
    p.add_argument("--expect", choices=sorted(KNOWN_COUNTS), default=None, help="a known dataset's published counts")
    p.add_argument("--identities", type=int, default=None, help="expected number of identities")
    p.add_argument("--images", type=int, default=None, help="expected number of images")
    p.add_argument("--tars", type=int, default=None, help="expected number of tar shards (laion)")
    p.add_argument("--tolerance", type=float, default=None, help="relative tolerance on the counts")
    p.set_defaults(func=_cmd_verify_raw)

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
