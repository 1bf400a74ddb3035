"""Feature-extraction speed: 15 s clips per second for VGGish, ResNet-50 and EfficientNet-Lite0.

Per clip: 15 log-mel patches through VGGish, 15 frames through the image backbone. Backbone time (the forward
pass alone, on prepared inputs) and front-end time (decode + log-mels; decode + sample frames + preprocess)
are measured separately on a real clip. Weights are random for VGGish/ResNet-50 (speed does not depend on
the values) and the packaged ImageNet weights for EfficientNet-Lite0.

    .venv/bin/python benchmarks/extraction.py [--clip PATH] [--repeats 3] [--threads N] [--device cpu]
                                              [--clips-per-batch 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script: make `benchmarks` importable

from benchmarks._stats import time_call  # noqa: E402
from tivm.train import backbones as B  # noqa: E402

DEFAULT_CLIP = Path(os.environ.get("TIVM_SHARED", REPO.parent / "shared")) / "media" / "clips" / "bbb_0-15s.mp4"
CLIP_SECONDS = 15
IMAGE_BACKBONES = ("resnet50", "efficientnet-lite0")


def timed(function, repeats: int) -> tuple[float, object]:
    """Median wall time in seconds of `function()` over `repeats` runs (after one warm-up), and its last result."""
    summary, result = time_call(function, 1, repeats)
    return summary["median_ms"] / 1000.0, result


def random_model(name: str) -> torch.nn.Module:
    if name == "vggish":
        model = B.build_vggish("none")
        model.load_network_state_dict(B.random_state_dict(name))
        return model.eval()
    if name == "efficientnet-lite0":
        return B.load_backbone(name)[0]
    model = B.get_backbone(name).build()
    model.load_state_dict(B.random_state_dict(name))
    return model.eval()


def backbone_seconds(model: torch.nn.Module, inputs: torch.Tensor, device: torch.device, repeats: int) -> float:
    model = model.to(device)
    inputs = inputs.to(device)

    def forward():
        with torch.inference_mode():
            out = model(inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    return timed(forward, repeats)[0]


def frontend_seconds(clip: Path, repeats: int) -> dict[str, float]:
    from tivm.runtime.audio import load_audio, log_mel_patches
    from tivm.runtime.image import preprocess_frames
    from tivm.runtime.video import sample_frames

    audio_s, waveform = timed(lambda: log_mel_patches(load_audio(clip)), repeats)
    frames_s, frames = timed(lambda: sample_frames(clip)[:CLIP_SECONDS], repeats)
    out = {"audio (decode + log-mel)": audio_s, "video decode (1 fps)": frames_s}
    for name in IMAGE_BACKBONES:
        params = B.get_backbone(name).image_preprocessing
        out[f"preprocess_frames ({name})"] = timed(lambda: preprocess_frames(frames, **params), repeats)[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clips-per-batch", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = B.pick_device(args.device)
    n = args.clips_per_batch * CLIP_SECONDS
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "vggish": torch.randn(n, 96, 64, generator=generator),
        "resnet50": torch.randn(n, 3, 224, 224, generator=generator),
        "efficientnet-lite0": torch.randn(n, 3, 224, 224, generator=generator),
    }
    results = {
        "device": str(device), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "clips_per_batch": args.clips_per_batch, "repeats": args.repeats, "backbone": {}, "frontend": {},
    }
    print(f"device {device}, torch threads {torch.get_num_threads()}, {args.clips_per_batch} clip(s) "
          f"({n} patches/frames) per forward, median of {args.repeats}")
    for name, batch in inputs.items():
        seconds = backbone_seconds(random_model(name), batch, device, args.repeats) / args.clips_per_batch
        results["backbone"][name] = {"seconds_per_clip": seconds, "clips_per_second": 1.0 / seconds}
        print(f"  backbone {name:<20} {seconds * 1000:8.1f} ms/clip  {1.0 / seconds:7.2f} clips/s")
    if args.clip.is_file():
        for name, seconds in frontend_seconds(args.clip, args.repeats).items():
            results["frontend"][name] = {"seconds_per_clip": seconds, "clips_per_second": 1.0 / seconds}
            print(f"  front end {name:<36} {seconds * 1000:8.1f} ms/clip  {1.0 / seconds:7.2f} clips/s")
    else:
        print(f"  front ends skipped: {args.clip} not found (set TIVM_SHARED or --clip)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
