"""`tivm-library build | compact | info | export`: embed a folder of songs into a library, turn a library
into the compact form (for phones), show what a library holds, or write it as flat arrays for apps without
numpy."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from tivm.runtime.cli.common import check_hop, check_threads, fail, printable, run
from tivm.runtime.errors import TivmError

MODEL_ENV = "TIVM_MODEL"
DEFAULT_COMPACT_DIMS = 128  # tivm.runtime.compact.DEFAULT_DIMS, without importing numpy to show --help

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def build(
    songs_dir: Path = typer.Argument(..., help="folder of songs (searched recursively)"),
    output: Path = typer.Option(..., "--output", "-o", help="library file to write (.npz)"),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="model directory; default: $TIVM_MODEL"),
    hop: float = typer.Option(5.0, "--hop", help="seconds between window starts (1-60)", callback=check_hop),
    update: bool = typer.Option(False, "--update", help="embed only new or changed songs, drop removed ones"),
    threads: Optional[int] = typer.Option(None, "--threads", help="onnxruntime intra-op threads",
                                          callback=check_threads),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    form: str = typer.Option("full", "--form", help="full (float16 windows, exact search) or compact (int8 PCA "
                             "codes: about a seventh of the size, for phones; see docs/runtime.md)"),
    dims: int = typer.Option(DEFAULT_COMPACT_DIMS, "--dims", help="PCA dimensions kept by --form compact"),
) -> None:
    from tivm.runtime.files import check_output
    from tivm.runtime.library import FORMS, build_library, is_library
    from tivm.runtime.model import Model

    if form not in FORMS:
        fail(f"--form: must be one of {', '.join(FORMS)}, got {form!r}")
    model_dir = model or os.environ.get(MODEL_ENV)
    if not model_dir:
        fail(f"pass --model or set ${MODEL_ENV}")
    try:
        check_output(output, what="library", replaceable=is_library)  # before minutes of embedding
        loaded = Model.load(model_dir, intra_op_threads=threads)
        if form == "compact":
            _check_dims(dims, loaded.embedding_dim)
        report = build_library(songs_dir, loaded, output, hop_seconds=hop, update=update, progress=not quiet,
                               on_failure=_report_failure, form=form, compact_dims=dims)
    except TivmError as exc:
        fail(exc)
    if report.note:
        typer.echo(report.note)
    if report.ignored:
        typer.echo(f"ignored {len(report.ignored)} file(s) without an audio extension: "
                   + ", ".join(printable(p) for p in report.ignored[:5]) + (" …" if len(report.ignored) > 5 else ""))
    library = report.library
    typer.echo(f"{printable(output)}: {library.n_songs} songs, {library.n_windows} windows "
               f"(embedded {len(report.embedded)}, reused {len(report.reused)}, removed {len(report.removed)}, "
               f"failed {len(report.failed)})")


def _report_failure(path: str, message: str) -> None:
    import sys

    from tqdm import tqdm

    tqdm.write(f"skipped: {printable(message)}", file=sys.stderr)  # above the progress bar, not through it


def _check_dims(dims: int, embedding_dim: int) -> None:
    from tivm.runtime.compact import MIN_DIMS

    if not MIN_DIMS <= dims <= embedding_dim:
        hint = (f"; at {embedding_dim}-d the full form is already phone-sized and searched exactly"
                if embedding_dim <= PHONE_SIZED_DIM else "")
        fail(f"--dims: must be between {MIN_DIMS} and {embedding_dim} (the embedding dimension), got {dims}{hint}")


@app.command()
def compact(
    library: Path = typer.Argument(..., help="full library file (.npz) from `tivm-library build`"),
    output: Path = typer.Option(..., "--output", "-o", help="compact library file to write (.npz)"),
    dims: int = typer.Option(DEFAULT_COMPACT_DIMS, "--dims", help="PCA dimensions to keep"),
) -> None:
    """Write a library in the compact form: a PCA fitted on its windows and int8 codes (for phones).

    Searched without a float32 copy; scores move by a few thousandths (docs/benchmarks/library_compact.md).
    """
    from tivm.runtime.files import check_output
    from tivm.runtime.library import SongLibrary, is_library, output_lock

    try:
        check_output(output, what="library", inputs=[library], replaceable=is_library)
        full = SongLibrary.load(library)
        if full.form == "full":  # a compact one is refused by compacted(), saying so
            _check_dims(dims, full.dim)
        with output_lock(output):
            full.compacted(dims).save(output)
        written = SongLibrary.load(output)
    except TivmError as exc:
        fail(exc)
    typer.echo(f"{printable(output)}: compact library, {written.n_songs} songs, {written.n_windows} windows, "
               f"{dims} of {written.dim} dims, {_mib(output.stat().st_size)} (was {_mib(library.stat().st_size)})")


# the embedding size whose float16 library fits a phone with exact search (docs/benchmarks/library_compact.md)
PHONE_SIZED_DIM = 64


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def search_cost(lib) -> str:
    """What one query costs: bytes scanned and multiply-adds (no timing: that depends on the machine)."""
    windows = lib.n_windows
    if lib.compact is not None:
        c = lib.compact
        return (f"compact scan: {_mib(c.nbytes)} of int8 codes and row scales, "
                f"{windows * c.dims / 1e6:.1f} M multiply-adds per query, no float32 copy")
    item = lib.embeddings.dtype.itemsize
    advice = ("" if lib.dim <= PHONE_SIZED_DIM else
              f"; a model with {PHONE_SIZED_DIM}-d embeddings makes an exact library {lib.dim // PHONE_SIZED_DIM}x "
              "smaller, `tivm-library compact` an approximate one (docs/runtime.md)")
    return (f"exact: {_mib(windows * lib.dim * item)} of {lib.embeddings.dtype} windows scanned, "
            f"{windows * lib.dim / 1e6:.1f} M multiply-adds per query, no float32 copy{advice}")


@app.command()
def info(library: Path = typer.Argument(..., help="library file (.npz)")) -> None:
    """Print what a library holds: its form, size on disk and what a search over it costs."""
    from tivm.runtime.library import SongLibrary

    try:
        lib = SongLibrary.load(library)
    except TivmError as exc:
        fail(exc)
    meta = lib.meta
    if lib.compact is not None:
        form = f"compact (int8 PCA, {lib.compact.dims} of {lib.dim} dims; library version {meta.get('version')})"
    else:
        form = f"full ({lib.embeddings.dtype} windows; library version {meta.get('version')})"
    rows = [
        ("form", form), ("size on disk", _mib(library.stat().st_size)), ("search cost", search_cost(lib)),
        ("songs", lib.n_songs), ("windows", lib.n_windows), ("embedding dim", lib.dim),
        ("window / hop", f"{meta.get('window_seconds')} s / {meta.get('hop_seconds')} s"),
        ("total audio", f"{float(lib.durations.sum()) / 60:.1f} min"),
        ("model fingerprint", meta.get("model_fingerprint")), ("model dir", meta.get("model_dir")),
        ("configuration", meta.get("configuration")), ("songs folder", meta.get("root")),
        ("created", meta.get("created")), ("tivm version", meta.get("tivm_version")),
    ]
    for name, value in rows:
        typer.echo(f"{name:>18}: {printable(value)}")


@app.command()
def export(
    library: Path = typer.Argument(..., help="library file (.npz) from `tivm-library build`"),
    output: Path = typer.Option(..., "--output", "-o", help="folder to write (new, empty, or an earlier export)"),
    dtype: str = typer.Option("int8", "--dtype", help="int8 (a scale per window), float16 (the library's own "
                              "values: exact search) or float32"),
) -> None:
    """Write a library as flat little-endian arrays + library.json, for apps without numpy (JavaScript, mobile)."""
    from tivm.runtime.flat_library import DTYPES, export_flat
    from tivm.runtime.library import SongLibrary

    if dtype not in DTYPES:
        fail(f"--dtype: must be one of {', '.join(DTYPES)}, got {dtype!r}")
    try:
        folder = export_flat(SongLibrary.load(library), output, dtype=dtype)
    except TivmError as exc:
        fail(exc)
    typer.echo(f"{printable(folder)}: {dtype} flat library")


from tivm.runtime.cli import library_shards  # noqa: E402  (sharded and distributed builds: their own module)

app.command()(library_shards.merge)
app.command()(library_shards.build_distributed)


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
