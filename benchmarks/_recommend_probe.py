"""recommend() on one clip in a fresh process: wall time and peak RSS (run by benchmarks/_overlap.py).

    python benchmarks/_recommend_probe.py MODEL_DIR CLIP --mode before|after --threads N --windows W
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("clip")
    parser.add_argument("--mode", choices=("before", "after"), required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=10_000)
    args = parser.parse_args()

    import av

    from benchmarks import _search_data
    from benchmarks._overlap import before
    from benchmarks._probe import peak_rss_mib
    from tivm.runtime.model import Model
    from tivm.runtime.recommend import Recommender

    with av.open(args.clip) as container:
        clip_seconds = float(container.duration / av.time_base)
    with before() if args.mode == "before" else contextlib.nullcontext():
        model = Model.load(args.model_dir, intra_op_threads=args.threads, branches=("video",))
        library = _search_data.library(args.windows, model.fingerprint, str(model.model_dir))
        recommender = Recommender(model, library, search="exact")
        rss_loaded = peak_rss_mib()
        started = time.perf_counter()
        results = recommender.recommend(args.clip, 10)
        seconds = time.perf_counter() - started
    peak = peak_rss_mib()
    print(json.dumps({"mode": args.mode, "clip_seconds": round(clip_seconds, 2), "seconds": round(seconds, 4),
                      "ms_per_clip_second": round(seconds * 1000 / clip_seconds, 2),
                      "peak_rss_mib": round(peak, 1), "peak_rss_loaded_mib": round(rss_loaded, 1),
                      "top1": results[0].title}))


if __name__ == "__main__":
    main()
