"""The ``facekit`` command line: one command, sub-commands per area.

Every data command reads ``params.yaml`` (the file DVC tracks; its ``paths:`` section says where the
stages write), shows progress on long work and ends with a one-line summary. Errors a user can fix (a
missing file, a bad parameter, missing assets) are printed as one line and exit with status 2.
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


def _add_set_option(p: argparse.ArgumentParser, section: str) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override {section}.runs.RUN.KEY (dotted, e.g. train.lr=1e-3; YAML value), repeatable",
    )


def _cmd_sample(args: argparse.Namespace) -> str:
    from facekit.config import load_params
    from facekit.stages import sample

    params = load_params(args.params)
    return sample.run(params, params.paths).summary()


def _cmd_scan(args: argparse.Namespace) -> str:
    from facekit.config import load_params
    from facekit.stages import scan

    params = load_params(args.params)
    return scan.run(params, params.paths)


def _cmd_detect_align(args: argparse.Namespace) -> str:
    from facekit.config import load_params
    from facekit.stages import detect_align

    params = load_params(args.params)
    return detect_align.run(params, params.paths, progress=not args.quiet).summary()


def _cmd_pack(args: argparse.Namespace) -> str:
    from facekit.config import load_params
    from facekit.stages import pack

    params = load_params(args.params)
    report = pack.run(params, params.paths, progress=not args.quiet)
    return report.summary() + f" -> {params.paths.shards} ({report.extra['shards']:.0f} shard(s))"


def _cmd_landmarks(args: argparse.Namespace) -> str:
    from facekit.config import load_params
    from facekit.stages import landmarks

    params = load_params(args.params)
    report = landmarks.run(params, params.paths, progress=not args.quiet)
    return report.summary() + f" (median mesh agreement {report.extra.get('median_agreement', float('nan')):.3f})"


def _cmd_masks(args: argparse.Namespace) -> str:
    from facekit.config import load_params
    from facekit.stages import masks

    params = load_params(args.params)
    report = masks.run(params, params.paths, progress=not args.quiet)
    accuracy = {k.removeprefix("accuracy_"): v for k, v in report.extra.items() if k.startswith("accuracy_")}
    quality = ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items())
    return report.summary() + f" ({report.extra.get('masked', 0):.0f} masked twins{'; ' + quality if quality else ''})"


def _cmd_download(args: argparse.Namespace) -> str:
    from facekit.config import load_params
    from facekit.data.download import FetchOptions, download

    params = load_params(args.params)
    p = params.download
    options = FetchOptions(timeout_s=p.timeout_s, retries=p.retries)
    report = download(
        Path(p.parquet),
        Path(p.out),
        shard_size=p.shard_size,
        workers=p.workers,
        options=options,
        report_path=params.paths.report("download"),
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

    p = dsub.add_parser("sample", help="copy the shared sample photos into sample.out (identity folders)")
    _add_params_option(p)
    p.set_defaults(func=_cmd_sample)

    p = dsub.add_parser("scan", help="list the source without opening it: the manifest detect_align depends on")
    _add_params_option(p)
    p.set_defaults(func=_cmd_scan)

    p = dsub.add_parser("detect-align", help="detect faces and align them onto the ArcFace template, per shard")
    _add_params_option(p)
    p.set_defaults(func=_cmd_detect_align)

    p = dsub.add_parser("landmarks", help="dense MediaPipe face-mesh landmarks for every aligned face")
    _add_params_option(p)
    p.set_defaults(func=_cmd_landmarks)

    p = dsub.add_parser("masks", help="draw synthetic masked twins of a fraction of the faces")
    _add_params_option(p)
    p.set_defaults(func=_cmd_masks)

    p = dsub.add_parser("pack", help="de-duplicate and pack aligned faces into size-limited LMDB shards")
    _add_params_option(p)
    p.set_defaults(func=_cmd_pack)

    p = dsub.add_parser("download", help="download LAION-Face images listed in a parquet into tar shards")
    _add_params_option(p)
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


def _cmd_eval(args: argparse.Namespace) -> str:
    from facekit.eval_commands import eval_command

    return eval_command(args)


def _cmd_eval_knn(args: argparse.Namespace) -> str:
    from facekit.eval_commands import knn_command

    return knn_command(args)


def _cmd_export(args: argparse.Namespace) -> int | str:
    from facekit.eval_commands import export_command

    return export_command(args)


def _eval_model_options(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--model", type=Path, required=True, help="embedding model (.onnx, [B,3,112,112] -> [B,D])")
    p.add_argument("--no-flip", action="store_true", help="no flip test")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--metrics", type=Path, default=Path(f"metrics/eval_{name}.json"), help="DVC metrics file")
    p.add_argument("--plots", type=Path, default=Path(f"plots/eval_{name}"), help="folder for the ROC CSV / PNG")


def _eval_detector_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--detector", choices=["retinaface", "scrfd"], help="detect + align photos that are not 112x112")
    p.add_argument("--detector-model", help="detector ONNX (default: the assets' model for --detector)")


def _eval_commands(sub: argparse._SubParsersAction) -> None:
    from facekit.downstream_commands import register_cli as downstream_cli

    ev = sub.add_parser(
        "eval", help="benchmarks: .bin sets, image pairs, IJB-B/C, kNN check, downstream tasks (expression ... pose)"
    )
    esub = ev.add_subparsers(dest="eval_command", required=True, metavar="BENCHMARK")

    p = esub.add_parser("bin", help="10-fold verification on insightface .bin sets (lfw.bin, cfp_fp.bin, ...)")
    p.add_argument("bins", type=Path, nargs="+", metavar="PATH", help=".bin file(s)")
    p.add_argument("--folds", type=int, default=10, help="number of folds (default 10)")
    p.add_argument(
        "--resize",
        action="store_true",
        help="resize faces that are not the model's input size (default: such a set is an error)",
    )
    _eval_model_options(p, "bin")
    p.set_defaults(func=_cmd_eval)

    p = esub.add_parser("pairs", help="verification on an image folder with a LFW pairs.txt or pairs CSV")
    p.add_argument("folder", type=Path, help="faces, e.g. name/name_0001.jpg for LFW")
    p.add_argument("pairs", type=Path, help="LFW pairs.txt or file_x,file_y,same CSV")
    p.add_argument("--folds", type=int, default=None, help="number of folds (default: the protocol's, else 10)")
    _eval_model_options(p, "pairs")
    _eval_detector_options(p)
    p.set_defaults(func=_cmd_eval)

    p = esub.add_parser("make-bin", help="write an insightface .bin from aligned faces and a pair list")
    p.add_argument("pairs", type=Path, help="LFW pairs.txt or file_x,file_y,same CSV")
    p.add_argument("out", type=Path, help="the .bin to write")
    p.add_argument("--folder", type=Path, help="face folder (aligned 112x112, or photos with --detector)")
    p.add_argument("--shards", type=Path, help="packed shards (index.json); faces matched by key")
    p.add_argument("--masked", choices=["none", "second", "both"], default="none", help="use the masked twins")
    p.add_argument("--drop-missing", action="store_true", help="drop pairs with a missing face/twin (default: error)")
    _eval_detector_options(p)
    p.set_defaults(func=_cmd_eval)

    p = esub.add_parser("sets", help="the holistic and masked .bin sets of verify.pairs over the packed shards")
    _add_params_option(p)
    p.set_defaults(func=_cmd_eval_sets)

    p = esub.add_parser("ijb", help="IJB-B/C 1:1 template verification (insightface meta layout)")
    p.add_argument("meta_dir", type=Path, help="folder with <t>_face_tid_mid.txt, <t>_template_pair_label.txt, ...")
    p.add_argument("images_dir", type=Path, help="the loose crops")
    p.add_argument("--target", default=None, help="ijbb or ijbc (default: the one in META_DIR)")
    p.add_argument("--no-detector-score", action="store_true", help="do not weight faces by detector score")
    _eval_model_options(p, "ijb")
    p.set_defaults(func=_cmd_eval)

    p = esub.add_parser("knn", help="leave-one-out kNN identity accuracy of a pretrain run, learned vs random init")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="pretrain run folder (backbone.json + weights)")
    p.add_argument("--shards", type=Path, default=Path("data/shards"), help="packed faces with identities")
    p.add_argument("--k", type=int, default=1, help="neighbours that vote (default 1)")
    p.add_argument("--metrics", type=Path, default=None, help="write the result as a DVC metrics JSON")
    p.set_defaults(func=_cmd_eval_knn)
    downstream_cli(esub)


def _export_commands(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="export trained networks for deployment")
    xsub = export.add_subparsers(dest="export_command", required=True, metavar="FORMAT")
    p = xsub.add_parser("onnx", help="a run's backbone -> ONNX (dynamic batch), checked against PyTorch")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="trained run folder (backbone.json + weights)")
    p.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    p.set_defaults(func=_cmd_export)


def _cmd_train(args: argparse.Namespace) -> int | str:
    """``facekit pretrain RUN`` / ``facekit finetune RUN`` (``args.command``): in this process, or relaunched
    under torchrun when the section's ``nproc_per_node > 1``. Each ``--set KEY=VALUE`` sets the run's
    ``KEY`` (dotted: ``train.lr``) before params.yaml is checked."""
    from facekit import distributed
    from facekit.config import load_params, parse_assignment
    from facekit.stages import finetune, launch, pretrain

    settings = dict(map(parse_assignment, args.set))
    params = load_params(args.params, {f"{args.command}.runs.{args.run}.{k}": v for k, v in settings.items()})
    nproc = getattr(params, args.command).nproc_per_node
    if launch.needs_torchrun(nproc):  # one process per GPU
        return launch.torchrun(args.command, args.run, args.params, nproc, quiet=args.quiet, settings=args.set)
    stage = pretrain if args.command == "pretrain" else finetune
    result = stage.run(params, params.paths, args.run, progress=not args.quiet)
    if not distributed.is_main():
        return 0
    speed = f", {result.images_per_s:.1f} img/s" if result.steps else ""
    return f"{args.command} {args.run}: {pretrain.outcome(result.steps, result.final_loss)}{speed} -> {result.out_dir}"


def _cmd_eval_sets(args: argparse.Namespace) -> str:
    from facekit.config import load_params
    from facekit.stages import eval_sets

    params = load_params(args.params)
    return eval_sets.run(params, params.paths)


def _cmd_verify(args: argparse.Namespace) -> str:
    from facekit.config import load_params
    from facekit.stages import verify

    params = load_params(args.params)
    return verify.run(params, params.paths, args.run)


def _cmd_leaderboard(args: argparse.Namespace) -> str:
    from facekit.config import load_params
    from facekit.stages import leaderboard

    params = load_params(args.params)
    return leaderboard.run(params, params.paths)


def _cmd_readme(args: argparse.Namespace) -> str:
    from facekit.config import load_params
    from facekit.stages import downstream_board, leaderboard

    if args.downstream:
        return downstream_board.write_readme(args.downstream, Path(args.readme))

    params = load_params(args.params)
    return leaderboard.write_readme(params, params.paths, Path(args.readme))


def _train_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="self-supervised pre-training: one run of params.yaml's pretrain.runs")
    p.add_argument("run", metavar="RUN", help="run name under pretrain.runs (e.g. mae, mcf, camd)")
    _add_params_option(p)
    _add_set_option(p, "pretrain")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("finetune", help="face-recognition fine-tuning of the pre-trained backbone pretrain.out/RUN")
    p.add_argument("run", metavar="RUN", help="run name under finetune.runs (a pre-training run, e.g. mae)")
    _add_params_option(p)
    _add_set_option(p, "finetune")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("verify", help="score finetune.out/RUN on the verification sets of `facekit eval sets`")
    p.add_argument("run", metavar="RUN", help="a run under finetune.runs, or 'reference' (verify.reference)")
    _add_params_option(p)
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("leaderboard", help="one row per method: verification, masked verification, images/s")
    _add_params_option(p)
    p.set_defaults(func=_cmd_leaderboard)

    p = sub.add_parser("readme", help="the README's sample tables from the sample's metrics/leaderboard.json")
    p.add_argument("--readme", default="README.md", help="the README to update (default: README.md)")
    p.add_argument(
        "--downstream", type=Path, default=None, help="only the downstream table, from this board JSON (eval board)"
    )
    _add_params_option(p)
    p.set_defaults(func=_cmd_readme)


def build_parser() -> argparse.ArgumentParser:
    from facekit.assets import register_cli as assets_cli
    from facekit.probe_commands import register_cli as probe_cli
    from facekit.push_commands import register_cli as push_cli

    parser = argparse.ArgumentParser(prog="facekit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"facekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _data_commands(sub)
    _train_commands(sub)
    push_cli(sub)
    _eval_commands(sub)
    _export_commands(sub)
    assets_cli(sub)
    probe_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Data commands return their summary line, printed with the elapsed time."""
    from facekit.assets import AssetsError
    from facekit.data.shards import ShardError

    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int | str] = args.func
    start = time.perf_counter()
    try:
        result = func(args)
    except (FileNotFoundError, ValueError, KeyError, AssetsError, ShardError) as e:
        print(f"facekit: error: {e}", file=sys.stderr)
        return 2
    if isinstance(result, str):
        print(f"{result} [{time.perf_counter() - start:.1f}s]")
        return 0
    return result


if __name__ == "__main__":
    sys.exit(main())
