"""Finding and fetching facekit's test/sample assets (real photos, small models, masks, protocols).

``assets_root()`` resolves the folder: ``$FACEKIT_ASSETS`` when set, else the user cache
(``$XDG_CACHE_HOME/facekit/assets``, default ``~/.cache/facekit/assets``) once a fetch completed there.
``fetch_assets()`` fills a folder from ``assets_manifest.json``: every file is downloaded to
``<file>.part`` (an interrupted download resumes with an HTTP ``Range`` request), its sha256 is checked,
and only then is it moved into place, so a bad file is never left where a reader would find it.
A derived file (``derive``) is rebuilt from its ``inputs``: other assets, or ``intermediate`` entries (a
larger original, e.g. CelebA's full annotation file) that are downloaded into ``.inputs/`` only while a
derived file needs them and deleted after the run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from facekit.asset_derivations import DERIVERS

ENV_VAR = "FACEKIT_ASSETS"
MANIFEST_PATH = Path(__file__).with_name("assets_manifest.json")
#: Written into a fetched folder once every fetchable file is present and verified.
COMPLETE_MARKER = ".facekit-assets-complete"
_ARCHIVE_DIR = ".archives"
_INPUTS_DIR = ".inputs"
_CHUNK = 1 << 16
_TIMEOUT_S = 60.0


class AssetsError(Exception):
    """An assets problem; ``reason`` is a short stable code, ``detail`` says what to do."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class AssetsNotFoundError(AssetsError):
    """The assets folder, or one file in it, is not there."""


def default_cache_dir() -> Path:
    """Where ``facekit assets fetch`` puts the assets by default: ``$XDG_CACHE_HOME/facekit/assets``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    cache = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return cache / "facekit" / "assets"


def _how_to_get_assets() -> str:
    return (
        f"export {ENV_VAR}=/path/to/assets (a folder with faces/, models/, masks/, protocols/), "
        f"or run `facekit assets fetch` to download them into {default_cache_dir()}"
    )


def assets_root() -> Path:
    """The assets folder: ``$FACEKIT_ASSETS``, else a completely fetched user cache; raise otherwise."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        root = Path(configured).expanduser()
        if not root.is_dir():
            raise AssetsNotFoundError(
                "env_path_missing",
                f"{ENV_VAR}={configured!r} is not an existing folder. Fix it, or unset it and run "
                "`facekit assets fetch`.",
            )
        return root
    cache = default_cache_dir()
    if (cache / COMPLETE_MARKER).is_file():
        return cache
    raise AssetsNotFoundError("not_fetched", f"facekit assets not found. {_how_to_get_assets()}.")


def asset_path(relative: str) -> Path:
    """Absolute path of one asset, e.g. ``asset_path("models/scrfd_500m_bnkps.onnx")``."""
    parts = Path(relative).parts
    if Path(relative).is_absolute() or ".." in parts or not parts:
        raise AssetsError("bad_asset_path", f"{relative!r} must be a relative path inside the assets folder")
    root = assets_root()
    path = root / relative
    if not path.is_file():
        raise AssetsNotFoundError(
            "missing_file",
            f"asset {relative!r} is not in {root}; run `facekit assets fetch --only {relative}`",
        )
    return path


def resolve_model(model: str) -> Path:
    """A model path from params: absolute, relative to the working directory, or to the assets root."""
    path = Path(model)
    if path.is_absolute() or path.exists():
        return path
    return asset_path(model)


@dataclass(frozen=True)
class ManifestEntry:
    """One asset file. ``url`` is None for derived files (rebuilt from ``inputs`` by ``derive``) and for
    files with no public source; ``archive_member`` names the file inside a downloaded zip/wheel.
    ``intermediate`` marks a derivation input that is not an asset: it lives under ``.inputs/``, is fetched
    only to rebuild a derived file, and is not needed for a complete folder."""

    path: str
    url: str | None
    sha256: str
    size: int
    licence: str
    source: str
    archive_member: str | None = None
    archive_sha256: str | None = None
    archive_size: int | None = None
    derive: str | None = None
    inputs: tuple[str, ...] = ()
    intermediate: bool = False
    note: str = ""


def load_manifest(manifest: Path | None = None) -> list[ManifestEntry]:
    """Read and validate a manifest (default: the one shipped with facekit)."""
    manifest = manifest or MANIFEST_PATH
    try:
        doc = json.loads(Path(manifest).read_text(encoding="utf-8"))
        entries = [ManifestEntry(**{**raw, "inputs": tuple(raw.get("inputs", ()))}) for raw in doc["files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AssetsError("bad_manifest", f"cannot read manifest {manifest}: {exc}") from exc
    known = {entry.path for entry in entries}
    for entry in entries:
        if not re.fullmatch(r"[0-9a-f]{64}", entry.sha256):
            raise AssetsError("bad_manifest", f"{entry.path}: sha256 must be 64 lowercase hex digits")
        if entry.derive is not None and entry.derive not in DERIVERS:
            raise AssetsError("bad_manifest", f"{entry.path}: unknown derivation {entry.derive!r}")
        if missing := [name for name in entry.inputs if name not in known]:
            raise AssetsError("bad_manifest", f"{entry.path}: inputs not in the manifest: {missing}")
        if entry.intermediate and not (entry.url and entry.path.startswith(_INPUTS_DIR + "/")):
            raise AssetsError("bad_manifest", f"{entry.path}: an intermediate needs a url and a path in {_INPUTS_DIR}/")
    return entries


@dataclass(frozen=True)
class FetchFailure:
    """A file that is not in place after the fetch, with a stable ``reason`` code and a human ``detail``."""

    path: str
    reason: str
    detail: str


@dataclass
class FetchReport:
    """What :func:`fetch_assets` did. ``not_fetchable`` lists files with no public source."""

    dest: Path
    fetched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[FetchFailure] = field(default_factory=list)
    not_fetchable: list[FetchFailure] = field(default_factory=list)
    complete: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        """One line, e.g. ``fetched 3, skipped 95, failed 0, not fetchable 0 -> /path (complete)``."""
        line = (
            f"fetched {len(self.fetched)}, skipped {len(self.skipped)}, failed {len(self.failed)}, "
            f"not fetchable {len(self.not_fetchable)} -> {self.dest}"
        )
        if self.failed:
            line += " [" + "; ".join(f"{f.path}: {f.reason}" for f in self.failed) + "]"
        return line + (" (complete)" if self.complete else " (incomplete)")


class _FetchError(AssetsError):
    """One file failed; recorded in the report instead of stopping the fetch."""


def fetch_assets(
    dest: Path | None = None,
    *,
    manifest: Path | None = None,
    base_url: str | None = None,
    only: list[str] | None = None,
    progress: bool = True,
) -> FetchReport:
    """Download, verify and place the manifest's files under ``dest`` (default: the user cache).

    ``base_url`` points at a mirror laid out like the assets folder: each file is then read from
    ``<base_url>/<path>`` (archives are not needed there); derived files are rebuilt locally, except those
    that need an intermediate input (a mirror holds only the assets): they are read from the mirror too.
    ``only`` restricts the run to these paths or folders (plus the inputs of derived files).
    Files already present with the right sha256 are skipped; a present file with a wrong sha256 is
    replaced. The completion marker is written when every fetchable file is present and verified.
    """
    dest = Path(dest) if dest is not None else default_cache_dir()
    entries = load_manifest(manifest)
    by_path = {entry.path: entry for entry in entries}
    selected = _select(entries, only)
    report = FetchReport(dest=dest)
    verified: set[str] = set()
    todo: list[ManifestEntry] = []
    for entry in selected:
        if entry.intermediate:
            continue  # fetched below, and only when a file to rebuild needs it
        if _has_valid_copy(dest / entry.path, entry.sha256):
            report.skipped.append(entry.path)
            verified.add(entry.path)
        elif entry.url is None and entry.derive is None:
            report.not_fetchable.append(FetchFailure(entry.path, "no_public_url", entry.note or entry.source))
        else:
            todo.append(entry)
    rebuild = {entry.path for entry in todo if _rebuilt_here(entry, base_url, by_path)}
    needed = {name for path in rebuild for name in by_path[path].inputs}
    todo = [entry for entry in selected if entry.intermediate and entry.path in needed] + todo
    listed = list(by_path)
    total = sum(_download_size(entry, base_url, entry.path in rebuild) for entry in todo)
    with tqdm(total=total, unit="B", unit_scale=True, disable=not progress, desc="assets") as bar:
        for entry in todo:
            bar.set_postfix_str(entry.path, refresh=False)
            try:
                _fetch_one(entry, dest, base_url, bar, listed if entry.path in rebuild else None)
            except _FetchError as exc:
                report.failed.append(FetchFailure(entry.path, exc.reason, exc.detail))
            else:
                if not entry.intermediate:
                    report.fetched.append(entry.path)
                verified.add(entry.path)
    _remove_intermediates(dest, todo)
    report.complete = all(
        entry.path in verified or _has_valid_copy(dest / entry.path, entry.sha256)
        for entry in entries
        if (entry.url is not None or entry.derive is not None) and not entry.intermediate
    )
    if report.complete:
        (dest / COMPLETE_MARKER).write_text(f"manifest sha256 {_manifest_digest(manifest)}\n")
    return report


def _select(entries: list[ManifestEntry], only: list[str] | None) -> list[ManifestEntry]:
    """Entries named by ``only`` (paths or folder prefixes) plus derivation inputs, inputs first."""
    if not only:
        wanted = {entry.path for entry in entries}
    else:
        wanted = set()
        for pattern in only:
            prefix = pattern.strip("/")
            matched = {e.path for e in entries if e.path == prefix or e.path.startswith(prefix + "/")}
            if not matched:
                raise AssetsError("unknown_asset", f"{pattern!r} matches no file in the assets manifest")
            wanted |= matched
    by_path = {entry.path: entry for entry in entries}
    wanted |= {name for path in list(wanted) for name in by_path[path].inputs}
    chosen = [entry for entry in entries if entry.path in wanted]
    return sorted(chosen, key=lambda entry: entry.derive is not None)


def _rebuilt_here(entry: ManifestEntry, base_url: str | None, by_path: dict[str, ManifestEntry]) -> bool:
    """Whether a derived file is rebuilt locally: always, except from a mirror when it needs an intermediate."""
    if entry.derive is None:
        return False
    return base_url is None or not any(by_path[name].intermediate for name in entry.inputs)


def _remove_intermediates(dest: Path, todo: list[ManifestEntry]) -> None:
    """Delete the intermediate inputs of this run, then their folders once empty (an interrupted
    download's ``.part`` stays, so the next run resumes it)."""
    folders: set[Path] = set()
    for entry in todo:
        if entry.intermediate:
            (dest / entry.path).unlink(missing_ok=True)
            folders |= {folder for folder in Path(entry.path).parents if folder != Path(".")}
    for folder in sorted(folders, key=lambda folder: len(folder.parts), reverse=True):
        with contextlib.suppress(OSError):
            (dest / folder).rmdir()  # only succeeds once empty


def _download_size(entry: ManifestEntry, base_url: str | None, rebuilt: bool) -> int:
    if rebuilt:
        return 0
    if entry.archive_member is not None and base_url is None:
        return entry.archive_size or 0
    return entry.size


def _fetch_one(
    entry: ManifestEntry, dest: Path, base_url: str | None, bar: tqdm, rebuild_from: list[str] | None
) -> None:
    """Place one file: rebuilt from its inputs when ``rebuild_from`` (the manifest's paths) is given,
    else downloaded from the mirror, from inside an archive, or from its url."""
    target = dest / entry.path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)  # a present file reaching here has a wrong checksum
    part = target.with_name(target.name + ".part")
    if rebuild_from is not None:
        part.write_bytes(_derive(entry, dest, rebuild_from))
    elif base_url is not None and not entry.intermediate:
        _download(f"{base_url.rstrip('/')}/{urllib.parse.quote(entry.path)}", part, bar)
    elif entry.archive_member is not None:
        _extract_from_archive(entry, dest, part, bar)
    else:
        _download(entry.url or "", part, bar)
    _verify_and_place(part, target, entry.sha256)


def _verify_and_place(part: Path, target: Path, expected: str | None) -> None:
    actual = _sha256_file(part)
    if expected is not None and actual != expected:
        part.unlink()
        raise _FetchError("checksum_mismatch", f"sha256 {actual} != expected {expected}; file deleted")
    os.replace(part, target)


def _extract_from_archive(entry: ManifestEntry, dest: Path, part: Path, bar: tqdm) -> None:
    name = Path(urllib.parse.urlparse(entry.url or "").path).name
    archive = dest / _ARCHIVE_DIR / name
    archive.parent.mkdir(parents=True, exist_ok=True)
    if not _has_valid_copy(archive, entry.archive_sha256 or ""):
        archive_part = archive.with_name(name + ".part")
        _download(entry.url or "", archive_part, bar)
        _verify_and_place(archive_part, archive, entry.archive_sha256)
    try:
        with (
            zipfile.ZipFile(archive) as bundle,
            bundle.open(entry.archive_member or "") as member,
            part.open("wb") as out,
        ):
            shutil.copyfileobj(member, out)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise _FetchError("archive_error", f"cannot extract {entry.archive_member} from {name}: {exc}") from exc
    archive.unlink()
    with contextlib.suppress(OSError):
        archive.parent.rmdir()  # only succeeds once no other archive is left in it


def _download(url: str, part: Path, bar: tqdm) -> None:
    """Download ``url`` into ``part``, resuming from its current length with a ``Range`` request."""
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "facekit-assets"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            resumed = offset and response.status == 206
            if not resumed:
                offset = 0  # the server sent the whole file
            bar.update(offset)
            expected = response.headers.get("Content-Length")
            received = 0
            with part.open("ab" if resumed else "wb") as out:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if expected is not None and received < int(expected):
            # http.client returns a short body, without raising, when the connection drops.
            raise _FetchError("interrupted", f"download of {url} stopped early; run again to resume")
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            return  # the part file already holds the whole file; the checksum decides
        raise _FetchError("http_error", f"HTTP {exc.code} {exc.reason} for {url}") from exc
    except (http.client.IncompleteRead, ConnectionError, TimeoutError) as exc:
        raise _FetchError(
            "interrupted", f"download of {url} stopped ({type(exc).__name__}); run again to resume"
        ) from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise _FetchError("network_error", f"cannot download {url}: {exc}") from exc


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _has_valid_copy(path: Path, sha256: str) -> bool:
    return path.is_file() and _sha256_file(path) == sha256


def _manifest_digest(manifest: Path | None) -> str:
    return hashlib.sha256(Path(manifest or MANIFEST_PATH).read_bytes()).hexdigest()


def _derive(entry: ManifestEntry, dest: Path, listed: list[str]) -> bytes:
    missing = [name for name in entry.inputs if not (dest / name).is_file()]
    if missing:
        raise _FetchError("missing_input", f"needs {missing}, which could not be fetched")
    texts = [(dest / name).read_text(encoding="utf-8") for name in entry.inputs]
    try:
        return DERIVERS[entry.derive or ""](texts, listed).encode("utf-8")
    except (LookupError, ValueError) as exc:
        raise _FetchError("derive_failed", f"cannot rebuild from {list(entry.inputs)}: {exc!r}") from exc


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``facekit assets fetch`` and ``facekit assets where``; each sets ``func(args) -> exit code``."""
    assets = subparsers.add_parser("assets", help="find or download the test/sample assets")
    commands = assets.add_subparsers(dest="assets_command", metavar="{fetch,where}", required=True)
    fetch = commands.add_parser("fetch", help="download and sha256-verify the assets (resumes interrupted downloads)")
    fetch.add_argument("--dest", type=Path, help=f"target folder (default: {default_cache_dir()})")
    fetch.add_argument(
        "--base-url", help="mirror laid out like the assets folder; files are read from <base-url>/<path>"
    )
    fetch.add_argument(
        "--only",
        nargs="+",
        metavar="PATH",
        help="fetch only these files or folders, e.g. --only models faces/deepface/img1.jpg",
    )
    fetch.set_defaults(func=_run_fetch)
    where = commands.add_parser("where", help="print the assets folder in use, or how to get one")
    where.set_defaults(func=_run_where)


def _run_fetch(args: argparse.Namespace) -> int:
    try:
        report = fetch_assets(args.dest, base_url=args.base_url, only=args.only, progress=sys.stderr.isatty())
    except AssetsError as exc:
        print(f"error ({exc.reason}): {exc.detail}", file=sys.stderr)
        return 2
    for failure in [*report.failed, *report.not_fetchable]:
        print(f"{failure.path}: {failure.reason}: {failure.detail}", file=sys.stderr)
    print(report.summary())
    if report.complete and args.dest is not None and Path(args.dest) != default_cache_dir():
        print(f"use it with: export {ENV_VAR}={Path(args.dest).resolve()}")
    return 0 if report.ok else 1


def _run_where(args: argparse.Namespace) -> int:
    try:
        print(assets_root())
    except AssetsError as exc:
        print(exc.detail, file=sys.stderr)
        return 1
    return 0
