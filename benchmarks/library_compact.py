"""Compact song libraries: size on disk, and how often each search variant agrees with exact float32 search.

    .venv/bin/python benchmarks/library_compact.py [--run RUN_DIR] [--dims 64,96,128,192]
        [--synthetic-windows 405000] [--size-songs 10000] [--queries 200] [--hnsw] [--threads 1] [--json out.json]

Variants: exact float32 search (the reference), exact search on the float16 library, the compact library's
int8 PCA scan at each --dims (tivm.runtime.compact, fitted on the library itself as `tivm-library build
--form compact` does), the same scan with its best songs re-scored exactly from the float16 windows (what
`--search compact` does on a full library),
int8 without reduction (the flat library's quantizer on all 512 dims, for scale) and, with --hnsw, the
FAISS HNSW index. For each: the share of queries whose top-10 songs are the same set as exact's, the share
whose top song and its best window are exact's, mean recall@10, and the largest score error of the returned
songs. Median search time per query is recorded too, but is a figure only on a quiet machine.

Libraries:
* real (--run, a trained IVM-M run): YouTube-8M audio-branch embeddings of every video as the windows, and
  the video-branch embeddings of the held-out label-14 videos as queries (benchmarks/_search_real.py); as
  one window per song, and as songs of 40 consecutive videos (the best-window ranking with many windows);
* synthetic (benchmarks/_search_data.py): clustered unit vectors, 40 per song, at the phone-scale size.
  They are isotropic around each song centre, which no PCA can shorten: the worst case, not the real one.

Size: a `--size-songs` library shaped like a real one (songs of 180-240 s, a window every 5 s) saved in the
full form and in the compact form at each --dims; the file sizes are exact, whatever the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TIVM_SHARED", REPO.parent / "shared"))
YT8M_GLOB = str(SHARED / "data" / "yt8m" / "video_level*" / "*.tfrecord")
TOP = 10
GROUP = 40  # videos per song in the grouped real library (a 3.5 min song at hop 5 s)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


TIE_TOLERANCES = (0.001, 0.005)  # cosine: below the float16 library's own effect on the top 10 (see the doc)


def compare(hits: list, truth: list, exact_scores: list) -> dict:
    """Agreement of a variant's hits with exact float32 search's, over the queries.

    Strict: the same set of top-10 songs; the same top song with the same best window. Within a tolerance
    t: every returned song's exact score is within t of exact's 10th (the list is an exact top 10 up to
    near-ties of size t), and the returned top song's exact score is within t of exact's top score.
    """
    same_set = [set(h.songs.tolist()) == set(t.songs.tolist()) for h, t in zip(hits, truth)]
    recall = [len(set(h.songs.tolist()) & set(t.songs.tolist())) / len(t.songs) for h, t in zip(hits, truth)]
    same_best = [len(h.songs) > 0 and h.songs[0] == t.songs[0] and h.windows[0] == t.windows[0]
                 for h, t in zip(hits, truth)]
    # how far the variant's score of a returned song is from its exact score (best window of that song)
    errors = [float(np.abs(h.scores - exact[h.songs]).max()) for h, exact in zip(hits, exact_scores)]
    out = {"same_top10_songs": float(np.mean(same_set)), "same_best_window": float(np.mean(same_best)),
           "recall_at_10": float(np.mean(recall)), "max_score_error": float(max(errors)),
           "median_score_error": float(np.median(errors))}
    for tol in TIE_TOLERANCES:
        top10 = [len(h.songs) == len(t.songs) and bool(np.all(exact[h.songs] >= t.scores[-1] - tol))
                 for h, t, exact in zip(hits, truth, exact_scores)]
        top1 = [len(h.songs) > 0 and exact[h.songs[0]] >= t.scores[0] - tol
                for h, t, exact in zip(hits, truth, exact_scores)]
        out[f"top10_within_{tol:g}"] = float(np.mean(top10))
        out[f"top1_within_{tol:g}"] = float(np.mean(top1))
    return out


def run_variant(search, queries: np.ndarray) -> tuple[list, float]:
    search.top_songs(queries[0], TOP)  # warm-up
    hits, seconds = [], []
    for query in queries:
        started = time.perf_counter()
        hits.append(search.top_songs(query, TOP))
        seconds.append(time.perf_counter() - started)
    return hits, 1000 * statistics.median(seconds)


def evaluate(name: str, windows: np.ndarray, offsets: np.ndarray, queries: np.ndarray, dims: list[int],
             hnsw: bool) -> dict:
    """Every variant on one library, against exact float32 search."""
    from tivm.runtime.compact import CompactWindows
    from tivm.runtime.search import CompactSearch, ExactSearch, FaissSearch, best_window_per_song, window_scores

    windows = np.ascontiguousarray(windows, dtype=np.float32)
    windows16 = windows.astype(np.float16)  # what a library stores
    dims = [d for d in dims if d < windows.shape[1]]  # a PCA to as many dims as the model has is no reduction
    exact = ExactSearch(windows, offsets)  # the reference: exact float32 search over the float32 embeddings
    truth, exact_ms = run_variant(exact, queries)
    exact_song_scores = [best_window_per_song(window_scores(windows, q), offsets)[0] for q in queries]
    out = {"library": name, "windows": int(len(windows)), "songs": int(len(offsets) - 1), "queries": len(queries),
           "exact": {"median_ms": exact_ms}, "variants": {}}
    hits, ms = run_variant(ExactSearch(windows16, offsets), queries)
    out["variants"]["full float16 library, exact search"] = {"median_ms": ms,
                                                             **compare(hits, truth, exact_song_scores)}
    print(f"  {name} float16: {json.dumps(out['variants']['full float16 library, exact search'])}", flush=True)
    spectrum = _explained(windows16, max(dims + [windows.shape[1]]))
    out["variance_kept"] = {str(d): spectrum[d - 1] for d in dims}
    for d in dims + [windows.shape[1]]:
        started = time.perf_counter()
        compact = CompactWindows.fit(windows16, d)
        fit_s = time.perf_counter() - started
        hits, ms = run_variant(CompactSearch(compact, offsets), queries)
        label = f"int8-pca{d}" if d < windows.shape[1] else f"int8-{d} (no reduction)"
        out["variants"][label] = {"dims": d, "bytes_per_window": d + 4, "median_ms": ms, "fit_encode_s": fit_s,
                                  **compare(hits, truth, exact_song_scores)}
        print(f"  {name} {label}: {json.dumps(out['variants'][label])}", flush=True)
        if d < windows.shape[1]:  # the same scan on a full library: its best songs re-scored from float16
            hits, ms = run_variant(CompactSearch(compact, offsets, exact_windows=windows16), queries)
            rescored = f"{label} + exact re-score"
            out["variants"][rescored] = {"dims": d, "median_ms": ms, **compare(hits, truth, exact_song_scores)}
            print(f"  {name} {rescored}: {json.dumps(out['variants'][rescored])}", flush=True)
    if hnsw:
        started = time.perf_counter()
        index = FaissSearch(windows16, offsets)
        build_s = time.perf_counter() - started
        hits, ms = run_variant(index, queries)
        out["variants"]["hnsw"] = {"median_ms": ms, "build_s": build_s, **compare(hits, truth, exact_song_scores)}
        print(f"  {name} hnsw: {json.dumps(out['variants']['hnsw'])}", flush=True)
    return out


def _explained(windows: np.ndarray, up_to: int) -> list[float]:
    """Cumulative share of the windows' variance in the first 1..up_to principal components."""
    sample = np.asarray(windows[:: max(1, len(windows) // 100_000)], dtype=np.float64)
    sample -= sample.mean(axis=0)
    eigenvalues = np.linalg.eigvalsh(sample.T @ sample)[::-1]
    return [round(float(v), 5) for v in np.cumsum(eigenvalues)[:up_to] / eigenvalues.sum()]


def real_libraries(run: Path, cache: Path | None, n_queries: int, seed: int) -> list[tuple]:
    sys.path.insert(0, str(REPO))
    from benchmarks._search_real import load_or_embed

    data = load_or_embed(run, YT8M_GLOB, 14, cache)
    windows = _unit(np.asarray(data["windows"], np.float32))
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(data["queries"]), min(n_queries, len(data["queries"])), replace=False)
    queries = _unit(np.asarray(data["queries"][np.sort(picked)], np.float32))
    one = np.arange(len(windows) + 1, dtype=np.int64)
    grouped = np.append(np.arange(0, len(windows), GROUP), len(windows)).astype(np.int64)
    return [(f"real: {len(windows)} YT8M videos, one window per song", windows, one, queries, data["about"]),
            (f"real: {len(windows)} YT8M videos, {GROUP} per song", windows, grouped, queries, data["about"])]


def synthetic_library(n_windows: int, n_queries: int, dim: int) -> tuple:
    sys.path.insert(0, str(REPO))
    from benchmarks import _search_data

    windows, offsets = _search_data.window_embeddings(n_windows, dim=dim)
    queries = _search_data.queries(windows, n_queries)
    return (f"synthetic: {n_windows} windows of {dim} dims, {_search_data.WINDOWS_PER_SONG} per song",
            windows.astype(np.float32), offsets, queries, {"source": "benchmarks/_search_data.py"})


def library_sizes(n_songs: int, dims: list[int], model_dims: list[int]) -> dict:
    """Bytes on disk of an n_songs library in the full form for models of each embedding size in
    `model_dims`, and in the compact form at each PCA `dims` of the first (the largest) one."""
    sys.path.insert(0, str(REPO))
    from benchmarks.recommend_scale import synthetic_big_library
    from tivm.runtime.library import SongLibrary

    out = {"songs": n_songs}
    with tempfile.TemporaryDirectory() as tmp:
        for model_dim in model_dims[1:]:
            path = Path(tmp) / f"full{model_dim}.npz"
            synthetic_big_library(n_songs, fingerprint="0" * 64, dim=model_dim).save(path)
            out[f"full_float16_{model_dim}d_bytes"] = path.stat().st_size
            path.unlink()
        full = synthetic_big_library(n_songs, fingerprint="0" * 64, dim=model_dims[0])
        path = Path(tmp) / "full.npz"
        full.save(path)
        out["windows"] = full.n_windows
        out[f"full_float16_{model_dims[0]}d_bytes"] = path.stat().st_size
        for d in dims:
            compact_path = Path(tmp) / f"compact{d}.npz"
            full.compacted(d).save(compact_path)
            out[f"compact_int8_pca{d}_bytes"] = compact_path.stat().st_size
            SongLibrary.load(compact_path)  # what was written reads back
            compact_path.unlink()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="trained IVM-M run directory for the real embeddings")
    parser.add_argument("--cache", type=Path, help="npz to keep the real embeddings in between runs")
    parser.add_argument("--dims", default="64,96,128,192")
    parser.add_argument("--synthetic-windows", type=int, default=405_000, help="0: no synthetic library")
    parser.add_argument("--synthetic-dim", type=int, default=512, help="embedding size of the synthetic library")
    parser.add_argument("--model-dims", default="512,64", help="embedding sizes whose full library is sized")
    parser.add_argument("--size-songs", type=int, default=10_000, help="0: no size measurement")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--hnsw", action="store_true", help="also the FAISS HNSW index (minutes to build)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, str(REPO))
    from benchmarks import _machine

    if args.hnsw:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    dims = [int(d) for d in args.dims.split(",")]
    report = {"benchmark": "library_compact", "machine": _machine.describe(REPO, args.threads), "top": TOP,
              "dims": dims, "libraries": []}
    libraries = []
    if args.run:
        libraries += real_libraries(args.run, args.cache, args.queries, args.seed)
    if args.synthetic_windows:
        libraries.append(synthetic_library(args.synthetic_windows, args.queries, args.synthetic_dim))
    for name, windows, offsets, queries, about in libraries:
        print(name, flush=True)
        report["libraries"].append({**evaluate(name, windows, offsets, queries, dims, args.hnsw), "about": about})
    if args.size_songs:
        report["size"] = library_sizes(args.size_songs, dims, sorted(int(d) for d in args.model_dims.split(","))[::-1])
        print("size:", json.dumps(report["size"]), flush=True)
    report["load_after"] = _machine.load_average()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
