"""Asset lookup and `facekit assets fetch`, offline against an HTTP server on 127.0.0.1."""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import re
import threading
import urllib.parse
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from facekit import assets as fk_assets
from facekit.asset_derivations import DERIVERS
from facekit.assets import (
    COMPLETE_MARKER,
    AssetsError,
    AssetsNotFoundError,
    asset_path,
    assets_root,
    fetch_assets,
    load_manifest,
    register_cli,
)


class _MirrorServer(http.server.ThreadingHTTPServer):
    """Serves ``root``; records (path, Range header) per request; cuts ``cut_once`` files short once."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _MirrorHandler)
        self.root = root
        self.cut_once: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _MirrorHandler(http.server.BaseHTTPRequestHandler):
    server: _MirrorServer

    def do_GET(self) -> None:
        relative = urllib.parse.unquote(self.path.lstrip("/"))
        byte_range = self.headers.get("Range")
        self.server.requests.append((relative, byte_range))
        path = self.server.root / relative
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = int(re.fullmatch(r"bytes=(\d+)-", byte_range).group(1)) if byte_range else 0
        if start >= len(data) > 0:
            self.send_error(416)
            return
        body = data[start:]
        self.send_response(206 if byte_range else 200)
        if byte_range:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if relative in self.server.cut_once:
            self.server.cut_once.discard(relative)
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


@pytest.fixture
def serve() -> Iterator[callable]:
    """``serve(folder)`` starts a mirror of ``folder`` and returns it; all are shut down afterwards."""
    servers: list[_MirrorServer] = []

    def start(root: Path) -> _MirrorServer:
        server = _MirrorServer(root)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def photo_mirror(tmp_path: Path, assets: Path) -> dict[str, bytes]:
    """Two real files laid out like the assets folder in ``tmp_path/mirror``; relative path -> bytes."""
    files = {
        "faces/deepface/img1.jpg": (assets / "faces/deepface/img1.jpg").read_bytes(),
        "masks/masks.cfg": (assets / "masks/masks.cfg").read_bytes(),
    }
    for relative, data in files.items():
        (tmp_path / "mirror" / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "mirror" / relative).write_bytes(data)
    return files


def _write_manifest(path: Path, entries: list[dict]) -> Path:
    files = [{"licence": "MIT", "source": "test", "url": None, **entry} for entry in entries]
    path.write_text(json.dumps({"format": 1, "files": files}))
    return path


def _entry(relative: str, data: bytes, url: str | None = None) -> dict:
    return {"path": relative, "url": url, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def test_fetch_places_verified_files_and_rerun_skips_them(tmp_path, serve, photo_mirror) -> None:
    server = serve(tmp_path / "mirror")
    entries = [_entry(rel, data, f"{server.url}/{rel}") for rel, data in photo_mirror.items()]
    manifest = _write_manifest(tmp_path / "manifest.json", entries)
    dest = tmp_path / "dest"

    report = fetch_assets(dest, manifest=manifest, progress=True)
    assert sorted(report.fetched) == sorted(photo_mirror) and report.ok and report.complete
    for relative, data in photo_mirror.items():
        assert (dest / relative).read_bytes() == data
    assert not list(dest.rglob("*.part"))
    assert (dest / COMPLETE_MARKER).is_file()
    assert "\n" not in report.summary() and "fetched 2" in report.summary()

    seen = len(server.requests)
    again = fetch_assets(dest, manifest=manifest, progress=False)
    assert sorted(again.skipped) == sorted(photo_mirror) and not again.fetched and again.complete
    assert len(server.requests) == seen, "a re-run downloads nothing"


def test_wrong_checksum_is_not_kept(tmp_path, serve, photo_mirror) -> None:
    server = serve(tmp_path / "mirror")
    good, bad = photo_mirror.items()
    entries = [_entry(*good, url=f"{server.url}/{good[0]}"), _entry(bad[0], b"other", f"{server.url}/{bad[0]}")]
    dest = tmp_path / "dest"
    report = fetch_assets(dest, manifest=_write_manifest(tmp_path / "m.json", entries), progress=False)

    assert report.fetched == [good[0]]
    assert [(f.path, f.reason) for f in report.failed] == [(bad[0], "checksum_mismatch")]
    assert not (dest / bad[0]).exists() and not list(dest.rglob("*.part"))
    assert not report.complete and not (dest / COMPLETE_MARKER).exists()
    assert "checksum_mismatch" in report.summary()


def test_present_file_with_wrong_content_is_replaced(tmp_path, serve, photo_mirror) -> None:
    server = serve(tmp_path / "mirror")
    relative, data = next(iter(photo_mirror.items()))
    dest = tmp_path / "dest"
    (dest / relative).parent.mkdir(parents=True)
    (dest / relative).write_bytes(data[:1000])
    manifest = _write_manifest(tmp_path / "m.json", [_entry(relative, data, f"{server.url}/{relative}")])
    report = fetch_assets(dest, manifest=manifest, progress=False)
    assert report.fetched == [relative]
    assert (dest / relative).read_bytes() == data


def test_missing_file_reported_while_others_are_fetched(tmp_path, serve, photo_mirror) -> None:
    server = serve(tmp_path / "mirror")
    entries = [_entry(rel, data) for rel, data in photo_mirror.items()]
    entries.append(_entry("models/gone.onnx", b"weights"))
    manifest = _write_manifest(tmp_path / "m.json", [{**e, "url": "https://unused.invalid/x"} for e in entries])

    report = fetch_assets(tmp_path / "dest", manifest=manifest, base_url=server.url, progress=False)
    assert sorted(report.fetched) == sorted(photo_mirror)
    assert [(f.path, f.reason) for f in report.failed] == [("models/gone.onnx", "http_error")]
    assert "404" in report.failed[0].detail
    assert not report.ok and not report.complete


def test_interrupted_download_resumes_with_range(tmp_path, serve, photo_mirror) -> None:
    server = serve(tmp_path / "mirror")
    relative = "faces/deepface/img1.jpg"
    data = photo_mirror[relative]
    server.cut_once.add(relative)
    manifest = _write_manifest(tmp_path / "m.json", [_entry(relative, data, f"{server.url}/{relative}")])
    dest = tmp_path / "dest"

    first = fetch_assets(dest, manifest=manifest, progress=False)
    assert [(f.path, f.reason) for f in first.failed] == [(relative, "interrupted")]
    part = dest / (relative + ".part")
    assert part.stat().st_size == len(data) // 2 and not (dest / relative).exists()

    second = fetch_assets(dest, manifest=manifest, progress=False)
    assert second.fetched == [relative] and second.complete
    assert server.requests[-1] == (relative, f"bytes={len(data) // 2}-")
    assert hashlib.sha256((dest / relative).read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert not part.exists()


def test_derived_files_are_rebuilt_from_the_real_pivot(tmp_path, serve, assets) -> None:
    """pairs.csv and identities.csv have no URL: rebuilt from the fetched pivot, they match exactly."""
    server = serve(assets)
    derived = ["faces/deepface/pairs.csv", "faces/deepface/identities.csv"]
    report = fetch_assets(tmp_path / "dest", base_url=server.url, only=derived, progress=False)
    assert report.ok, report.summary()
    assert sorted(report.fetched) == sorted([*derived, "faces/deepface/face-recognition-pivot.csv"])
    assert [rel for rel, _ in server.requests] == ["faces/deepface/face-recognition-pivot.csv"]
    for relative in derived:
        assert (tmp_path / "dest" / relative).read_bytes() == (assets / relative).read_bytes()


_CELEBA_DERIVED = [
    "downstream/celeba/Anno/identity_CelebA.txt",
    "downstream/celeba/Anno/list_attr_celeba.txt",
    "faces/celeba_medium/identities.csv",
]


def _full_celeba_files(assets: Path) -> dict[str, str]:
    """Stand-ins for CelebA's full annotation files (the intermediate inputs), built from the shared cuts
    plus rows of photos that are not in the assets, in the upstream layouts (a header; CRLF for attributes)."""
    labels = {f"{n:06d}.jpg": str(9000 + n) for n in range(1, 400)}
    medium = (assets / "faces/celeba_medium/identities.csv").read_text().splitlines()[1:]
    labels |= {row.split(",")[0].split("/")[1]: row.split(",")[1].removeprefix("celeba_") for row in medium}
    cut = (assets / "downstream/celeba/Anno/identity_CelebA.txt").read_text().split()
    labels |= dict(zip(cut[::2], cut[1::2], strict=True))
    _count, header, *rows = (assets / "downstream/celeba/Anno/list_attr_celeba.txt").read_text().splitlines()
    attrs = {f"{n:06d}.jpg": f"{n:06d}.jpg" + " -1" * 40 for n in range(1, 400)}
    attrs |= {row.split()[0]: row for row in rows}
    identity = "image identity\n" + "".join(f"{name} {label}\n" for name, label in sorted(labels.items()))
    attr = "\r\n".join(["202599", header, *(attrs[name] for name in sorted(attrs))]) + "\r\n"
    return {".inputs/celeba/identity_CelebA.txt": identity, ".inputs/celeba/list_attr_celeba.txt": attr}


def test_celeba_annotations_are_rebuilt_from_intermediate_inputs(tmp_path, serve, assets) -> None:
    """The CelebA annotation files are cut from CelebA's full files (intermediates): rebuilt from them for the
    photos the manifest lists, they match the shared files exactly; the intermediates are not kept."""
    full = _full_celeba_files(assets)
    for relative, text in full.items():
        (tmp_path / "mirror" / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "mirror" / relative).write_bytes(text.encode())
    server = serve(tmp_path / "mirror")
    doc = json.loads(fk_assets.MANIFEST_PATH.read_text())
    for raw in doc["files"]:
        if raw["path"] in full:
            data = full[raw["path"]].encode()
            raw |= {"url": f"{server.url}/{raw['path']}", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(doc))
    dest = tmp_path / "dest"

    report = fetch_assets(dest, manifest=manifest, only=_CELEBA_DERIVED, progress=False)
    assert report.ok, report.summary()
    assert sorted(report.fetched) == _CELEBA_DERIVED, "intermediates are not reported as fetched assets"
    assert sorted(rel for rel, _ in server.requests) == sorted(full)
    for relative in _CELEBA_DERIVED:
        assert (dest / relative).read_bytes() == (assets / relative).read_bytes(), relative
    assert not (dest / ".inputs").exists(), "intermediates are deleted after the run"

    seen = len(server.requests)
    again = fetch_assets(dest, manifest=manifest, only=_CELEBA_DERIVED, progress=False)
    assert sorted(again.skipped) == _CELEBA_DERIVED and not again.fetched
    assert len(server.requests) == seen, "no intermediate is downloaded when nothing needs rebuilding"

    mislabelled = full[".inputs/celeba/identity_CelebA.txt"].replace("001085.jpg 7201", "001085.jpg 7202")
    with pytest.raises(ValueError, match=re.escape("celeba_7201/001085.jpg is labelled celeba_7202")):
        DERIVERS["celeba_medium_identities"]([mislabelled], [e.path for e in load_manifest()])


def test_mirror_serves_files_derived_from_intermediates(tmp_path, serve, assets) -> None:
    """A mirror holds the assets, not the intermediates: a file derived from one is read from the mirror."""
    server = serve(assets)
    relative = "downstream/celeba/Anno/list_attr_celeba.txt"
    report = fetch_assets(tmp_path / "dest", base_url=server.url, only=[relative], progress=False)
    assert report.fetched == [relative] and report.ok
    assert [rel for rel, _ in server.requests] == [relative]
    assert (tmp_path / "dest" / relative).read_bytes() == (assets / relative).read_bytes()


def test_archive_member_is_extracted_and_verified(tmp_path, serve, photo_mirror) -> None:
    server = serve(tmp_path / "mirror")
    data = photo_mirror["masks/masks.cfg"]
    with zipfile.ZipFile(tmp_path / "mirror" / "bundle.whl", "w") as bundle:
        bundle.writestr("pkg/modules/model.cfg", data)
    archive = (tmp_path / "mirror" / "bundle.whl").read_bytes()
    entry = {
        **_entry("models/model.cfg", data, f"{server.url}/bundle.whl"),
        "archive_member": "pkg/modules/model.cfg",
        "archive_sha256": hashlib.sha256(archive).hexdigest(),
        "archive_size": len(archive),
    }
    dest = tmp_path / "dest"
    report = fetch_assets(dest, manifest=_write_manifest(tmp_path / "m.json", [entry]), progress=False)
    assert report.fetched == ["models/model.cfg"] and report.complete
    assert (dest / "models/model.cfg").read_bytes() == data
    assert not [p for p in dest.rglob("*") if p.suffix in (".whl", ".part")], "archive not kept"


def test_file_without_public_source_is_reported_not_faked(tmp_path, serve, photo_mirror) -> None:
    server = serve(tmp_path / "mirror")
    relative, data = next(iter(photo_mirror.items()))
    entries = [
        _entry(relative, data, f"{server.url}/{relative}"),
        {**_entry("models/private.onnx", b"x"), "note": "only in the shared folder"},
    ]
    dest = tmp_path / "dest"
    report = fetch_assets(dest, manifest=_write_manifest(tmp_path / "m.json", entries), progress=False)
    assert [(f.path, f.reason) for f in report.not_fetchable] == [("models/private.onnx", "no_public_url")]
    assert report.ok and report.complete and not (dest / "models/private.onnx").exists()
    assert "not fetchable 1" in report.summary()


def test_unknown_only_path_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(AssetsError) as info:
        fetch_assets(tmp_path, only=["models/no_such_model.onnx"], progress=False)
    assert info.value.reason == "unknown_asset" and "no_such_model" in info.value.detail


def test_assets_root_precedence_and_instructions(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FACEKIT_ASSETS", raising=False)
    with pytest.raises(AssetsNotFoundError) as info:
        assets_root()
    message = str(info.value)
    assert "export FACEKIT_ASSETS=/path/to/assets" in message and "facekit assets fetch" in message

    cache = tmp_path / "cache" / "facekit" / "assets"
    cache.mkdir(parents=True)
    with pytest.raises(AssetsNotFoundError):
        assets_root()  # a cache without the completion marker is a half-finished fetch
    (cache / COMPLETE_MARKER).write_text("done\n")
    assert assets_root() == cache

    explicit = tmp_path / "explicit"
    explicit.mkdir()
    monkeypatch.setenv("FACEKIT_ASSETS", str(explicit))
    assert assets_root() == explicit
    monkeypatch.setenv("FACEKIT_ASSETS", str(tmp_path / "nowhere"))
    with pytest.raises(AssetsNotFoundError) as info:
        assets_root()
    assert info.value.reason == "env_path_missing" and "nowhere" in str(info.value)


def test_asset_path_names_the_missing_file(assets, monkeypatch) -> None:
    monkeypatch.setenv("FACEKIT_ASSETS", str(assets))
    assert asset_path("models/yunet_s_320_320.onnx") == assets / "models/yunet_s_320_320.onnx"
    with pytest.raises(AssetsNotFoundError) as info:
        asset_path("models/missing.onnx")
    assert info.value.reason == "missing_file" and "models/missing.onnx" in str(info.value)
    with pytest.raises(AssetsError) as info:
        asset_path("../outside.txt")
    assert info.value.reason == "bad_asset_path"


def test_cli_fetch_and_where(tmp_path, serve, assets, monkeypatch, capsys) -> None:
    parser = argparse.ArgumentParser(prog="facekit")
    register_cli(parser.add_subparsers(dest="command"))
    server = serve(assets)
    dest = tmp_path / "dest"

    def run(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        return args.func(args)

    only = "models/yunet_s_320_320.onnx"
    assert run("assets", "fetch", "--dest", str(dest), "--base-url", server.url, "--only", only) == 0
    assert (dest / only).read_bytes() == (assets / only).read_bytes()
    assert "fetched 1" in capsys.readouterr().out
    empty = serve(tmp_path / "empty")
    assert run("assets", "fetch", "--dest", str(dest), "--base-url", empty.url, "--only", "masks") == 1
    assert "http_error" in capsys.readouterr().err
    assert run("assets", "fetch", "--dest", str(dest), "--only", "no/such/file") == 2

    monkeypatch.setenv("FACEKIT_ASSETS", str(assets))
    assert run("assets", "where") == 0 and capsys.readouterr().out.strip() == str(assets)
    monkeypatch.delenv("FACEKIT_ASSETS")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert run("assets", "where") == 1
    assert "export FACEKIT_ASSETS=/path/to/assets" in capsys.readouterr().err


def test_real_manifest_covers_every_shared_file(assets) -> None:
    """Every file in SHA256SUMS has a manifest entry with the same sha256 and size, a licence, a source
    and a way to get it (URL, archive member or derivation). The folder's own documentation (README.md,
    */SOURCES.md) has no public copy: its entry says so in a note instead."""
    listed = {}
    for line in (assets / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name.removeprefix("./")] = digest
    listed.pop("SHA256SUMS")  # the checksum file lists itself (the hash of an empty file): not an asset
    manifest = load_manifest()
    entries = {entry.path: entry for entry in manifest if not entry.intermediate}
    assert set(entries) == set(listed)
    for relative, digest in listed.items():
        entry = entries[relative]
        assert entry.sha256 == digest, relative
        assert entry.size == (assets / relative).stat().st_size, relative
        assert entry.licence and entry.source, relative
        documentation = relative == "README.md" or relative.endswith("/SOURCES.md")
        assert (entry.url or "").startswith("https://") or entry.derive or (documentation and entry.note), relative
    for entry in manifest:
        if entry.intermediate:
            assert entry.url.startswith("https://") and entry.licence and entry.source, entry.path
            assert any(entry.path in other.inputs for other in manifest), f"{entry.path} is no one's input"
    assert fk_assets.MANIFEST_PATH.parent == Path(fk_assets.__file__).parent
