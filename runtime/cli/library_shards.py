"""`tivm-library merge | build-distributed`: a catalogue too large for one machine, embedded in shards on a
Ray cluster and merged into one library (registered on `tivm-library` in tivm.runtime.cli.library)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from tivm.runtime.cli.common import check_hop, fail, printable
from tivm.runtime.errors import TivmError

MODEL_ENV = "TIVM_MODEL"


def merge(
    shards: List[Path] = typer.Argument(..., help="library shards (shard-*.npz) or libraries of the same model"),
    output: Path = typer.Option(..., "--output", "-o", help="library file to write (.npz)"),
    model: Optional[Path] = typer.Option(None, "--model", "-m",
                                         help="check every shard was embedded by this model"),
) -> None:
    """Merge library shards into one library (same model, hop and window; every shard of a build present)."""
    from tivm.runtime.manifest import read_manifest
    from tivm.runtime.shards import merge_shards

    try:
        fingerprint = read_manifest(model).model_fingerprint if model else None
        report = merge_shards(shards, output, model_fingerprint=fingerprint)
    except TivmError as exc:
        fail(exc)
    _summarise(report.failed, report.note)
    library = report.library
    typer.echo(f"{printable(output)}: {library.n_songs} songs, {library.n_windows} windows from "
               f"{len(report.parts)} shard(s) ({len(report.empty_shards)} empty)")


def build_distributed(
    songs_dir: Path = typer.Argument(..., help="folder of songs, at the same path on every node"),
    shards_dir: Path = typer.Option(..., "--shards", help="folder for the shards (kept: a re-run resumes)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="also merge the shards into this library (.npz) at the end"),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="model directory; default: $TIVM_MODEL"),
    hop: float = typer.Option(5.0, "--hop", help="seconds between window starts (1-60)", callback=check_hop),
    shard_count: Optional[int] = typer.Option(None, "--shard-count", min=1, max=99999,
                                              help="default: the folder's, else one per 1000 songs"),
    workers: int = typer.Option(2, "--workers", min=1, help="Ray actors, one CPU and one model each"),
    address: Optional[str] = typer.Option(None, "--address",
                                          help="Ray cluster (auto, ray://host:10001); default: a local Ray"),
    engine: str = typer.Option("ray", "--engine", help="ray, or local: the same work in this process, no Ray"),
    rehash: bool = typer.Option(False, "--rehash", help="re-check finished shards' songs by content hash"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no Ray progress output"),
) -> None:
    """Embed a songs folder on a Ray cluster into resumable shards; failed songs are reported, not fatal."""
    from tivm.runtime.distributed import ENGINES
    from tivm.runtime.distributed import build_distributed as build
    from tivm.runtime.files import check_output
    from tivm.runtime.library import is_library
    from tivm.runtime.shards import merge_shards

    if engine not in ENGINES:
        fail(f"--engine: must be one of {', '.join(ENGINES)}, got {engine!r}")
    model_dir = model or os.environ.get(MODEL_ENV)
    if not model_dir:
        fail(f"pass --model or set ${MODEL_ENV}")
    try:
        if output is not None:
            check_output(output, what="library", replaceable=is_library)  # before hours of embedding
        report = build(songs_dir, model_dir, shards_dir, shard_count=shard_count, hop_seconds=hop,
                       workers=workers, address=address, engine=engine, rehash=rehash, quiet=quiet,
                       on_failure=_report_failure)
        for note in report.notes:
            typer.echo(printable(note))
        typer.echo(f"{printable(shards_dir)}: {report.shard_count} shards ({len(report.shards_written)} written, "
                   f"{len(report.shards_skipped)} already done); songs embedded {len(report.embedded)}, reused "
                   f"{len(report.reused)}, failed {len(report.failed)}")
        if report.ignored:
            typer.echo(f"ignored {len(report.ignored)} file(s) without an audio extension")
        if output is not None:
            merged = merge_shards(report.shard_files, output)
            _summarise(merged.failed if not report.failed else [], merged.note)
            typer.echo(f"{printable(output)}: {merged.library.n_songs} songs, {merged.library.n_windows} windows")
    except TivmError as exc:
        fail(exc)


def _summarise(failed: list[tuple[str, str]], note: str) -> None:
    if note:
        typer.echo(printable(note))
    for _, message in failed[:20]:
        typer.echo(f"failed: {printable(message)}", err=True)
    if len(failed) > 20:
        typer.echo(f"failed: … and {len(failed) - 20} more", err=True)


def _report_failure(path: str, message: str) -> None:
    typer.echo(f"skipped: {printable(message)}", err=True)
