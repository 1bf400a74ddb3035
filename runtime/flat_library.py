"""A song library as plain little-endian arrays plus one JSON index: what an app without numpy reads.

`tivm-library export songs.npz -o songs-flat/` writes a folder::

    library.json        format "tivm-flat-library", version, model_fingerprint, dim, dtype, the songs'
                        titles, paths, durations and window offsets, window and hop seconds
    embeddings.bin      (W, D) window embeddings, row after row: int8 (dtype "int8"), float16 or float32
    scales.bin          (W,) float32, int8 only: row w's vector is embeddings[w] * scales[w]
    window_start.bin    (W,) float32, seconds into the song where each window starts

int8 with one scale per row is the default: a quarter of float32, decoded by `Int8Array` and
`Float32Array` views in JavaScript, Java's `ByteBuffer` or Swift's `Data` without any float16 support.
A window's score is `scale * dot(int8 row, query)`; rows are unit vectors, so the scale is max|x| / 127 and
rounding moves a score by at most D x scale / 254. float16 is the npz library's own values, so ranking it is
exact search, at half of float32: the phone form for a model with small embeddings (docs/runtime.md).
JavaScript has no float16 array on every runtime, so js/rank.mjs reads the rows as `Uint16Array` and turns
each value into a float through a 65,536-entry table as it multiplies; Swift has `Float16`, Java
`Float.float16ToFloat`.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tivm.runtime.errors import LibraryError, OutputError
from tivm.runtime.files import atomic_write, check_output, write_text
from tivm.runtime.library import SongLibrary

FORMAT = "tivm-flat-library"
VERSION = 1
DTYPES = ("int8", "float16", "float32")
VALUE_TYPES = {"int8": np.dtype(np.int8), "float16": np.dtype("<f2"), "float32": np.dtype("<f4")}  # little-endian
INDEX_NAME = "library.json"
EMBEDDINGS_NAME = "embeddings.bin"
SCALES_NAME = "scales.bin"
STARTS_NAME = "window_start.bin"
INT8_MAX = 127
CHUNK_ROWS = 1 << 16  # rows converted at once: bounds memory for large libraries


@dataclass(frozen=True)
class FlatLibrary:
    """A flat library read back (for tests and for apps written in Python)."""

    index: dict
    vectors: np.ndarray  # (W, D) float32, scales applied
    window_start: np.ndarray
    song_offsets: np.ndarray


def quantize_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 rows, float32 scales): each row scaled so its largest magnitude maps to 127."""
    rows = np.asarray(rows, dtype=np.float32)
    peak = np.abs(rows).max(axis=1)
    scales = np.where(peak > 0, peak / INT8_MAX, 1.0).astype(np.float32)
    quantized = np.clip(np.rint(rows / scales[:, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return quantized, scales


def export_flat(library: SongLibrary, out_dir: str | os.PathLike, dtype: str = "int8") -> Path:
    """Write `library` as a flat folder (see the module docstring); returns the folder."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    out_dir = Path(out_dir)
    index_path = out_dir / INDEX_NAME
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not _is_flat_index(index_path):
        raise OutputError(f"{out_dir}: not empty and not a flat library; choose an empty or new folder")
    out_dir.mkdir(exist_ok=True)
    check_output(index_path, what="flat library", replaceable=_is_flat_index)
    (out_dir / SCALES_NAME).unlink(missing_ok=True)  # a float32 export has none; never a stale one
    with ExitStack() as files:
        vectors = files.enter_context(atomic_write(out_dir / EMBEDDINGS_NAME))
        scales = files.enter_context(atomic_write(out_dir / SCALES_NAME)) if dtype == "int8" else None
        for first in range(0, library.n_windows, CHUNK_ROWS):
            rows = library.window_vectors(first, first + CHUNK_ROWS)  # a compact library's rebuilt
            if scales is not None:
                quantized, row_scales = quantize_rows(rows)
                vectors.write(quantized.tobytes())
                scales.write(row_scales.astype("<f4").tobytes())
            else:
                vectors.write(rows.astype(VALUE_TYPES[dtype]).tobytes())
        with atomic_write(out_dir / STARTS_NAME) as starts:
            starts.write(np.asarray(library.window_start, dtype="<f4").tobytes())
    write_text(index_path, json.dumps(_index(library, dtype), indent=1, allow_nan=False) + "\n")
    return out_dir


def _index(library: SongLibrary, dtype: str) -> dict:
    meta = library.meta
    return {
        "format": FORMAT, "version": VERSION, "dtype": dtype, "dim": library.dim, "windows": library.n_windows,
        "model_fingerprint": library.model_fingerprint, "configuration": meta.get("configuration"),
        "window_seconds": meta.get("window_seconds"), "hop_seconds": meta.get("hop_seconds"),
        "songs": {
            "title": [str(t) for t in library.titles],
            "path": [str(p) for p in library.paths],
            "duration": [round(float(d), 3) for d in library.durations],
        },
        "song_offsets": [int(o) for o in library.song_offsets],
        "source": {"library": None if library.source is None else str(library.source),
                   "created": meta.get("created"), "tivm_version": meta.get("tivm_version")},
    }


def _is_flat_index(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def read_flat(folder: str | os.PathLike) -> FlatLibrary:
    """Read a flat library back, validated as strictly as an npz library (LibraryError naming the file)."""
    folder = Path(folder)
    index_path = folder / INDEX_NAME
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LibraryError(f"{index_path}: not a readable flat library index ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
        raise LibraryError(f"{index_path}: not a {FORMAT} version {VERSION} index")
    dtype, dim, windows = index.get("dtype"), index.get("dim"), index.get("windows")
    if dtype not in DTYPES or not isinstance(dim, int) or not isinstance(windows, int) or dim < 1 or windows < 1:
        raise LibraryError(f"{index_path}: bad dtype, dim or windows")
    value_type = VALUE_TYPES[dtype]
    raw = _read_exact(folder / EMBEDDINGS_NAME, windows * dim * value_type.itemsize)
    vectors = np.frombuffer(raw, dtype=value_type).reshape(windows, dim)
    vectors = vectors.astype(np.float32)
    if dtype == "int8":
        vectors *= np.frombuffer(_read_exact(folder / SCALES_NAME, windows * 4), dtype="<f4")[:, None]
    starts = np.frombuffer(_read_exact(folder / STARTS_NAME, windows * 4), dtype="<f4").astype(np.float32)
    offsets = np.asarray(index.get("song_offsets"), dtype=np.int64)
    if offsets.ndim != 1 or offsets[0] != 0 or offsets[-1] != windows or np.any(np.diff(offsets) < 1):
        raise LibraryError(f"{index_path}: song_offsets do not partition the windows")
    if not (np.isfinite(vectors).all() and np.isfinite(starts).all()):
        raise LibraryError(f"{folder}: embeddings or window starts are not finite")
    return FlatLibrary(index, vectors, starts, offsets)


def _read_exact(path: Path, size: int) -> bytes:
    try:
        actual = path.stat().st_size
        if actual != size:
            raise LibraryError(f"{path}: {actual} bytes, the index says {size}")
        return path.read_bytes()
    except OSError as exc:
        raise LibraryError(f"{path}: cannot read ({exc.strerror or exc})") from None
