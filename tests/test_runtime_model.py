"""Model directories: manifest round trip and refusals, sha256/truncation checks, windowing, head models.

The ONNX models here are tiny stand-ins built with onnx.helper (fast, and independent of the exporter): "full"
audio (B, T, 96, 64) and video (B, T, 3, 224, 224) graphs that average over time, pool, project with a
fixed random matrix and L2-normalise; "head" graphs do the same on (B, T, D) features.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from tivm.runtime.errors import ModelError
from tivm.runtime.manifest import (
    BranchManifest,
    ModelManifest,
    TensorSpec,
    audio_frontend,
    read_manifest,
    video_frontend,
    write_manifest,
)
from tivm.runtime.model import Model, loop_pad, window_starts

EMBED_DIM = 16
OPSET = 17


def _graph_bytes(name: str, input_shape: list, pool: list[int] | None, flat_dim: int, seed: int) -> bytes:
    """input (B, T, ...) -> mean over T -> [average pool] -> flatten -> fixed projection -> L2 norm."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(seed).standard_normal((flat_dim, EMBED_DIM)).astype(np.float32)
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=0 if pool is None else 1)]
    last = "m"
    if pool is not None:
        # (B, 1, ...) -> drop the time axis when it is not the channel axis
        if len(input_shape) == 5:
            nodes.append(helper.make_node("Squeeze", ["m", "axis1"], ["m2"]))
            last = "m2"
        nodes.append(helper.make_node("AveragePool", [last], ["p"], kernel_shape=pool, strides=pool))
        last = "p"
    nodes += [
        helper.make_node("Flatten", [last], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "w"], ["y"]),
        helper.make_node("LpNormalization", ["y"], ["embedding"], axis=-1, p=2),
    ]
    initializers = [numpy_helper.from_array(weights, "w"),
                    numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")]
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", EMBED_DIM])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def make_model_dir(directory: Path, seed: int = 0, kind: str = "full") -> Path:
    """Write audio.onnx, video.onnx and manifest.json for a tiny stand-in model; returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "full":
        audio_shape, audio_pool, audio_flat = ["batch", "time", 96, 64], [12, 8], 64
        video_shape, video_pool, video_flat = ["batch", "time", 3, 224, 224], [28, 28], 192
        audio_fe, video_fe = audio_frontend(), video_frontend(fps=1.0)
        feature_dims = (None, None)
    else:
        audio_shape, audio_pool, audio_flat = ["batch", "time", 128], None, 128
        video_shape, video_pool, video_flat = ["batch", "time", 1000], None, 1000
        audio_fe, video_fe = {"backbone": "vggish"}, {"backbone": "resnet50", "fps": 1.0}
        feature_dims = (128, 1000)
    (directory / "audio.onnx").write_bytes(_graph_bytes("audio", audio_shape, audio_pool, audio_flat, seed))
    (directory / "video.onnx").write_bytes(_graph_bytes("video", video_shape, video_pool, video_flat, seed + 1))
    branches = {
        name: BranchManifest(
            file=f"{name}.onnx", kind=kind, input=TensorSpec("x", tuple(shape)),
            output=TensorSpec("embedding", ("batch", EMBED_DIM)), frontend=fe, embedding_dim=EMBED_DIM,
            configuration="stand-in", feature_dim=dim, quantization={"method": "none"})
        for name, shape, fe, dim in (("audio", audio_shape, audio_fe, feature_dims[0]),
                                     ("video", video_shape, video_fe, feature_dims[1]))
    }
    write_manifest(directory, ModelManifest(data_fingerprint=f"synthetic-{seed}", tivm_version="test", **branches))
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("model") / "model A")


@pytest.fixture(scope="module")
def model(model_dir) -> Model:
    return Model.load(model_dir, intra_op_threads=1)


def _copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_manifest_round_trip(model_dir):
    manifest = read_manifest(model_dir)
    data = json.loads((model_dir / "manifest.json").read_text())
    assert data["format"] == "tivm-model" and data["version"] == 2
    assert data["model_fingerprint"] == manifest.model_fingerprint
    assert manifest.audio.input.shape == ("batch", "time", 96, 64)
    assert manifest.video.frontend["center_crop"] == 224
    again = write_manifest(model_dir, manifest)
    assert read_manifest(model_dir) == again == manifest


def test_unknown_version_is_refused(model_dir, tmp_path):
    copy = _copy_model(model_dir, tmp_path / "m")
    data = json.loads((copy / "manifest.json").read_text())
    data["version"] = 99
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="version 99 is not supported"):
        read_manifest(copy)


def test_hand_edited_fingerprint_is_refused(model_dir, tmp_path):
    copy = _copy_model(model_dir, tmp_path / "m")
    data = json.loads((copy / "manifest.json").read_text())
    data["audio"]["sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="model_fingerprint"):
        read_manifest(copy)


def test_sha256_mismatch_names_the_file(model_dir, tmp_path):
    copy = _copy_model(model_dir, tmp_path / "m")
    data = bytearray((copy / "video.onnx").read_bytes())
    data[-1] ^= 0xFF
    (copy / "video.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"video\.onnx: sha256 mismatch"):
        Model.load(copy)


def test_truncated_onnx_with_matching_manifest_is_refused(model_dir, tmp_path):
    # truncated after export, manifest rewritten to match: the checksum passes, onnxruntime must refuse
    copy = _copy_model(model_dir, tmp_path / "m")
    data = (copy / "audio.onnx").read_bytes()
    (copy / "audio.onnx").write_bytes(data[: len(data) // 2])
    manifest = read_manifest(copy)
    from dataclasses import replace

    write_manifest(copy, replace(manifest, audio=replace(manifest.audio, sha256="")))
    with pytest.raises(ModelError, match=r"audio\.onnx: not a loadable ONNX model"):
        Model.load(copy)


def test_missing_file_and_missing_manifest(model_dir, tmp_path):
    copy = _copy_model(model_dir, tmp_path / "m")
    (copy / "audio.onnx").unlink()
    with pytest.raises(ModelError, match=r"audio\.onnx: missing"):
        Model.load(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(ModelError, match=r"manifest\.json: missing"):
        Model.load(copy)
    with pytest.raises(ModelError, match="not a model directory"):
        Model.load(tmp_path / "nowhere")


def test_write_manifest_refuses_a_wrong_sha256(model_dir, tmp_path):
    copy = _copy_model(model_dir, tmp_path / "m")
    manifest = read_manifest(copy)
    from dataclasses import replace

    with pytest.raises(ModelError, match="does not match"):
        write_manifest(copy, replace(manifest, video=replace(manifest.video, sha256="f" * 64)))


def test_unavailable_provider_is_an_error(model_dir):
    with pytest.raises(ModelError, match="not installed"):
        Model.load(model_dir, providers=["NoSuchExecutionProvider"])


def test_window_starts_cover_the_tail():
    assert window_starts(10, 15, 5).tolist() == [0]
    assert window_starts(15, 15, 5).tolist() == [0]
    assert window_starts(30, 15, 5).tolist() == [0, 5, 10, 15]
    assert window_starts(32, 15, 5).tolist() == [0, 5, 10, 15, 17]
    assert loop_pad(np.arange(4), 10).tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


def test_embed_patches_windows_and_short_inputs(model):
    patches = np.random.default_rng(0).standard_normal((32, 96, 64)).astype(np.float32)
    windows = model.embed_audio_features(patches, hop_seconds=5)
    assert windows.vectors.shape == (5, EMBED_DIM)
    np.testing.assert_allclose(windows.starts, np.array([0, 5, 10, 15, 17]) * 0.96, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(windows.vectors, axis=1), 1, atol=1e-5)
    # a window equals running the graph on exactly that slice
    direct = model.audio.run(patches[None, 5:20])
    np.testing.assert_allclose(windows.vectors[1], direct[0], atol=1e-6)
    # 7 patches: one window, loop-padded to 15
    short = model.embed_audio_features(patches[:7])
    padded = model.audio.run(loop_pad(patches[:7], 15)[None])
    assert short.vectors.shape == (1, EMBED_DIM)
    np.testing.assert_allclose(short.vectors[0], padded[0], atol=1e-6)
    with pytest.raises(ValueError, match="each step must have shape"):
        model.embed_audio_features(np.zeros((15, 64, 96), np.float32))


def test_embed_video_frames(model):
    frames = np.random.default_rng(1).integers(0, 256, (5, 120, 160, 3), dtype=np.uint8)
    windows = model.embed_video(frames)
    assert windows.vectors.shape == (1, EMBED_DIM)
    assert abs(np.linalg.norm(windows.pooled()) - 1) < 1e-5
    with pytest.raises(ValueError, match="RGB frames"):
        model.embed_video(np.zeros((5, 10, 10), np.uint8))


def test_embed_audio_waveform_matches_path(model, media_dir):
    from tivm.runtime import audio

    song = media_dir / "songs" / "bbb_soundtrack_0-30s.ogg"
    from_path = model.embed_audio(song, hop_seconds=5)
    from_wave = model.embed_audio(audio.load_audio(song), sample_rate=16000, hop_seconds=5)
    np.testing.assert_array_equal(from_path.vectors, from_wave.vectors)
    # 30 s -> 31 patches of 0.96 s; hop 5 s = 5 patches: starts 0, 5, 10, 15 and 16 (flush with the end)
    np.testing.assert_allclose(from_path.starts, np.array([0, 5, 10, 15, 16]) * 0.96, rtol=1e-6)
    assert abs(from_path.duration - 30.0) < 0.05


def test_head_model_embeds_features_not_media(tmp_path):
    head = Model.load(make_model_dir(tmp_path / "head", seed=5, kind="head"))
    windows = head.embed_video_features(np.random.default_rng(2).standard_normal((15, 1000)).astype(np.float32))
    assert windows.vectors.shape == (1, EMBED_DIM)
    with pytest.raises(ModelError, match="'head' over per-second 1000-d features"):
        head.embed_video(np.zeros((3, 32, 32, 3), np.uint8))
    with pytest.raises(ModelError, match="embed_audio_features"):
        head.embed_audio(np.zeros(16000, np.float32))


def test_branch_run_is_thread_safe(model):
    batches = [np.random.default_rng(i).standard_normal((2, 15, 96, 64)).astype(np.float32) for i in range(6)]
    expected = [model.audio.run(b) for b in batches]
    results: dict[int, np.ndarray] = {}

    def work(i):
        for _ in range(3):
            results[i] = model.audio.run(batches[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(6):
        np.testing.assert_array_equal(results[i], expected[i])


def test_an_amx_export_on_a_cpu_without_amx_loads_with_a_warning(tmp_path, monkeypatch):
    import dataclasses
    import warnings

    from tivm.runtime import model as model_module

    directory = make_model_dir(tmp_path / "amx")
    manifest = read_manifest(directory)
    amx = {"method": "int8", "backbone": {"int8_target": "amx", "gemm_convs": 33}}
    video = dataclasses.replace(manifest.video, quantization=amx)
    write_manifest(directory, dataclasses.replace(manifest, video=video))
    monkeypatch.setattr(model_module, "cpu_has_amx", lambda: False)
    with pytest.warns(RuntimeWarning, match="--int8-target amx.*no AMX"):
        Model.load(directory, intra_op_threads=1)
    monkeypatch.setattr(model_module, "cpu_has_amx", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Model.load(directory, intra_op_threads=1)


def test_cpu_has_amx_reads_this_machine_or_says_it_cannot_tell():
    from tivm.runtime.model import cpu_has_amx

    found = cpu_has_amx()
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        assert found is None
    else:
        assert found == ("amx_int8" in cpuinfo.read_text())


def test_a_branch_left_out_at_load_opens_once_on_first_use(model_dir, tmp_path):
    copy = _copy_model(model_dir, tmp_path / "m")
    model = Model.load(copy, branches=("video",))
    assert model._branches["audio"] is None and model._branches["video"] is not None
    first = [None] * 4

    def use(i):
        first[i] = model.audio

    threads = [threading.Thread(target=use, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(branch is first[0] for branch in first)  # one session, whichever thread came first
    (copy / "audio.onnx").write_bytes(b"corrupt")  # the checks still run when a lazy branch opens
    lazy = Model.load(copy, branches=("video",))
    with pytest.raises(ModelError, match="sha256 mismatch"):
        lazy.embed_audio(np.zeros(16000 * 2, np.float32))
    with pytest.raises(ValueError, match="branches must be among"):
        Model.load(copy, branches=("text",))
