"""`tivm-recommend` at product scale: a 15 s 720p clip against a 10,000-song library.

Measures, for one exported model directory:
* cold: the `tivm-recommend CLIP --library BIG --json` command, process start to printed result, and its peak RSS;
* warm: `Recommender.recommend(clip, 10)` called again in a live process (median of several calls);
* search alone on the big library (query vector given);
* library build speed on real songs (x real time) and `import tivm.runtime` time.

The 10,000-song library holds random unit vectors (the timing does not depend on their values) laid out as a
real one: windows every 5 s over songs of 3-4 minutes, float16, the model's fingerprint, so the CLI accepts it.
`--form compact` measures the compact form instead (`tivm-library compact`, int8 PCA codes, `--dims`): the
phone-scale figures (file size, peak RSS, search time) of docs/benchmarks/library_compact.md.

    .venv/bin/python benchmarks/recommend_scale.py --model MODEL_DIR [--songs 10000] [--form full|compact]
        [--dims 128] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TIVM_SHARED", REPO.parent / "shared"))
CLIP = SHARED / "media" / "clips" / "bbb_0-15s.mp4"
SONGS = SHARED / "media" / "songs"
HOP_SECONDS = 5.0
WINDOW_SECONDS = 15.0

# runs the real CLI entry point in a fresh interpreter and reports its own peak RSS (VmHWM) on the way out
CLI_WITH_PEAK = """
import sys, time
started = float(sys.argv[1]); sys.argv = ["tivm-recommend"] + sys.argv[2:]
from tivm.runtime.cli.recommend import main
try:
    main()
except SystemExit:
    pass
finally:
    peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
    print(f"@@ peak_kib={peak}", file=sys.stderr)
"""


def big_library(template_path: Path, out: Path, n_songs: int, seed: int = 0, form: str = "full",
                dims: int = 128) -> dict:
    """A library with n_songs songs of 180-240 s shaped like a real one, from a real library's metadata."""
    from tivm.runtime.library import SongLibrary

    template = SongLibrary.load(template_path)
    library = synthetic_big_library(n_songs, meta=template.meta, dim=template.dim, seed=seed)
    if form == "compact":
        library = library.compacted(dims)
    library.save(out)
    return {"songs": n_songs, "windows": library.n_windows, "form": form,
            "dims": dims if form == "compact" else library.dim, "file_mib": out.stat().st_size / 2**20}


def synthetic_big_library(n_songs: int, meta: dict | None = None, fingerprint: str = "0" * 64, dim: int = 512,
                          seed: int = 0):
    """An in-memory full SongLibrary of n_songs random songs of 180-240 s, a window every 5 s; `meta` (a real
    library's, so a model accepts it) or a minimal one recording `fingerprint`."""
    from tivm.runtime.library import FORMAT, VERSION, SongLibrary

    if meta is None:
        meta = {"format": FORMAT, "version": VERSION, "model_fingerprint": fingerprint, "model_dir": "",
                "root": "/synthetic", "hop_seconds": HOP_SECONDS, "window_seconds": WINDOW_SECONDS}
    rng = np.random.default_rng(seed)
    durations = rng.uniform(180, 240, n_songs).astype(np.float32)
    per_song = (np.floor((durations - WINDOW_SECONDS) / HOP_SECONDS) + 2).astype(np.int64)  # + the tail window
    offsets = np.concatenate([[0], np.cumsum(per_song)])
    vectors = rng.standard_normal((int(offsets[-1]), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    starts = np.concatenate([np.minimum(np.arange(k) * HOP_SECONDS, d - WINDOW_SECONDS)
                             for k, d in zip(per_song, durations)]).astype(np.float32)
    song_vectors = np.add.reduceat(vectors, offsets[:-1], axis=0)
    song_vectors /= np.linalg.norm(song_vectors, axis=1, keepdims=True)
    names = np.array([f"song {i:05d}" for i in range(n_songs)])
    library = SongLibrary(
        embeddings=vectors.astype(np.float16), window_start=starts, song_offsets=offsets,
        song_embeddings=song_vectors.astype(np.float16), titles=names, paths=np.char.add(names, ".ogg"),
        durations=durations, sha256=np.array([f"{i:064x}" for i in range(n_songs)]), meta=dict(meta))
    return library


def cold_cli(model: Path, library: Path, threads: int, repeats: int, search: str = "auto") -> dict:
    walls, peaks = [], []
    for _ in range(repeats):
        started = time.time()
        done = subprocess.run([sys.executable, "-c", CLI_WITH_PEAK, str(started), str(CLIP), "--library",
                               str(library), "--model", str(model), "--json", "--threads", str(threads),
                               "--search", search],
                              capture_output=True, text=True)
        walls.append(time.time() - started)
        if done.returncode != 0 or not done.stdout.strip():
            raise RuntimeError(f"tivm-recommend failed: {done.stderr[-2000:]}")
        peaks.append(int(done.stderr.rsplit("@@ peak_kib=", 1)[1].split()[0]) / 1024)
    return {"wall_s": walls, "median_s": statistics.median(walls), "peak_rss_mib": max(peaks)}


def warm_api(model: Path, library: Path, threads: int, runs: int, search: str = "auto") -> dict:
    from tivm.runtime import Recommender

    started = time.perf_counter()
    recommender = Recommender(model, library, intra_op_threads=threads, search=search)
    load_s = time.perf_counter() - started
    times = []
    for _ in range(runs + 1):
        started = time.perf_counter()
        recommender.recommend(str(CLIP), k=10)
        times.append(time.perf_counter() - started)
    query = recommender.embed_video(str(CLIP)).pooled()
    search = []
    for _ in range(runs):
        started = time.perf_counter()
        recommender.recommend_for_query(query, k=10)
        search.append(time.perf_counter() - started)
    return {"load_s": load_s, "first_call_s": times[0], "warm_median_s": statistics.median(times[1:]),
            "warm_runs": len(times) - 1, "search_median_ms": 1000 * statistics.median(search)}


def build_speed(model: Path, out: Path, threads: int) -> dict:
    from tivm.runtime.library import build_library
    from tivm.runtime.model import Model

    loaded = Model.load(model, intra_op_threads=threads)
    started = time.perf_counter()
    report = build_library(SONGS, loaded, out, progress=False)
    wall = time.perf_counter() - started
    from tivm.runtime.library import SongLibrary

    audio_seconds = float(SongLibrary.load(out).durations.sum())
    return {"songs": len(report.embedded), "audio_s": audio_seconds, "wall_s": wall,
            "x_real_time": audio_seconds / wall}


def import_time(repeats: int = 5) -> dict:
    def run(code: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - started

    bare = statistics.median(run("pass") for _ in range(repeats))
    runtime = statistics.median(run("import tivm.runtime") for _ in range(repeats))
    api = statistics.median(run("from tivm.runtime import Recommender") for _ in range(repeats))
    return {"python_s": bare, "import_tivm_runtime_s": runtime - bare, "import_recommender_s": api - bare}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="an exported full model directory")
    parser.add_argument("--songs", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--form", choices=("full", "compact"), default="full", help="the big library's form")
    parser.add_argument("--dims", type=int, default=128, help="PCA dims of --form compact")
    parser.add_argument("--search", default="auto", help="--search of tivm-recommend (auto, exact, compact, hnsw)")
    parser.add_argument("--skip-build", action="store_true", help="no import/build timing (the big library still "
                        "needs one small real library, built without timing)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not CLIP.exists():
        sys.exit(f"needs {CLIP} (../shared/media or TIVM_SHARED)")
    with tempfile.TemporaryDirectory() as tmp:
        small, big = Path(tmp) / "songs.npz", Path(tmp) / "big.npz"
        results = {"model": str(args.model), "threads": args.threads, "load_average": os.getloadavg()}
        if not args.skip_build:
            results["import"] = import_time()
            print("import:", json.dumps(results["import"]), flush=True)
        build = build_speed(args.model, small, args.threads)
        if not args.skip_build:
            results["build"] = build
            print("library build on real songs:", json.dumps(results["build"]), flush=True)
        results["library"] = big_library(small, big, args.songs, form=args.form, dims=args.dims)
        print("big library:", json.dumps(results["library"]), flush=True)
        results["cold_cli"] = cold_cli(args.model, big, args.threads, repeats=3, search=args.search)
        print("tivm-recommend, process start to result:", json.dumps(results["cold_cli"]), flush=True)
        results["warm_api"] = warm_api(args.model, big, args.threads, args.runs, search=args.search)
        print("Recommender in a live process:", json.dumps(results["warm_api"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
