"""Search latency against library size: exact numpy search and the approximate FAISS HNSW index.

Libraries are synthetic (benchmarks._search_data: clustered float16 unit windows, 40 per song); queries are
library windows moved by noise. HNSW is also scored against exact search: the share of exact top-10 songs
it returns (recall@10), and its build time, which limits the sizes it is measured at.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks import _search_data
from benchmarks._context import Context
from benchmarks._stats import not_measured, summarize

TOP_K = 10


def time_queries(search, queries: np.ndarray, k: int = TOP_K) -> tuple[list[float], list]:
    """(seconds per query, hits per query) for one search over every query, one at a time."""
    seconds, hits_per_query = [], []
    for query in queries:
        started = time.perf_counter()
        hits = search.top_songs(query, k)
        seconds.append(time.perf_counter() - started)
        hits_per_query.append(hits)
    return seconds, hits_per_query


def _timed_queries(search, queries: np.ndarray) -> tuple[dict, list]:
    search.top_songs(queries[0], TOP_K)  # warm-up
    seconds, hits_per_query = time_queries(search, queries)
    return summarize(seconds), hits_per_query


def agreement(approx: list, exact: list) -> dict:
    """How well approximate hits match exact ones: recall@10 and @1 (share of exact songs returned), and the
    mean ratio of the returned songs' summed scores to exact's. On the synthetic library only a query's own
    song stands out; ranks 2-10 are near-ties between unrelated songs, which recall@10 punishes but the
    score ratio shows to be near-equivalent."""
    recall10 = [len(set(a.songs.tolist()) & set(t.songs.tolist())) / max(1, len(t.songs))
                for a, t in zip(approx, exact)]
    recall1 = [float(len(t.songs) > 0 and t.songs[0] in set(a.songs.tolist())) for a, t in zip(approx, exact)]
    ratio = [float(a.scores.sum() / t.scores.sum()) for a, t in zip(approx, exact) if t.scores.sum() > 0]
    return {"recall_at_10_vs_exact": float(np.mean(recall10)), "recall_at_1_vs_exact": float(np.mean(recall1)),
            "score_ratio_vs_exact": float(np.mean(ratio)) if ratio else None}


def _set_faiss_threads(threads: int) -> bool:
    try:
        import faiss
    except ImportError:
        return False
    faiss.omp_set_num_threads(threads)
    return True


def library_scaling(ctx: Context) -> dict:
    from tivm.runtime.search import ExactSearch, FaissSearch

    has_faiss = _set_faiss_threads(ctx.threads)
    out = {"threads": ctx.threads, "queries": ctx.plan.search_queries, "k": TOP_K,
           "library": "synthetic float16, 40 windows per song", "sizes": {}}
    for n in ctx.plan.library_sizes:
        embeddings, offsets = _search_data.window_embeddings(n)
        queries = _search_data.queries(embeddings, ctx.plan.search_queries)
        exact, truth = _timed_queries(ExactSearch(embeddings, offsets), queries)
        entry = {"songs": len(offsets) - 1, "exact": exact}
        if not has_faiss:
            entry["hnsw"] = not_measured("faiss-cpu is not installed (extra `ann`)")
        elif n > ctx.plan.hnsw_max_windows:
            entry["hnsw"] = not_measured(f"index build above {ctx.plan.hnsw_max_windows:,} windows does not fit "
                                         f"the {ctx.plan.mode} run's time budget (see build times)")
        else:
            started = time.perf_counter()
            index = FaissSearch(embeddings, offsets)
            build_s = time.perf_counter() - started
            approx, found = _timed_queries(index, queries)
            entry["hnsw"] = {**approx, "build_s": build_s, **agreement(found, truth)}
        out["sizes"][str(n)] = entry
        del embeddings
    return out
