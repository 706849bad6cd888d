"""The download stage, offline against an HTTP server on 127.0.0.1 that logs every request."""

from __future__ import annotations

import http.server
import io
import json
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from facekit.data import download as download_mod
from facekit.data.download import DownloadError, FetchFailure, FetchOptions, download, fetch_image
from facekit.data.report import StageReport
from facekit.data.sources.laion import LaionTarSource

SLOW_S = 2.0
OPTIONS = FetchOptions(timeout_s=0.5, retries=1, retry_delay_s=0.0)


@dataclass
class _Route:
    body: bytes
    content_type: str = "image/jpeg"
    status: int = 200
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class _Server(http.server.ThreadingHTTPServer):
    """Serves ``routes`` (path -> answer), 404 for anything else; ``requests`` logs every path asked for."""

    daemon_threads = True

    def __init__(self, routes: dict[str, _Route]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes = routes
        self.requests: list[str] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        time.sleep(route.delay_s)
        try:
            self.send_response(route.status)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(route.body)))
            for name, value in route.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(route.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on a slow answer

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


@pytest.fixture
def serve() -> Iterator[Callable[[dict[str, _Route]], _Server]]:
    servers: list[_Server] = []

    def start(routes: dict[str, _Route]) -> _Server:
        server = _Server(routes)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _image(color: tuple[int, int, int], fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), color).save(buf, format=fmt)
    return buf.getvalue()


JPG_A, PNG_B, JPG_C, JPG_D = (
    _image((200, 10, 10), "JPEG"),
    _image((10, 200, 10), "PNG"),
    _image((10, 10, 200), "JPEG"),
    _image((90, 90, 90), "JPEG"),
)


@pytest.fixture
def laion(tmp_path: Path, serve) -> tuple[_Server, Path]:
    """A server and an 8-row parquet (2 shards of 4 rows): 3 good images, 5 kinds of failure."""
    server = serve(
        {
            "/a.jpg": _Route(JPG_A),
            "/page": _Route(b"<html><body>moved</body></html>", content_type="text/html"),
            "/slow.jpg": _Route(JPG_D, delay_s=SLOW_S),
            "/b.png": _Route(PNG_B, content_type="image/png"),
            "/noai.jpg": _Route(JPG_D, headers={"X-Robots-Tag": "noimageai, nofollow"}),
            "/c.jpg": _Route(JPG_C),
        }
    )
    rows = [
        ("/a.jpg", "a red face", [[1.0, 2.0, 11.0, 12.0]]),
        ("/missing.jpg", "gone", None),
        ("/page", "not an image", None),
        ("/slow.jpg", "too slow", None),
        ("/b.png", "a green face", [[0.0, 0.0, 5.0, 5.0], [6.0, 6.0, 9.0, 9.0]]),
        ("file:///etc/hostname", "local file", None),
        ("/noai.jpg", "opted out", None),
        ("/c.jpg", None, None),
    ]
    table = pa.table(
        {
            "url": [path if path.startswith("file:") else server.url(path) for path, _, _ in rows],
            "caption": [caption for _, caption, _ in rows],
            "face_boxes": pa.array([boxes for _, _, boxes in rows], type=pa.list_(pa.list_(pa.float64()))),
        }
    )
    parquet = tmp_path / "laion_face_meta.parquet"
    pq.write_table(table, parquet)
    return server, parquet


def _tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_download_writes_shards_and_reports_every_failure(tmp_path, laion) -> None:
    server, parquet = laion
    out = tmp_path / "laion"
    report = download(parquet, out, shard_size=4, workers=3, options=OPTIONS, report_path=tmp_path / "m/dl.json")

    assert (report.read, report.written, report.rejected) == (8, 3, 5)
    assert report.by_reason() == {"bad_url": 1, "http_404": 1, "not_an_image": 1, "opted_out": 1, "timeout": 1}
    reasons = {r.key: r.reason for r in report.rejections}
    assert reasons == {
        "000001": "http_404",
        "000002": "not_an_image",
        "000003": "timeout",
        "000011": "bad_url",
        "000012": "opted_out",
    }
    assert "text/html" in next(r.detail for r in report.rejections if r.reason == "not_an_image")
    assert sorted(p.name for p in out.iterdir()) == [
        "00000.tar",
        "00000_stats.json",
        "00001.tar",
        "00001_stats.json",
        "_download.json",
    ]
    shard0, shard1 = _tar_members(out / "00000.tar"), _tar_members(out / "00001.tar")
    assert list(shard0) == ["000000.jpg", "000000.json", "000000.txt"]
    assert list(shard1) == ["000010.png", "000010.json", "000010.txt", "000013.jpg", "000013.json"]
    assert shard0["000000.jpg"] == JPG_A and shard1["000010.png"] == PNG_B and shard1["000013.jpg"] == JPG_C
    meta = json.loads(shard1["000010.json"])
    assert meta["url"] == server.url("/b.png") and meta["face_boxes"] == [[0, 0, 5, 5], [6, 6, 9, 9]]
    assert (meta["status"], meta["width"], meta["height"], meta["caption"]) == ("success", 24, 16, "a green face")
    assert shard0["000000.txt"] == b"a red face"

    hits = Counter(server.requests)
    assert hits["/slow.jpg"] == 2, "a timeout is retried once"
    assert hits["/missing.jpg"] == hits["/page"] == hits["/noai.jpg"] == 1, "404, non-images, opt-outs: no retry"
    assert hits["/a.jpg"] == hits["/b.png"] == hits["/c.jpg"] == 1

    stats = json.loads((out / "00000_stats.json").read_text())
    assert (stats["count"], stats["successes"]) == (4, 1)
    saved = StageReport.load(tmp_path / "m/dl.json")
    assert (saved.read, saved.written, saved.by_reason()) == (8, 3, report.by_reason())
    assert json.loads((tmp_path / "m/dl.json").read_text())["shards"] == 2

    source = LaionTarSource(out, name="laion")
    assert source.keys() == ["laion/00000/000000", "laion/00001/000010", "laion/00001/000013"]
    record = source.read("laion/00000/000000")
    assert record.data == JPG_A and record.identity == -1
    assert record.meta == {"url": server.url("/a.jpg"), "caption": "a red face", "face_boxes": [[1, 2, 11, 12]]}


def test_rerun_skips_finished_shards(tmp_path, laion) -> None:
    server, parquet = laion
    out = tmp_path / "laion"
    first = download(parquet, out, shard_size=4, workers=2, options=OPTIONS)
    tars = {name: (out / name).read_bytes() for name in ("00000.tar", "00001.tar")}
    seen = len(server.requests)
    again = download(parquet, out, shard_size=4, workers=2, options=OPTIONS)
    assert len(server.requests) == seen, "nothing is fetched again"
    assert again.extra["shards_skipped"] == 2 and first.extra["shards_skipped"] == 0
    assert (again.read, again.written, again.by_reason()) == (first.read, first.written, first.by_reason())
    assert {name: (out / name).read_bytes() for name in tars} == tars


def test_interrupted_run_resumes_to_the_same_tars(tmp_path, laion, monkeypatch) -> None:
    server, parquet = laion
    clean = tmp_path / "clean"
    download(parquet, clean, shard_size=4, workers=2, options=OPTIONS)
    server.requests.clear()

    real_fetch = download_mod.fetch_image

    def crash_on_c(url: str | None, options: FetchOptions):
        if url and url.endswith("/c.jpg"):
            raise KeyboardInterrupt
        return real_fetch(url, options)

    out = tmp_path / "resumed"
    monkeypatch.setattr(download_mod, "fetch_image", crash_on_c)
    with pytest.raises(KeyboardInterrupt):
        download(parquet, out, shard_size=4, workers=1, options=OPTIONS)
    assert (out / "00000.tar").is_file() and not (out / "00001.tar").exists()
    assert (out / "00001.parts" / "000010.png").read_bytes() == PNG_B
    first_run = list(server.requests)
    assert "/c.jpg" not in first_run

    monkeypatch.setattr(download_mod, "fetch_image", real_fetch)
    report = download(parquet, out, shard_size=4, workers=1, options=OPTIONS)
    second_run = server.requests[len(first_run) :]
    assert second_run == ["/c.jpg"], "only the URL not finished before the interruption is fetched"
    assert report.extra["shards_skipped"] == 1 and (report.read, report.written) == (8, 3)
    for name in ("00000.tar", "00001.tar", "00000_stats.json", "00001_stats.json"):
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name
    assert not (out / "00001.parts").exists()


def test_a_different_plan_in_the_same_folder_is_refused(tmp_path, laion) -> None:
    _, parquet = laion
    out = tmp_path / "laion"
    download(parquet, out, shard_size=4, workers=2, options=OPTIONS)
    with pytest.raises(DownloadError) as info:
        download(parquet, out, shard_size=3, workers=2, options=OPTIONS)
    assert info.value.reason == "changed_input" and "shard_size" in info.value.detail


def test_fetch_image_limits(serve) -> None:
    server = serve({"/big.jpg": _Route(JPG_A), "/error": _Route(b"oops", status=503, content_type="text/plain")})
    with pytest.raises(FetchFailure) as info:
        fetch_image(server.url("/big.jpg"), FetchOptions(max_bytes=len(JPG_A) - 1))
    assert info.value.reason == "too_large"
    with pytest.raises(FetchFailure) as info:
        fetch_image(server.url("/error"), FetchOptions(retries=2, retry_delay_s=0.0))
    assert info.value.reason == "http_503" and server.requests.count("/error") == 3
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    with pytest.raises(FetchFailure) as info:
        fetch_image(f"http://127.0.0.1:{port}/gone.jpg", FetchOptions(retries=0))
    assert info.value.reason == "connection_error"
    with pytest.raises(FetchFailure) as info:
        fetch_image(None, OPTIONS)
    assert info.value.reason == "missing_url"
