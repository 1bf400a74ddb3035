"""Scoring songs against a query: exact search over all windows, the compact library's int8 scan, or an
approximate FAISS index.

A song's score is its best-matching window's cosine similarity (embeddings are L2-normalised, so the dot
product). Exact search and the compact scan stream the stored matrix (a full library's float16 rows, possibly
memory-mapped, or a compact library's int8 codes) through tivm.runtime.window_scan a block at a time: no
float32 copy of the library is made. The FAISS index (optional extra `ann`, imported only when used)
retrieves the top windows and scores each song by its best retrieved window, so a song with no window among
them is left out.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tivm.runtime.compact import DEFAULT_DIMS, CompactWindows
from tivm.runtime.files import atomic_path, atomic_write, write_text
from tivm.runtime.window_scan import SHARED_SCANNER, WindowScanner

# Exact search is always right, while HNSW loses song recall as libraries grow (docs/runtime.md, "Exact or
# approximate search"), so "auto" stays exact up to this many stored values (windows x dims: 10,000 songs at
# 512-d are 207M; 1M windows at 512-d, 512M, scan in well under a tenth of a second on two cores); only
# larger libraries go to HNSW.
AUTO_EXACT_MAX_VALUES = 1 << 29
# songs of the compact scan re-scored exactly when the full vectors are there: on real embeddings the scan's
# score error (a few thousandths) moves exact's top 10 only within the scan's top few dozen songs
# (docs/benchmarks/library_compact.md)
RESCORE_SONGS_PER_RESULT = 10
RESCORE_MIN_SONGS = 100
ANN_CANDIDATES_PER_RESULT = 32  # windows retrieved per song asked for
MIN_ANN_CANDIDATES = 512
HNSW_NEIGHBOURS = 32
HNSW_ADD_ROWS = 1 << 16  # rows converted to float32 per add: bounds the copy FAISS needs
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 1024  # recall rises steeply to here at the same median latency (docs/architecture.md)


@dataclass(frozen=True)
class SongHits:
    """Top songs: indices, scores and the best window (row in the library) of each, best first."""

    songs: np.ndarray
    scores: np.ndarray
    windows: np.ndarray


def window_scores(embeddings: np.ndarray, query: np.ndarray, scanner: WindowScanner | None = None) -> np.ndarray:
    """Dot product of every window with the query (W,) float32, streamed in blocks."""
    return (scanner or SHARED_SCANNER).scores(embeddings, query)


def best_window_per_song(scores: np.ndarray, song_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(best score (S,), row of the best window (S,)) for windows grouped by song_offsets (first on ties)."""
    starts = song_offsets[:-1]
    best = np.maximum.reduceat(scores, starts)
    counts = np.diff(song_offsets)
    is_best = scores == np.repeat(best, counts)
    rows = np.flatnonzero(is_best)
    song_of_row = np.searchsorted(song_offsets, rows, side="right") - 1
    first = np.unique(song_of_row, return_index=True)[1]
    return best, rows[first]


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first (stable order on ties)."""
    k = min(k, len(values))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-values, k - 1)[:k] if k < len(values) else np.arange(len(values))
    return part[np.lexsort((part, -values[part]))]


class ExactSearch:
    """Every window scored; exact, no index; the stored matrix (float16 or float32) streamed as it is."""

    name = "exact"

    def __init__(self, embeddings: np.ndarray, song_offsets: np.ndarray, threads: int | None = 1):
        self.embeddings = embeddings
        self.song_offsets = np.asarray(song_offsets)
        self.scanner = WindowScanner(threads)

    def top_songs(self, query: np.ndarray, k: int) -> SongHits:
        best, rows = best_window_per_song(self.scanner.scores(self.embeddings, query), self.song_offsets)
        order = top_k(best, k)
        return SongHits(order, best[order], rows[order])


class CompactSearch:
    """Every window scored from its int8 PCA codes (tivm.runtime.compact), without a float32 copy.

    With `exact_windows` (the full library's vectors, e.g. its float16 memory map) the best
    max(RESCORE_MIN_SONGS, RESCORE_SONGS_PER_RESULT * k) songs of the scan are re-scored exactly, every
    window of each, so their scores and best windows are exact search's; only the few pages of those
    songs are read. A compact library alone has no exact vectors: its scores are the scan's.
    """

    name = "compact"

    def __init__(self, windows: CompactWindows, song_offsets: np.ndarray, exact_windows: np.ndarray | None = None,
                 threads: int | None = 1):
        self.windows = windows
        self.song_offsets = np.asarray(song_offsets)
        self.exact_windows = exact_windows
        self.scanner = WindowScanner(threads)

    def top_songs(self, query: np.ndarray, k: int) -> SongHits:
        best, rows = best_window_per_song(self.windows.window_scores(query, self.scanner), self.song_offsets)
        if self.exact_windows is None:
            order = top_k(best, k)
            return SongHits(order, best[order], rows[order])
        candidates = np.sort(top_k(best, max(RESCORE_MIN_SONGS, RESCORE_SONGS_PER_RESULT * k)))
        starts, stops = self.song_offsets[candidates], self.song_offsets[candidates + 1]
        window_rows = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)])
        vectors = np.asarray(self.exact_windows[window_rows], dtype=np.float32)
        scores = vectors @ np.asarray(query, dtype=np.float32).reshape(-1)
        local_offsets = np.concatenate([[0], np.cumsum(stops - starts)])
        exact_best, local_rows = best_window_per_song(scores, local_offsets)
        order = top_k(exact_best, k)
        return SongHits(candidates[order], exact_best[order], window_rows[local_rows[order]])


class FaissSearch:
    """Approximate: an HNSW inner-product index over the windows (faiss-cpu, extra `ann`).

    Building takes minutes for 10^5..10^6 windows, so `cached()` keeps the index in the user's cache
    folder (FAISS's own binary format, never pickle) with a JSON key that says which library it indexes.
    """

    name = "hnsw"

    def __init__(self, embeddings: np.ndarray, song_offsets: np.ndarray, *, neighbours: int = HNSW_NEIGHBOURS,
                 ef_construction: int = HNSW_EF_CONSTRUCTION, ef_search: int = HNSW_EF_SEARCH, index=None):
        faiss = import_faiss()
        self.song_offsets = np.asarray(song_offsets)
        if index is None:
            index = faiss.IndexHNSWFlat(embeddings.shape[1], neighbours, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            for start in range(0, len(embeddings), HNSW_ADD_ROWS):
                index.add(np.ascontiguousarray(embeddings[start:start + HNSW_ADD_ROWS], dtype=np.float32))
        index.hnsw.efSearch = ef_search
        self.index = index

    @classmethod
    def cached(cls, embeddings: np.ndarray, song_offsets: np.ndarray, index_path: Path, key: dict) -> "FaissSearch":
        """Read the index from `index_path` when its key matches, else build it and try to save it there."""
        faiss = import_faiss()
        key = dict(key, windows=int(len(embeddings)), neighbours=HNSW_NEIGHBOURS,
                   ef_construction=HNSW_EF_CONSTRUCTION)
        key_path = index_path.with_name(index_path.name + ".json")
        try:
            if json.loads(key_path.read_text()) == key:
                index = faiss.read_index(str(index_path))
                if index.ntotal == len(embeddings) and index.d == embeddings.shape[1]:
                    return cls(embeddings, song_offsets, index=index)
        except (OSError, ValueError, RuntimeError):
            pass  # no usable cache: build
        search = cls(embeddings, song_offsets)
        try:
            index_path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(index_path) as tmp:
                faiss.write_index(search.index, str(tmp))
            write_text(key_path, json.dumps(key, sort_keys=True))
        except (OSError, RuntimeError):
            pass  # no writable cache: the index lives for this process only
        return search

    def top_windows(self, query: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(np.asarray(query, dtype=np.float32).reshape(1, -1), n)
        keep = rows[0] >= 0
        return scores[0][keep], rows[0][keep]

    def top_songs(self, query: np.ndarray, k: int) -> SongHits:
        n = max(MIN_ANN_CANDIDATES, ANN_CANDIDATES_PER_RESULT * k)
        scores, rows = self.top_windows(query, min(n, self.index.ntotal))
        songs = np.searchsorted(self.song_offsets, rows, side="right") - 1
        order = np.lexsort((rows, -scores))  # best window first; FAISS order is not guaranteed stable
        songs, first = np.unique(songs[order], return_index=True)
        best_scores, best_rows = scores[order][first], rows[order][first]
        pick = top_k(best_scores, k)
        return SongHits(songs[pick], best_scores[pick], best_rows[pick])


COMPACT_CACHE_MEMBERS = ("codes", "row_scales", "mean", "components", "component_scales")


def cached_compact_windows(embeddings: np.ndarray, dims: int, cache_path: Path, key: dict) -> CompactWindows:
    """A full library's compact codes: read from `cache_path` when its key matches and its arrays are sound,
    else fitted and coded (seconds per 100k windows) and saved there for the next start."""
    key = dict(key, windows=int(len(embeddings)), dim=int(embeddings.shape[1]), dims=int(dims), form="int8-pca")
    key_path = cache_path.with_name(cache_path.name + ".json")
    try:
        if json.loads(key_path.read_text()) == key:
            with np.load(cache_path, allow_pickle=False) as npz:
                windows = CompactWindows(**{name: npz[name] for name in COMPACT_CACHE_MEMBERS})
            if (not windows.problems() and len(windows) == len(embeddings) and windows.dims == dims
                    and windows.dim == embeddings.shape[1]):
                return windows
    except (OSError, ValueError, KeyError, EOFError, RuntimeError, zipfile.BadZipFile, zlib.error):
        pass  # no usable cache: fit
    windows = CompactWindows.fit(embeddings, dims)
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(cache_path) as f:
            np.savez(f, **{name: getattr(windows, name) for name in COMPACT_CACHE_MEMBERS})
        write_text(key_path, json.dumps(key, sort_keys=True))
    except OSError:
        pass  # no writable cache: the codes live for this process only
    return windows


def import_faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("approximate search needs faiss-cpu: pip install 'tivm[ann]'") from None
    return faiss


def auto_is_exact(embeddings: np.ndarray) -> bool:
    """Whether "auto" searches these windows exactly (the line it draws; see docs/runtime.md)."""
    return embeddings.shape[0] * embeddings.shape[1] <= AUTO_EXACT_MAX_VALUES


METHODS = ("auto", "exact", "compact", "hnsw")


def make_search(embeddings: np.ndarray | CompactWindows, song_offsets: np.ndarray, method: str = "auto", *,
                index_path: Path | None = None, index_key: dict | None = None, threads: int | None = 1):
    """The search for a library's windows: `embeddings` (W, D) of a full library, or a compact library's
    CompactWindows.

    A compact library is searched by its codes ("auto" or "compact"); exact and HNSW need the full vectors,
    which it no longer holds. For a full library: "exact", "hnsw", "compact" (fits the PCA and encodes every
    window when called, seconds per 100k windows; scans the codes, then re-scores the best songs exactly from
    `embeddings`), or "auto": exact up to AUTO_EXACT_MAX_VALUES stored values (about 1M windows at 512-d,
    8M at 64-d), else HNSW when faiss-cpu is installed (else exact). `threads` runs the exact and compact scans.

    With `index_path` (and `index_key` saying which library it is), the HNSW index is cached there, and a
    full library's compact codes beside it (`<name>.compact.npz`).
    """
    if method not in METHODS:
        raise ValueError(f"search method must be one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(embeddings, CompactWindows):
        if method in ("auto", "compact"):
            return CompactSearch(embeddings, song_offsets, threads=threads)
        raise ValueError(f"--search {method} needs the full window vectors, and this is a compact library "
                         f"({embeddings.dims}-d int8 codes); search it with --search compact, or use the full "
                         "library it was made from")
    if method == "auto":
        method = "exact"
        if not auto_is_exact(embeddings):
            try:
                import_faiss()
                method = "hnsw"
            except ImportError:
                pass
    if method == "exact":
        return ExactSearch(embeddings, song_offsets, threads)
    if method == "compact":
        dims = min(DEFAULT_DIMS, embeddings.shape[1])
        if index_path is not None:
            windows = cached_compact_windows(embeddings, dims, Path(index_path).with_suffix(".compact.npz"),
                                             index_key or {})
        else:
            windows = CompactWindows.fit(embeddings, dims)
        return CompactSearch(windows, song_offsets, exact_windows=embeddings, threads=threads)
    if index_path is not None:
        return FaissSearch.cached(embeddings, song_offsets, Path(index_path), index_key or {})
    return FaissSearch(embeddings, song_offsets)
