"""One configuration in a fresh process: load it, embed one clip, print a JSON line (peak RSS, timings).

Run by benchmarks/run.py, which times process start to the printed line (cold start). Imports only what that
configuration needs: the onnxruntime path never imports torch.

    python benchmarks/_probe.py ort VIDEO_OR_AUDIO CLIP --model-dir DIR [--threads N]
    python benchmarks/_probe.py torch VIDEO_OR_AUDIO CLIP --checkpoint RUN --backbone NAME --weights FILE
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()
STATUS = Path("/proc/self/status")


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over fork + exec, so a
    child would report its (larger) parent's peak."""
    for line in STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{STATUS} has no VmHWM line")


def run_ort(args) -> list[float]:
    from tivm.runtime.model import Model

    model = Model.load(args.model_dir, intra_op_threads=args.threads)
    windows = model.embed_video(args.clip) if args.branch == "video" else model.embed_audio(args.clip)
    return windows.pooled().tolist()


def run_torch(args) -> list[float]:
    import numpy as np
    import torch

    from tivm.runtime import audio, image, video
    from tivm.train.backbones import get_backbone, load_backbone
    from tivm.train.checkpoint import load_checkpoint

    torch.set_num_threads(args.threads)
    backbone, _ = load_backbone(args.backbone, args.weights)
    model, _ = load_checkpoint(args.checkpoint)
    if args.branch == "video":
        frames = video.sample_frames(args.clip)
        steps = image.preprocess_frames(frames, **get_backbone(args.backbone).image_preprocessing)
        head = model.video_head
    else:
        steps = audio.log_mel_patches(audio.load_audio(args.clip))
        head = model.audio_head
    with torch.inference_mode():
        features = backbone(torch.from_numpy(np.ascontiguousarray(steps)))
        return head(features[None]).reshape(-1).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", choices=("ort", "torch"))
    parser.add_argument("branch", choices=("video", "audio"))
    parser.add_argument("clip")
    parser.add_argument("--model-dir")
    parser.add_argument("--checkpoint")
    parser.add_argument("--backbone")
    parser.add_argument("--weights")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    embedding = run_ort(args) if args.engine == "ort" else run_torch(args)
    print(json.dumps({"peak_rss_mib": peak_rss_mib(), "in_process_seconds": time.perf_counter() - STARTED,
                      "embedding_dim": len(embedding)}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
