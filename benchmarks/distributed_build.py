"""Library building on Ray Data: throughput per worker, scaling from 1 to N workers, and what a 10-million-song
catalogue would take.

Measures, on one machine (a local Ray with as many CPUs as workers) or on a cluster (--address):
* `one_process`: `tivm-library build`'s function (build_library) with one onnxruntime thread: the baseline;
* for each worker count W: `build_distributed(..., workers=W)` from call to return into a fresh shards folder
  (Ray already started; its start-up is reported apart as `ray_init_s`), then `merge_shards` of the result;
  songs/s and audio seconds per second (x real time), in total and per worker, and the speed-up over W=1;
* the estimate: machines needed to embed a catalogue of --catalogue-songs songs of --song-seconds each within
  --hours, at the per-worker rate of the run with the most workers (all cores busy), one worker per core of
  --cores-per-machine.

Songs: the real songs in ../shared/media/songs (7 s to 229 s), linked --songs times in total into a temporary
folder under distinct names, so every file is decoded and embedded (nothing is reused). Model: --model, else
the benchmarks' cached int8 full model (benchmarks/_artifacts.py builds it once: random weights in the
official formats run at the real speed). Only the audio branch (VGGish + head) runs in a library build.

    .venv/bin/python benchmarks/distributed_build.py [--model DIR] [--songs 32] [--workers 1,2] [--json out.json]

Prints one JSON line per measurement and writes everything to --json. Timings need a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("TIVM_SHARED", REPO.parent / "shared"))
SONGS = SHARED / "media" / "songs"
DAY_HOURS = 24.0


def default_model() -> Path:
    from benchmarks._context import QUICK, Context

    # the benchmarks' own export (calibrated on the shared media), cached with the others
    model_dir, _ = Context(plan=QUICK, threads=2, out=Path(".")).export("full", "efficientnet-lite0", "int8")
    return model_dir


def song_folder(into: Path, n_songs: int) -> tuple[Path, float]:
    """`n_songs` links to the shared songs, round robin, in sub-folders of 100; (folder, total audio seconds)."""
    from tivm.runtime.audio import load_audio

    sources = sorted(p for p in SONGS.iterdir() if p.suffix == ".ogg")
    if not sources:
        sys.exit(f"needs songs in {SONGS} (../shared/media or TIVM_SHARED)")
    seconds = {p: len(load_audio(p)) / 16000 for p in sources}
    folder = into / "songs"
    total = 0.0
    for i in range(n_songs):
        source = sources[i % len(sources)]
        target = folder / f"part {i // 100:03d}" / f"{i:06d} {source.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)
        total += seconds[source]
    return folder, total


def one_process(songs: Path, model_dir: Path, out: Path, audio_seconds: float, n_songs: int) -> dict:
    from tivm.runtime.library import build_library
    from tivm.runtime.model import Model

    model = Model.load(model_dir, intra_op_threads=1, branches=("audio",))
    started = time.perf_counter()
    report = build_library(songs, model, out, progress=False)
    seconds = time.perf_counter() - started
    return {"what": "one_process", "workers": 1, "seconds": seconds, "songs": len(report.embedded),
            "failed": len(report.failed), **_rates(n_songs, audio_seconds, seconds, 1)}


def distributed(songs: Path, model_dir: Path, work: Path, workers: int, address: str | None, audio_seconds: float,
                n_songs: int, shard_count: int) -> dict:
    import ray

    from tivm.runtime.distributed import build_distributed
    from tivm.runtime.shards import merge_shards

    started = time.perf_counter()
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    else:
        ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    ray_init = time.perf_counter() - started
    shards = work / f"shards-{workers}"
    shards.mkdir()
    try:
        started = time.perf_counter()
        report = build_distributed(songs, model_dir, shards, shard_count=shard_count, workers=workers,
                                   engine="ray", quiet=True)
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    started = time.perf_counter()
    merged = merge_shards(report.shard_files, work / f"merged-{workers}.npz")
    merge_seconds = time.perf_counter() - started
    return {"what": "ray", "workers": workers, "seconds": seconds, "ray_init_s": ray_init, "merge_s": merge_seconds,
            "songs": len(report.embedded), "failed": len(report.failed), "shards": report.shard_count,
            "library_songs": merged.library.n_songs, "songs_per_worker": report.songs_per_worker,
            **_rates(n_songs, audio_seconds, seconds, workers)}


def _rates(n_songs: int, audio_seconds: float, seconds: float, workers: int) -> dict:
    return {"songs_per_s": n_songs / seconds, "songs_per_s_per_worker": n_songs / seconds / workers,
            "x_real_time": audio_seconds / seconds, "x_real_time_per_worker": audio_seconds / seconds / workers}


def catalogue_estimate(x_real_time_per_worker: float, songs: int, song_seconds: float, cores: int,
                       hours: float) -> dict:
    """Machines of `cores` workers each to embed `songs` songs of `song_seconds` in `hours`."""
    audio = songs * song_seconds
    worker_hours = audio / x_real_time_per_worker / 3600
    return {"catalogue_songs": songs, "song_seconds": song_seconds, "audio_hours": audio / 3600,
            "x_real_time_per_worker": x_real_time_per_worker, "worker_hours": worker_hours,
            "cores_per_machine": cores, "within_hours": hours,
            "machines": math.ceil(worker_hours / (cores * hours))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="an exported full model directory (default: the benchmarks' "
                        "cached int8 model, built on first use; needs the train extra)")
    parser.add_argument("--songs", type=int, default=32, help="song files to embed per run")
    parser.add_argument("--workers", default="1,2", help="worker counts to run, comma-separated")
    parser.add_argument("--shard-count", type=int, default=4)
    parser.add_argument("--address", help="a running Ray cluster (default: a local Ray per worker count)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the one-process build_library run")
    parser.add_argument("--catalogue-songs", type=int, default=10_000_000)
    parser.add_argument("--song-seconds", type=float, default=210.0, help="mean song length of the catalogue")
    parser.add_argument("--cores-per-machine", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--hours", type=float, default=DAY_HOURS, help="time to embed the catalogue in")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from benchmarks._machine import describe

    worker_counts = [int(w) for w in args.workers.split(",")]
    model_dir = args.model or default_model()
    results: dict = {"machine": describe(REPO, threads=1), "model": str(model_dir), "songs": args.songs, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        songs, audio_seconds = song_folder(work, args.songs)
        results["audio_seconds"] = audio_seconds
        print(json.dumps({"songs": args.songs, "audio_seconds": round(audio_seconds, 1)}), flush=True)
        if not args.no_baseline:
            results["runs"].append(one_process(songs, model_dir, work / "one.npz", audio_seconds, args.songs))
            print(json.dumps(results["runs"][-1]), flush=True)
        for workers in worker_counts:
            results["runs"].append(distributed(songs, model_dir, work, workers, args.address, audio_seconds,
                                               args.songs, args.shard_count))
            print(json.dumps(results["runs"][-1]), flush=True)
    ray_runs = {r["workers"]: r for r in results["runs"] if r["what"] == "ray"}
    if 1 in ray_runs:
        results["speedup_over_1_worker"] = {w: r["x_real_time"] / ray_runs[1]["x_real_time"]
                                            for w, r in ray_runs.items()}
    # the per-worker rate with the most workers: every core busy, as on a machine of the catalogue build
    rate = ray_runs[max(ray_runs)]["x_real_time_per_worker"]
    results["estimate"] = catalogue_estimate(rate, args.catalogue_songs, args.song_seconds, args.cores_per_machine,
                                             args.hours)
    results["load_average_end"] = os.getloadavg()
    print(json.dumps({"speedup_over_1_worker": results.get("speedup_over_1_worker"),
                      "estimate": results["estimate"]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
