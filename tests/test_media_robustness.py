"""Media robustness: memory that depends neither on a frame's aspect ratio nor on a clip's length, and phone
clips seen upright, as players show them."""

from __future__ import annotations

import tracemalloc
from fractions import Fraction

import av
import numpy as np
import pytest
from conftest import shared_path
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from test_runtime_model import make_model_dir

from tivm.runtime import image, video
from tivm.runtime.errors import MediaError
from tivm.runtime.model import Model, WindowStream, loop_pad, window_starts
from tivm.runtime.video import display_orientation, sample_frames, upright

MiB = 1 << 20
PIL_STRIP_BYTES = 16 * MiB  # the PIL reference resizes in strips of at most this much output
FIXED_ONE = 1 << 16


# ---------------------------------------------------------------- helpers


def write_clip(path, seconds, size=(64, 48), fps=4, picture=None, rotation=None, hflip=False, vflip=False):
    """H.264 MP4 of `seconds` at `fps`; frame i shows picture(i); optional display matrix (PyAV's convention:
    `rotation` counter-clockwise degrees, as VideoFrame.rotation reads it back)."""
    width, height = size
    if picture is None:
        picture = lambda i: np.full((height, width, 3), (i * 37) % 256, np.uint8)
    out = av.open(str(path), "w")
    stream = out.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    if rotation is not None:
        stream.set_display_rotation(rotation, hflip=hflip, vflip=vflip)
    for index in range(int(seconds * fps)):
        frame = av.VideoFrame.from_ndarray(picture(index), format="rgb24")
        frame.pts, frame.time_base = index, Fraction(1, fps)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    return path


def decoded_as_stored(path):
    """Every frame at 1 fps exactly as stored (no display matrix applied), and the first frame's matrix."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    matrix = video.display_matrix(frames[0])
    return frames, matrix


def crop_pixels(frame, resize=image.RESIZE, crop=image.CROP):
    """Our preprocessing with identity normalisation: the uint8 values of the resized centre crop."""
    values = image.preprocess_frames(frame[None], resize=resize, crop=crop, mean=(0, 0, 0), std=(1 / 255,) * 3)
    return np.rint(values[0].transpose(1, 2, 0)).astype(np.uint8)


def pil_two_pass(frame, resize=image.RESIZE, crop=image.CROP):
    """torchvision's Resize + CenterCrop as two explicit Pillow passes, horizontal then vertical.

    A single-axis Image.resize runs exactly one Pillow pass, so the order is fixed (Pillow 13 may pick the
    vertical pass first for a two-axis resize). Each pass runs on strips (rows for the horizontal pass,
    columns for the vertical one: pixels of a pass are independent across strips), so PIL stays in bounded
    memory even where a whole resize of a 2 x 4000 frame would take 500 MB.
    """
    height, width = frame.shape[:2]
    out_h, out_w = image.resized_size(height, width, resize)
    top, left = image.center_crop_offsets(out_h, out_w, crop)
    rows = max(1, PIL_STRIP_BYTES // (4 * out_w))
    wide = np.concatenate([
        np.asarray(Image.fromarray(frame[r:r + rows]).resize((out_w, len(frame[r:r + rows])), Image.BILINEAR))
        [:, left:left + crop] for r in range(0, height, rows)], axis=0)
    columns = max(1, PIL_STRIP_BYTES // (4 * out_h))
    return np.concatenate([
        np.asarray(Image.fromarray(np.ascontiguousarray(wide[:, c:c + columns]))
                   .resize((len(range(c, min(c + columns, crop))), out_h), Image.BILINEAR))[top:top + crop]
        for c in range(0, crop, columns)], axis=1)


def traced_peak(function):
    """Peak bytes Python and numpy allocate while `function` runs (onnxruntime and FFmpeg are not traced)."""
    image.pil_bilinear_taps.cache_clear()
    image._band_plan.cache_clear()  # so the weights count too
    tracemalloc.start()
    try:
        result = function()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------- 1. frames of any shape


@pytest.mark.parametrize("size", [(2, 4000), (4000, 2), (3, 5000), (5000, 3), (1, 1), (1, 2), (2, 1), (1, 257)])
def test_extreme_aspect_ratios_match_pil_exactly(size):
    frame = np.random.default_rng(sum(size)).integers(0, 256, (*size, 3), dtype=np.uint8)
    np.testing.assert_array_equal(crop_pixels(frame), pil_two_pass(frame))


@settings(max_examples=60, deadline=None)
@given(height=st.integers(1, 640), width=st.integers(1, 640), resize=st.integers(1, 300),
       crop_share=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1))
def test_any_frame_size_matches_pil_exactly(height, width, resize, crop_share, seed):
    crop = max(1, round(crop_share * resize))
    frame = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    np.testing.assert_array_equal(crop_pixels(frame, resize, crop), pil_two_pass(frame, resize, crop))


@pytest.mark.parametrize("size", [(2, 4000), (4000, 2), (3, 5000), (5000, 3), (1, 1), (1, 100_000), (100_000, 1)])
def test_memory_does_not_depend_on_the_aspect_ratio(size):
    # the dense (in, out) weight matrix of a 2 x 4000 frame (longer side resized to 512,000) was 15 GiB
    frame = np.random.default_rng(0).integers(0, 256, (1, *size, 3), dtype=np.uint8)
    peak, out = traced_peak(lambda: image.preprocess_frames(frame))
    assert out.shape == (1, 3, 224, 224)
    assert peak < 8 * MiB, f"{size}: peak {peak / MiB:.1f} MiB"


def test_memory_of_a_huge_frame_stays_a_fraction_of_the_frame():
    # 8K: a float64 copy of the pixels under the crop was ~390 MB; now rows are converted chunk by chunk
    frame = np.random.default_rng(0).integers(0, 256, (1, 4320, 7680, 3), dtype=np.uint8)
    peak, _ = traced_peak(lambda: image.preprocess_frames(frame))
    assert peak < 48 * MiB, f"peak {peak / MiB:.1f} MiB for a {frame.nbytes / MiB:.0f} MiB frame"


def test_a_stream_over_the_pixel_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    path = write_clip(tmp_path / "big.mp4", 2, size=(64, 48))
    converted = []
    monkeypatch.setattr(video, "MAX_FRAME_PIXELS", 64 * 48 - 1)
    monkeypatch.setattr(video, "_frame_to_rgb", lambda p, f, m: converted.append(f))
    with pytest.raises(MediaError, match=r"64x48 pixels .* exceed") as caught:
        sample_frames(path)
    assert caught.value.path == str(path) and not converted


def test_a_frame_over_the_pixel_limit_is_refused_before_conversion(monkeypatch):
    # a stream may declare a small size and then grow: each frame is checked before it becomes RGB
    monkeypatch.setattr(video, "MAX_FRAME_PIXELS", 100)
    with pytest.raises(MediaError, match=r"20x10 pixels"):
        video._frame_to_rgb("clip.mp4", av.VideoFrame(20, 10, "yuv420p"), None)
    assert video._frame_to_rgb("clip.mp4", av.VideoFrame(10, 10, "yuv420p"), None).shape == (10, 10, 3)


# ---------------------------------------------------------------- 2. long clips stream window by window


def all_at_once(branch, steps, hop_steps):
    """The computation before streaming: every step in memory, windows cut from the whole sequence."""
    window = branch.window_steps
    starts = window_starts(len(steps), window, hop_steps)
    vectors = []
    for i in range(0, len(starts), branch.batch_windows):
        if len(steps) < window:
            batch = loop_pad(steps, window)[None]
        else:
            batch = np.stack([steps[s:s + window] for s in starts[i:i + branch.batch_windows]])
        vectors.append(branch.run(batch))
    return np.concatenate(vectors), (starts * branch.step_seconds).astype(np.float32), len(steps) * branch.step_seconds


class RecordingBranch:
    """A branch whose 'embedding' is the window itself, flattened, and which records every batch it runs."""

    name = "recording"
    step_seconds = 0.96

    def __init__(self, window_steps: int, batch_windows: int):
        self.window_steps, self.batch_windows, self.batches = window_steps, batch_windows, []

    def _check_step_shape(self, shape):
        pass

    def run(self, batch):
        self.batches.append(np.array(batch))
        return np.array(batch).reshape(len(batch), -1)


@settings(max_examples=300, deadline=None)
@given(n_steps=st.integers(1, 90), window=st.integers(1, 20), hop=st.integers(1, 25), batch=st.integers(1, 9))
def test_streamed_windows_equal_the_all_at_once_windows(n_steps, window, hop, batch):
    steps = np.stack([np.arange(n_steps, dtype=np.float32), -np.arange(n_steps, dtype=np.float32)], axis=1)
    reference_branch, streamed_branch = RecordingBranch(window, batch), RecordingBranch(window, batch)
    vectors, starts, duration = all_at_once(reference_branch, steps, hop)
    stream = WindowStream(streamed_branch, hop)
    for step in steps:
        stream.push(step)
    got = stream.finish()
    np.testing.assert_array_equal(got.vectors, vectors)
    np.testing.assert_array_equal(got.starts, starts)
    assert got.duration == duration
    # the same batches, in the same order: the ONNX graph sees exactly the same inputs
    assert len(streamed_branch.batches) == len(reference_branch.batches)
    for ours, theirs in zip(streamed_branch.batches, reference_branch.batches):
        np.testing.assert_array_equal(ours, theirs)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Model:
    return Model.load(make_model_dir(tmp_path_factory.mktemp("model") / "m"), intra_op_threads=1)


@pytest.mark.parametrize("hop_seconds", [None, 5, 7, 20])
def test_streaming_a_video_file_gives_exactly_the_old_embeddings(model, tmp_path, hop_seconds):
    path = write_clip(tmp_path / "clip.mp4", 41, fps=2,
                      picture=lambda i: np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    frames = sample_frames(path)
    steps = model.video._preprocess(frames)
    hop = model.video.window_stream(hop_seconds).hop
    vectors, starts, duration = all_at_once(model.video, steps, hop)
    for got in (model.embed_video(path, hop_seconds=hop_seconds), model.embed_video(frames, hop_seconds=hop_seconds)):
        np.testing.assert_array_equal(got.vectors, vectors)
        np.testing.assert_array_equal(got.starts, starts)
        assert got.duration == duration


@pytest.mark.parametrize("seconds", [1, 14, 15, 16, 29, 30, 31])
def test_streaming_short_and_boundary_lengths(model, seconds):
    # loop-padding below one window, a window exactly at the end, one flush window past it
    steps = np.random.default_rng(seconds).standard_normal((seconds, 3, 224, 224)).astype(np.float32)
    vectors, starts, _ = all_at_once(model.video, steps, 15)
    got = model.embed_video_features(steps)
    np.testing.assert_array_equal(got.vectors, vectors)
    np.testing.assert_array_equal(got.starts, starts)


def test_video_memory_does_not_grow_with_clip_length(model, tmp_path):
    short = write_clip(tmp_path / "short.mp4", 20, fps=2)
    long = write_clip(tmp_path / "long.mp4", 160, fps=2)
    branch = Model.load(model.model_dir, intra_op_threads=1).video
    branch.batch_windows = 2  # so one batch is small next to the 160 preprocessed frames the old code held
    step_bytes = 3 * 224 * 224 * 4
    peaks = {}
    for name, path in (("short", short), ("long", long)):
        peaks[name], windows = traced_peak(lambda path=path: branch.embed(path))
        assert len(windows.vectors) == len(window_starts(20 if name == "short" else 160, 15, 15))
    # one window of steps + one batch of windows + preprocessing one frame (a few MB in flight); the old
    # code held all 160 steps and a copy of each batch
    budget = (15 + 2 * 15 + 10) * step_bytes
    assert peaks["long"] < budget, (peaks, budget)
    assert peaks["long"] < peaks["short"] + 2 * MiB, peaks


# ---------------------------------------------------------------- 3. phone clips upright


def shown_by_matrix(picture: np.ndarray, matrix) -> np.ndarray:
    """Where the display matrix sends each pixel (FFmpeg's display.h: p' = a p + c q, q' = b p + d q, with p
    the column and q the row of the pixel's centre), written out pixel by pixel, independent of the runtime."""
    if matrix is None:  # no matrix (MP4 writes none for the identity): shown as stored
        return picture
    a, b, c, d = (np.asarray(matrix, dtype=np.float64)[[0, 1, 3, 4]] / FIXED_ONE)
    rows, columns = np.mgrid[0:picture.shape[0], 0:picture.shape[1]]
    x, y = a * (columns + 0.5) + c * (rows + 0.5), b * (columns + 0.5) + d * (rows + 0.5)
    x = np.rint(x - x.min()).astype(int)  # the leftmost pixel centre is column 0, and so on
    y = np.rint(y - y.min()).astype(int)
    out = np.zeros((y.max() + 1, x.max() + 1, 3), picture.dtype)
    out[y, x] = picture[rows, columns]
    return out


def asymmetric_picture(index: int, size=(96, 64)) -> np.ndarray:
    """Blocks of different colours in three corners, none in the fourth: every turn and mirror looks different."""
    width, height = size
    picture = np.full((height, width, 3), 40, np.uint8)
    picture[:16, :32] = (255, 0, 0)  # top left, wide
    picture[:32, -16:] = (0, 255, 0)  # top right, tall
    picture[-16:, :16] = (0, 0, 255)  # bottom left, square
    return picture


ORIENTATIONS = [(degrees, hflip) for degrees in (0, 90, 180, -90) for hflip in (False, True)]


@pytest.mark.parametrize("degrees,hflip", ORIENTATIONS)
def test_frames_follow_the_display_matrix(tmp_path, degrees, hflip):
    path = write_clip(tmp_path / "turned.mp4", 3, size=(96, 64), picture=asymmetric_picture, rotation=degrees,
                      hflip=hflip)
    stored, matrix = decoded_as_stored(path)
    if not hflip:  # PyAV reads back what it wrote (a mirror reads as a half turn: av_display_rotation_get)
        assert stored[0].rotation % 360 == degrees % 360
    got = sample_frames(path)
    expected_shape = (64, 96, 3) if degrees in (0, 180) else (96, 64, 3)
    assert got.shape == (3, *expected_shape)
    # exactly the stored frames, moved where the matrix says
    raw = [frame.to_ndarray(format="rgb24") for frame in stored[::4]]
    for ours, pixels in zip(got, raw):
        np.testing.assert_array_equal(ours, shown_by_matrix(pixels, matrix))
    # and the picture is right way up: the red block is top left unless mirrored/turned
    np.testing.assert_allclose(got[0].astype(float).mean(axis=(0, 1)),
                               shown_by_matrix(asymmetric_picture(0), matrix).astype(float).mean(axis=(0, 1)), atol=3)
    assert np.abs(got[0].astype(int) - shown_by_matrix(asymmetric_picture(0), matrix)).mean() < 6


def test_a_phone_rotation_of_minus_90_turns_clockwise():
    # the phone clip's matrix: av_display_rotation_get = -90 (PyAV's frame.rotation), players turn it 90°
    # clockwise (transpose=clock): the stored top-left corner ends top right
    matrix = np.array([0, FIXED_ONE, 0, -FIXED_ONE, 0, 0, 0, 0, 1 << 30], np.int32)
    stored = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(upright(stored, matrix), np.rot90(stored, k=-1))
    assert display_orientation(matrix) == (True, False, True)


@pytest.mark.parametrize("name,orientation", [
    ("transpose=clock", (True, False, True)), ("transpose=cclock", (True, True, False)),
    ("transpose=cclock_flip", (True, False, False)), ("transpose=clock_flip", (True, True, True)),
    ("hflip", (False, False, True)), ("vflip", (False, True, False))])
def test_orientations_do_what_ffmpegs_filters_do(name, orientation, monkeypatch):
    # display_orientation names FFmpeg's filters: check each against the filter itself
    picture = asymmetric_picture(0)
    graph = av.filter.Graph()
    source = graph.add_buffer(width=picture.shape[1], height=picture.shape[0], format="rgb24",
                              time_base=Fraction(1, 25))
    filter_name, _, argument = name.partition("=")
    step, sink = graph.add(filter_name, argument or None), graph.add("buffersink")
    source.link_to(step)
    step.link_to(sink)
    graph.configure()
    graph.push(av.VideoFrame.from_ndarray(picture, format="rgb24"))
    expected = graph.pull().to_ndarray(format="rgb24")
    monkeypatch.setattr(video, "display_orientation", lambda matrix: orientation)
    np.testing.assert_array_equal(upright(picture, "any"), expected)


def test_unrotated_frames_are_not_copied():
    frame = np.zeros((4, 6, 3), np.uint8)
    assert upright(frame, None) is frame
    assert upright(frame, np.array([FIXED_ONE, 0, 0, 0, FIXED_ONE, 0, 0, 0, 1 << 30], np.int32)) is frame


def portrait_crop(film_frame: np.ndarray, size=(360, 640)) -> np.ndarray:
    """The centre 9:16 strip of a 16:9 film frame, resized to `size` (width, height)."""
    height, width = film_frame.shape[:2]
    strip = height * size[0] / size[1]
    left = (width - strip) / 2
    box = (left, 0, left + strip, height)
    return np.asarray(Image.fromarray(film_frame).resize(size, Image.BILINEAR, box=box)).astype(np.float32)


def test_the_phone_clip_is_seen_upright():
    # Big Buck Bunny 17-23 s, a 360 x 640 portrait crop stored as 640 x 360 pixels with rotation -90
    phone = sample_frames(shared_path("media", "phone", "bbb_portrait_rot90_6s.mp4"))
    film = sample_frames(shared_path("media", "clips", "bbb_15-30s.mp4"))  # second k of the phone = 17 + k
    assert phone.shape == (6, 640, 360, 3)
    for second, frame in enumerate(phone):
        expected = portrait_crop(film[second + 2])
        assert np.abs(frame - expected).mean() < 6, second  # compression only
        assert np.abs(frame[::-1, ::-1] - expected).mean() > 30, second  # turned the other way: another picture


def test_a_stream_copy_keeps_the_display_matrix(tmp_path):
    # what --preview relies on: add_stream_from_template carries the matrix over, packets copied as they are
    source_path = write_clip(tmp_path / "phone.mp4", 2, size=(96, 64), picture=asymmetric_picture, rotation=-90)
    with av.open(str(source_path)) as source, av.open(str(tmp_path / "copy.mp4"), "w") as target:
        in_stream = source.streams.video[0]
        out_stream = target.add_stream_from_template(in_stream)
        for packet in source.demux(in_stream):
            if packet.dts is not None:
                packet.stream = out_stream
                target.mux(packet)
    np.testing.assert_array_equal(sample_frames(tmp_path / "copy.mp4"), sample_frames(source_path))
    assert decoded_as_stored(tmp_path / "copy.mp4")[0][0].rotation == -90


@pytest.mark.parametrize("copy_video", [True, False])
def test_the_preview_keeps_the_orientation(tmp_path, copy_video):
    """Both preview paths (packets copied, or pictures re-encoded) show the clip as the source is shown."""
    from tivm.runtime.preview import _mux

    source_path = write_clip(tmp_path / "phone.mp4", 2, size=(96, 64), picture=asymmetric_picture, rotation=-90)
    silence = np.zeros((2, 44100 * 2), np.float32)
    _mux(source_path, silence, tmp_path / "preview.mp4", copy_video=copy_video)
    upright_source, upright_preview = sample_frames(source_path), sample_frames(tmp_path / "preview.mp4")
    assert upright_preview.shape == upright_source.shape == (2, 96, 64, 3)
    assert np.abs(upright_preview.astype(int) - upright_source).mean() < 3  # re-encoding costs a little
