"""Reading and writing files safely: one place that checks where an output goes and writes it atomically,
and one strict reader for the JSON files tivm is handed.

Every artefact tivm writes (libraries, model manifests, previews, search indexes, checkpoints, weights,
features) goes through `atomic_path` / `atomic_write`: the bytes land in a unique temporary file in the
target's own folder (so the final rename never crosses a file system), are flushed to disk, and replace the
target in one rename; on any failure, or Ctrl-C, the temporary file is removed and the target is untouched.
`mkstemp` creates files 0600; the result gets the mode a plain `open()` would have given (the umask), or
the mode of the file it replaces, so a shared library is not silently made private.

`check_output` runs before the work starts, so a wrong `-o` costs a second, not minutes of embedding: the
folder must exist and be writable, the output must not be a folder, must not be one of the inputs, and may
only replace an existing file that is an artefact of the same kind.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

from tivm.runtime.errors import OutputError

MAX_JSON_BYTES = 16 << 20  # manifests, configs and indexes are kB to a few MB; a larger one is not parsed
_UMASK_LOCK = threading.Lock()  # os.umask can only be read by setting it: keep other threads out meanwhile


def current_umask() -> int:
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _final_mode(path: Path) -> int:
    """The replaced file's permission bits, else what the umask gives a new file."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~current_umask()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary path beside `path`; when the block succeeds it replaces `path` atomically.

    For writers that want a file name (FFmpeg, FAISS, safetensors). The temporary name keeps the target's
    suffix, since some writers choose their format by it.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        mode = _final_mode(path)
        with open(tmp, "rb+") as f:  # the writer may have closed without flushing to disk
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """`with atomic_write(path) as f: f.write(...)`: `path` is replaced only if the block succeeds."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding if mode == "w" else None) as f:
            yield f
            f.flush()


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; not every platform or file system lets a folder be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_output(path: str | os.PathLike, *, what: str, inputs: Iterable[str | os.PathLike] = (),
                 replaceable: Callable[[Path], bool] | None = None) -> Path:
    """Refuse an output path before any work is done; returns it as a Path.

    `what` names the artefact in messages ("library", "preview"). `inputs` are files the command reads:
    the output may not be any of them. An existing file is replaced only when `replaceable(path)` says it
    is an artefact of the same kind.
    """
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give the {what} file's name")
    if not folder.is_dir():
        raise OutputError(f"{path}: folder {folder} does not exist")
    for source in inputs:
        if _same_file(path, Path(source)):
            raise OutputError(f"{path}: is an input of this command; the {what} would replace it")
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise OutputError(f"{path}: exists and is not a regular file; refusing to replace it")
        if replaceable is None or not replaceable(path):
            raise OutputError(f"{path}: exists and is not a tivm {what}; refusing to replace it "
                              "(choose another name or remove it)")
    _check_writable(folder, path)
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_writable(folder: Path, path: Path) -> None:
    """Create and remove a file where the output will go: the only test that also holds for root and for
    read-only mounts, where permission bits say nothing."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".probe")
    except OSError as exc:
        raise OutputError(f"{path}: cannot write in {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def read_json_object(path: str | os.PathLike, error: Callable[[str], Exception],
                     max_bytes: int = MAX_JSON_BYTES) -> dict:
    """A JSON object from `path`, strictly: no NaN/Infinity, at most `max_bytes`; anything else raises
    `error(problem)` (the caller's exception type, whose message names the file)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise error(f"{size} bytes is too large for this file (at most {max_bytes})")
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except FileNotFoundError:
        raise error("missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise error(f"not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise error("not a JSON object")
    return data


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


HOME_ENV = "TIVM_HOME"


def cache_root() -> Path:
    """tivm's cache folder (weights, optimized onnxruntime graphs, search indexes): `$TIVM_HOME`, else the
    platform's user cache folder + tivm. Only files tivm wrote there are read back."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV])
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tivm"
