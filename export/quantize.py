"""Float32 ONNX branch -> int8 or fp16 file, with the recipe written down for the manifest.

int8 (chosen by measurement: docs/export.md and benchmarks/export_report.py):
* backbone (convolutions and its fully connected layers): static QDQ, uint8 activations and int8 weights
  (U8S8) per output channel, MinMax calibration on real inputs. Signed-int8 activations (the QDQ default) run
  no faster than float32 on x86; U8S8 uses the VNNI/AMX u8*s8 kernels. Per-channel weights keep depthwise
  convolutions (EfficientNet) usable at no measured speed cost. VGGish's PCA post-processing stays float
  (it feeds a clip and a floor, where one quantization step changes the output).
* head (VM-NET MLP, LSTM, Transformer): dynamic quantization of MatMul (Gemm rewritten as MatMul + Add) and
  LSTM weights to int8;
  activations are quantized per run from their own range, so no calibration is needed and the
  standardisation, LayerNorm, Softmax, attention score products (MatMul of two activations), residual adds and
  the final L2 normalisation all stay float.
int8 target "amx" (opt-in): onnxruntime runs a QLinearConv whose int8 weights have zero point 0 through its
indirect symmetric-convolution kernels (AVX-512 VNNI at best), and every other conv through im2col + its
integer GEMM, which uses AMX tiles on CPUs that have them (Xeon 4th generation and later). On an AMX Xeon the
GEMM is faster for convolutions at least GEMM_MIN_DEPTH deep (input channels per group x kernel area) and
slower for shallower ones (docs/export.md measures it per depth), so "amx" stores those deep convolutions'
weights as q - 1 with zero point -1: they dequantize to exactly the same values, only the kernel changes.
"portable" (the default) keeps onnxruntime's choice, which suits CPUs without AMX and ARM.
int8 target "arm" (opt-in): the backbone in S8S8 (int8 activations, symmetric int8 weights), the QDQ layout
onnxruntime recommends for ARM; the head stays dynamic. Measured (docs/export.md, tests/int8_arm_report.py): the
same accuracy as U8S8 (asymmetric int8 and uint8 activations share one grid: same scale, zero point - 128),
x86 runs it 1.3-2x slower, aarch64 agrees with x86 as U8S8 does, and onnxruntime's mobile checker gives both the
same verdict, so raw (mobile) bundles keep "portable". A static head (`head="static"`: the head's linear layers
calibrated with the backbone, no DynamicQuantizeLinear) is kept for measuring: it cost accuracy and bought no
NNAPI / CoreML verdict.
fp16: weights stored as float16 and cast back to float32 when the session loads (onnxruntime folds the Casts),
so the file halves and inputs, outputs and arithmetic stay float32: the runtime is unchanged.
"""

from __future__ import annotations

import collections
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

QUANTIZE_CHOICES = ("int8", "fp16", "none")
HEAD_SCOPE = "head"  # tivm.export.branches.Branch.head, the trained head; everything upstream is the backbone
FLOAT_SCOPES = ("backbone.postprocess",)  # kept float: VGGish PCA -> clip -> floor
NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
# ops that run as integer kernels when their inputs come from DequantizeLinear (QDQ node units)
QDQ_UNIT_OP_TYPES = ("Conv", "MatMul", "Gemm", "Add", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu",
                     "Clip", "Concat", "Reshape", "Transpose", "Flatten", "Mul")
DYNAMIC_OP_TYPES = ("MatMul", "LSTM")  # Gemm has no dynamic integer kernel: rewritten as MatMul first
INT8_TARGETS = ("portable", "amx", "arm")
# backbone activation type per target: uint8 (U8S8) for x86's u8*s8 kernels, int8 (S8S8) for ARM / mobile
TARGET_ACTIVATIONS = {"portable": "uint8", "amx": "uint8", "arm": "int8"}
HEAD_METHODS = ("dynamic", "static")
TARGET_HEADS = {"portable": "dynamic", "amx": "dynamic", "arm": "dynamic"}  # full branches; head-only: dynamic
STATIC_HEAD_OP_TYPES = ("MatMul", "Gemm")  # with a constant weight: the head's linear layers
GEMM_MIN_DEPTH = 512  # measured per ResNet-50 conv on the AMX Xeon (docs/export.md): >= 512 deep, GEMM wins
GEMM_WEIGHT_ZERO_POINT = -1  # any common non-zero point routes to the GEMM; -1 keeps the int8 range [-127, 127]
FP16_MIN_ELEMENTS = 16  # tiny tensors (shapes, scalars) stay float32: nothing to save
FP16_MAX = 65504.0
FP16_SUFFIX = "__fp16"


# ------------------------------------------------------------------------------------------ graph regions

def name_scopes(node: onnx.NodeProto) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES_KEY:
            text = prop.value.strip("[]")
            return [s.strip().strip("'\"") for s in text.split(",") if s.strip()]
    return []


def in_scope(node: onnx.NodeProto, prefix: str, initializers: set[str]) -> bool:
    """Node belongs to module `prefix`: by the exporter's scope metadata, or (when an optimiser dropped
    that) because it reads one of the module's parameters, which keep their "prefix." names."""
    if any(s == prefix or s.startswith(prefix + ".") for s in name_scopes(node)):
        return True
    return any(name.startswith(prefix + ".") for name in node.input if name in initializers)


def downstream(graph: onnx.GraphProto, seeds: set[str]) -> set[str]:
    """Names of the seed nodes and of every node that (transitively) consumes their outputs."""
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    by_name = {node.name: node for node in graph.node}
    found, stack = set(seeds), [by_name[s] for s in seeds if s in by_name]
    while stack:
        for output in stack.pop().output:
            for consumer in consumers[output]:
                if consumer.name not in found:
                    found.add(consumer.name)
                    stack.append(consumer)
    return found


def split_regions(model: onnx.ModelProto, full: bool) -> tuple[list[str], list[str], list[str]]:
    """(backbone nodes, head nodes, float-only nodes) of a branch graph.

    Head = nodes of the `head` module and everything downstream of them (so nodes an optimiser created
    without metadata still land on the right side). A head-only graph is all head.
    """
    graph = model.graph
    names = [node.name for node in graph.node]
    if not full:
        return [], names, []
    initializers = {tensor.name for tensor in graph.initializer}
    seeds = {node.name for node in graph.node if in_scope(node, HEAD_SCOPE, initializers)}
    if not seeds:
        raise ValueError("the exported graph has no node of the 'head' module (neither scope metadata nor "
                         "head.* parameters)")
    head = downstream(graph, seeds)
    float_only = downstream(graph, {n.name for n in graph.node
                                    if any(in_scope(n, s, initializers) for s in FLOAT_SCOPES)})
    float_only -= head
    backbone = [n for n in names if n not in head and n not in float_only]
    return backbone, [n for n in names if n in head], sorted(float_only)


# ------------------------------------------------------------------------------------------ recipes

class BatchReader:
    """onnxruntime CalibrationDataReader over ready (1, t, *step) batches, with a progress bar."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray], progress: bool = True, desc: str = ""):
        from tqdm import tqdm

        self.input_name = input_name
        self.batches = list(batches)
        self.bar = tqdm(total=len(self.batches), desc=desc or "calibration", unit="batch", disable=not progress,
                        leave=False)
        self.position = 0

    def get_next(self):
        if self.position >= len(self.batches):
            self.bar.close()
            return None
        batch = self.batches[self.position]
        self.position += 1
        self.bar.update(1)
        return {self.input_name: np.ascontiguousarray(batch, np.float32)}

    def rewind(self) -> None:
        self.position = 0


def preprocess(source: Path, target: Path) -> dict:
    """onnxruntime's quant_pre_process (shape inference + graph optimisation); without the symbolic shape
    inference when that fails (it does not know every op)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(source), str(target))
        return {"pre_process": "quant_pre_process"}
    except Exception as error:  # symbolic shape inference raises plain Exceptions on unknown ops
        quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
        return {"pre_process": "quant_pre_process(skip_symbolic_shape=True)",
                "pre_process_note": f"symbolic shape inference failed: {type(error).__name__}"}


def quantize_static_backbone(source: Path, target: Path, input_name: str, batches: Sequence[np.ndarray],
                             nodes: list[str], *, per_channel: bool = True, activation: str = "uint8",
                             quant_format: str = "QDQ", progress: bool = True, head_nodes: Sequence[str] = ()
                             ) -> dict:
    """Static quantization of `nodes` (the backbone) and, for a static head, `head_nodes` (its linear layers)
    in one calibration pass. Weights are int8, symmetric (zero point 0), per output channel by default."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    reader = BatchReader(input_name, batches, progress=progress, desc="calibrating backbone")
    quantize_static(
        str(source), str(target), reader,
        quant_format=QuantFormat.QDQ if quant_format == "QDQ" else QuantFormat.QOperator,
        activation_type=QuantType.QUInt8 if activation == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8, per_channel=per_channel, nodes_to_quantize=[*nodes, *head_nodes],
        op_types_to_quantize=None, calibrate_method=CalibrationMethod.MinMax,
        extra_options={"WeightSymmetric": True})
    # not CalibMaxIntermediateOutputs: in onnxruntime 1.32 it drops the collected batches without merging them
    return {"format": quant_format, "activations": activation, "weights": "int8 (symmetric: zero point 0)",
            "per_channel": per_channel, "calibration_method": "MinMax", "calibration_batches": len(batches),
            "calibration_steps": int(sum(b.shape[1] for b in batches))}


def static_head_nodes(model: onnx.ModelProto, head: Sequence[str]) -> list[str]:
    """The head's MatMul / Gemm nodes whose weight (input B) is a constant: its linear layers. Attention score
    products (two activations), LayerNorm, Softmax, residual adds and the L2 normalisation are left out, so
    they stay float as in the dynamic recipe."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {out for n in model.graph.node if n.op_type == "Constant" for out in n.output}
    wanted = set(head)
    return [n.name for n in model.graph.node
            if n.name in wanted and n.op_type in STATIC_HEAD_OP_TYPES and len(n.input) > 1 and n.input[1] in constants]


def route_deep_convs_to_gemm(path: Path, min_depth: int = GEMM_MIN_DEPTH) -> dict:
    """The "amx" int8 target (module docstring): rewrite, in place, the int8 weights of every convolution at
    least `min_depth` deep from (q, zero point 0) to (q - 1, zero point -1); the dequantized weights are
    identical. Weights holding -128 (not from a symmetric quantizer) are left alone."""
    model = onnx.load(str(path))
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    conv_weights = {node.input[1] for node in graph.node if node.op_type == "Conv" and len(node.input) > 1}
    routed, kept = 0, 0
    for node in graph.node:
        if (node.op_type != "DequantizeLinear" or node.output[0] not in conv_weights or len(node.input) < 3
                or node.input[0] not in initializers or node.input[2] not in initializers):
            continue
        weights = numpy_helper.to_array(initializers[node.input[0]])
        zero_points = numpy_helper.to_array(initializers[node.input[2]])
        if weights.dtype != np.int8 or weights.ndim < 3 or zero_points.any():
            continue
        if int(np.prod(weights.shape[1:])) < min_depth or weights.min() < -127:
            kept += 1
            continue
        shifted = (weights.astype(np.int16) + GEMM_WEIGHT_ZERO_POINT).astype(np.int8)
        initializers[node.input[0]].CopyFrom(numpy_helper.from_array(shifted, node.input[0]))
        initializers[node.input[2]].CopyFrom(numpy_helper.from_array(
            np.full_like(zero_points, GEMM_WEIGHT_ZERO_POINT), node.input[2]))
        routed += 1
    onnx.save(model, str(path))
    return {"int8_target": "amx", "gemm_min_depth": min_depth, "gemm_convs": routed, "symmetric_convs": kept,
            "gemm_weight_zero_point": GEMM_WEIGHT_ZERO_POINT}


def quantize_dynamic_head(source: Path, target: Path, nodes: list[str], per_channel: bool = False) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it warns "already quantized?" on purpose here: the backbone is QDQ already
    try:
        quantize_dynamic(str(source), str(target), op_types_to_quantize=list(DYNAMIC_OP_TYPES),
                         nodes_to_quantize=nodes, weight_type=QuantType.QInt8, per_channel=per_channel,
                         extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)
    return {"method": "dynamic", "activations": "uint8 (per run)", "weights": "int8", "per_channel": per_channel,
            "op_types": list(DYNAMIC_OP_TYPES), "matmul_const_b_only": True}


def gemm_to_matmul(source: Path, target: Path) -> None:
    from onnxruntime.quantization.onnx_model import ONNXModel

    model = ONNXModel(onnx.load(str(source)))
    model.replace_gemm_with_matmul()
    model.save_model_to_file(str(target))


def float_op_counts(path: Path) -> dict[str, int]:
    """Op types that still compute in float after quantization (QDQ pairs and casts not counted)."""
    model = onnx.load(str(path), load_external_data=False)
    skip = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
            "QLinearConv", "QLinearMatMul", "DynamicQuantizeLSTM", "Cast", "Shape", "Gather", "Unsqueeze",
            "Concat", "Reshape", "Slice", "Squeeze", "Expand", "Constant", "Range", "Transpose"}
    quantized_inputs = _dequantized_tensors(model.graph)
    counts: collections.Counter = collections.Counter()
    for node in model.graph.node:
        if node.op_type in skip or "_quant_" in node.name:  # "_quant_": the dynamic quantizer's scale arithmetic
            continue
        if any(name in quantized_inputs for name in node.input) and node.op_type in QDQ_UNIT_OP_TYPES:
            continue  # a QDQ node unit: runs as an integer kernel
        counts[node.op_type] += 1
    return dict(sorted(counts.items()))


def _dequantized_tensors(graph: onnx.GraphProto) -> set[str]:
    return {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}


def quantize_int8(fp32_path: Path, target: Path, *, full: bool, input_name: str,
                  calibration_batches: Sequence[np.ndarray] = (), progress: bool = True,
                  per_channel: bool = True, activation: str | None = None, quant_format: str = "QDQ",
                  head_per_channel: bool = False, int8_target: str = "portable", head: str = "dynamic") -> dict:
    """The int8 recipe (module docstring); returns the recipe as JSON for the manifest.

    `activation`: the backbone's activation type, by default the target's (TARGET_ACTIVATIONS). `head`:
    "dynamic" (the recipe) or "static" (the head's linear layers calibrated with the backbone, int8 QDQ like
    it; full branches only): no DynamicQuantizeLinear / MatMulInteger left, at the cost of fixed activation
    ranges (docs/export.md measures it).
    """
    if int8_target not in INT8_TARGETS:
        raise ValueError(f"int8 target must be one of {INT8_TARGETS}, got {int8_target!r}")
    if head not in HEAD_METHODS:
        raise ValueError(f"int8 head must be one of {HEAD_METHODS}, got {head!r}")
    activation = activation or TARGET_ACTIVATIONS[int8_target]
    if int8_target == "amx" and (quant_format, activation) != ("QDQ", "uint8"):
        raise ValueError("the amx int8 target re-routes U8S8 QDQ convolutions; it needs quant_format='QDQ' and "
                         "activation='uint8'")
    if int8_target == "arm" and (quant_format, activation) != ("QDQ", "int8"):
        raise ValueError("the arm int8 target is S8S8 QDQ; it needs quant_format='QDQ' and activation='int8'")
    if head == "static" and not full:
        raise ValueError("a static int8 head is calibrated with the backbone: full branches only")
    with tempfile.TemporaryDirectory(prefix="tivm-quant-", dir=target.parent) as tmp:
        tmp = Path(tmp)
        pre = tmp / "pre.onnx"
        recipe: dict = {"method": "int8", **preprocess(fp32_path, pre)}
        pre_model = onnx.load(str(pre))
        backbone, head_nodes, float_only = split_regions(pre_model, full)
        current = pre
        if full:
            if not calibration_batches:
                raise ValueError("static int8 quantization of a backbone needs calibration inputs")
            static = tmp / "static.onnx" if head == "dynamic" else target
            linear = static_head_nodes(pre_model, head_nodes) if head == "static" else []
            recipe["backbone"] = quantize_static_backbone(
                current, static, input_name, calibration_batches, backbone, per_channel=per_channel,
                activation=activation, quant_format=quant_format, progress=progress, head_nodes=linear)
            recipe["backbone"]["kept_float_nodes"] = len(float_only)
            recipe["backbone"]["int8_target"] = int8_target
            if int8_target == "amx":
                recipe["backbone"].update(route_deep_convs_to_gemm(static))
            current = static
            if head == "static":
                recipe["head"] = {"method": "static", "format": quant_format, "activations": f"{activation} "
                                  "(calibrated with the backbone)", "weights": "int8 (symmetric: zero point 0)",
                                  "per_channel": per_channel, "op_types": list(STATIC_HEAD_OP_TYPES),
                                  "constant_weights_only": True, "nodes": len(linear),
                                  "float_nodes": len(head_nodes) - len(linear)}
        if head == "dynamic":
            # dynamic quantization has no integer Gemm: rewrite Gemm as MatMul + Add (new node names, so the
            # head is found again, as everything downstream of its scoped nodes)
            matmuls = tmp / "matmul.onnx"
            gemm_to_matmul(current, matmuls)
            _, head_nodes, _ = split_regions(onnx.load(str(matmuls)), full)
            recipe["head"] = quantize_dynamic_head(matmuls, target, head_nodes, per_channel=head_per_channel)
    recipe["float_ops"] = float_op_counts(target)
    return recipe


def convert_fp16(fp32_path: Path, target: Path, min_elements: int = FP16_MIN_ELEMENTS) -> dict:
    """float32 initializers -> float16 + Cast back to float32 (see the module docstring)."""
    model = onnx.load(str(fp32_path))
    graph = model.graph
    casts, kept, converted = [], [], []
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type != onnx.TensorProto.FLOAT or int(np.prod(tensor.dims)) < min_elements:
            kept.append(tensor)
            continue
        values = numpy_helper.to_array(tensor)
        if not np.isfinite(values).all() or np.abs(values).max() > FP16_MAX:
            kept.append(tensor)  # would overflow: stays float32
            continue
        half = numpy_helper.from_array(values.astype(np.float16), tensor.name + FP16_SUFFIX)
        converted.append(half)
        casts.append(onnx.helper.make_node("Cast", [half.name], [tensor.name], to=onnx.TensorProto.FLOAT,
                                           name=f"cast_fp16_{index}"))
    del graph.initializer[:]
    graph.initializer.extend(kept + converted)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)  # casts first: they only read initializers, so the order stays topological
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return {"method": "fp16", "storage": "float16 weights", "compute": "float32 (Casts folded at session load)",
            "converted_tensors": len(converted), "kept_float32_tensors": len(kept)}


def copy_fp32(fp32_path: Path, target: Path) -> dict:
    shutil.copyfile(fp32_path, target)
    return {"method": "none"}


def tidy_for_shipping(path: Path) -> None:
    """Drop the exporter's per-node metadata (module scopes, source stack traces with local paths: the
    quantizer needed it, the shipped file does not) and spell out the Transpose permutations the quantizer
    leaves implicit: onnxruntime-node 1.30 aborts on a Transpose without `perm`, and onnxruntime's mobile
    usability checker raises on one."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
    spell_out_transpose_perms(model)
    onnx.save(model, str(path))


def spell_out_transpose_perms(model: onnx.ModelProto) -> int:
    """Give every Transpose without `perm` its default (the axes reversed), in place; returns how many.
    Ranks come from the initializers and from ONNX shape inference."""
    ranks = {}
    inferred = onnx.shape_inference.infer_shapes(model)
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if info.type.tensor_type.HasField("shape"):
            ranks[info.name] = len(info.type.tensor_type.shape.dim)
    ranks.update({init.name: len(init.dims) for init in model.graph.initializer})
    count = 0
    for node in model.graph.node:
        if node.op_type == "Transpose" and not any(a.name == "perm" for a in node.attribute):
            rank = ranks.get(node.input[0])
            if rank is not None:
                node.attribute.append(onnx.helper.make_attribute("perm", list(range(rank))[::-1]))
                count += 1
    return count
