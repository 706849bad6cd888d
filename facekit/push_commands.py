"""The Hugging Face Hub commands (registered by :mod:`facekit.cli`): ``facekit push dataset`` and
``facekit push model``; each builds the folder and card locally, then uploads it (or, with ``--dry-run``,
prints what would be sent)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_push_dataset(args: argparse.Namespace) -> int | str:
    from facekit.hub.cards import write_dataset_card
    from facekit.hub.datasets import export_dataset, push_dataset, upload_plan
    from facekit.hub.tokens import HubError, check_repo_id

    try:
        check_repo_id(args.repo_id)
        dataset = export_dataset(args.shards, args.export)
        write_dataset_card(
            args.export,
            dataset,
            args.shards,
            dvc_lock=args.dvc_lock,
            params_path=args.params,
            license=args.license,
            repo_id=args.repo_id,
        )
        plan = upload_plan(args.export)
        if args.dry_run:
            for name, size in plan:
                print(f"would upload {name} ({size / 1e6:.2f} MB)")
            visibility = "public" if args.public else "private"
            return f"push dataset: dry run, {dataset.num_rows} faces in {args.export} -> {args.repo_id} ({visibility})"
        url = push_dataset(args.export, args.repo_id, private=not args.public)
    except HubError as e:
        print(f"facekit: error: {e}", file=sys.stderr)
        return 2
    return f"push dataset: {dataset.num_rows} faces, {len(plan)} file(s) -> {url}"


def _cmd_push_model(args: argparse.Namespace) -> int | str:
    import tempfile

    from facekit.hub.models import model_files, push_model, save_model_folder
    from facekit.hub.tokens import HubError, check_repo_id

    check_repo_id(args.repo_id)
    with tempfile.TemporaryDirectory(prefix="facekit-model-") as tmp:
        folder = save_model_folder(
            args.run_dir,
            args.out or Path(tmp) / "model",
            args.metrics,
            args.dvc_lock,
            args.params,
            license=args.license,
            repo_id=args.repo_id,
        )
        files = model_files(folder)
        size = f"{sum(n for _, n in files) / 1e6:.2f} MB"
        visibility = "public" if args.public else "private"
        if args.dry_run:
            for name, n in files:
                print(f"would upload {name} ({n / 1e6:.2f} MB)")
            kept = f"in {folder}" if args.out else "(pass --out DIR to keep the folder)"
            return f"push model: dry run, {len(files)} files, {size} {kept} -> {args.repo_id} ({visibility})"
        try:
            url = push_model(folder, args.repo_id, private=not args.public)
        except HubError as e:
            print(f"facekit: error: {e}", file=sys.stderr)
            return 2
    return f"push model: {args.run_dir} -> {url} ({len(files)} files, {size}, {visibility})"


def register_cli(sub: argparse._SubParsersAction) -> None:
    """``facekit push dataset`` and ``facekit push model``."""
    push = sub.add_parser("push", help="publish to the Hugging Face Hub (token: HF_TOKEN or `hf auth login`)")
    psub = push.add_subparsers(dest="push_command", required=True, metavar="WHAT")

    p = psub.add_parser("dataset", help="export the packed shards as a Parquet dataset with a card and upload it")
    p.add_argument("repo_id", metavar="REPO_ID", help="Hub dataset repo, owner/name")
    p.add_argument("--shards", type=Path, default=Path("data/shards"), help="packed shards (index.json)")
    p.add_argument("--export", type=Path, default=Path("data/export/dataset"), help="folder that is uploaded")
    p.add_argument("--dvc-lock", type=Path, default=Path("dvc.lock"), help="lineage recorded by DVC")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameter file shown on the card")
    p.add_argument("--license", default=None, help="Hub licence id for the card (default: from the sources)")
    p.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    p.add_argument("--dry-run", action="store_true", help="build the folder and card, print what would be uploaded")
    p.set_defaults(func=_cmd_push_dataset)

    p = psub.add_parser("model", help="publish a trained backbone: weights, config and a model card with lineage")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="trained run folder (backbone.json + weights)")
    p.add_argument("--repo-id", required=True, help="Hub model repo, owner/name")
    p.add_argument("--metrics", type=Path, nargs="+", action="extend", default=[], help="verification metrics JSON")
    p.add_argument("--dvc-lock", type=Path, default=Path("dvc.lock"), help="lineage recorded by DVC")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameter file shown on the card")
    p.add_argument("--license", default="other", help="Hub licence id for the card (default: other)")
    p.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    p.add_argument("--out", type=Path, default=None, help="build the uploaded folder here and keep it")
    p.add_argument("--dry-run", action="store_true", help="build the folder and card, print what would be uploaded")
    p.set_defaults(func=_cmd_push_model)
