"""onnxruntime sessions that open fast: each branch's optimized graph is cached and loaded with the optimizer off.

Most of the time onnxruntime takes to open a convolutional branch goes into its graph optimizer (constant
folding, QDQ fusion, the NCHWc layout transformer). What it produces depends only on the model file, the
onnxruntime version, the execution providers and the CPU's instruction set, so the optimized graph is saved
once (`SessionOptions.optimized_model_filepath`) and every later session loads that file with optimization
disabled. docs/benchmarks.md measures what it saves.

The cache lives in `$TIVM_HOME/ort` (else the user's cache folder), beside the search index cache and for the
same reason never beside the model: tivm reads only files it wrote there, each named by the sha256 of
everything it depends on. A cached file that does not load is deleted and the model opens from its own
file. TIVM_ORT_CACHE=0 turns the cache off; only CPU sessions are cached (the graph another provider gets
is that provider's business).
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path
from typing import Callable

from tivm.runtime.files import cache_root

CACHE_ENV = "TIVM_ORT_CACHE"
CACHED_PROVIDERS = ["CPUExecutionProvider"]
FORMAT = "tivm-ort-cache-1"  # bump when what is cached changes


def _cpu_signature() -> str:
    """What decides the kernels and layouts the optimizer picks: the machine and its instruction set flags."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.split(":", 1)[0].strip().lower() in ("flags", "features"):
                flags = line.split(":", 1)[1].strip()
                break
    except OSError:
        flags = platform.processor()
    return f"{platform.machine()} {flags}"


def cached_model_path(model_sha256: str, providers: list[str]) -> Path | None:
    """Where the optimized form of the model with this sha256 is cached; None when it is not cached."""
    if os.environ.get(CACHE_ENV, "1") == "0" or providers != CACHED_PROVIDERS:
        return None
    import onnxruntime as ort

    key = "\n".join([FORMAT, model_sha256, ort.__version__, ",".join(providers), _cpu_signature()])
    return cache_root() / "ort" / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.onnx"


def open_cached(path: Path, model_sha256: str, providers: list[str], make_options: Callable,
                open_session: Callable):
    """A session for `path` through the cache: load the cached optimized graph with the optimizer off, or
    open `path` and save its optimized graph for next time. `make_options()` gives fresh SessionOptions;
    `open_session(file, options)` opens one."""
    import onnxruntime as ort

    cached = cached_model_path(model_sha256, providers)
    if cached is None:
        return open_session(path, make_options())
    if cached.is_file():
        options = make_options()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return open_session(cached, options)
        except Exception:  # not loadable (disk damage, another onnxruntime build): rebuild it below
            cached.unlink(missing_ok=True)
    options = make_options()
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f".{cached.stem}.{os.getpid()}.partial.onnx")
        options.optimized_model_filepath = str(partial)
    except OSError:  # no writable cache: open without one
        return open_session(path, make_options())
    session = open_session(path, options)
    try:
        if partial.is_file():
            os.replace(partial, cached)  # whole files only: a reader never sees one half-written
    except OSError:
        partial.unlink(missing_ok=True)
    return session
