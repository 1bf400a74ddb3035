"""Split a full video branch so the runtime can run the backbone on each frame as it is decoded.

A full branch is one graph: frames (B, T, 3, H, W) -> backbone per frame -> head over the window -> embedding.
The head needs the whole window, so the graph cannot start before the window's last frame is decoded, and
decoding, the slowest stage, cannot hide the backbone. Split at the backbone's output:

* `video.onnx` keeps every node and gains one output, FEATURES_OUTPUT: the (B, T, F) per-frame features the
  head reads. Run with only that output requested, on one frame (1, 1, 3, H, W), it is the backbone alone.
* `video.window.onnx` (WINDOW_SUFFIX) is the head cut out of the same, already quantized graph: features
  (B, T, F) -> embedding. The same nodes and weights, so no second quantization and no second rounding.

The head reads the frames tensor only through Shape nodes for its batch and time sizes, which the features
tensor has too (its first two axes), so those Shape nodes read the features instead. Anything else crossing
the cut (a second data tensor, a Shape of another axis) refuses the split, and the export ships the one
graph as before. `check_split` runs both paths on real windows and the export keeps the split only when
they agree (see MAX_ABS_DIFFERENCE).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from tivm.export.quantize import split_regions

FEATURES_OUTPUT = "frame_features"
WINDOW_SUFFIX = ".window.onnx"
SHAPE_AXES = 2  # batch and time: the axes the frames tensor and the features tensor share
# per-frame static QDQ backbone + the same head nodes: differences are float summation order only
MAX_ABS_DIFFERENCE = 1e-4


class SplitError(ValueError):
    """The graph cannot be cut into a per-frame backbone and a window head."""


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {output: node for node in graph.node for output in node.output}


def _data_tensors(graph: onnx.GraphProto, source: str) -> set[str]:
    """Tensors computed from the values of `source` (not only from its shape)."""
    data = {source}
    for node in graph.node:  # ONNX graphs are topologically sorted
        if node.op_type == "Shape":
            continue
        if any(name in data for name in node.input):
            data.update(node.output)
    return data


def _boundary(model: onnx.ModelProto, frames: str) -> str:
    """The one data tensor the head reads from the backbone."""
    graph = model.graph
    backbone, head, float_only = split_regions(model, full=True)
    head_names = set(head)
    producers = _producers(graph)
    data = _data_tensors(graph, frames)
    crossing = {name for node in graph.node if node.name in head_names for name in node.input
                if name in data and (name == frames or producers.get(name) is not None
                                     and producers[name].name not in head_names)}
    if len(crossing) != 1 or frames in crossing:
        raise SplitError(f"the head reads {sorted(crossing) or 'no'} data tensor(s) from the backbone; "
                         "a split needs exactly one")
    return crossing.pop()


def _head_nodes(graph: onnx.GraphProto, outputs: list[str], boundary: str) -> list[onnx.NodeProto]:
    """Nodes needed for `outputs` when `boundary` is given, in graph order."""
    producers = _producers(graph)
    needed, stack = set(), list(outputs)
    while stack:
        name = stack.pop()
        node = producers.get(name)
        if name == boundary or node is None or node.name in needed:
            continue
        needed.add(node.name)
        stack.extend(node.input)
    return [node for node in graph.node if node.name in needed]


def _shape_axes(node: onnx.NodeProto) -> tuple[int | None, int | None]:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return attrs.get("start", 0), attrs.get("end")


def _features_info() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(FEATURES_OUTPUT, onnx.TensorProto.FLOAT, ["batch", "time", "features"])


def _window_graph(model: onnx.ModelProto, frames: str, boundary: str) -> onnx.ModelProto:
    graph = model.graph
    outputs = [o.name for o in graph.output if o.name != FEATURES_OUTPUT]
    nodes = _head_nodes(graph, outputs, boundary)
    kept = []
    for node in nodes:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        if frames in node.input:
            start, end = _shape_axes(node)
            if node.op_type != "Shape" or not (0 <= start < SHAPE_AXES and end is not None and 0 < end <= SHAPE_AXES):
                raise SplitError(f"the head reads the frames through {node.op_type} {node.name} "
                                 f"(axes {start}:{end}), not only their batch and time sizes")
        node.input[:] = [FEATURES_OUTPUT if name in (frames, boundary) else name for name in node.input]
        kept.append(node)
    used = {name for node in kept for name in node.input}
    initializers = [t for t in graph.initializer if t.name in used]
    value_info = [v for v in graph.value_info if v.name in used]
    window = helper.make_graph(kept, f"{graph.name}_window", [_features_info()],
                               [o for o in graph.output if o.name in outputs], initializers, value_info=value_info)
    out = helper.make_model(window, opset_imports=model.opset_import, ir_version=model.ir_version,
                            producer_name=model.producer_name, producer_version=model.producer_version)
    out.metadata_props.extend(model.metadata_props)
    return out


def window_path(full_path: str | os.PathLike) -> Path:
    """`video.onnx` -> `video.window.onnx`."""
    full_path = Path(full_path)
    return full_path.with_name(full_path.name.removesuffix(".onnx") + WINDOW_SUFFIX)


def split_for_streaming(full_path: str | os.PathLike) -> Path:
    """Add FEATURES_OUTPUT to the full graph at `full_path` (in place) and write its head beside it.

    Returns the window graph's path. Raises SplitError (nothing changed) when the graph has no clean cut.
    """
    full_path = Path(full_path)
    model = onnx.load(str(full_path))
    graph = model.graph
    if len(graph.input) != 1:
        raise SplitError(f"{full_path}: expected one input, got {[i.name for i in graph.input]}")
    if any(o.name == FEATURES_OUTPUT for o in graph.output):
        raise SplitError(f"{full_path}: already split")
    frames = graph.input[0].name
    boundary = _boundary(model, frames)
    window = _window_graph(model, frames, boundary)
    graph.node.append(helper.make_node("Identity", [boundary], [FEATURES_OUTPUT], name="frame_features_output"))
    graph.output.append(_features_info())
    onnx.checker.check_model(window)
    onnx.checker.check_model(model)
    target = window_path(full_path)
    onnx.save(window, str(target))
    onnx.save(model, str(full_path))
    return target


def check_split(full_path: str | os.PathLike, windows, threads: int | None = None) -> tuple[float, int]:
    """(largest |difference| between the full graph's embeddings and frame-by-frame backbone + window head
    over `windows` ((T, 3, H, W) float32 each), the per-frame feature size F)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    full_path = Path(full_path)
    full = ort.InferenceSession(str(full_path), options, providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(str(window_path(full_path)), options, providers=["CPUExecutionProvider"])
    frames_name = full.get_inputs()[0].name
    output = head.get_outputs()[0].name
    worst, features = 0.0, 0
    for window in windows:
        window = np.asarray(window, np.float32)
        whole = full.run([output], {frames_name: window[None]})[0]
        per_frame = np.concatenate([full.run([FEATURES_OUTPUT], {frames_name: frame[None, None]})[0]
                                    for frame in window], axis=1)
        streamed = head.run([output], {FEATURES_OUTPUT: per_frame})[0]
        worst = max(worst, float(np.max(np.abs(whole - streamed))))
        features = per_frame.shape[2]
    return worst, int(features)
