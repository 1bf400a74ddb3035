"""The browser page (web/, served by `tivm-web`) in headless Chromium: time from choosing a clip to the ranking,
page weight, and agreement with the Python runtime.

For each raw bundle: serve it with its library, open the page in Debian's Chromium (Playwright, the system
browser), and for each clip choose it `--runs` times (a fresh page load each time, so every run samples,
embeds and ranks from scratch with the model already loaded). Reported per run, from the page's own clock
(`performance.now()` from the file input's change event to the ranking): total, frame sampling (seeks +
canvas reads), embedding (onnxruntime-web, WebAssembly, one window per run) and ranking; median over runs.
Page weight: the bytes the page loads (video graph, flat int8 library, onnxruntime-web's files, the page's
own code). Agreement, per clip: window cosine browser vs `Model.embed_video` (PyAV frames), the top song and
the top 10 against `Recommender.recommend`, largest |score difference|.

    .venv/bin/python benchmarks/web_latency.py --backbone efficientnet-lite0 --backbone resnet50 --runs 5 \\
        --json web_latency.json          # int8 raw bundles built once and cached (benchmarks._artifacts)
    .venv/bin/python benchmarks/web_latency.py --model DIR [--library songs.npz] --clip a.mp4 --clip b.mp4

Without --library, each bundle's library is built from --songs (default ../shared/media/songs) into a
temporary folder first. Needs /usr/bin/chromium (tools/test-deps.sh), playwright, js/node_modules.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("TIVM_SHARED", REPO.parent / "shared"))
DEFAULT_CLIP = SHARED / "media" / "clips" / "bbb_0-15s.mp4"
DEFAULT_SONGS = SHARED / "media" / "songs"
CHROMIUM = "/usr/bin/chromium"
PAGE_TIMEOUT_MS = 600_000


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def cached_bundle(backbone: str, threads: int) -> Path:
    """An int8 raw bundle of the latency checkpoint with `backbone` as video branch, built once and cached."""
    from benchmarks._context import QUICK, Context

    # the benchmarks' own export (calibrated on the shared media), so the bundle is the one they measure
    raw, _ = Context(plan=QUICK, threads=threads, out=Path(".")).raw_export_for(backbone, "int8")
    return raw


def page_weight(site) -> dict:
    groups = {"model": ["/model/video.onnx"], "library": [p for p in site.files if p.startswith("/library/")],
              "onnxruntime_web": [p for p in site.files if p.startswith("/ort/")],
              "page_code": [p for p in site.files if p != "/" and not p.startswith(("/model/", "/library/", "/ort/"))]}
    weight = {name: sum(site.files[p].stat().st_size for p in paths) for name, paths in groups.items()}
    weight["total"] = sum(weight.values())
    return {f"{name}_bytes": value for name, value in weight.items()}


def agreement(result: dict, clip: Path, recommender) -> dict:
    python_embedding = recommender.model.embed_video(clip)
    python_vectors = python_embedding.vectors
    python = recommender.recommend(clip, 10)
    browser_vectors = np.array(result["vectors"], np.float32)
    same_shape = browser_vectors.shape == python_vectors.shape
    by_song = {r.song_index: r.score for r in python}
    return {
        "python_windows": int(len(python_vectors)), "browser_windows": int(len(browser_vectors)),
        "window_cosine_min": float(cosines(browser_vectors, python_vectors).min()) if same_shape else None,
        "query_cosine": float(cosines(np.array(result["query"]), python_embedding.pooled())),
        "top1_same": result["results"][0]["song_index"] == python[0].song_index,
        "top10_same_order": [r["song_index"] for r in result["results"]] == [r.song_index for r in python],
        "max_abs_score_diff": max(abs(r["score"] - by_song[r["song_index"]]) for r in result["results"]
                                  if r["song_index"] in by_song),
        "python_top1": python[0].title, "browser_top1": result["results"][0]["title"],
    }


def measure_bundle(browser, model: Path, library: Path, clips: list[Path], runs: int, threads: int,
                   screenshot: Path | None) -> dict:
    from tivm.runtime.cli.web import DEFAULT_ORT_DIR, Site, serve_in_thread
    from tivm.runtime.recommend import Recommender

    with tempfile.TemporaryDirectory(prefix="tivm-web-bench-") as scratch:
        site = Site(model, library, DEFAULT_ORT_DIR, Path(scratch) / "flat")
        server, base = serve_in_thread(site)
        recommender = Recommender(model, library, intra_op_threads=threads)
        entry = {"model": str(model), "library": str(library), "page_weight": page_weight(site), "clips": []}
        try:
            for clip in clips:
                measured, last = [], None
                for _ in range(runs):
                    page = browser.new_page(viewport={"width": 1000, "height": 1000})
                    started = time.perf_counter()
                    page.goto(base + "/")
                    page.wait_for_function("['ready', 'error'].includes(window.tivm?.state)", timeout=PAGE_TIMEOUT_MS)
                    load_s = time.perf_counter() - started
                    page.set_input_files("#clip", str(clip))
                    page.wait_for_function("['done', 'error'].includes(window.tivm.state)", timeout=PAGE_TIMEOUT_MS)
                    state = page.evaluate("window.tivm")
                    if state["state"] != "done":
                        entry["clips"].append({"clip": str(clip), "error": state["error"]})
                        page.close()
                        break
                    last = state["result"]
                    timings = {k: round(v, 1) for k, v in last["timings"].items()}
                    measured.append({**timings, "page_load_s": round(load_s, 3)})
                    if screenshot is not None:
                        page.evaluate("(() => { const v = document.getElementById('video'); v.pause(); "
                                      "v.currentTime = 5; })()")
                        page.wait_for_timeout(1000)
                        page.screenshot(path=str(screenshot), full_page=True)
                        screenshot = None
                    page.close()
                if last is None:
                    continue
                entry["clips"].append({
                    "clip": str(clip), "frames": last["frames"], "size": last["size"], "windows": len(last["vectors"]),
                    "threads": last["threads"], "frame_times_s": last["frameTimes"], "runs": measured,
                    "median_total_ms": statistics.median(r["totalMs"] for r in measured),
                    "median_sample_ms": statistics.median(r["sampleMs"] for r in measured),
                    "median_embed_ms": statistics.median(r["embedMs"] for r in measured),
                    "agreement": agreement(last, clip, recommender)})
        finally:
            server.shutdown()
            server.server_close()
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append", default=[], help="raw bundle (repeatable)")
    parser.add_argument("--backbone", action="append", default=[],
                        help="build (cached) the int8 raw bundle with this video backbone: efficientnet-lite0, "
                             "resnet50")
    parser.add_argument("--library", type=Path, help="library built with the (single) --model")
    parser.add_argument("--songs", type=Path, default=DEFAULT_SONGS, help="songs to build each bundle's library from")
    parser.add_argument("--clip", type=Path, action="append", help=f"clip (repeatable); default {DEFAULT_CLIP}")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="Python runtime threads (agreement, library build)")
    parser.add_argument("--screenshot", type=Path, help="save the first result page here (video paused at 5 s)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from tivm.runtime.library import build_library
    from tivm.runtime.model import Model

    bundles = [(m, args.library) for m in args.model] + [(cached_bundle(b, args.threads), None) for b in args.backbone]
    # (a failed export raises benchmarks._stats.NotMeasured with its reason: nothing to time without the bundle)
    if not bundles:
        parser.error("give --model or --backbone")
    if args.library and len(bundles) != 1:
        parser.error("--library goes with exactly one bundle (a library belongs to the model that built it)")
    clips = args.clip or [DEFAULT_CLIP]
    version = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
    ort_web = json.loads((REPO / "js" / "node_modules" / "onnxruntime-web" / "package.json").read_text())["version"]
    report = {"what": "browser page: clip chosen -> ranking (page clock), page weight, agreement with Python",
              "chromium": version, "onnxruntime_web": ort_web, "cpu": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "load_average": os.getloadavg(), "runs": args.runs, "bundles": []}
    with tempfile.TemporaryDirectory(prefix="tivm-web-libraries-") as libraries, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        for i, (model, library) in enumerate(bundles):
            if library is None:
                library = Path(libraries) / f"songs-{i}.npz"
                build_library(args.songs, Model.load(model, intra_op_threads=args.threads), library, progress=False)
            report["bundles"].append(measure_bundle(browser, Path(model), library, clips, args.runs, args.threads,
                                                    args.screenshot if i == 0 else None))
        browser.close()
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
