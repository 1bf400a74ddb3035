"""`tivm-web --model DIR --library songs.npz`: serve the in-browser recommender page on this machine.

The page (web/) embeds the chosen video in the browser with the bundle's raw video graph in onnxruntime-web
and ranks the library there; nothing of the video leaves the browser. This server only hands out files, by a
fixed table of names (anything else is 404; no directory listings, no paths taken from the request):

    /  /app.mjs  /style.css ...    the page's files (web/, flat names only)
    /js/rank.mjs                   the ranking code shared with the Node client (js/rank.mjs)
    /model/manifest.json           the bundle's manifest, validated
    /model/video.onnx              the raw video graph (whatever file the manifest names)
    /model/audio.onnx              the raw audio graph, for the page's optional "your own songs"
    /library/library.json, /library/{embeddings,scales,window_start}.bin    the library, flat
    /songs/<index>                 song <index>'s file, resolved by SongLibrary.song_file (inside its folder)
    /ort/<file>                    onnxruntime-web's WebAssembly build (its dist/ folder)

The library is given as the .npz that `tivm-library build` writes and exported flat into a temporary folder
at start: the .npz is what records the songs folder, which /songs/ needs to resolve files safely, so a flat
folder alone would not do, and the conversion takes a fraction of a second per 10,000 songs.
"""

from __future__ import annotations

import mimetypes
import shutil
import tempfile
import threading
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

import typer

from tivm.runtime.cli.common import fail, printable, run
from tivm.runtime.errors import ModelError, TivmError

REPO = Path(__file__).resolve().parents[2]
PAGE_DIR = REPO / "web"
RANK_MODULE = REPO / "js" / "rank.mjs"
DEFAULT_ORT_DIR = REPO / "js" / "node_modules" / "onnxruntime-web" / "dist"
# The files the page loads from onnxruntime-web: the WebAssembly build (no WebGPU/WebGL), its threaded
# worker glue and the binary. ort.wasm.min.mjs imports the other two by these names.
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
PAGE_SUFFIXES = (".html", ".mjs", ".js", ".css", ".svg", ".png", ".ico")
LIBRARY_FILES = ("library.json", "embeddings.bin", "scales.bin", "window_start.bin")
CHUNK_BYTES = 1 << 20
MIME_TYPES = {  # stated here, not guessed from the system's table: browsers refuse modules or wasm mistyped
    ".html": "text/html; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
    ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".json": "application/json",
    ".wasm": "application/wasm", ".onnx": "application/octet-stream", ".bin": "application/octet-stream",
    ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon",
    ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".oga": "audio/ogg", ".opus": "audio/ogg", ".wav": "audio/wav",
    ".flac": "audio/flac", ".m4a": "audio/mp4", ".aac": "audio/aac", ".webm": "audio/webm",
    ".mp4": "video/mp4", ".mkv": "video/x-matroska",
}

app = typer.Typer(add_completion=False, help=__doc__)


def ort_install_hint(ort_dir: Path) -> str:
    return (f"{ort_dir}: onnxruntime-web's dist files are missing ({', '.join(ORT_FILES)}); "
            "run `cd js && npm ci` (tools/test-deps.sh does) or pass --ort-dir with a folder that has them")


class Site:
    """What the server may hand out: URL path -> file, built once at start from validated inputs."""

    def __init__(self, model_dir: Path, library_path: Path, ort_dir: Path, flat_dir: Path):
        from tivm.runtime.flat_library import export_flat
        from tivm.runtime.library import SongLibrary
        from tivm.runtime.manifest import read_manifest

        manifest = read_manifest(model_dir)
        video = manifest.video
        if video.kind != "raw":
            raise ModelError(f"{model_dir}: the video branch is {video.kind!r}; the page needs a raw bundle "
                            "(`tivm-export RUN --branch-kind raw`)")
        video_file = branch_file(model_dir, video.file)
        # the audio graph only for the page's optional "your own songs" (loaded when the user adds one)
        audio_file = branch_file(model_dir, manifest.audio.file) if manifest.audio.kind == "raw" else None
        missing = [name for name in ORT_FILES if not (ort_dir / name).is_file()]
        if missing:
            raise TivmError(ort_install_hint(ort_dir))
        if not RANK_MODULE.is_file() or not (PAGE_DIR / "index.html").is_file():
            raise TivmError(f"{PAGE_DIR}: the page's files are missing (a tivm install without its web/ folder)")
        self.library = SongLibrary.load(library_path)
        self.fingerprint_matches = self.library.model_fingerprint == manifest.model_fingerprint
        export_flat(self.library, flat_dir, dtype="int8")
        self.manifest_json = manifest_bytes(manifest)
        self.files: dict[str, Path] = {"/model/video.onnx": video_file, "/js/rank.mjs": RANK_MODULE}
        if audio_file is not None:
            self.files["/model/audio.onnx"] = audio_file
        for page_file in PAGE_DIR.iterdir():
            if page_file.is_file() and page_file.suffix in PAGE_SUFFIXES:
                self.files[f"/{page_file.name}"] = page_file
        self.files["/"] = PAGE_DIR / "index.html"
        for name in LIBRARY_FILES:
            if (flat_dir / name).is_file():
                self.files[f"/library/{name}"] = flat_dir / name
        for name in ORT_FILES:
            self.files[f"/ort/{name}"] = ort_dir / name

    def song_file(self, path: str) -> Path | None:
        """/songs/<index> -> the song's file, or None (not a song URL, or the library refuses the path)."""
        index = path.removeprefix("/songs/")
        if not (path.startswith("/songs/") and index.isdigit() and index.isascii() and len(index) <= 9):
            return None
        if int(index) >= len(self.library.titles):
            return None
        try:  # SongLibrary is immutable: safe from the server's threads
            return self.library.song_file(int(index))
        except TivmError:
            return None


def branch_file(model_dir: Path, name: str) -> Path:
    path = (model_dir / name).resolve()
    if not path.is_relative_to(model_dir.resolve()) or not path.is_file():
        raise ModelError(f"{model_dir / name}: missing, or outside the model directory")
    return path


def manifest_bytes(manifest) -> bytes:
    import json

    return (json.dumps(manifest.to_json(), indent=1) + "\n").encode()


class Handler(BaseHTTPRequestHandler):
    server_version = "tivm-web"
    site: Site
    quiet: bool

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        path = urlsplit(self.path).path
        if path == "/model/manifest.json":
            return self._send_bytes(self.site.manifest_json, "application/json", body)
        file = self.site.files.get(path) or self.site.song_file(path)
        if file is None:
            return self._send_error(HTTPStatus.NOT_FOUND)
        try:
            handle = open(file, "rb")
        except OSError:  # moved or deleted since the start
            return self._send_error(HTTPStatus.NOT_FOUND)
        with handle:
            size = Path(file).stat().st_size
            self.send_response(HTTPStatus.OK)
            self._common_headers(mime_type(file), size)
            self.end_headers()
            if body:
                shutil.copyfileobj(handle, self.wfile, CHUNK_BYTES)

    def _send_bytes(self, data: bytes, content_type: str, body: bool) -> None:
        self.send_response(HTTPStatus.OK)
        self._common_headers(content_type, len(data))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _send_error(self, status: HTTPStatus) -> None:
        data = f"{status.value} {status.phrase}\n".encode()
        self.send_response(status)
        self._common_headers("text/plain; charset=utf-8", len(data))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _common_headers(self, content_type: str, length: int) -> None:
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        # cross-origin isolation: SharedArrayBuffer, so onnxruntime-web can run its WebAssembly on threads
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        if not self.quiet:
            super().log_message(format, *args)


def mime_type(path: Path) -> str:
    return MIME_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def make_server(site: Site, host: str = "127.0.0.1", port: int = 0, quiet: bool = False) -> ThreadingHTTPServer:
    """A server for `site` (port 0: any free port; read server.server_address)."""
    handler = type("SiteHandler", (Handler,), {"site": site, "quiet": quiet})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


@app.command()
def web(
    model: Path = typer.Option(..., "--model", "-m", help="raw bundle (`tivm-export RUN --branch-kind raw`)"),
    library: Path = typer.Option(..., "--library", "-l", help="song library (.npz from `tivm-library build`)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind; the default is this machine only"),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="port (0: any free one)"),
    ort_dir: Optional[Path] = typer.Option(
        None, "--ort-dir", help=f"onnxruntime-web's dist folder; default {DEFAULT_ORT_DIR}"),
    quiet: bool = typer.Option(False, "--quiet", help="do not log each request"),
) -> None:
    ort_dir = ort_dir or DEFAULT_ORT_DIR
    with tempfile.TemporaryDirectory(prefix="tivm-web-") as flat_dir:
        try:
            site = Site(model, library, ort_dir, Path(flat_dir) / "library")
        except TivmError as exc:
            fail(exc)
        if not site.fingerprint_matches:  # served anyway: the page says so, as it would for a replaced file
            typer.echo(f"warning: {printable(library)}: built by another model than {printable(model)}; "
                       "the page will refuse it (rebuild it with `tivm-library build --model`)", err=True)
        try:
            server = make_server(site, host, port, quiet)
        except OSError as exc:
            fail(f"{host}:{port}: cannot listen ({exc.strerror or exc})")
        bound_host, bound_port = server.server_address[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        typer.echo(f"tivm-web: open http://{shown}:{bound_port}/  (Ctrl-C stops)", err=False)
        try:
            server.serve_forever()
        finally:
            server.server_close()


def serve_in_thread(site: Site, host: str = "127.0.0.1") -> tuple[ThreadingHTTPServer, str]:
    """Start a quiet server for `site` on a free port in a daemon thread; (server, base URL). For tests."""
    server = make_server(site, host, 0, quiet=True)
    threading.Thread(target=partial(server.serve_forever, poll_interval=0.1), daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}"


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
