"""`tivm-recommend CLIP --library songs.npz`: the songs that fit a video clip best, and where to start them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from tivm.runtime.cli.common import check_threads, fail, printable, run
from tivm.runtime.errors import TivmError

MAX_TOP = 10_000  # more rows than any person reads; a program wanting every song asks the API

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def recommend(
    clip: Path = typer.Argument(..., help="video clip (any container PyAV reads); > 15 s: windows averaged"),
    library: Path = typer.Option(..., "--library", "-l", help="song library from `tivm-library build`"),
    model: Optional[Path] = typer.Option(
        None, "--model", "-m",
        help="model directory; default: the one the library records, else $TIVM_MODEL"),
    top: int = typer.Option(10, "--top", "-k", min=1, max=MAX_TOP, help="how many songs"),
    as_json: bool = typer.Option(False, "--json", help="print JSON for programs instead of a table"),
    preview: Optional[Path] = typer.Option(
        None, "--preview", help="write the clip with the top song's segment as its soundtrack (.mp4)"),
    search: str = typer.Option("auto", "--search", help="auto (a compact library: its int8 scan; a full one: "
                               "exact) | exact | compact | hnsw (approximate, needs faiss-cpu)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="onnxruntime intra-op threads",
                                          callback=check_threads),
    decode: str = typer.Option("exact", "--decode",
                               help="exact | fast (skips the codec's deblocking filter: faster, close embeddings)"),
) -> None:
    from tivm.runtime.recommend import Recommender

    try:
        if preview is not None:  # a wrong --preview is found now, not after the clip is embedded
            from tivm.runtime.preview import check_preview_output

            check_preview_output(preview, clip, library)
        recommender = Recommender(model, library, search=search, intra_op_threads=threads, decode=decode)
        results = recommender.recommend(clip, top)
    except (TivmError, ValueError) as exc:
        fail(exc)
    if not as_json:
        _print_table(results)
    preview_path, preview_error = _write_preview(recommender, clip, results, preview, library)
    if as_json:
        payload = {"clip": str(clip), "library": str(library), "model_fingerprint": recommender.model.fingerprint,
                   "preview": None if preview_path is None else str(preview_path), "preview_error": preview_error,
                   "results": [r.to_json() for r in results]}
        json.dump(payload, sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    elif preview_path is not None:
        typer.echo(f"preview: {printable(preview_path)}")
    if preview_error is not None:
        fail(preview_error)


def _write_preview(recommender, clip: Path, results, preview: Path | None, library: Path):
    """(written path, None) or (None, the problem): the ranking stands whatever happens to the preview."""
    if preview is None or not results:
        return None, None
    from tivm.runtime.preview import write_preview

    try:
        song = recommender.library.song_file(results[0].song_index)
        return write_preview(clip, song, results[0].start, preview), None
    except (TivmError, ValueError) as exc:
        return None, f"no preview: {exc}"


def _print_table(results) -> None:
    typer.echo(f"{'rank':>4}  {'score':>7}  {'start':>8}  title")
    for r in results:
        typer.echo(f"{r.rank:>4}  {r.score:>7.4f}  {_clock(r.start):>8}  {printable(r.title)}")


def _clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}:{rest:04.1f}"


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
