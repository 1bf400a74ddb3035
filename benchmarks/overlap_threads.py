"""How to share 2 cores between the decoder and a streaming split's model: recommend() per decoder-thread /
model-thread split against decoding alone, interleaved in one process (docs/benchmarks/end_to_end.md).

    PYTHONPATH=. .venv/bin/python benchmarks/overlap_threads.py [--rounds 9] [--json out.json]

Uses the benchmarks' cached int8 full exports (EfficientNet-Lite0, ResNet-50) and a 100,000-window synthetic
library; run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks import _search_data
from benchmarks._context import QUICK, Context
from tivm.runtime import video
from tivm.runtime.model import Model
from tivm.runtime.recommend import Recommender

CLIPS = ("media/clips/bbb_0-15s.mp4", "media/clips/bbb_15-30s.mp4")
SETTLE_S = 0.2


def _decoder_threads(original, count: int | None):
    """video._video_stream with `count` decoder threads whatever the caller asks (None: FFmpeg's choice)."""
    def stream(container, path, decode="exact", threads=None):
        return original(container, path, decode, count)
    return stream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    ctx = Context(plan=QUICK, threads=2, out=Path("."))
    original = video._video_stream
    auto, single = _decoder_threads(original, None), _decoder_threads(original, 1)
    out = {}
    for backbone in ("resnet50", "efficientnet-lite0"):
        model_dir, _ = ctx.export("full", backbone, "int8")
        models = {threads: Model.load(model_dir, intra_op_threads=threads, branches=("video",)) for threads in (1, 2)}
        library = _search_data.library(100_000, models[2].fingerprint, str(model_dir))
        recommenders = {threads: Recommender(m, library, search="exact") for threads, m in models.items()}
        for relative in CLIPS:
            clip = ctx.shared(relative)
            calls = {"decode alone (FFmpeg's threads)": (auto, lambda: video.sample_frames(clip))}
            for decoder_name, stream in (("FFmpeg's", auto), ("1", single)):
                for threads, rec in recommenders.items():
                    calls[f"decoder {decoder_name}, model {threads}"] = (stream, lambda rec=rec: rec.recommend(clip))
            seconds = {name: [] for name in calls}
            for _ in range(args.rounds):
                for name, (stream, call) in calls.items():
                    video._video_stream = stream
                    time.sleep(SETTLE_S)
                    started = time.perf_counter()
                    call()
                    seconds[name].append(time.perf_counter() - started)
                video._video_stream = original
            medians = {name: float(np.median(values[1:])) * 1000 for name, values in seconds.items()}  # 1st: warm-up
            decode = medians["decode alone (FFmpeg's threads)"]
            out[f"{backbone} {clip.name}"] = {name: {"median_ms": round(ms), "x_decode": round(ms / decode, 2)}
                                             for name, ms in medians.items()}
            print(backbone, clip.name, json.dumps(out[f"{backbone} {clip.name}"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
