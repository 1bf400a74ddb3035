"""Keyframe hops (tivm.runtime.video._KeyframeHops): clips with a keyframe every second or so decode only from
the keyframe before each target, and the chosen frames are exactly those sequential decoding chooses."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_path

from benchmarks._clips import reencoded_clip
from tivm.runtime import video

SOURCE = shared_path("media", "clips", "bbb_0-15s.mp4")
pytestmark = pytest.mark.skipif(not SOURCE.is_file(), reason=f"needs the shared clip {SOURCE}")
SECONDS = 7


@pytest.fixture(scope="module")
def phone_clips(tmp_path_factory):
    """Small re-encodes of the real clip as phones record: a keyframe every second (H.264 with B-frames,
    portrait; HEVC; VP9 in WebM), one every 1.5 s, and one every 5 s (nothing to gain)."""
    folder = tmp_path_factory.mktemp("phone clips")
    specs = {
        "h264_portrait_1s.mp4": dict(codec="h264", size=(144, 256), keyframe_seconds=1.0, bframes=2),
        "hevc_1s.mp4": dict(codec="hevc", size=(256, 144), keyframe_seconds=1.0),
        "vp9_1s.webm": dict(codec="vp9", size=(256, 144), keyframe_seconds=1.0),
        "h264_1.5s.mp4": dict(codec="h264", size=(256, 144), keyframe_seconds=1.5, rate=24),
        "h264_5s.mp4": dict(codec="h264", size=(256, 144), keyframe_seconds=5.0),
    }
    return {name: reencoded_clip(SOURCE, folder / name, seconds=SECONDS, **spec) for name, spec in specs.items()}


def _sequential(monkeypatch, path, **kwargs):
    with monkeypatch.context() as patch:
        patch.setattr(video._KeyframeHops, "INDEXED_FORMATS", ())
        return video.sample_frames(path, **kwargs)


def _counting_seeks(monkeypatch):
    calls = []
    original = video._KeyframeHops.seek

    def seek(self, *args):
        calls.append(args[2])
        return original(self, *args)

    monkeypatch.setattr(video._KeyframeHops, "seek", seek)
    return calls


@pytest.mark.parametrize("name", ["h264_portrait_1s.mp4", "hevc_1s.mp4", "vp9_1s.webm", "h264_1.5s.mp4"])
def test_dense_keyframes_are_sought_and_the_frames_are_the_sequential_ones(phone_clips, monkeypatch, name):
    expected = _sequential(monkeypatch, phone_clips[name])
    seeks = _counting_seeks(monkeypatch)
    frames = video.sample_frames(phone_clips[name])
    assert len(seeks) >= 2  # it did jump
    assert frames.shape == expected.shape and len(frames) == SECONDS
    np.testing.assert_array_equal(frames, expected)
    # a late start and a duration: the start's own seek, then hops
    np.testing.assert_array_equal(video.sample_frames(phone_clips[name], start=2.5, duration=3),
                                  _sequential(monkeypatch, phone_clips[name], start=2.5, duration=3))


def test_sparse_keyframes_decode_in_order(phone_clips, monkeypatch):
    """Keyframes every 5 s: after the encoder's few keyframes in the clip's first second (its fade-in), the
    decoder reads on in order."""
    path = phone_clips["h264_5s.mp4"]
    expected = _sequential(monkeypatch, path)
    seeks = _counting_seeks(monkeypatch)
    np.testing.assert_array_equal(video.sample_frames(path), expected)
    assert all(seconds < 1.5 for seconds in seeks), seeks


def test_a_seek_that_lands_past_its_target_goes_back_and_stops_seeking(phone_clips, monkeypatch):
    """An index that sends the decoder too far (simulated: the first hop lands 1.5 s late) must not change
    which frames are chosen."""
    path = phone_clips["h264_portrait_1s.mp4"]
    expected = _sequential(monkeypatch, path)
    original = video._seek_near
    state = {"hops": 0}

    def late_seek(container, stream, seconds):
        state["hops"] += 1
        return original(container, stream, seconds + (1.5 if state["hops"] == 1 else 0.0))

    monkeypatch.setattr(video, "_seek_near", late_seek)
    np.testing.assert_array_equal(video.sample_frames(path), expected)
    assert state["hops"] == 2  # the late hop, the way back, then no more seeking


def test_seeks_that_land_behind_the_decoder_stop_after_two(phone_clips, monkeypatch):
    """A keyframe interval learnt wrong (simulated: every seek lands on the first keyframe) wastes at most
    MAX_MISSES seeks."""
    path = phone_clips["hevc_1s.mp4"]
    expected = _sequential(monkeypatch, path)
    original = video._seek_near
    seeks = []

    def to_start(container, stream, seconds):
        seeks.append(seconds)
        return original(container, stream, 0.0)

    monkeypatch.setattr(video, "_seek_near", to_start)
    np.testing.assert_array_equal(video.sample_frames(path), expected)
    assert len(seeks) == video._KeyframeHops.MAX_MISSES


def test_the_display_matrix_is_read_once_per_stream(monkeypatch):
    """Reading PyAV's side data ties each frame's picture to a reference cycle until the garbage collector
    runs (600 MB over a 300 s 1080p clip): it is read from the first chosen frame only."""
    calls = []
    original = video.display_matrix
    monkeypatch.setattr(video, "display_matrix", lambda frame: calls.append(1) or original(frame))
    portrait = shared_path("media", "phone", "bbb_portrait_rot90_6s.mp4")
    frames = video.sample_frames(portrait)
    assert len(frames) == 6 and frames.shape[1:] == (640, 360, 3)  # still upright
    assert len(calls) == 1
