"""Sharded song libraries: a catalogue embedded in parts (on many machines) and merged into one library.

A **shard** is an ordinary library file (`tivm.runtime.library`) holding a deterministic part of a songs
folder: the songs whose relative path hashes to its index (`shard_index`), so adding songs to a catalogue
changes only the shards they fall into. Its `meta["shard"]` records which part it is:

    {"index": i, "count": n, "songs": <songs assigned>, "songs_sha256": <sha256 of their sorted paths>,
     "failed": [[path, message], ...]}

A shard whose songs all failed (or that was assigned none) cannot be a library (a library has at least one
window), so it is written as `shard-0000i-of-0000n.empty.json` beside the others, with the same `shard`
record: every index then has a file, and a missing one is an error, not a silent hole in the catalogue.

`merge_shards` checks the parts belong together (same model fingerprint, hop and window, same songs folder
or folders under one parent, no song twice, every shard of a sharded build present once) and writes one
library, songs in the order `build_library` gives them, atomically: the last good library is replaced only
by a complete, validated one; `library.output_lock` keeps two builds or merges from writing the same output
at once. Nothing here imports Ray (`tivm.runtime.distributed` does, lazily).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import zipfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from tivm.runtime.errors import LibraryError
from tivm.runtime.files import check_output, read_json_object, write_text
from tivm.runtime.library import SongLibrary, is_library, output_lock

SHARD_KEY = "shard"
EMPTY_FORMAT = "tivm-library-empty-shard"
EMPTY_SUFFIX = ".empty.json"
MAX_SHARDS = 99999  # five digits in the file names
SHARD_NAME = re.compile(r"shard-\d{5}-of-\d{5}\.npz")
BUILD_LOCK_NAME = "shards"  # library.output_lock on <folder>/shards: the lock file is .shards.lock


def shard_index(relative: str, count: int) -> int:
    """The shard a song belongs to: a hash of its path relative to the songs folder (stable across runs,
    machines and Python versions, unlike `hash()`)."""
    digest = hashlib.sha256(relative.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count


def shard_file_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}.npz"


def empty_file_name(index: int, count: int) -> str:
    return shard_file_name(index, count)[:-len(".npz")] + EMPTY_SUFFIX


def path_order(relative: str) -> tuple[str, ...]:
    """Sort key giving `build_library`'s song order (it sorts Paths, i.e. by path components)."""
    return PurePosixPath(relative).parts


def songs_sha256(relatives: Sequence[str]) -> str:
    """Identifies the set of songs assigned to a shard (NUL cannot occur in a path)."""
    digest = hashlib.sha256()
    for relative in sorted(relatives, key=path_order):
        digest.update(relative.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()


def assign_shards(relatives: Sequence[str], count: int) -> list[list[str]]:
    """Songs (relative paths) of each of `count` shards, each list in build order."""
    if not (isinstance(count, int) and 1 <= count <= MAX_SHARDS):
        raise ValueError(f"shard count must be between 1 and {MAX_SHARDS}, got {count!r}")
    parts: list[list[str]] = [[] for _ in range(count)]
    for relative in relatives:
        parts[shard_index(relative, count)].append(relative)
    return [sorted(part, key=path_order) for part in parts]


def shard_record(index: int, count: int, assigned: Sequence[str],
                 failed: Sequence[tuple[str, str]] = ()) -> dict:
    return {"index": index, "count": count, "songs": len(assigned), "songs_sha256": songs_sha256(assigned),
            "failed": [[str(p), str(m)] for p, m in failed]}


def check_shard_record(record, where: object) -> dict:
    """A shard record read from a file, checked (it is data from whoever made the file)."""
    def bad(problem: str) -> LibraryError:
        return LibraryError(f"{where}: corrupt shard record ({problem})")

    if not isinstance(record, dict):
        raise bad("meta.shard is not an object")
    count, index = record.get("count"), record.get("index")
    if not (type(count) is int and 1 <= count <= MAX_SHARDS and type(index) is int and 0 <= index < count):
        raise bad(f"index {index!r} of count {count!r}")
    songs, digest, failed = record.get("songs"), record.get("songs_sha256"), record.get("failed", [])
    if not (type(songs) is int and songs >= 0):
        raise bad("songs is not a count")
    if not (isinstance(digest, str) and len(digest) == 64):
        raise bad("songs_sha256 is not a sha256")
    if not (isinstance(failed, list) and all(isinstance(f, list) and len(f) == 2
                                             and all(isinstance(x, str) for x in f) for f in failed)):
        raise bad("failed is not a list of [path, message]")
    return record


def read_shard_meta(path: str | os.PathLike) -> dict:
    """A shard's meta (with a checked shard record) without reading its windows: what a resumed build needs
    to decide whether the shard is done. A truncated file fails here (a zip's directory is at its end); the
    full validation runs when the shard is merged or re-used."""
    path = Path(path)
    try:
        if not zipfile.is_zipfile(path):
            raise LibraryError(f"{path}: corrupt or not a tivm library (not a readable .npz archive)")
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]), parse_constant=_refuse_constant)
    except LibraryError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise LibraryError(f"{path}: corrupt or not a tivm library ({type(exc).__name__}: {exc})") from None
    if not (isinstance(meta, dict) and isinstance(meta.get("model_fingerprint"), str)
            and isinstance(meta.get("hop_seconds"), (int, float)) and isinstance(meta.get("root"), str)):
        raise LibraryError(f"{path}: not a tivm library shard (meta lacks model_fingerprint, hop_seconds or root)")
    check_shard_record(meta.get(SHARD_KEY), path)
    return meta


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


# -- empty shards --------------------------------------------------------------------------------------------

def write_empty_shard(path: str | os.PathLike, record: dict, *, model_fingerprint: str, root: str,
                      hop_seconds: float) -> Path:
    """The marker of a shard with no embeddable song (so merge knows it is not missing)."""
    data = {"format": EMPTY_FORMAT, "model_fingerprint": model_fingerprint, "root": str(root),
            "hop_seconds": float(hop_seconds), SHARD_KEY: record}
    return write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


@dataclass(frozen=True)
class EmptyShard:
    path: Path
    model_fingerprint: str
    root: str
    hop_seconds: float
    record: dict


def read_empty_shard(path: str | os.PathLike) -> EmptyShard:
    path = Path(path)
    data = read_json_object(path, lambda problem: LibraryError(f"{path}: {problem}"))
    if data.get("format") != EMPTY_FORMAT:
        raise LibraryError(f"{path}: not a tivm empty-shard marker")
    fingerprint, root, hop = data.get("model_fingerprint"), data.get("root"), data.get("hop_seconds")
    if not (isinstance(fingerprint, str) and isinstance(root, str) and isinstance(hop, (int, float))
            and not isinstance(hop, bool)):
        raise LibraryError(f"{path}: corrupt empty-shard marker (model_fingerprint, root or hop_seconds)")
    return EmptyShard(path, fingerprint, root, float(hop), check_shard_record(data.get(SHARD_KEY), path))


# -- merge ---------------------------------------------------------------------------------------------------

@dataclass
class MergeReport:
    """What a merge wrote, from which parts, and the songs the shards' builds could not embed."""

    library: SongLibrary | None = None
    parts: list[Path] = field(default_factory=list)
    empty_shards: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    note: str = ""


def merge_shards(parts: Sequence[str | os.PathLike], output: str | os.PathLike, *,
                 model_fingerprint: str | None = None) -> MergeReport:
    """Merge library shards (or any libraries of the same model) into one library at `output`.

    Refuses, with a LibraryError naming the file: an unreadable or truncated part, parts embedded by
    different models (or not by `model_fingerprint` when given), with another hop or window length, the same
    song in two parts, and a sharded build with a shard missing or given twice. `output` is written only
    after every check passed, atomically, under `library.output_lock` (a second merge or build of the same
    file fails at once).
    """
    paths = [Path(p) for p in parts]
    if not paths:
        raise LibraryError("no library shards given to merge")
    output = check_output(output, what="library", inputs=paths, replaceable=is_library)
    seen: dict[tuple[int, int], Path] = {}
    for path in paths:
        try:
            key = (path.stat().st_dev, path.stat().st_ino)
        except OSError:
            raise LibraryError(f"{path}: no such library shard") from None
        if key in seen:
            raise LibraryError(f"{path}: given twice (also as {seen[key]})")
        seen[key] = path
    with output_lock(output), ExitStack() as held:
        for folder in dict.fromkeys(p.parent for p in paths if SHARD_NAME.fullmatch(p.name)):
            _hold_build_lock(held, folder)
        parts_read: list[_Part] = []
        for path in paths:  # one at a time: thousands of shards must not hold thousands of open memory maps
            library = SongLibrary.load(path)  # validated in full
            _check_compatible(library, parts_read[0] if parts_read else None, model_fingerprint)
            parts_read.append(_Part.of(library))
            del library
        report = MergeReport(parts=paths)
        reference = parts_read[0]
        records = [_record_of(part) for part in parts_read]
        report.empty_shards = _check_shard_set(paths, records, reference)
        for record in records + [read_empty_shard(p).record for p in report.empty_shards]:
            if record is not None:
                report.failed.extend((p, m) for p, m in record.get("failed", []))
        merged, report.note = _concatenate(parts_read)
        merged.validate()
        merged.save(output)
        report.library = SongLibrary.load(output)
    return report


def _hold_build_lock(held: ExitStack, folder: Path) -> None:
    """Hold the shards folder's build lock while merging its shards: a build still writing them would
    otherwise be merged half done. A folder this process cannot write in has no build writing either."""
    try:
        held.enter_context(output_lock(folder / BUILD_LOCK_NAME))
    except LibraryError:
        raise LibraryError(f"{folder}: a build is writing shards into this folder now; merge when it has "
                           "finished") from None
    except OSError:
        pass


@dataclass(frozen=True, eq=False)
class _Part:
    """What a merge keeps of a validated part: everything but its window vectors (read again when copied)."""

    source: Path
    meta: dict
    n_windows: int
    dim: int
    window_start: np.ndarray
    song_offsets: np.ndarray
    song_embeddings: np.ndarray
    titles: np.ndarray
    paths: np.ndarray
    durations: np.ndarray
    sha256: np.ndarray

    @property
    def model_fingerprint(self) -> str:
        return self.meta["model_fingerprint"]

    @classmethod
    def of(cls, library: SongLibrary) -> "_Part":
        arrays = {name: np.asarray(getattr(library, name)) for name in (
            "window_start", "song_offsets", "song_embeddings", "titles", "paths", "durations", "sha256")}
        return cls(library.source, library.meta, len(library.window_start), int(library.embeddings.shape[1]),
                   **arrays)

    def window_vectors(self) -> np.ndarray:
        """The part's window vectors, read whole (one shard at a time), checked against what was validated."""
        try:
            with np.load(self.source, allow_pickle=False) as npz:
                vectors = npz["embeddings"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise LibraryError(f"{self.source}: became unreadable during the merge ({exc})") from None
        if vectors.shape != (self.n_windows, self.dim):
            raise LibraryError(f"{self.source}: changed during the merge (windows {vectors.shape})")
        return vectors


def _check_compatible(library: SongLibrary, reference: "_Part | None", model_fingerprint: str | None) -> None:
    where = library.source
    if getattr(library, "form", "full") != "full" or library.embeddings is None:
        # each compact library has its own PCA, fitted on its own windows: codes of two cannot be joined
        raise LibraryError(f"{where}: a compact library; merge the full-form shards, then compact the result")
    root = library.meta.get("root", "")
    if not (isinstance(root, str) and os.path.isabs(root)):
        raise LibraryError(f"{where}: songs folder {root!r} is not an absolute path; cannot place its songs")
    if model_fingerprint is not None and library.model_fingerprint != model_fingerprint:
        raise LibraryError(f"{where}: embedded by model {library.model_fingerprint[:12]}… "
                           f"({library.meta.get('model_dir')}), not by the given model {model_fingerprint[:12]}…")
    if reference is None:
        return
    first = reference.source
    if library.model_fingerprint != reference.model_fingerprint:
        raise LibraryError(f"{where}: embedded by model {library.model_fingerprint[:12]}… "
                           f"({library.meta.get('model_dir')}), but {first} by {reference.model_fingerprint[:12]}… "
                           f"({reference.meta.get('model_dir')}); rebuild it with the same model")
    for key in ("hop_seconds", "window_seconds"):
        if float(library.meta[key]) != float(reference.meta[key]):
            raise LibraryError(f"{where}: {key} {library.meta[key]} differs from {first}'s {reference.meta[key]}")
    dim = int(library.embeddings.shape[1])
    if dim != reference.dim:
        raise LibraryError(f"{where}: embedding dimension {dim} differs from {first}'s {reference.dim}")


def _record_of(part: "_Part") -> dict | None:
    record = part.meta.get(SHARD_KEY)
    return None if record is None else check_shard_record(record, part.source)


def _check_shard_set(paths: list[Path], records: list[dict | None], reference: "_Part") -> list[Path]:
    """Every shard of each sharded build present exactly once; returns the empty-shard markers used."""
    counts = {r["count"] for r in records if r is not None}
    if len(counts) > 1:
        raise LibraryError(f"shards of different builds: {', '.join(str(c) for c in sorted(counts))} shards; "
                           "merge the shards of one build (same --shard-count)")
    if not counts:
        return []
    count = counts.pop()
    present: dict[int, Path] = {}
    for path, record in zip(paths, records):
        if record is None:
            continue
        if record["index"] in present:
            raise LibraryError(f"{path}: shard {record['index']} of {count} given twice (also "
                               f"{present[record['index']]})")
        present[record["index"]] = path
    folders = list(dict.fromkeys(p.parent for p in paths))
    empty = []
    for index in range(count):
        if index in present:
            continue
        marker = next((f / empty_file_name(index, count) for f in folders
                       if (f / empty_file_name(index, count)).is_file()), None)
        if marker is None:
            raise LibraryError(f"{folders[0] / shard_file_name(index, count)}: shard {index} of {count} is "
                               "missing (not given, and no empty-shard marker beside the others); finish the "
                               "build (re-running it does only the missing shards) or give every shard")
        shard = read_empty_shard(marker)
        if (shard.record["index"], shard.record["count"]) != (index, count):
            raise LibraryError(f"{marker}: marks shard {shard.record['index']} of {shard.record['count']}, "
                               f"not {index} of {count}")
        if shard.model_fingerprint != reference.model_fingerprint:
            raise LibraryError(f"{marker}: from a build with model {shard.model_fingerprint[:12]}…, the shards "
                               f"are from {reference.model_fingerprint[:12]}…")
        if shard.hop_seconds != float(reference.meta["hop_seconds"]):
            raise LibraryError(f"{marker}: from a build with hop {shard.hop_seconds} s, the shards have "
                               f"{reference.meta['hop_seconds']} s")
        empty.append(marker)
    return empty


def _concatenate(parts: list[_Part]) -> tuple[SongLibrary, str]:
    """One library of every part's songs, in build order; paths rebased onto the parts' common folder
    when they were built from different folders. The window vectors are copied part by part into the one
    output array, so the merge holds the output and one part at a time."""
    roots = [str(part.meta["root"]) for part in parts]
    common = roots[0] if len(set(roots)) == 1 else os.path.commonpath(roots)
    note = "" if len(set(roots)) == 1 else f"parts come from different folders: song paths made relative to {common}"
    songs = []  # (relative path under common, part, song index)
    owner: dict[str, Path] = {}
    for p, (part, root) in enumerate(zip(parts, roots)):
        prefix = PurePosixPath(Path(root).relative_to(common).as_posix()) if root != common else None
        for i, path in enumerate(part.paths):
            relative = str(path) if prefix is None else str(prefix / str(path))
            if relative in owner:
                raise LibraryError(f"{part.source}: song {relative!r} is also in {owner[relative]}; "
                                   "a song may be in one part only")
            owner[relative] = part.source
            songs.append((relative, p, i))
    songs.sort(key=lambda song: path_order(song[0]))
    counts = np.array([int(parts[p].song_offsets[i + 1] - parts[p].song_offsets[i]) for _, p, i in songs],
                      dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    copies: list[list[tuple[int, int, int]]] = [[] for _ in parts]  # per part: (source row, rows, output row)
    for (_, p, i), start, n in zip(songs, offsets[:-1], counts):
        copies[p].append((int(parts[p].song_offsets[i]), int(n), int(start)))
    embeddings = np.empty((int(offsets[-1]), parts[0].dim), dtype=np.float16)
    window_start = np.empty(int(offsets[-1]), dtype=np.float32)
    for part, part_copies in zip(parts, copies):
        vectors = part.window_vectors()
        for source, n, start in part_copies:
            embeddings[start:start + n] = vectors[source:source + n]
            window_start[start:start + n] = part.window_start[source:source + n]
        del vectors

    def per_song(name: str, dtype) -> np.ndarray:
        return np.array([getattr(parts[p], name)[i] for _, p, i in songs], dtype=dtype)

    meta = {key: value for key, value in parts[0].meta.items() if key != SHARD_KEY}
    meta.update(root=common, created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                merged_from=len(parts))
    merged = SongLibrary(
        embeddings=embeddings,
        window_start=window_start,
        song_offsets=offsets,
        song_embeddings=np.stack([np.asarray(parts[p].song_embeddings[i], dtype=np.float16) for _, p, i in songs]),
        titles=per_song("titles", str),
        paths=np.array([relative for relative, _, _ in songs], dtype=str),
        durations=per_song("durations", np.float32),
        sha256=per_song("sha256", str),
        meta=meta,
    )
    return merged, note


def with_shard_record(library: SongLibrary, record: dict) -> SongLibrary:
    """The same library marked as shard `record` (what a distributed build saves)."""
    return dataclasses.replace(library, meta={**library.meta, SHARD_KEY: record})
