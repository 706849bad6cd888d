"""The ``download`` stage: a LAION-Face metadata parquet (url, caption, face boxes) -> img2dataset-style tars.

Rows are cut, in parquet order, into shards of ``shard_size``; shard ``s`` becomes ``<out>/<s:05d>.tar``
holding, for every image that downloaded, ``<key>.<jpg|png|webp|bmp>`` (the bytes as served, not
re-encoded), ``<key>.json`` (key, url, caption, face_boxes, status, width, height, sha256) and
``<key>.txt`` (the caption), where ``key = f"{s:05d}{row in shard:0Nd}"`` as img2dataset names them.
``<s:05d>_stats.json`` lists the shard's counts and every failed URL with its reason. The tars are read
back by :class:`~facekit.data.sources.laion.LaionTarSource`.

Fetching: a thread pool, ``urllib`` with a per-URL deadline (connect + whole body), only ``http(s)`` URLs
(redirects included), a size limit, an image check (the served bytes must parse as JPEG/PNG/WebP/BMP),
``X-Robots-Tag: noai``-style opt-outs honoured, and retries for timeouts, connection errors, 429 and 5xx.
Failure reasons: ``missing_url``, ``bad_url``, ``http_<code>``, ``timeout``, ``connection_error``,
``too_large``, ``not_an_image``, ``unsupported_image``, ``opted_out``.

Resuming: every finished URL (image or failure) is kept under ``<s:05d>.parts/`` until its shard's tar is
written; a re-run skips finished shards and, inside an unfinished shard, finished URLs. Tars are
byte-for-byte deterministic (sorted members, fixed mtime/owner/mode), so a resumed run yields the same tars
as a clean one. ``<out>/_download.json`` pins the input (sha256, rows, shard size): a re-run with another
input or shard size is refused instead of mixing two plans.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from facekit.data.report import StageReport
from facekit.data.sources.laion import LaionRow, read_laion_parquet

USER_AGENT = "facekit-download/0.1 (+research; honours X-Robots-Tag noai)"
#: X-Robots-Tag directives that mean "do not use for AI training" (img2dataset honours the same by default)
OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex"})
_FORMAT_EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp"}
_RETRYABLE = frozenset({"timeout", "connection_error", "http_429", "http_500", "http_502", "http_503", "http_504"})
_CHUNK = 1 << 16
_MANIFEST = "_download.json"


class DownloadError(Exception):
    """The stage cannot run (``reason``: a short stable code, ``detail``: what to do)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class FetchFailure(Exception):
    """One URL that gave no usable image."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class FetchOptions:
    """How each URL is fetched."""

    timeout_s: float = 10.0
    retries: int = 2
    retry_delay_s: float = 1.0
    max_bytes: int = 20_000_000


def download(
    parquet: Path,
    out: Path,
    *,
    shard_size: int = 10_000,
    workers: int = 16,
    options: FetchOptions | None = None,
    url_column: str | None = None,
    caption_column: str | None = None,
    face_boxes_column: str | None = None,
    report_path: Path | None = None,
) -> StageReport:
    """Download every row of ``parquet`` into tar shards under ``out``; returns (and writes) the report.

    The report has ``read`` = rows, ``written`` = images stored, one rejection per failed URL (key = the
    sample key, detail = url and cause), and ``extra``: ``shards``, ``shards_skipped`` (finished before).
    """
    if shard_size < 1 or workers < 1:
        raise DownloadError("bad_params", f"shard_size ({shard_size}) and workers ({workers}) must be >= 1")
    options = options or FetchOptions()
    rows = read_laion_parquet(Path(parquet), url_column, caption_column, face_boxes_column)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_manifest(out, {"input_sha256": _sha256_file(Path(parquet)), "rows": len(rows), "shard_size": shard_size})
    num_shards = math.ceil(len(rows) / shard_size)
    shard_width = max(5, len(str(num_shards - 1)))
    sample_width = len(str(shard_size - 1))
    report = StageReport(stage="download", extra={"shards": float(num_shards), "shards_skipped": 0.0})
    for shard in range(num_shards):
        stem = f"{shard:0{shard_width}d}"
        shard_rows = rows[shard * shard_size : (shard + 1) * shard_size]
        keys = [f"{stem}{i:0{sample_width}d}" for i in range(len(shard_rows))]
        stats_path = out / f"{stem}_stats.json"
        if stats_path.is_file() and (out / f"{stem}.tar").is_file():
            report.extra["shards_skipped"] += 1
        else:
            _download_shard(out, stem, list(zip(keys, shard_rows, strict=True)), workers, options)
        stats = json.loads(stats_path.read_text())
        report.read += stats["count"]
        report.written += stats["successes"]
        for failure in stats["failed"]:
            report.reject(failure["key"], failure["reason"], f"{failure['url']}: {failure['detail']}")
    report.check()
    if report_path is not None:
        report.write(Path(report_path))
    return report


def fetch_image(url: str | None, options: FetchOptions) -> tuple[bytes, str, tuple[int, int]]:
    """``(bytes, extension, (width, height))`` of the image at ``url``, retried; raises :class:`FetchFailure`."""
    if not url:
        raise FetchFailure("missing_url", "the row has no url")
    if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
        raise FetchFailure("bad_url", f"only http(s) URLs are fetched, got {url[:80]!r}")
    for attempt in range(options.retries + 1):
        try:
            data, content_type = _fetch_once(url, options)
            break
        except FetchFailure as failure:
            if failure.reason not in _RETRYABLE or attempt == options.retries:
                raise
            time.sleep(options.retry_delay_s * (attempt + 1))
    return (data, *_check_image(data, content_type, options))


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects only to http(s) URLs."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise FetchFailure("bad_url", f"redirect to a non-http URL {newurl[:80]!r}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def _fetch_once(url: str, options: FetchOptions) -> tuple[bytes, str]:
    deadline = time.monotonic() + options.timeout_s
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with _OPENER.open(request, timeout=options.timeout_s) as response:
            directives = {
                d.strip().lower() for v in response.headers.get_all("X-Robots-Tag") or [] for d in v.split(",")
            }
            if opted := sorted(directives & OPT_OUT_DIRECTIVES):
                raise FetchFailure("opted_out", f"X-Robots-Tag: {', '.join(opted)}")
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > options.max_bytes:
                raise FetchFailure("too_large", f"Content-Length {length} exceeds {options.max_bytes:,} bytes")
            body = bytearray()
            while chunk := response.read(_CHUNK):
                body += chunk
                if len(body) > options.max_bytes:
                    raise FetchFailure("too_large", f"body exceeds {options.max_bytes:,} bytes")
                if time.monotonic() > deadline:
                    raise FetchFailure("timeout", f"body not complete within {options.timeout_s} s")
            return bytes(body), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        raise FetchFailure(f"http_{e.code}", f"HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise FetchFailure("timeout", f"no answer within {options.timeout_s} s") from e
        raise FetchFailure("connection_error", str(e.reason)) from e
    except TimeoutError as e:
        raise FetchFailure("timeout", f"no answer within {options.timeout_s} s") from e
    except (OSError, ValueError) as e:  # http.client errors, a reset connection, an unparsable URL
        raise FetchFailure("connection_error", f"{type(e).__name__}: {e}") from e


def _check_image(data: bytes, content_type: str, options: FetchOptions) -> tuple[str, tuple[int, int]]:
    """Extension and size of ``data`` from its header; :class:`FetchFailure` when it is no usable image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, size = img.format, img.size
    except Image.DecompressionBombError as e:
        raise FetchFailure("too_large", str(e)) from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        detail = f"Content-Type {content_type!r}, {len(data)} bytes starting {data[:12]!r}"
        raise FetchFailure("not_an_image", detail) from e
    if fmt not in _FORMAT_EXTENSIONS:
        raise FetchFailure("unsupported_image", f"{fmt} (kept: {', '.join(sorted(_FORMAT_EXTENSIONS))})")
    return _FORMAT_EXTENSIONS[fmt], size


def _download_shard(
    out: Path, stem: str, samples: list[tuple[str, LaionRow]], workers: int, options: FetchOptions
) -> None:
    """Fetch the shard's unfinished URLs into ``<stem>.parts/``, then write its tar and stats."""
    parts = out / f"{stem}.parts"
    parts.mkdir(exist_ok=True)
    pending = [(key, row) for key, row in samples if not (parts / f"{key}.json").is_file()]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_fetch_to_parts, parts, key, row, options) for key, row in pending]
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    failed, members = [], []
    for key, _ in samples:
        doc = json.loads((parts / f"{key}.json").read_text())
        if doc["status"] != "success":
            failed.append({k: doc[k] for k in ("key", "url", "reason", "detail")})
            continue
        members.append((f"{key}{doc['ext']}", (parts / f"{key}{doc['ext']}").read_bytes()))
        sample_doc = {k: v for k, v in doc.items() if k != "ext"}
        members.append((f"{key}.json", json.dumps(sample_doc, sort_keys=True).encode()))
        if doc.get("caption") is not None:
            members.append((f"{key}.txt", doc["caption"].encode()))
    _write_tar(out / f"{stem}.tar", members)
    stats = {"shard": stem, "count": len(samples), "successes": len(samples) - len(failed), "failed": failed}
    _write_atomic(out / f"{stem}_stats.json", json.dumps(stats, indent=1, sort_keys=True).encode())
    shutil.rmtree(parts)


def _fetch_to_parts(parts: Path, key: str, row: LaionRow, options: FetchOptions) -> None:
    """Fetch one URL; its image (if any) and then its ``<key>.json`` (the "finished" mark) land in ``parts``."""
    doc: dict[str, Any] = {"key": key, "url": row.url, "caption": row.caption}
    if row.face_boxes is not None:
        doc["face_boxes"] = row.face_boxes
    try:
        data, ext, (width, height) = fetch_image(row.url, options)
    except FetchFailure as failure:
        doc.update(status="failed", reason=failure.reason, detail=failure.detail)
    else:
        _write_atomic(parts / f"{key}{ext}", data)
        doc.update(status="success", ext=ext, width=width, height=height, sha256=hashlib.sha256(data).hexdigest())
    _write_atomic(parts / f"{key}.json", json.dumps(doc, sort_keys=True).encode())


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A deterministic tar: the given order, mtime 0, root owner, mode 0644; atomically replaced."""
    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    os.replace(partial, path)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    path = out / _MANIFEST
    if path.is_file():
        before = json.loads(path.read_text())
        if before != manifest:
            changed = sorted(k for k in manifest if before.get(k) != manifest[k])
            raise DownloadError(
                "changed_input",
                f"{out} was started with another {', '.join(changed)}; use a new folder or delete this one",
            )
        return
    _write_atomic(path, json.dumps(manifest, indent=1, sort_keys=True).encode())


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
