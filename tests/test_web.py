"""The in-browser page (web/) and its server (`tivm-web`, runtime/cli/web.py).

Server: it hands out exactly the page, the bundle's video graph, the flat library, the library's songs and
onnxruntime-web's files, with the right types; everything else (traversal, listings, songs outside their
folder) is 404; a bad model or a missing onnxruntime-web is one error line.
Browser: headless Chromium (Debian's, driven by Playwright for Python, no browser download) loads the page,
is given a shared clip, and must rank the library with the same top song as the Python runtime, scores
within SCORE_TOLERANCE and window embeddings within MIN_WINDOW_COSINE; and it must say clearly when the file
cannot be decoded, the model is missing, or the library was built by another model.
Needs js/node_modules/onnxruntime-web (tools/test-deps.sh); the browser tests need /usr/bin/chromium and the
playwright package (the `test` extra, tools/test-deps.sh); each skips with the reason otherwise.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path
from edge_fixtures import cosines

from tivm.runtime.cli.web import DEFAULT_ORT_DIR, ORT_FILES, Site, serve_in_thread
from tivm.runtime.library import SongLibrary
from tivm.runtime.recommend import Recommender
from tivm.runtime.video import sample_frames

CHROMIUM = Path("/usr/bin/chromium")
# Browser against Python: the browser decodes and converts YUV to RGB itself, so its frames differ from PyAV's
# by a few levels. Measured on the four shared clips with the e2e int8 bundle (docs/web.md): window cosine
# 0.9984-0.9999, score differences <= 0.0009; the bounds leave room for other Chromium builds. This test
# model's embedding barely moves with the frame (the frames half a second later: cosine 0.9997; mirrored:
# 0.9985), so which frames were taken and their orientation are checked directly: times and size.
MIN_WINDOW_COSINE = 0.99
SCORE_TOLERANCE = 0.005
# The user's own songs: decoded and resampled by the browser (Chromium's resampler), against the library's
# windows of the same files (the runtime's kaiser_best resampler); measured on the 8 shared songs: docs/web.md.
MIN_SONG_WINDOW_COSINE = 0.999
PAGE_TIMEOUT_MS = 240_000  # a 15 s clip on a busy 2-core machine: sampling, one window, ranking


def get(base: str, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    """One request with `path` sent exactly as written (no client-side normalisation of .. or %2e)."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def ort_dir() -> Path:
    if not all((DEFAULT_ORT_DIR / name).is_file() for name in ORT_FILES):
        pytest.skip("needs js/node_modules/onnxruntime-web: run tools/test-deps.sh (the README's test command does)")
    return DEFAULT_ORT_DIR


@pytest.fixture(scope="module")
def served(edge_world, ort_dir, tmp_path_factory):
    site = Site(edge_world.bundles["int8"], edge_world.library, ort_dir, tmp_path_factory.mktemp("web") / "flat")
    server, base = serve_in_thread(site)
    yield site, base
    server.shutdown()
    server.server_close()


def test_serves_the_page_model_library_songs_and_onnxruntime(served, edge_world):
    site, base = served
    expected_types = {"/": "text/html", "/app.mjs": "text/javascript", "/style.css": "text/css",
                      "/js/rank.mjs": "text/javascript", "/model/manifest.json": "application/json",
                      "/model/video.onnx": "application/octet-stream", "/model/audio.onnx": "application/octet-stream",
                      "/library/library.json": "application/json",
                      "/library/embeddings.bin": "application/octet-stream",
                      "/ort/ort.wasm.min.mjs": "text/javascript", "/ort/ort-wasm-simd-threaded.mjs": "text/javascript",
                      "/ort/ort-wasm-simd-threaded.wasm": "application/wasm"}
    for path, content_type in expected_types.items():
        status, headers, body = get(base, path)
        assert status == 200, path
        assert headers["content-type"].split(";")[0] == content_type, path
        assert int(headers["content-length"]) == len(body) > 0, path
        assert headers["cross-origin-embedder-policy"] == "require-corp"  # threads need cross-origin isolation
    manifest = json.loads(get(base, "/model/manifest.json")[2])
    index = json.loads(get(base, "/library/library.json")[2])
    assert index["model_fingerprint"] == manifest["model_fingerprint"] == site.library.model_fingerprint
    model_file = Path(edge_world.bundles["int8"]) / manifest["video"]["file"]
    assert get(base, "/model/video.onnx")[2] == model_file.read_bytes()
    for song in range(len(site.library.titles)):
        status, headers, body = get(base, f"/songs/{song}")
        assert status == 200 and body == site.library.song_file(song).read_bytes()
        assert headers["content-type"].startswith("audio/")
    status, headers, body = get(base, "/model/video.onnx", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) == model_file.stat().st_size


@pytest.mark.parametrize("path", [
    "/../pyproject.toml", "/web/../pyproject.toml", "/%2e%2e/pyproject.toml", "/..%2fpyproject.toml",
    "//etc/passwd", "/etc/passwd", "/index.html/../../pyproject.toml", "/web/", "/web/index.html", "/model/",
    "/model/../manifest.json", "/model/audio.onnx/", "/library/", "/library/../library.json", "/ort/",
    "/ort/ort.all.min.mjs", "/ort/../package.json", "/js/", "/js/recommend.mjs", "/js/package.json",
    "/runtime/cli/web.py", "/songs/", "/songs/-1", "/songs/999", "/songs/0/../1", "/songs/%30", "/songs/0x1",
    "/songs/%D9%A1", "/songs/1e0", "/songs/00000000000000000001",
])
def test_serves_nothing_else(served, path):
    status, _, body = get(served[1], path)
    assert status == 404, (path, body[:80])


def test_a_song_leading_out_of_its_folder_is_not_served(edge_world, ort_dir, tmp_path):
    # paths with .. or absolute ones are refused when the library loads; a symbolic link inside the songs
    # folder is the way out that is left, and song_file resolves it
    library = SongLibrary.load(edge_world.library, mmap=False)
    songs = tmp_path / "songs"
    shutil.copytree(library.meta["root"], songs)
    secret = tmp_path / "secret.ogg"
    secret.write_bytes(b"not for the page")
    (songs / str(library.paths[0])).unlink()
    (songs / str(library.paths[0])).symlink_to(secret)
    (songs / str(library.paths[1])).unlink()  # moved away since the build
    moved = dataclasses.replace(library, meta={**library.meta, "root": str(songs)}).save(tmp_path / "moved.npz")
    server, base = serve_in_thread(Site(edge_world.bundles["int8"], moved, ort_dir, tmp_path / "flat"))
    try:
        assert get(base, "/songs/0")[0] == 404
        assert get(base, "/songs/1")[0] == 404
        status, _, body = get(base, "/songs/2")  # the rest of the library still plays
        assert status == 200 and body == (songs / str(library.paths[2])).read_bytes()
    finally:
        server.shutdown()
        server.server_close()


def run_cli(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tivm.runtime.cli.web", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def test_cli_errors_are_one_line(edge_world, tmp_path, ort_dir):
    done = run_cli("--model", tmp_path / "nowhere", "--library", edge_world.library)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert "nowhere" in done.stderr
    done = run_cli("--model", edge_world.bundles["int8"], "--library", edge_world.library, "--ort-dir", tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "npm ci" in done.stderr
    (tmp_path / "songs.npz").write_bytes(b"PK not a library")
    done = run_cli("--model", edge_world.bundles["int8"], "--library", tmp_path / "songs.npz")
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr


def test_cli_prints_the_url_and_serves(edge_world, ort_dir):
    process = subprocess.Popen([sys.executable, "-m", "tivm.runtime.cli.web", "--model",
                                str(edge_world.bundles["int8"]), "--library", str(edge_world.library), "--port", "0",
                                "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert "http://127.0.0.1:" in line, line + process.stderr.read() if process.poll() is not None else line
        base = line.split("open ")[1].split()[0].rstrip("/")
        status, headers, body = get(base, "/")
        assert status == 200 and b"app.mjs" in body
    finally:
        process.terminate()
        process.wait(timeout=30)


# ---- in a real browser ----

@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM}: run tools/test-deps.sh as root (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("needs the playwright package (the `test` extra: pip install -e '.[test]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


def open_page(browser, base: str):
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.goto(base + "/")
    page.wait_for_function("['ready', 'error'].includes(window.tivm?.state)", timeout=PAGE_TIMEOUT_MS)
    return page


def choose(page, clip: Path) -> dict:
    page.set_input_files("#clip", str(clip))
    page.wait_for_function("['done', 'error'].includes(window.tivm.state)", timeout=PAGE_TIMEOUT_MS)
    return page.evaluate("window.tivm")


@pytest.mark.parametrize("clip_name", ["clips/bbb_0-15s.mp4", "phone/bbb_portrait_rot90_6s.mp4"])
def test_page_ranks_a_clip_as_the_python_runtime_does(browser, served, edge_world, tmp_path, clip_name):
    _, base = served
    clip = shared_path("media", *clip_name.split("/"))
    page = open_page(browser, base)
    state = choose(page, clip)
    assert state["state"] == "done", state["error"]
    browser_result = state["result"]
    model = edge_world.bundles["int8"]
    recommender = Recommender(model, edge_world.library, intra_op_threads=2)
    python = recommender.recommend(clip, 10)
    python_vectors = recommender.model.embed_video(clip).vectors
    python_frames = sample_frames(clip)  # upright, one per second
    assert browser_result["frames"] == len(python_frames) and len(browser_result["vectors"]) == len(python_vectors)
    assert browser_result["size"] == [python_frames.shape[2], python_frames.shape[1]]  # width, height: upright
    assert cosines(np.array(browser_result["vectors"]), python_vectors).min() >= MIN_WINDOW_COSINE
    top = browser_result["results"]
    assert top[0]["title"] == python[0].title and top[0]["song_index"] == python[0].song_index
    by_song = {r.song_index: r.score for r in python}
    assert all(abs(r["score"] - by_song[r["song_index"]]) <= SCORE_TOLERANCE for r in top if r["song_index"] in by_song)
    # the shared clips have a frame at every whole second: the page must take exactly those
    assert np.allclose(browser_result["frameTimes"], np.arange(len(python_frames)), atol=1e-3)
    page.wait_for_function("window.tivm.soundtrack !== undefined", timeout=60_000)  # the top song, fetched
    soundtrack = page.evaluate("({...window.tivm.soundtrack, src: document.getElementById('soundtrack').src})")
    assert soundtrack["song_index"] == top[0]["song_index"] and soundtrack["start"] == top[0]["start"]
    assert soundtrack["src"].startswith("blob:")
    rows = page.locator("#results tr")
    assert rows.count() == len(top) and python[0].title in rows.first.inner_text()
    page.screenshot(path=str(tmp_path / "result.png"), full_page=True)
    assert (tmp_path / "result.png").stat().st_size > 10_000
    page.close()


def test_page_embeds_the_users_own_song_as_the_library_does(browser, served, edge_world):
    # the optional part: a song chosen in the page, decoded and resampled to 16 kHz by the browser, embedded
    # with the audio graph; the library holds the Python runtime's windows of the same file (resampy-exact
    # kaiser_best), so the difference is the browser's decoder and resampler (docs/web.md)
    site, base = served
    song = 1  # a 44.1 kHz stereo Vorbis file
    page = open_page(browser, base)
    choose(page, shared_path("media", "clips", "bbb_0-15s.mp4"))
    page.set_input_files("#own-songs", str(site.library.song_file(song)))
    page.wait_for_function("window.tivm.ownSongs !== undefined && window.tivm.state !== 'working'",
                           timeout=PAGE_TIMEOUT_MS)
    state = page.evaluate("window.tivm")
    assert state["state"] == "done", state["error"]
    first, last = site.library.song_offsets[song], site.library.song_offsets[song + 1]
    own = state["ownSongs"][0]
    np.testing.assert_allclose(own["starts"], site.library.window_start[first:last], atol=1e-3)
    python = np.asarray(site.library.embeddings[first:last], np.float32)
    assert cosines(np.array(own["vectors"]), python).min() >= MIN_SONG_WINDOW_COSINE
    ranked = {r["song_index"]: r for r in state["result"]["results"]}
    library_score = next((r["score"] for r in ranked.values() if r["song_index"] == song), None)
    own_score = next(r["score"] for r in ranked.values() if r.get("own"))  # 8 + 1 songs: all in the top 10
    assert library_score is not None and abs(own_score - library_score) <= SCORE_TOLERANCE
    page.close()


def test_page_says_when_the_browser_cannot_decode_the_file(browser, served, tmp_path):
    page = open_page(browser, served[1])
    fake = tmp_path / "holiday.mp4"
    fake.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    state = choose(page, fake)
    assert state["state"] == "error" and "cannot decode" in state["error"], state["error"]
    assert page.locator("#error").is_visible()
    page.close()


def test_page_refuses_a_library_built_by_another_model(browser, edge_world, ort_dir, tmp_path):
    # the float32 bundle did not embed this library (the int8 one did)
    site = Site(edge_world.bundles["fp32"], edge_world.library, ort_dir, tmp_path / "flat")
    assert not site.fingerprint_matches
    server, base = serve_in_thread(site)
    try:
        page = open_page(browser, base)
        state = page.evaluate("window.tivm")
        assert state["state"] == "error" and "built by another model" in state["error"], state["error"]
        assert page.locator("#clip").is_disabled()
        page.close()
    finally:
        server.shutdown()
        server.server_close()


def test_page_says_when_the_model_is_missing(browser, edge_world, ort_dir, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(edge_world.bundles["int8"], bundle)
    site = Site(bundle, edge_world.library, ort_dir, tmp_path / "flat")
    (bundle / json.loads((bundle / "manifest.json").read_text())["video"]["file"]).unlink()  # gone after start
    server, base = serve_in_thread(site)
    try:
        page = open_page(browser, base)
        state = page.evaluate("window.tivm")
        assert state["state"] == "error" and "model file" in state["error"] and "missing" in state["error"]
        page.close()
    finally:
        server.shutdown()
        server.server_close()
