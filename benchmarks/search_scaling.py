"""Song search latency vs library size: exact search (tivm.runtime.search.ExactSearch, the float16 rows
scanned in blocks), the two ways it worked before (numpy on a float32 copy; numpy converting float16 chunks),
the compact library's int8 PCA scan (CompactSearch) and FAISS HNSW (FaissSearch), and the recall of the
approximate top 10 songs against the exact top 10.

    .venv/bin/python benchmarks/search_scaling.py [--sizes 10000,30000,100000,300000] [--dim 512]
        [--queries 50] [--ef-search 256,1024] [--compact-dims 128] [--exact-only] [--threads 1] [--json out.json]

The compact scan's recall here is a worst case (these synthetic windows spread evenly over all 512 dims, which
no PCA can shorten); its accuracy on real embeddings is benchmarks/library_compact.py's. Its time does not
depend on the values.

Synthetic libraries shaped like real ones: songs of 40 windows (a 3.5 min song at hop 5 s), each window a
song centre plus noise, L2-normalised, stored float16 as in a library; queries are noisy song centres.
Where to switch to approximate search: the size where exact latency passes a budget (default 100 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SIZES = "10000,30000,100000,300000"
WINDOWS_PER_SONG = 40
WINDOW_NOISE = 0.6  # windows of one song are related, not copies
QUERY_NOISE = 1.0
TOP = 10
SEED = 0


def synthetic_library(n_windows: int, dim: int, rng):
    import numpy as np

    n_songs = max(1, n_windows // WINDOWS_PER_SONG)
    centres = rng.standard_normal((n_songs, dim)).astype(np.float32)
    embeddings = np.empty((n_songs * WINDOWS_PER_SONG, dim), dtype=np.float16)
    for song in range(n_songs):  # per song: keeps the float32 temporaries small
        rows = centres[song] + WINDOW_NOISE * rng.standard_normal((WINDOWS_PER_SONG, dim)).astype(np.float32)
        embeddings[song * WINDOWS_PER_SONG:(song + 1) * WINDOWS_PER_SONG] = (
            rows / np.linalg.norm(rows, axis=1, keepdims=True))
    offsets = np.arange(0, len(embeddings) + 1, WINDOWS_PER_SONG, dtype=np.int64)
    return embeddings, offsets, centres


def queries_for(centres, n: int, rng):
    import numpy as np

    picked = centres[rng.integers(0, len(centres), n)]
    q = picked + QUERY_NOISE * rng.standard_normal(picked.shape).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


class NumpyStreamedSearch:
    """Exact search as it streamed float16 before tivm.runtime.window_scan: numpy casts chunks of rows."""

    CHUNK = 1 << 16

    def __init__(self, embeddings, offsets):
        self.embeddings, self.offsets = embeddings, offsets

    def top_songs(self, query, k):
        import numpy as np

        from tivm.runtime.search import SongHits, best_window_per_song, top_k

        scores = np.empty(len(self.embeddings), np.float32)
        for start in range(0, len(self.embeddings), self.CHUNK):
            chunk = np.asarray(self.embeddings[start:start + self.CHUNK], dtype=np.float32)
            np.matmul(chunk, query, out=scores[start:start + len(chunk)])
        best, rows = best_window_per_song(scores, self.offsets)
        order = top_k(best, k)
        return SongHits(order, best[order], rows[order])


def measure(n_windows: int, dim: int, n_queries: int, with_faiss: bool, ef_search: list[int],
            compact_dims: int = 0, threads: int = 1) -> dict:
    import numpy as np

    from benchmarks._search import time_queries
    from tivm.runtime.compact import CompactWindows
    from tivm.runtime.search import CompactSearch, ExactSearch, FaissSearch

    rng = np.random.default_rng(SEED)
    embeddings, offsets, centres = synthetic_library(n_windows, dim, rng)
    queries = queries_for(centres, n_queries, rng)
    exact = ExactSearch(embeddings, offsets, threads)  # the float16 rows scanned in blocks: no copy
    time_queries(exact, queries[:2], TOP)  # warm caches
    exact_times, exact_hits = time_queries(exact, queries, TOP)
    row = {"windows": len(embeddings), "songs": len(offsets) - 1, "dim": dim,
           "library_mib": round(embeddings.nbytes / 2**20, 1),
           "exact_median_ms": round(1000 * statistics.median(exact_times), 2),
           "exact_p90_ms": round(1000 * sorted(exact_times)[int(0.9 * (len(exact_times) - 1))], 2)}
    # what exact search did before the block scan, for comparison: numpy on a float32 copy made once (fast,
    # 4 bytes a value in memory), or numpy converting float16 chunks as it goes (no copy, slow)
    t0 = time.perf_counter()
    copy = ExactSearch(embeddings.astype(np.float32), offsets, threads)
    row["numpy_float32_copy_setup_s"] = round(time.perf_counter() - t0, 3)
    time_queries(copy, queries[:2], TOP)
    copy_times, _ = time_queries(copy, queries, TOP)
    row["numpy_float32_copy_median_ms"] = round(1000 * statistics.median(copy_times), 2)
    del copy
    numpy_streamed = NumpyStreamedSearch(embeddings, offsets)
    streamed_times, _ = time_queries(numpy_streamed, queries[:max(3, n_queries // 5)], TOP)
    row["numpy_float16_chunks_median_ms"] = round(1000 * statistics.median(streamed_times), 2)
    if compact_dims:
        t0 = time.perf_counter()
        windows = CompactWindows.fit(embeddings, compact_dims)
        fit_s = time.perf_counter() - t0
        compact = CompactSearch(windows, offsets, threads=threads)
        time_queries(compact, queries[:2], TOP)
        compact_times, compact_hits = time_queries(compact, queries, TOP)
        recall = [len(set(e.songs.tolist()) & set(a.songs.tolist())) / TOP for e, a in zip(exact_hits, compact_hits)]
        row["compact"] = {"dims": compact_dims, "codes_mib": round(windows.nbytes / 2**20, 1),
                          "fit_encode_s": round(fit_s, 2),
                          "median_ms": round(1000 * statistics.median(compact_times), 2),
                          "p90_ms": round(1000 * sorted(compact_times)[int(0.9 * (len(compact_times) - 1))], 2),
                          "recall_at_10_synthetic": round(statistics.mean(recall), 4)}
        del windows, compact
    if not with_faiss:
        return row
    t0 = time.perf_counter()
    approx = FaissSearch(embeddings, offsets)
    row["hnsw_build_s"] = round(time.perf_counter() - t0, 2)
    row["hnsw_index_mib"] = round(approx.index.ntotal * (dim * 4 + 2 * 32 * 4) / 2**20, 1)
    row["hnsw"] = []
    for ef in ef_search:
        approx.index.hnsw.efSearch = ef
        time_queries(approx, queries[:2], TOP)
        approx_times, approx_hits = time_queries(approx, queries, TOP)
        recall = [len(set(e.songs.tolist()) & set(a.songs.tolist())) / TOP for e, a in zip(exact_hits, approx_hits)]
        top1 = [e.songs[0] == a.songs[0] for e, a in zip(exact_hits, approx_hits)]
        row["hnsw"].append({"ef_search": ef,
                            "median_ms": round(1000 * statistics.median(approx_times), 2),
                            "p90_ms": round(1000 * sorted(approx_times)[int(0.9 * (len(approx_times) - 1))], 2),
                            "recall_at_10": round(statistics.mean(recall), 4),
                            "top1_agreement": round(float(np.mean(top1)), 4)})
    return row


def crossover(rows: list[dict], budget_ms: float) -> int | None:
    """Smallest measured size whose exact median latency exceeds the budget."""
    over = [r["windows"] for r in rows if r["exact_median_ms"] > budget_ms]
    return min(over) if over else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated window counts")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="threads of the scans, BLAS/OpenMP and FAISS")
    parser.add_argument("--budget-ms", type=float, default=100.0, help="latency budget for exact search")
    parser.add_argument("--ef-search", default="256,1024", help="HNSW efSearch values to try on each index")
    parser.add_argument("--compact-dims", type=int, default=128, help="PCA dims of the compact scan (0: skip it)")
    parser.add_argument("--exact-only", action="store_true", help="skip FAISS (its build dominates large sizes)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, str(REPO))
    from benchmarks import _machine

    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
        with_faiss = not args.exact_only
    except ImportError:
        print("faiss-cpu not installed: exact search only (pip install 'tivm[ann]')")
        with_faiss = False
    machine = _machine.describe(REPO, args.threads)
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        row = measure(size, args.dim, args.queries, with_faiss, [int(e) for e in args.ef_search.split(",")],
                      args.compact_dims, args.threads)
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"benchmark": "search_scaling", "machine": machine, "threads": args.threads,
              "windows_per_song": WINDOWS_PER_SONG, "top": TOP, "rows": rows,
              "budget_ms": args.budget_ms, "exact_exceeds_budget_at_windows": crossover(rows, args.budget_ms),
              "load_after": _machine.load_average()}
    print(f"exact search passes {args.budget_ms:g} ms at: {report['exact_exceeds_budget_at_windows']} windows "
          f"(of the sizes measured); machine load before/after: {machine.get('load_average_start')} / "
          f"{report['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
