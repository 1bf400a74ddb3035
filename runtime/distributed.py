"""Building a song library on a Ray cluster (Ray Data), in shards that `tivm-library merge` joins.

The songs' paths are the rows of a Ray dataset; `map_batches` sends them to a pool of actors (`SongEmbedder`),
each of which opens the model once, with one onnxruntime thread, and embeds songs with build_library's own
per-song step (`tivm.runtime.library.embed_song`). A song that fails comes back as a row with its error
message: reported, never fatal. The driver (this process) gathers the rows of each shard
(`tivm.runtime.shards`) and writes the shard atomically as soon as its last song is in, so a build that stops
(Ctrl-C, a lost node) keeps every finished shard, and the next run does only the rest:

* a shard whose file is there, valid, from the same model, hop and songs folder, and assigned the same songs
  (by path) is skipped without reading a song;
* a shard whose songs changed, or with songs that failed last time (retried), is redone, re-using the windows
  of each song whose path and content hash (sha256) are unchanged, as `tivm-library build --update` does.

A song edited in place (same path) inside a complete shard is not noticed by the skip, which reads no song;
`rehash=True` (`--rehash`) hashes every song again and re-embeds only the changed ones.

Every worker reads the songs at the driver's absolute paths: the songs folder must be mounted at the same
place on every node (a shared file system), and each worker checks it loaded the model the driver expects
(same fingerprint), so nodes with another copy of the model stop the build instead of mixing embeddings.

Ray is an optional extra (`pip install 'tivm[distributed]'`), imported only when a build starts.
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from tivm.runtime.errors import LibraryError, MediaError, ModelError, OutputError, TivmError
from tivm.runtime.library import (
    DEFAULT_HOP_SECONDS,
    LibrarySong,
    SongLibrary,
    assemble_library,
    embed_song,
    output_lock,
    scan_songs,
)
from tivm.runtime.shards import (
    BUILD_LOCK_NAME,
    EMPTY_SUFFIX,
    MAX_SHARDS,
    SHARD_KEY,
    assign_shards,
    empty_file_name,
    read_empty_shard,
    shard_file_name,
    shard_record,
    with_shard_record,
)

INSTALL_HINT = "pip install 'tivm[distributed]'"
SONGS_PER_SHARD = 1000  # default shard size: a shard is a unit of resumption and of driver memory
SONGS_PER_BLOCK = 100  # Ray Data block size: songs take seconds each, so scheduling overhead is negligible
ENGINES = ("ray", "local")


@dataclass
class DistributedReport:
    """What a distributed build did, shard by shard and song by song."""

    shard_count: int = 0
    shards_written: list[Path] = field(default_factory=list)
    shards_skipped: list[Path] = field(default_factory=list)  # complete from an earlier run
    embedded: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    songs_per_worker: dict[str, int] = field(default_factory=dict)  # "host:pid" -> songs it handled

    @property
    def shard_files(self) -> list[Path]:
        """Every shard library of the build (written now or before), for merge_shards."""
        return sorted(p for p in self.shards_written + self.shards_skipped if p.suffix == ".npz")


class SongEmbedder:
    """A Ray Data actor: opens the model once per worker, then embeds one batch of songs per call."""

    def __init__(self, model_dir: str, hop_seconds: float, fingerprint: str, intra_op_threads: int = 1):
        from tivm.runtime.model import Model

        self.hop_seconds = hop_seconds
        self.problem = ""
        try:
            self.model = Model.load(model_dir, intra_op_threads=intra_op_threads, branches=("audio",))
            if self.model.fingerprint != fingerprint:
                self.problem = (f"{model_dir}: on worker {_host()} holds model {self.model.fingerprint[:12]}…, the "
                                f"build's is {fingerprint[:12]}…; give every node the same model")
        except TivmError as exc:
            self.problem = f"{exc} (on worker {_host()})"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self._one(str(path), str(relative), str(previous))
                for path, relative, previous in zip(batch["path"], batch["relative"], batch["previous_sha256"])]
        out = {name: np.array([row[name] for row in rows], dtype=object) for name in _ROW_FIELDS}
        out["shard"] = np.asarray(batch["shard"], dtype=np.int64)
        return out

    def _one(self, path: str, relative: str, previous_sha256: str) -> dict:
        from tivm.runtime.manifest import file_sha256
        from tivm.runtime.media import check_local_file

        row = dict.fromkeys(_ROW_FIELDS, "")
        row.update(relative=relative, duration=0.0, dim=0, starts=b"", vectors=b"", worker=f"{_host()}:{os.getpid()}")
        if self.problem:
            row.update(status="fatal", error=self.problem)
            return row
        try:  # as build_library's loop: check (a pipe would block the hash), hash, re-use or embed
            check_local_file(path)
            digest = file_sha256(path)
            if digest == previous_sha256:
                row.update(status="reused", sha256=digest)
                return row
            song = embed_song(self.model, path, relative, digest, self.hop_seconds)
        except (TivmError, OSError) as exc:
            message = str(exc) if isinstance(exc, TivmError) else str(MediaError(path, f"unreadable ({exc})"))
            row.update(status="failed", error=message)
            return row
        vectors = np.ascontiguousarray(song.vectors, dtype=np.float32)
        row.update(status="embedded", sha256=digest, title=song.title, duration=float(song.duration),
                   dim=int(vectors.shape[1]), starts=np.ascontiguousarray(song.starts, np.float32).tobytes(),
                   vectors=vectors.tobytes())
        return row


_ROW_FIELDS = ("relative", "status", "error", "sha256", "title", "duration", "dim", "starts", "vectors", "worker")


def _host() -> str:
    import socket

    return socket.gethostname()


def build_distributed(songs_dir: str | os.PathLike, model_dir: str | os.PathLike, shards_dir: str | os.PathLike, *,
                      shard_count: int | None = None, hop_seconds: float = DEFAULT_HOP_SECONDS, workers: int = 2,
                      address: str | None = None, batch_size: int = 1, engine: str = "ray", rehash: bool = False,
                      quiet: bool = True,
                      on_failure: Callable[[str, str], None] | None = None,
                      on_shard: Callable[[Path], None] | None = None) -> DistributedReport:
    """Embed every song under `songs_dir` on `workers` Ray actors into shards in `shards_dir`.

    `address`: a running Ray cluster ("auto", "ray://host:10001"); None starts a local Ray with `workers`
    CPUs (a Ray already initialised in this process is used as it is). `shard_count`: None keeps the count
    of the shards already in the folder, else one shard per SONGS_PER_SHARD songs. `engine="local"` runs the
    same worker code in this process, one song after another (no Ray needed). Returns the report;
    `merge_shards(report.shard_files, ...)` makes the library.
    """
    from tivm.runtime.model import Model

    root = Path(songs_dir).resolve()
    shards_dir = Path(shards_dir)
    if not shards_dir.is_dir():
        raise OutputError(f"{shards_dir}: not a folder (create it first; shards are written into it)")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if not (isinstance(workers, int) and workers >= 1):
        raise ValueError(f"workers must be at least 1, got {workers!r}")
    model = Model.load(model_dir, branches=())  # the manifest only: fingerprint and meta; workers open sessions
    files, others = scan_songs(root)
    if not files:
        raise LibraryError(f"{root}: no songs (no file with an audio extension; {len(others)} other files)")
    relatives = [p.relative_to(root).as_posix() for p in files]
    report = DistributedReport(ignored=[p.relative_to(root).as_posix() for p in others])
    with ExitStack() as held:
        try:
            held.enter_context(output_lock(shards_dir / BUILD_LOCK_NAME))
        except LibraryError:
            raise OutputError(f"{shards_dir}: another build is writing shards into this folder now; wait for it "
                              "to finish (or use another folder)") from None
        count = _shard_count(shards_dir, shard_count, len(relatives))
        report.shard_count = count
        assignment = assign_shards(relatives, count)
        plans = []  # (index, assigned songs, this shard's previous file to re-use songs from, or None)
        for index, assigned in enumerate(assignment):
            done, previous, note = _existing_shard(shards_dir, index, count, assigned, model.fingerprint, root,
                                                   hop_seconds, rehash)
            if note:
                report.notes.append(note)
            if done is not None:
                report.shards_skipped.append(done)
                continue
            plans.append((index, assigned, previous))
        if plans:
            _run(plans, root, model, shards_dir, count, hop_seconds, workers, address, batch_size, engine, quiet,
                 report, on_failure, on_shard)
    return report


def _shard_count(shards_dir: Path, requested: int | None, n_songs: int) -> int:
    """The requested count, else the count of the shards already in the folder, else ~1000 songs a shard.
    Shards of another count in the folder are refused: their songs would be assigned differently."""
    counts = set()
    for path in list(shards_dir.glob("shard-*-of-*.npz")) + list(shards_dir.glob(f"shard-*-of-*{EMPTY_SUFFIX}")):
        try:
            counts.add(int(path.name.split("-of-")[1].split(".")[0]))
        except (IndexError, ValueError):
            continue
    if requested is not None and not 1 <= requested <= MAX_SHARDS:
        raise ValueError(f"shard count must be between 1 and {MAX_SHARDS}, got {requested}")
    count = requested or (min(counts) if len(counts) == 1 else max(1, -(-n_songs // SONGS_PER_SHARD)))
    other = sorted(counts - {count})
    if other:
        raise OutputError(f"{shards_dir}: holds shards of a build with {other[0]} shards, this one has {count}; "
                          f"use --shard-count {other[0]} to resume that build, or an empty folder")
    return min(count, MAX_SHARDS)


def _existing_shard(shards_dir: Path, index: int, count: int, assigned: list[str], fingerprint: str, root: Path,
                    hop_seconds: float, rehash: bool) -> tuple[Path | None, Path | None, str]:
    """(the shard's file if it is complete for this build, a previous shard of this build to re-use songs
    from, a note for the user). Deciding reads only the shard's meta, not its windows."""
    from tivm.runtime.shards import read_shard_meta, songs_sha256

    npz, empty = shards_dir / shard_file_name(index, count), shards_dir / empty_file_name(index, count)
    wanted = songs_sha256(assigned)
    if npz.exists():
        try:
            meta = read_shard_meta(npz)
        except LibraryError as exc:
            return None, None, f"{exc}: redoing this shard"
        record = meta[SHARD_KEY]
        same_build = (meta["model_fingerprint"] == fingerprint and meta["root"] == str(root)
                      and float(meta["hop_seconds"]) == hop_seconds
                      and (record["index"], record["count"]) == (index, count))
        if not same_build:
            return None, None, f"{npz}: from another model, hop or songs folder: redoing this shard"
        if record["songs_sha256"] == wanted and not record["failed"] and not empty.exists() and not rehash:
            return npz, None, ""
        return None, npz, ""  # songs added, removed or failed last time: redo, re-using unchanged songs
    if empty.exists():
        try:
            shard = read_empty_shard(empty)
        except LibraryError as exc:
            return None, None, f"{exc}: redoing this shard"
        if (shard.model_fingerprint == fingerprint and shard.hop_seconds == hop_seconds and shard.root == str(root)
                and shard.record["songs_sha256"] == wanted and not shard.record["failed"]):
            return empty, None, ""  # a shard assigned no song; one whose songs all failed is retried
    return None, None, ""


def _reusable(path: Path | None, report: DistributedReport) -> dict[str, str]:
    """path -> sha256 of the songs of a previous shard (validated in full: its windows may be re-used)."""
    if path is None:
        return {}
    try:
        library = SongLibrary.load(path)
    except LibraryError as exc:
        report.notes.append(f"{exc}: re-embedding its songs")
        return {}
    return {str(p): str(h) for p, h in zip(library.paths, library.sha256)}


def _run(plans, root: Path, model, shards_dir: Path, count: int, hop_seconds: float, workers: int,
         address: str | None, batch_size: int, engine: str, quiet: bool, report: DistributedReport, on_failure,
         on_shard) -> None:
    rows = []
    pending: dict[int, dict] = {}
    for index, assigned, previous in plans:
        reuse = _reusable(previous, report)  # the previous shard is read again when this one is written
        pending[index] = {"assigned": assigned, "previous": previous if reuse else None, "rows": {}}
        rows.extend({"path": str(root / relative), "relative": relative, "shard": index,
                     "previous_sha256": reuse.get(relative, "")} for relative in assigned)
    for index in [i for i, state in pending.items() if not state["assigned"]]:
        _finish_shard(index, pending.pop(index), model, root, shards_dir, count, hop_seconds, report, on_shard)
    if not rows:
        return
    embedder_arguments = {"model_dir": str(model.model_dir), "hop_seconds": float(hop_seconds),
                          "fingerprint": model.fingerprint, "intra_op_threads": 1}
    run = _ray_rows if engine == "ray" else _local_rows
    for row in run(rows, embedder_arguments, workers, address, batch_size, quiet, shards_dir):
        index, relative, status = int(row["shard"]), str(row["relative"]), str(row["status"])
        if status == "fatal":
            raise ModelError(str(row["error"]))
        state = pending[index]
        state["rows"][relative] = row
        worker = str(row["worker"])
        report.songs_per_worker[worker] = report.songs_per_worker.get(worker, 0) + 1
        if status == "failed":
            report.failed.append((relative, str(row["error"])))
            if on_failure:
                on_failure(relative, str(row["error"]))
        else:
            (report.reused if status == "reused" else report.embedded).append(relative)
        if len(state["rows"]) == len(state["assigned"]):
            _finish_shard(index, pending.pop(index), model, root, shards_dir, count, hop_seconds, report, on_shard)
    if pending:  # every row came back, so this means a bug, not bad input; say which shards
        raise LibraryError(f"{shards_dir}: shards {sorted(pending)[:5]} did not receive all their songs")


def _local_rows(rows: list[dict], embedder_arguments: dict, workers, address, batch_size: int, quiet: bool,
                shards_dir: Path) -> Iterator[dict]:
    """The same actor, in this process, one batch after another: shards without Ray (and tests of everything
    but the Ray plumbing)."""
    embedder = SongEmbedder(**embedder_arguments)
    for start in range(0, len(rows), batch_size):
        part = rows[start:start + batch_size]
        batch = {key: np.array([row[key] for row in part], dtype=object) for key in part[0]}
        out = embedder(batch)
        for i in range(len(part)):
            yield {key: values[i] for key, values in out.items()}


def _ray_rows(rows: list[dict], embedder_arguments: dict, workers: int, address: str | None, batch_size: int,
              quiet: bool, shards_dir: Path) -> Iterator[dict]:
    ray = _import_ray()  # with ray.data, or a TivmError saying how to install it
    started = not ray.is_initialized()
    if quiet:  # Ray Data logs each execution at INFO; a quiet build prints only its own lines
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    if started:
        ray.init(address=address, num_cpus=workers if address is None else None, include_dashboard=False,
                 logging_level=logging.WARNING if quiet else logging.INFO, log_to_driver=not quiet)
    try:
        context = ray.data.DataContext.get_current()
        # shards finish one after another, so the driver holds about one shard's windows, not the catalogue's
        context.execution_options.preserve_order = True
        context.enable_progress_bars = not quiet
        # blocks of about SONGS_PER_BLOCK songs, at least a few per worker: a block goes to one actor whole,
        # so large blocks would leave workers idle at the end of a build
        blocks = min(len(rows), max(4 * workers, -(-len(rows) // SONGS_PER_BLOCK)))
        dataset = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            SongEmbedder, batch_size=batch_size, batch_format="numpy", num_cpus=1,
            # one block in flight per actor: otherwise the first actor to start queues several blocks while
            # the others are still loading the model, and ends the build alone
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
            fn_constructor_kwargs=embedder_arguments)
        yield from dataset.iter_rows()
    except ray.exceptions.RayError as exc:  # a worker or node lost: finished shards are kept, re-run to resume
        lines = str(exc).strip().splitlines()
        raise TivmError(f"{shards_dir}: the Ray build stopped ({type(exc).__name__}: "
                        f"{lines[-1] if lines else ''}); finished shards are kept, run it again to resume") from None
    finally:
        if started:
            ray.shutdown()


def _finish_shard(index: int, state: dict, model, root: Path, shards_dir: Path, count: int, hop_seconds: float,
                  report: DistributedReport, on_shard) -> None:
    """Write one shard atomically: its library, or the empty-shard marker when no song could be embedded."""
    from tivm.runtime.shards import write_empty_shard

    reused = any(state["rows"][r]["status"] == "reused" for r in state["assigned"])
    previous = SongLibrary.load(state["previous"]) if reused else None  # windows stay memory-mapped
    old = {str(p): i for i, p in enumerate(previous.paths)} if previous is not None else {}
    songs, failed = [], []
    for relative in state["assigned"]:
        row = state["rows"][relative]
        if row["status"] == "failed":
            failed.append((relative, str(row["error"])))
        elif row["status"] == "reused":
            songs.append(_previous_song(previous, old[relative]))
        else:
            songs.append(_song_of_row(row, relative))
    record = shard_record(index, count, state["assigned"], failed)
    npz, empty = shards_dir / shard_file_name(index, count), shards_dir / empty_file_name(index, count)
    if songs:
        library = with_shard_record(assemble_library(songs, model, root, hop_seconds), record)
        library.validate()
        library.save(npz)
        empty.unlink(missing_ok=True)
        written = npz
    else:
        written = write_empty_shard(empty, record, model_fingerprint=model.fingerprint, root=str(root),
                                    hop_seconds=hop_seconds)
        npz.unlink(missing_ok=True)  # an older shard with songs that are gone or now fail
    report.shards_written.append(written)
    if on_shard:
        on_shard(written)


def _song_of_row(row: dict, relative: str) -> LibrarySong:
    """A song from a worker's row, shapes checked (the bytes crossed process and machine boundaries)."""
    dim = int(row["dim"])
    starts = np.frombuffer(row["starts"], dtype=np.float32)
    vectors = np.frombuffer(row["vectors"], dtype=np.float32)
    if dim <= 0 or len(starts) == 0 or vectors.size != len(starts) * dim:
        raise LibraryError(f"{relative}: a worker returned {vectors.size} values for {len(starts)} windows of {dim}")
    return LibrarySong(relative, str(row["title"]), float(row["duration"]), str(row["sha256"]), starts,
                       vectors.reshape(len(starts), dim))


def _previous_song(library: SongLibrary, i: int) -> LibrarySong:
    rows = slice(int(library.song_offsets[i]), int(library.song_offsets[i + 1]))
    return LibrarySong(str(library.paths[i]), str(library.titles[i]), float(library.durations[i]),
                       str(library.sha256[i]), np.asarray(library.window_start[rows]),
                       np.asarray(library.embeddings[rows]))


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the submodule; `ray.data` is used through `ray`)
    except ImportError:
        raise TivmError(f"a distributed build needs Ray Data, which is not installed: {INSTALL_HINT}") from None
    return ray
