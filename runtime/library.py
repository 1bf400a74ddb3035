"""A song library: every song of a folder embedded as 15 s windows, in one plain, uncompressed npz.

Arrays (nothing pickled; `np.load(..., allow_pickle=False)`; stored uncompressed so `embeddings` can be
memory-mapped straight out of the zip):

| member | dtype / shape | meaning |
|---|---|---|
| `embeddings` | float16 (W, D) | L2-normalised window embeddings, songs one after another |
| `window_start` | float32 (W,) | start second of each window in its song |
| `song_offsets` | int64 (S + 1,) | windows of song i are rows song_offsets[i]:song_offsets[i + 1] |
| `song_embeddings` | float16 (S, D) | whole-song vector: mean of its window embeddings, re-normalised |
| `titles`, `paths` | unicode (S,) | title tag (else file stem); path relative to the songs folder |
| `durations` | float32 (S,) | seconds of audio |
| `sha256` | unicode (S,) | sha256 of the song file: what `--update` compares |
| `meta` | unicode () | JSON: format, version, model_fingerprint, model_dir, root, hop/window seconds, created |

Songs shorter than one 0.96 s log-mel patch are skipped (AudioTooShortError); songs between one patch and
one window give one window, loop-padded to 15 s by the model (a short song is usually a loop).

The compact form (version 2, meta `form` "int8-pca"; `tivm-library build --form compact` or
`tivm-library compact`) replaces `embeddings` by a PCA fitted on the library and int8 codes
(tivm.runtime.compact), and stores the song vectors as int8 with a scale per song (the flat library's
quantizer); everything else is the same:

| member | dtype / shape | meaning |
|---|---|---|
| `codes` | int8 (W, d) | each window's d principal coordinates, divided by `component_scales`, int8 per row |
| `row_scales` | float32 (W,) | row w's coordinates are codes[w] * row_scales[w] |
| `pca_mean`, `pca_components` | float32 (D,), (D, d) | the PCA fitted on the library's windows |
| `component_scales` | float32 (d,) | spread of each principal coordinate |
| `song_embeddings`, `song_scales` | int8 (S, D), float32 (S,) | song vectors, int8 with a scale per song |

`codes` is stored uncompressed (memory-mapped like `embeddings`); the text members are deflated, which
matters at phone scale (fixed-width unicode is four bytes a character, padded to the longest entry).
"""

from __future__ import annotations

import json
import os
import struct
import tokenize
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from tivm.runtime.compact import DEFAULT_DIMS, CompactWindows
from tivm.runtime.compact import FORM as COMPACT_FORM
from tivm.runtime.errors import LibraryError, MediaError, TivmError
from tivm.runtime.files import atomic_write, check_output
from tivm.runtime.manifest import file_sha256
from tivm.runtime.media import check_local_file, open_media
from tivm.runtime.version import tivm_version

FORMAT = "tivm-library"
VERSION = 1  # the full form; what tivm up to the compact form wrote, and still reads
COMPACT_VERSION = 2  # the compact form: a tivm that reads only version 1 says "rebuild" instead of misreading
VERSIONS = (VERSION, COMPACT_VERSION)
FORMS = ("full", "compact")
DEFAULT_HOP_SECONDS = 5.0
AUDIO_EXTENSIONS = frozenset({
    ".aac", ".aif", ".aiff", ".ape", ".au", ".flac", ".m4a", ".mka", ".mp2", ".mp3", ".mpc", ".oga", ".ogg",
    ".opus", ".wav", ".wma", ".wv", ".webm", ".caf",
})
ARRAYS = ("embeddings", "window_start", "song_offsets", "song_embeddings", "titles", "paths", "durations",
          "sha256", "meta")
COMPACT_WINDOW_ARRAYS = ("codes", "row_scales", "pca_mean", "pca_components", "component_scales")
COMPACT_ARRAYS = tuple(n for n in ARRAYS if n != "embeddings") + COMPACT_WINDOW_ARRAYS + ("song_scales",)
STORED_UNCOMPRESSED = frozenset({"embeddings", "codes"})  # memory-mapped in place
SONG_NORM_TOLERANCE = 0.02  # int8 song vectors: rounding moves the norm by well under 1 %
ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... file name length, extra field length
ZIP_LOCAL_SIGNATURE = b"PK\x03\x04"
EMBEDDING_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
# float16 storage rounds a unit vector's norm by ~1e-3; anything further off was not written by tivm
UNIT_NORM_TOLERANCE = 0.01
START_TOLERANCE_SECONDS = 0.5  # window starts are rounded to steps of 0.96 s or 1 / fps
MAX_SECONDS = 86400.0  # hop and window lengths beyond a day are not settings but corruption
CHECK_CHUNK_ROWS = 1 << 16  # rows per finiteness/norm check: bounds the float32 copy of a memory map
# what reading a damaged archive raises (found by fuzzing single bytes): a bad deflate stream, a compression
# method number zipfile does not know, a local header cut short, an npy header numpy cannot parse, a member
# flagged as encrypted (zipfile's RuntimeError)
READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError,
               struct.error, SyntaxError, tokenize.TokenError, RuntimeError)


@dataclass(frozen=True, eq=False)  # holds arrays: compare by identity
class SongLibrary:
    """An immutable song library; `embeddings` (or a compact library's codes) may be a read-only memory map.

    A compact library has `embeddings` None and its windows in `compact`; `window_vectors` reads either.
    """

    embeddings: np.ndarray | None
    window_start: np.ndarray
    song_offsets: np.ndarray
    song_embeddings: np.ndarray
    titles: np.ndarray
    paths: np.ndarray
    durations: np.ndarray
    sha256: np.ndarray
    meta: dict
    source: Path | None = None  # the npz it was loaded from
    compact: CompactWindows | None = None  # the compact form's windows (then `embeddings` is None)
    song_scales: np.ndarray | None = None  # the compact form: song vector i is song_embeddings[i] * song_scales[i]

    @property
    def n_songs(self) -> int:
        return len(self.titles)

    @property
    def n_windows(self) -> int:
        return len(self.window_start)

    @property
    def dim(self) -> int:
        return int(self.song_embeddings.shape[1])

    @property
    def form(self) -> str:
        """"full" (float16/float32 window vectors) or "compact" (int8 PCA codes)."""
        return "compact" if self.compact is not None else "full"

    @property
    def windows(self) -> np.ndarray | CompactWindows:
        """What the search reads: the window vectors, or a compact library's codes (tivm.runtime.search)."""
        return self.compact if self.compact is not None else self.embeddings

    def window_vectors(self, start: int, stop: int) -> np.ndarray:
        """Windows start:stop as float32 (D,) vectors; a compact library's are rebuilt from their codes."""
        if self.compact is not None:
            return self.compact.decode(start, stop)
        return np.asarray(self.embeddings[start:stop], dtype=np.float32)

    def song_vectors(self) -> np.ndarray:
        """(S, D) float32 whole-song vectors."""
        vectors = np.asarray(self.song_embeddings, dtype=np.float32)
        return vectors * self.song_scales[:, None] if self.song_scales is not None else vectors

    def compacted(self, dims: int = DEFAULT_DIMS) -> "SongLibrary":
        """This library in the compact form: a PCA to `dims` fitted on its windows, int8 codes (in memory)."""
        from tivm.runtime.flat_library import quantize_rows

        if self.compact is not None:
            raise LibraryError(f"{self.source or 'library'}: already compact ({self.compact.dims} dims); "
                               "compact the full library it was made from")
        windows = CompactWindows.fit(self.embeddings, dims)
        song_codes, song_scales = quantize_rows(self.song_embeddings)
        meta = dict(self.meta, version=COMPACT_VERSION, form=COMPACT_FORM, compact_dims=int(dims))
        return SongLibrary(embeddings=None, window_start=self.window_start, song_offsets=self.song_offsets,
                           song_embeddings=song_codes, titles=self.titles, paths=self.paths,
                           durations=self.durations, sha256=self.sha256, meta=meta, compact=windows,
                           song_scales=song_scales)

    @property
    def model_fingerprint(self) -> str:
        return self.meta["model_fingerprint"]

    def song_path(self, index: int) -> Path:
        """Where song `index` lives: its stored relative path under the library's songs folder.

        Only joins names (songs may have moved since the build); `song_file` checks the file is there.
        """
        return Path(str(self.meta.get("root", ""))) / str(self.paths[index])

    def song_file(self, index: int) -> Path:
        """The song's file, resolved: LibraryError unless it is a regular file inside the songs folder.

        Paths in a library are data from whoever made the file: a symbolic link, `..` or an absolute path
        must not lead the runtime to read anything outside the folder the library was built from.
        """
        where = self.source or "library"
        root = Path(str(self.meta.get("root", "")))
        if not root.is_absolute():  # relative to what? the build always records an absolute folder
            raise LibraryError(f"{where}: songs folder {str(root)!r} is not an absolute path")
        candidate = self.song_path(index)
        root = root.resolve()
        resolved = candidate.resolve()
        if not resolved.is_relative_to(root):
            raise LibraryError(f"{where}: song path {str(self.paths[index])!r} leads outside the songs folder "
                               f"{root}")
        if not resolved.is_file():
            problem = "is not a regular file" if resolved.exists() else "is missing (moved or deleted?)"
            raise LibraryError(f"{where}: song {candidate} {problem}")
        return resolved

    def check_model(self, fingerprint: str, model_dir: str | os.PathLike | None = None) -> None:
        """LibraryError unless this library was embedded by the model with this fingerprint."""
        if fingerprint != self.model_fingerprint:
            raise LibraryError(
                f"{self.source or 'library'}: built with model {self.model_fingerprint[:12]}… "
                f"({self.meta.get('model_dir')}), queried with model {fingerprint[:12]}…"
                f"{f' ({model_dir})' if model_dir else ''}; rebuild it with `tivm-library build --model`")

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically; the full form uncompressed so `embeddings` stays memory-mappable, the compact
        form with its codes stored and the rest deflated."""
        meta = np.array(json.dumps(self.meta, sort_keys=True))
        if self.compact is None:
            arrays = {name: getattr(self, name) for name in ARRAYS if name != "meta"}
            with atomic_write(path) as f:
                np.savez(f, **arrays, meta=meta)
            return Path(path)
        arrays = {name: getattr(self, name) for name in COMPACT_ARRAYS
                  if name not in COMPACT_WINDOW_ARRAYS and name != "meta"}
        c = self.compact
        arrays.update(codes=c.codes, row_scales=c.row_scales, pca_mean=c.mean, pca_components=c.components,
                      component_scales=c.component_scales, meta=meta)
        with atomic_write(path) as f, zipfile.ZipFile(f, "w", allowZip64=True) as archive:
            for name, array in arrays.items():
                compression = zipfile.ZIP_STORED if name in STORED_UNCOMPRESSED else zipfile.ZIP_DEFLATED
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = compression
                with archive.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True) -> "SongLibrary":
        """Read and validate a library; LibraryError naming the file on any problem."""
        path = Path(path)
        if not path.is_file():
            raise LibraryError(f"{path}: no such library file (build one with `tivm-library build`)")
        if not zipfile.is_zipfile(path):  # before np.load, which would hand back a .npy array or talk of pickles
            raise LibraryError(f"{path}: corrupt or not a tivm library (not a readable .npz archive)")
        try:
            with np.load(path, allow_pickle=False) as npz:
                if "meta" not in npz.files:
                    raise LibraryError(f"{path}: not a tivm library (missing meta)")
                meta = npz["meta"]
                if not isinstance(meta, np.ndarray):
                    raise ValueError("member meta is not an .npy array")
                meta = _read_meta(meta)
                problems = _meta_problems(meta)
                if problems and (problems[0].startswith("not a tivm library")
                                 or problems[0].startswith("library version")):
                    raise LibraryError(f"{path}: {problems[0]}")
                names = COMPACT_ARRAYS if _is_compact_meta(meta) else ARRAYS
                missing = [n for n in names if n not in npz.files]
                if missing:
                    raise LibraryError(f"{path}: not a tivm library (missing {', '.join(missing)})")
                mapped = STORED_UNCOMPRESSED if mmap else frozenset()
                arrays = {n: npz[n] for n in names if n not in mapped and n != "meta"}
            not_npy = [n for n, a in arrays.items() if not isinstance(a, np.ndarray)]
            if not_npy:  # np.load hands back the raw bytes of a member without an .npy header
                raise ValueError(f"member {not_npy[0]} is not an .npy array")
            for name in mapped & set(names):
                arrays[name] = _mmap_member(path, name)
        except LibraryError:
            raise
        except READ_ERRORS as exc:
            raise LibraryError(f"{path}: corrupt or not a tivm library ({type(exc).__name__}: {exc})") from None
        for array in arrays.values():
            array.flags.writeable = False  # shared between threads: nobody may change it in place
        if _is_compact_meta(meta):
            compact = CompactWindows(codes=arrays.pop("codes"), row_scales=arrays.pop("row_scales"),
                                     mean=arrays.pop("pca_mean"), components=arrays.pop("pca_components"),
                                     component_scales=arrays.pop("component_scales"))
            library = cls(embeddings=None, meta=meta, source=path, compact=compact, **arrays)
        else:
            library = cls(meta=meta, source=path, **arrays)
        library.validate()
        return library

    def validate(self) -> None:
        """LibraryError unless every array has the type, shape and values the runtime relies on.

        A library is untrusted input: a NaN window would reorder other songs' windows in the ranking, a
        float song_offsets would index nothing, a negative start would be shown to users.
        """
        problems = _meta_problems(self.meta) or _array_problems(self)
        if problems:
            where = self.source or "library"
            if problems[0].startswith("not a tivm library") or problems[0].startswith("library version"):
                raise LibraryError(f"{where}: {problems[0]}")
            raise LibraryError(f"{where}: corrupt library ({'; '.join(problems)})")


def is_library(path: str | os.PathLike) -> bool:
    """Whether `path` holds a tivm library (any version): what an output may replace."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return False
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "meta.npy" not in npz.zip.namelist():
                return False
            meta = json.loads(str(npz["meta"]))
    except READ_ERRORS + (AttributeError,):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def _read_meta(array: np.ndarray) -> dict:
    if array.dtype.kind != "U" or array.ndim != 0:
        raise LibraryError(f"meta is {array.dtype} {array.shape}, expected one JSON string")
    try:
        meta = json.loads(str(array), parse_constant=_refuse_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"meta is not valid JSON ({exc})") from None
    return meta


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _is_compact_meta(meta: dict) -> bool:
    return meta.get("version") == COMPACT_VERSION


def _meta_problems(meta) -> list[str]:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return [f"not a tivm library (format is not {FORMAT!r})"]
    if meta.get("version") not in VERSIONS:
        return [f"library version {meta.get('version')!r} is not supported (this tivm reads "
                f"{' and '.join(map(str, VERSIONS))}); rebuild it"]
    if _is_compact_meta(meta) and meta.get("form") != COMPACT_FORM:  # a later compact form, or not tivm's
        return [f"library version {COMPACT_VERSION} form {meta.get('form')!r} is not supported (this tivm reads "
                f"{COMPACT_FORM!r}); rebuild it"]
    problems = []
    fingerprint = meta.get("model_fingerprint")
    if not (isinstance(fingerprint, str) and len(fingerprint) == 64
            and all(c in "0123456789abcdef" for c in fingerprint)):
        problems.append("meta.model_fingerprint is not a sha256 hex string")
    for key in ("root", "model_dir"):
        if key in meta and not isinstance(meta[key], str):
            problems.append(f"meta.{key} is not a string")
    for key in ("hop_seconds", "window_seconds"):
        value = meta.get(key)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= MAX_SECONDS):
            problems.append(f"meta.{key} is not a number of seconds in (0, {MAX_SECONDS:g}]")
    return problems


def _array_problems(library: "SongLibrary") -> list[str]:
    """Types and shapes first (cheap), then values; stops at the first failing group so a wrong shape is
    reported as such, not as the errors it would cause further down."""
    if library.compact is not None:
        return _compact_problems(library)
    emb, song_emb = library.embeddings, library.song_embeddings
    types = [
        (emb.ndim == 2 and emb.dtype in EMBEDDING_DTYPES and emb.shape[0] > 0 and emb.shape[1] > 0,
         f"embeddings is {emb.dtype} {emb.shape}, expected 2-d float16/float32 with rows"),
        (song_emb.ndim == 2 and song_emb.dtype in EMBEDDING_DTYPES, f"song_embeddings is {song_emb.dtype} "
         f"{song_emb.shape}, expected 2-d float16/float32"),
    ]
    problems = [message for ok, message in types if not ok] or _common_problems(library, len(emb))
    if problems:
        return problems
    if song_emb.shape[1] != emb.shape[1]:
        return ["song_embeddings and embeddings differ in dimension"]
    problems = _value_problems(library)
    if problems:
        return problems
    return [f"{name}: {problem}" for name, problem in
            (("embeddings", _unit_rows_problem(emb)), ("song_embeddings", _unit_rows_problem(song_emb)))
            if problem] + _path_problems(library)


def _compact_problems(library: "SongLibrary") -> list[str]:
    """The compact form: its codes and PCA (tivm.runtime.compact), int8 song vectors, then what both share."""
    song_emb, song_scales = library.song_embeddings, library.song_scales
    problems = library.compact.problems()
    if problems:
        return problems
    types = [
        (song_emb.ndim == 2 and song_emb.dtype == np.int8, f"song_embeddings is {song_emb.dtype} "
         f"{song_emb.shape}, expected 2-d int8 in a compact library"),
        (song_scales is not None and song_scales.ndim == 1 and song_scales.dtype == np.float32,
         "song_scales is not 1-d float32"),
    ]
    problems = [message for ok, message in types if not ok] or _common_problems(library, len(library.compact))
    if problems:
        return problems
    if len(song_scales) != library.n_songs:
        return ["per-song arrays differ in length"]
    if song_emb.shape[1] != library.compact.dim:
        return ["song_embeddings and the PCA differ in dimension"]
    if library.meta.get("compact_dims") != library.compact.dims:
        return [f"meta.compact_dims is {library.meta.get('compact_dims')!r}, the codes have {library.compact.dims}"]
    problems = _value_problems(library)
    if problems:
        return problems
    norms = np.linalg.norm(library.song_vectors(), axis=1)
    bad = np.flatnonzero(~(np.abs(norms - 1.0) <= SONG_NORM_TOLERANCE))
    if len(bad):
        problems.append(f"song_embeddings: row {int(bad[0])} has norm {norms[bad[0]]:.4g} (expected unit-length "
                        "vectors)")
    return problems + _path_problems(library)


def _common_problems(library: "SongLibrary", n_windows: int) -> list[str]:
    """Types and shapes of what both forms hold besides the window vectors."""
    starts, offsets = library.window_start, library.song_offsets
    song_emb, durations = library.song_embeddings, library.durations
    text = {name: getattr(library, name) for name in ("titles", "paths", "sha256")}
    types = [
        (starts.ndim == 1 and starts.dtype.kind == "f", f"window_start is {starts.dtype} {starts.shape}, "
         "expected 1-d float"),
        (offsets.ndim == 1 and offsets.dtype.kind in "iu", f"song_offsets is {offsets.dtype} {offsets.shape}, "
         "expected 1-d integer"),
        (durations.ndim == 1 and durations.dtype.kind == "f", f"durations is {durations.dtype} {durations.shape}, "
         "expected 1-d float"),
    ] + [(a.ndim == 1 and a.dtype.kind == "U", f"{name} is {a.dtype} {a.shape}, expected 1-d text")
         for name, a in text.items()]
    problems = [message for ok, message in types if not ok]
    if problems:
        return problems
    s, w = len(library.titles), n_windows
    shapes = [
        (len(offsets) == s + 1, "song_offsets length is not songs + 1"),
        (len(starts) == w, f"window_start length differs from {'embeddings' if library.compact is None else 'codes'}"),
        (all(len(a) == s for a in (library.paths, durations, library.sha256, song_emb)),
         "per-song arrays differ in length"),
    ]
    return [message for ok, message in shapes if not ok]


def _value_problems(library: "SongLibrary") -> list[str]:
    """Offsets, durations and starts: the values both forms rely on."""
    starts, offsets, durations = library.window_start, library.song_offsets, library.durations
    s, w = library.n_songs, library.n_windows
    if offsets[0] != 0 or offsets[-1] != w:
        return ["song_offsets do not span the windows"]
    if np.any(np.diff(offsets) < 1):
        return ["a song has no window"]
    if not np.all(np.isfinite(durations)) or np.any(durations <= 0):
        return ["durations are not all positive finite seconds"]
    if not np.all(np.isfinite(starts)) or np.any(starts < 0):
        return ["window_start is not all finite seconds >= 0"]
    song_of_window = np.repeat(np.arange(s), np.diff(offsets))
    if np.any(starts > durations[song_of_window] + START_TOLERANCE_SECONDS):
        return ["a window starts after the end of its song"]
    return []


def _path_problems(library: "SongLibrary") -> list[str]:
    bad = [str(p) for p in library.paths if not _is_plain_relative(str(p))]
    return [f"paths must be relative and stay inside the songs folder, got {bad[0]!r}"] if bad else []


def _unit_rows_problem(matrix: np.ndarray) -> str | None:
    """Rows must be finite and L2-normalised (one pass in chunks: `embeddings` may be a large memory map)."""
    for start in range(0, len(matrix), CHECK_CHUNK_ROWS):
        chunk = np.asarray(matrix[start:start + CHECK_CHUNK_ROWS], dtype=np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
        bad = np.flatnonzero(~(np.abs(norms - 1.0) <= UNIT_NORM_TOLERANCE))  # NaN fails the comparison too
        if len(bad):
            row = start + int(bad[0])
            value = "not finite" if not np.isfinite(norms[bad[0]]) else f"has norm {norms[bad[0]]:.4g}"
            return f"row {row} {value} (expected unit-length vectors)"
    return None


def _is_plain_relative(path: str) -> bool:
    if not path or "\x00" in path or os.path.isabs(path) or "\\" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


@dataclass
class BuildReport:
    """What a build did: songs embedded anew, reused (same content hash), dropped, failed, ignored."""

    library: SongLibrary | None = None
    embedded: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    note: str = ""


@dataclass(frozen=True)
class _Song:
    path: str
    title: str
    duration: float
    sha256: str
    starts: np.ndarray
    vectors: np.ndarray


def scan_songs(songs_dir: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """(entries with an audio extension, other files) under a folder, recursively, in a stable order.

    Audio-named entries that are not regular files (broken links, pipes) are kept, so the build reports
    them as failures instead of dropping them silently.
    """
    root = Path(songs_dir)
    if not root.is_dir():
        raise LibraryError(f"{root}: not a folder of songs")
    entries = sorted(p for p in root.rglob("*") if not p.name.startswith(".") and not p.is_dir())
    audio = [p for p in entries if p.suffix.lower() in AUDIO_EXTENSIONS]
    return audio, [p for p in entries if p.suffix.lower() not in AUDIO_EXTENSIONS]


def read_title(path: str | os.PathLike) -> str:
    """The title tag when the container or its audio stream has one, else the file stem."""
    try:
        with open_media(path, metadata_errors="replace") as container:
            tags = [container.metadata] + [s.metadata for s in container.streams.audio[:1]]
            for tag in tags:
                for key, value in tag.items():
                    if key.lower() == "title" and value.strip():
                        return value.strip()
    except Exception:  # a title is a nicety: decoding errors are reported by load_audio
        pass
    return Path(path).stem


def build_library(songs_dir: str | os.PathLike, model, output: str | os.PathLike, *,
                  hop_seconds: float = DEFAULT_HOP_SECONDS, update: bool = False, progress: bool = True,
                  on_failure: Callable[[str, str], None] | None = None, form: str = "full",
                  compact_dims: int = DEFAULT_DIMS) -> BuildReport:
    """Embed every song under `songs_dir` with `model` and write the library to `output` atomically.

    `update=True` keeps the windows of songs whose content hash is unchanged (when the existing library was
    built with the same model and hop) and drops songs that are gone. Songs that fail are reported and skipped.
    `form="compact"` writes the compact form (`compact_dims` PCA dims, int8; see the module docstring).
    A second build to the same output while one runs fails at once (LibraryError), whatever the form.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    root = Path(songs_dir).resolve()
    check_output(output, what="library", replaceable=is_library)
    with output_lock(output):
        return _build(root, model, Path(output), hop_seconds, update, progress, on_failure, form, compact_dims)


def _build(root: Path, model, output: Path, hop_seconds: float, update: bool, progress: bool,
           on_failure, form: str, compact_dims: int) -> BuildReport:
    files, others = scan_songs(root)
    report = BuildReport(ignored=[str(p.relative_to(root)) for p in others])
    previous, report.note = _previous_songs(output, model, hop_seconds, form) if update else ({}, "")
    songs: list[_Song] = []
    for path in _progress(files, progress):
        relative = str(path.relative_to(root))
        try:
            check_local_file(path)  # before hashing: reading a pipe would block forever
            digest = file_sha256(path)
            if digest in previous:
                songs.append(_reused(previous[digest], relative, path))
                report.reused.append(relative)
                continue
            songs.append(_embed_song(model, path, relative, digest, hop_seconds))
            report.embedded.append(relative)
        except (TivmError, OSError) as exc:
            message = str(exc) if isinstance(exc, TivmError) else str(MediaError(path, f"unreadable ({exc})"))
            report.failed.append((relative, message))
            if on_failure:
                on_failure(relative, message)
    kept = {s.sha256 for s in songs}
    report.removed = sorted(s.path for s in previous.values() if s.sha256 not in kept)
    if not songs:
        raise LibraryError(f"{root}: no song could be embedded ({len(report.failed)} failed, "
                           f"{len(report.ignored)} other files)")
    library = _assemble(songs, model, root, hop_seconds)
    if form == "compact":
        library = library.compacted(compact_dims)
    library.save(output)
    report.library = SongLibrary.load(output)
    return report


@contextmanager
def output_lock(output: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on `output` while a library is made for it; LibraryError if another holds it.

    Atomic writes already keep every reader's library whole; the lock makes the second of two builds to the
    same file fail at once with a clear message instead of running for hours and then silently replacing
    the first one's result. The lock is an OS lock on a hidden file beside the output (released by the
    OS if the process dies); where the platform has no `fcntl` only the atomic write protects.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks through fcntl
        yield
        return
    output = Path(output)
    lock_path = output.parent / f".{output.name}.lock"
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise LibraryError(f"{output}: another build is writing this library now; wait for it to finish "
                               "(or write to another file)") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder before us removed the file between our open and lock: lock the new one
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        os.close(fd)


def _progress(items: list, enabled: bool) -> Iterable:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="embedding songs", unit="song")


def _embed_song(model, path: Path, relative: str, digest: str, hop_seconds: float) -> _Song:
    windows = model.embed_audio(path, hop_seconds=hop_seconds)
    return _Song(relative, read_title(path), windows.duration, digest, windows.starts, windows.vectors)


def _reused(song: _Song, relative: str, path: Path) -> _Song:
    title = song.title if relative == song.path else read_title(path)
    return _Song(relative, title, song.duration, song.sha256, song.starts, song.vectors)


def _previous_songs(output: Path, model, hop_seconds: float, form: str) -> tuple[dict[str, _Song], str]:
    """Songs of an existing library to reuse, by content hash; none if model or hop changed, or if the
    output is to be full and the existing one is compact (its windows are approximations: a full library
    made of them would claim a precision it does not have). A compact library reuses a compact one's
    windows as rebuilt from their codes, re-fitted and re-coded with the new songs."""
    if not output.exists():
        return {}, f"{output} does not exist yet: embedding every song"
    library = SongLibrary.load(output, mmap=False)
    if library.form == "compact" and form == "full":
        return {}, f"{output} is a compact library and the build writes a full one: re-embedding every song"
    if library.model_fingerprint != model.fingerprint:
        return {}, f"{output} was built with another model: re-embedding every song"
    if float(library.meta.get("hop_seconds", -1)) != float(hop_seconds):
        return {}, f"{output} was built with hop {library.meta.get('hop_seconds')} s: re-embedding every song"
    songs = {}
    for i in range(library.n_songs):
        rows = slice(library.song_offsets[i], library.song_offsets[i + 1])
        songs[str(library.sha256[i])] = _Song(str(library.paths[i]), str(library.titles[i]),
                                              float(library.durations[i]), str(library.sha256[i]),
                                              library.window_start[rows],
                                              library.window_vectors(rows.start, rows.stop))
    return songs, ""


def _assemble(songs: list[_Song], model, root: Path, hop_seconds: float) -> SongLibrary:
    from tivm.runtime.model import l2_normalize

    counts = [len(s.starts) for s in songs]
    vectors = [np.asarray(s.vectors, dtype=np.float32) for s in songs]
    meta = {
        "format": FORMAT, "version": VERSION,
        "model_fingerprint": model.fingerprint, "model_dir": str(model.model_dir),
        "configuration": model.manifest.configuration,
        "root": str(root), "hop_seconds": float(hop_seconds),
        "window_seconds": float(model.manifest.audio.clip_seconds),
        "song_vector": "mean of window embeddings, re-normalised",
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tivm_version": tivm_version(),
    }
    return SongLibrary(
        embeddings=np.concatenate(vectors).astype(np.float16),
        window_start=np.concatenate([s.starts for s in songs]).astype(np.float32),
        song_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        song_embeddings=np.stack([l2_normalize(v.mean(axis=0)) for v in vectors]).astype(np.float16),
        titles=np.array([s.title for s in songs], dtype=str),
        paths=np.array([s.path for s in songs], dtype=str),
        durations=np.array([s.duration for s in songs], dtype=np.float32),
        sha256=np.array([s.sha256 for s in songs], dtype=str),
        meta=meta,
    )


def _mmap_member(path: Path, name: str) -> np.ndarray:
    """Memory-map one array of an uncompressed npz in place; a compressed member is read into memory."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{name}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            with archive.open(info) as member:
                return np.lib.format.read_array(member, allow_pickle=False)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        signature, name_length, extra_length = ZIP_LOCAL_HEADER.unpack(f.read(ZIP_LOCAL_HEADER.size))
        if signature != ZIP_LOCAL_SIGNATURE:
            raise ValueError(f"bad zip local header for {name}")
        f.seek(info.header_offset + ZIP_LOCAL_HEADER.size + name_length + extra_length)
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{name} holds Python objects")
    if offset + int(np.prod(shape)) * dtype.itemsize > path.stat().st_size:
        raise ValueError(f"{name} is truncated")
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset,
                     order="F" if fortran_order else "C")


# Building a library in parts (tivm.runtime.distributed embeds songs on Ray workers and writes shards, which
# tivm.runtime.shards merges): build_library's own per-song step and assembly, so a song is embedded and a
# library put together by one code path however the work is spread.
LibrarySong = _Song


def embed_song(model, path: str | os.PathLike, relative: str, sha256: str,
               hop_seconds: float = DEFAULT_HOP_SECONDS) -> LibrarySong:
    """One song as build_library embeds it (windows and title); MediaError/OSError as there."""
    return _embed_song(model, Path(path), relative, sha256, hop_seconds)


def assemble_library(songs: list[LibrarySong], model, root: str | os.PathLike,
                     hop_seconds: float = DEFAULT_HOP_SECONDS) -> SongLibrary:
    """A library of embedded songs, in the given order, with build_library's meta (model from its manifest)."""
    return _assemble(list(songs), model, Path(root).resolve(), hop_seconds)
