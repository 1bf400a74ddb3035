"""Recommend songs for a video: embed the clip, score every song by its best window, rank.

The query is one vector per clip: the clip's 15 s windows (hop 15 s, the last one flush with the end)
are embedded by the video branch and averaged, then re-normalised. A clip shorter than 15 s is one
window, its frames loop-padded to 15 (see tivm.runtime.model).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tivm.runtime.errors import LibraryError
from tivm.runtime.files import cache_root
from tivm.runtime.library import SongLibrary
from tivm.runtime.model import Model, WindowEmbeddings
from tivm.runtime.search import make_search

MODEL_ENV = "TIVM_MODEL"
AUDIO_SAMPLE_RATE = 16000  # tivm.runtime.audio.SAMPLE_RATE, without importing PyAV to say so (a test checks)


@dataclass(frozen=True)
class Recommendation:
    """One recommended song and the segment of it to use."""

    rank: int
    title: str
    score: float
    start: float  # seconds into the song where the best-matching window starts
    end: float
    path: str
    song_index: int

    def to_json(self) -> dict:
        return asdict(self)


def resolve_model_dir(library: SongLibrary, model_dir: str | os.PathLike | None = None) -> Path:
    """The model to query a library with: the one given, else the library's recorded one, else $TIVM_MODEL."""
    if model_dir:
        return Path(model_dir)
    recorded = library.meta.get("model_dir")
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    if os.environ.get(MODEL_ENV):
        return Path(os.environ[MODEL_ENV])
    raise LibraryError(f"{library.source}: its model {recorded} is not there and ${MODEL_ENV} is not set; "
                       "pass --model")


def index_cache_dir() -> Path:
    """Where approximate indexes are cached: `$TIVM_HOME/index`, else the user's cache folder.

    Never beside the library: a library is data someone may have handed the user, and a file next to it
    could be a crafted index that FAISS's reader was never meant to parse. Only files tivm wrote are read.
    """
    return cache_root() / "index"


def _index_cache(library: SongLibrary) -> dict:
    """Where an approximate index of this library is cached, and what identifies the library it indexes."""
    if library.source is None:
        return {}
    source = library.source.resolve()
    stat = source.stat()
    key = {"library": str(source), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
           "created": library.meta.get("created"), "model_fingerprint": library.model_fingerprint}
    name = hashlib.sha256(str(source).encode()).hexdigest()[:32]  # one index per library file, kept fresh
    return {"index_path": index_cache_dir() / f"{name}.hnsw", "index_key": key}


class Recommender:
    """A model plus a song library. Immutable after construction: `recommend()` may run on several threads."""

    def __init__(self, model_dir: str | os.PathLike | Model | None, library: str | os.PathLike | SongLibrary, *,
                 search: str = "auto", intra_op_threads: int | None = None, providers=None,
                 decode: str = "exact"):
        from tivm.runtime.video import DECODE_MODES

        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, got {decode!r}")
        self.decode = decode
        self.library = library if isinstance(library, SongLibrary) else SongLibrary.load(library)
        if isinstance(model_dir, Model):
            self.model = model_dir
        else:
            # the video branch answers recommend(); the audio branch opens if embed_audio() is ever called
            self.model = Model.load(resolve_model_dir(self.library, model_dir), intra_op_threads=intra_op_threads,
                                    providers=providers, branches=("video",))
        self.library.check_model(self.model.fingerprint, self.model.model_dir)
        self.search = make_search(self.library.windows, self.library.song_offsets, search,
                                  threads=intra_op_threads, **_index_cache(self.library))

    def embed_video(self, video) -> WindowEmbeddings:
        """A video file or RGB frames (T, H, W, 3) uint8, one per second -> window embeddings."""
        return self.model.embed_video(video, decode=self.decode)

    def embed_audio(self, audio, sample_rate: int = AUDIO_SAMPLE_RATE,
                    hop_seconds: float | None = None) -> WindowEmbeddings:
        """A waveform or audio file -> window embeddings (the same space as the library)."""
        return self.model.embed_audio(audio, sample_rate=sample_rate, hop_seconds=hop_seconds)

    def recommend(self, video, k: int = 10) -> list[Recommendation]:
        """The k songs that fit the clip best, best first."""
        return self.recommend_for_query(self.embed_video(video).pooled(), k)

    def _checked_query(self, query) -> np.ndarray:
        query = np.asarray(query)
        if query.dtype.kind not in "fiu" or query.shape != (self.library.dim,):
            raise ValueError(f"query must be a ({self.library.dim},) float vector, got {query.dtype} {query.shape}")
        query = query.astype(np.float32)
        if not np.all(np.isfinite(query)):
            raise ValueError("query holds NaN or infinite values")
        norm = float(np.linalg.norm(query))
        if not norm > 0:
            raise ValueError("query is the zero vector: it matches every song equally")
        return query / norm  # scores are cosines whatever the caller's scale

    def recommend_for_query(self, query: np.ndarray, k: int = 10) -> list[Recommendation]:
        """Rank songs for a query embedding (D,) in the model's space."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        hits = self.search.top_songs(self._checked_query(query), int(k))
        window = float(self.library.meta.get("window_seconds", 15.0))
        results = []
        for rank, (song, score, row) in enumerate(zip(hits.songs, hits.scores, hits.windows), start=1):
            start = float(self.library.window_start[row])
            duration = float(self.library.durations[song])
            results.append(Recommendation(
                rank=rank, title=str(self.library.titles[song]), score=round(float(score), 6),
                start=round(start, 3), end=round(min(start + window, duration), 3),
                path=str(self.library.song_path(song)), song_index=int(song)))
        return results
