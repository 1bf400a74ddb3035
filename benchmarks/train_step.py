"""Seconds per training step for every configuration, back to back on the same machine.

One step = forward of both branches + loss + backward + AdamW, batch 256, random inputs; median of 5 after
one warm-up step. Sequences (T = 15, 128/1000-d as VGGish/ResNet-50) for all seven configurations, and
YouTube-8M's video-level shape (T = 1, 128/1024-d) for the two that run on it.

    .venv/bin/python benchmarks/train_step.py [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from tivm.train.config import CONFIG_NAMES
from tivm.train.heads import build_model, count_parameters
from tivm.train.losses import compute_loss
from tivm.train.trainer import make_optimizer

BATCH = 256
MEASURED_STEPS = 5
SHAPES = ((15, 128, 1000, CONFIG_NAMES), (1, 128, 1024, ("VM-M", "IVM-M")))


def seconds_per_step(name: str, t: int, audio_dim: int, video_dim: int) -> tuple[float, int]:
    torch.manual_seed(0)
    model = build_model(name, audio_dim, video_dim)
    optimizer = make_optimizer(model, 1e-3, 1e-4)
    audio, video = torch.randn(BATCH, t, audio_dim), torch.randn(BATCH, t, video_dim)
    times = []
    for _ in range(1 + MEASURED_STEPS):
        started = time.perf_counter()
        embed_audio, embed_video = model(audio, video)
        loss = compute_loss(model.config["loss"], model.logit_scale, embed_audio, embed_video,
                            model.audio_head.reference_features(audio), model.video_head.reference_features(video))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:]), count_parameters(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for t, audio_dim, video_dim, names in SHAPES:
        for name in names:
            seconds, params = seconds_per_step(name, t, audio_dim, video_dim)
            rows.append({"config": name, "T": t, "audio_dim": audio_dim, "video_dim": video_dim,
                         "seconds_per_step": seconds, "parameters": params})
            print(f"{name:7s} T={t:2d} {audio_dim}/{video_dim}: {seconds:.3f} s/step, {params / 1e6:.2f} M params",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch": BATCH, "threads": args.threads, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
