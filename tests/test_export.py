"""tivm-export: every configuration exports with dynamic batch/time axes, int8/fp16 stay close to PyTorch,
full branches (real EfficientNet-Lite0, random official-format VGGish) validate, and the CLI writes a
manifest the runtime loads (or fails cleanly below the threshold)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import shared_path
from tivm.export import calibration as calib
from tivm.export import quantize as quant
from tivm.export import validate
from tivm.export.branches import full_plan, head_plan, plan_branches, resolve_kind
from tivm.export.cli import app
from tivm.export.onnx_export import export_onnx
from tivm.export.pipeline import ExportOptions, export_branch, export_model
from tivm.runtime.errors import ModelError
from tivm.runtime.manifest import file_sha256, read_manifest
from tivm.train import backbones
from tivm.train.checkpoint import save_checkpoint
from tivm.train.config import CONFIG_NAMES, load_config
from tivm.train.heads import build_model

torch.set_num_threads(1)

# small widths: the same layers and ops as the paper's sizes, exported in seconds
SMALL_MODEL = {"hidden": [64, 48], "lstm_hidden": 16, "encoder_dim": 32, "transformer_heads": 4,
               "transformer_ff": 64}
AUDIO_DIM, VIDEO_DIM = 128, 1000
INT8_HEAD_MIN_COSINE = 0.99


def small_model(name: str, seed: int = 0):
    config = load_config(name)
    config["model"].update(SMALL_MODEL)
    torch.manual_seed(seed)
    model = build_model(config, AUDIO_DIM, VIDEO_DIM).eval()
    rng = np.random.default_rng(seed)
    # non-trivial standardisation, as a trained model has
    model.set_input_stats(rng.normal(size=AUDIO_DIM), rng.uniform(0.5, 2, AUDIO_DIM),
                          rng.normal(size=VIDEO_DIM), rng.uniform(0.5, 2, VIDEO_DIM))
    return model


def small_run(tmp_path: Path, name: str = "IVM-MS") -> Path:
    run = tmp_path / "run"
    save_checkpoint(run, small_model(name), data={"fingerprint": "f" * 64, "spec": "synthetic:n=80",
                                                  "manifest": {"source": "synthetic"}})
    return run


# --------------------------------------------------------------------------------------- heads, all seven

@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_configuration_exports_as_a_head_with_dynamic_axes_and_int8(name, tmp_path):
    model = small_model(name)
    plan = head_plan("audio", model.audio_head, {})
    fp32 = tmp_path / "fp32.onnx"
    info = export_onnx(plan.module, plan.step_shape, fp32, plan.input_name, "embedding")
    assert info.exporter.startswith("torch.onnx.export(dynamo=True)")
    graph_input = onnx.load(str(fp32)).graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims][2:] == [AUDIO_DIM]
    assert dims[0].dim_param and dims[1].dim_param, "batch and time must be symbolic"

    references = validate.reference_outputs(plan.module, validate.grid_inputs(plan.step_shape))
    axes = validate.check_time_axes(fp32, references)
    assert set(axes) == {"B=1,T=1", "B=1,T=7", "B=1,T=15", "B=1,T=30", "B=3,T=2"}
    assert min(axes.values()) >= validate.FP32_MIN_COSINE, axes

    int8 = tmp_path / "int8.onnx"
    recipe = quant.quantize_int8(fp32, int8, full=False, input_name=plan.input_name, progress=False)
    assert recipe["head"]["method"] == "dynamic"
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLSTM"}, ops
    held_out = calib.from_statistics(model.audio_head.input_mean.numpy(), model.audio_head.input_std.numpy(),
                                     0, 6, seed=1)
    result = validate.compare_windows(plan.module, int8, held_out.validation)
    assert result.median >= INT8_HEAD_MIN_COSINE, result
    assert min(validate.check_time_axes(int8, references).values()) > 0.9


def test_lstm_is_quantized_dynamically_and_transformer_keeps_norms_and_softmax_float(tmp_path):
    for name, expected in (("LIVM", "DynamicQuantizeLSTM"), ("TIVM", "MatMulInteger")):
        plan = head_plan("video", small_model(name).video_head, {})
        fp32, int8 = tmp_path / f"{name}.onnx", tmp_path / f"{name}.int8.onnx"
        export_onnx(plan.module, plan.step_shape, fp32, plan.input_name, "embedding")
        recipe = quant.quantize_int8(fp32, int8, full=False, input_name=plan.input_name, progress=False)
        assert expected in {n.op_type for n in onnx.load(str(int8)).graph.node}
        if name == "TIVM":
            assert {"LayerNormalization", "Softmax"} <= set(recipe["float_ops"])
            assert "Gemm" not in recipe["float_ops"]  # rewritten to MatMul and quantized


def test_fp16_halves_the_file_and_keeps_float32_inputs(tmp_path):
    plan = head_plan("video", small_model("TIVM").video_head, {})
    fp32, fp16 = tmp_path / "fp32.onnx", tmp_path / "fp16.onnx"
    export_onnx(plan.module, plan.step_shape, fp32, plan.input_name, "embedding")
    recipe = quant.convert_fp16(fp32, fp16)
    assert recipe["converted_tensors"] > 0
    quant.tidy_for_shipping(fp32)
    quant.tidy_for_shipping(fp16)
    assert fp16.stat().st_size < 0.6 * fp32.stat().st_size
    model = onnx.load(str(fp16))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    windows = calib.random_inputs((VIDEO_DIM,), 0, 4).validation
    assert validate.compare_windows(plan.module, fp16, windows).minimum >= 0.999


# --------------------------------------------------------------------------------------- branch kinds

def test_auto_kind_follows_the_training_data():
    features = {"data": {"manifest": {"source": "tivm-features", "audio": {"backbone": "vggish"},
                                      "video": {"backbone": "efficientnet-lite0"}}}}
    assert resolve_kind("auto", features) == "full"
    assert resolve_kind("auto", {"data": {"manifest": {"source": "yt8m-video-level"}}}) == "head"
    assert resolve_kind("auto", {}) == "head"
    assert resolve_kind("full", {}) == "full"
    with pytest.raises(ValueError, match="branch-kind"):
        resolve_kind("both", {})


def test_full_branch_needs_matching_dims():
    config = load_config("VM-M")
    config["model"].update(SMALL_MODEL)
    model = build_model(config, 64, 1000)
    with pytest.raises(ModelError, match="64-d features but vggish gives 128-d"):
        full_plan("audio", model.audio_head, {}, "vggish", None)
    with pytest.raises(ValueError, match="audio backbone"):
        full_plan("video", model.video_head, {}, "vggish", None)


def test_int8_full_branch_without_media_is_refused(tmp_path):
    from tivm.export.pipeline import branch_inputs

    plan = full_plan("video", small_model("VM-M").video_head, {}, "efficientnet-lite0", None)
    with pytest.raises(ValueError, match="--calibration"):
        branch_inputs(plan, ExportOptions(quantize="int8"))


# --------------------------------------------------------------------------------------- calibration inputs

def test_windows_loop_pad_short_inputs_and_overlap_long_ones():
    steps = np.arange(6, dtype=np.float32)[:, None]
    (padded,) = calib.windows_of(steps)
    assert padded[:, 0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 0, 1, 2]
    long = calib.windows_of(np.arange(40, dtype=np.float32)[:, None])
    assert [int(w[0, 0]) for w in long] == [0, 5, 10, 15, 20, 25]


def test_validation_windows_never_share_a_second_with_calibration():
    one_file = [(Path("a.mp4"), calib.windows_of(np.arange(100, dtype=np.float32)[:, None]))]
    cal, val = calib.split_files(one_file)
    seconds = lambda ws: {int(x) for w in ws for x in w[:, 0]}  # noqa: E731
    assert cal and val and not seconds(cal) & seconds(val)
    files = [(Path(f"{i}.mp4"), [np.full((15, 1), i, np.float32)]) for i in range(5)]
    cal, val = calib.split_files(files)
    assert seconds(val) == {2} and seconds(cal) == {0, 1, 3, 4}


# --------------------------------------------------------------------------------------- full branches

def test_full_efficientnet_lite0_branch_int8_on_real_media(tmp_path):
    clips = shared_path("media", "clips")
    plan = full_plan("video", small_model("TIVM").video_head, {}, "efficientnet-lite0", None)
    assert plan.frontend["mean"] == pytest.approx([127 / 255] * 3)
    options = ExportOptions(quantize="int8", calibration=str(clips), num_calibration=2, num_validation=1,
                            progress=False)
    result = export_branch(plan, tmp_path, options)
    assert result.inputs.source == "media" and len(result.inputs.calibration) == 2
    assert min(result.fp32_axes.values()) >= validate.FP32_MIN_COSINE
    assert result.recipe["backbone"]["activations"] == "uint8"
    assert result.recipe["calibration"]["steps"] == 30
    assert result.cosine.median >= 0.99, result.cosine
    assert result.bytes < 0.4 * result.fp32_bytes
    ops = {n.op_type for n in onnx.load(str(tmp_path / "video.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "MatMulInteger"} <= ops


def test_full_vggish_branch_with_official_format_random_weights(tmp_path):
    weights = backbones.save_random_weights("vggish", tmp_path / "vggish-10086976.pth")
    plan = full_plan("audio", small_model("LIVM").audio_head, {}, "vggish", weights)
    assert plan.backbone_weights_sha256 == file_sha256(weights)
    assert plan.step_shape == (96, 64) and plan.input_name == "patches"
    result = export_branch(plan, tmp_path, ExportOptions(quantize="none", num_validation=2, progress=False))
    assert result.recipe["method"] == "none"
    assert min(result.axes.values()) >= validate.FP32_MIN_COSINE, result.axes


# --------------------------------------------------------------------------------------- CLI

def test_cli_exports_a_head_model_the_runtime_loads(tmp_path):
    from tivm.runtime.model import Model

    run, out, report = small_run(tmp_path, "TIVM"), tmp_path / "model", tmp_path / "report.json"
    result = CliRunner().invoke(app, [str(run), "-o", str(out), "--quantize", "int8", "--num-validation", "3",
                                      "--threads", "1", "--json", str(report), "-q"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    assert manifest.configuration == "TIVM" and manifest.data_fingerprint == "f" * 64
    for name, dim in (("audio", AUDIO_DIM), ("video", VIDEO_DIM)):
        branch = manifest.branch(name)
        assert branch.kind == "head" and branch.feature_dim == dim
        assert branch.input.shape == ("batch", "time", dim)
        assert branch.sha256 == file_sha256(out / f"{name}.onnx")
        assert branch.quantization["method"] == "int8"
        assert branch.quantization["exporter"].startswith("torch.onnx.export(dynamo=True)")
        assert branch.quantization["validation"]["median"] >= 0.99
    written = json.loads(report.read_text())
    assert written["passed"] and written["branches"]["audio"]["bytes"] < written["branches"]["audio"]["fp32_bytes"]
    assert written["branches"]["video"]["inputs"]["source"] == "dataset"  # the run's own synthetic test split
    loaded = Model.load(out)
    embedded = loaded.embed_video_features(np.random.default_rng(0).normal(size=(20, VIDEO_DIM)).astype(np.float32))
    assert embedded.vectors.shape == (2, 512)
    assert np.allclose(np.linalg.norm(embedded.vectors, axis=1), 1, atol=1e-5)


def test_cli_fails_below_the_threshold_and_writes_nothing(tmp_path):
    run, out = small_run(tmp_path), tmp_path / "model"
    result = CliRunner().invoke(app, [str(run), "-o", str(out), "--quantize", "none", "--min-cosine", "1.01",
                                      "--num-validation", "2", "--threads", "1", "-q"])
    assert result.exit_code == 1
    assert "median cosine" in result.output and "< 1.01" in result.output
    assert not (out / "manifest.json").exists() and not (out / "audio.onnx").exists()


def test_cli_reports_a_missing_checkpoint_clearly(tmp_path):
    result = CliRunner().invoke(app, [str(tmp_path / "nope"), "-o", str(tmp_path / "m"), "-q"])
    assert result.exit_code == 2
    assert "nope" in result.output and "checkpoint" in result.output


def test_dataset_calibration_uses_train_and_held_out_splits(tmp_path):
    from tivm.train import synthetic

    data = synthetic.generate(n=60, seed=0, t=15)
    data.save(tmp_path / "data")
    inputs = calib.from_dataset(tmp_path / "data", "audio", AUDIO_DIM, 4, 3)
    assert inputs.source == "dataset" and len(inputs.calibration) == 4 and len(inputs.validation) == 3
    assert inputs.validation[0].shape == (15, AUDIO_DIM)
    model = small_model("VM-M")
    plans = plan_branches(model, {"data": {"manifest": data.manifest}}, "auto")
    assert plans["audio"].kind == "head"


def test_backbone_and_head_regions_are_found_without_scope_metadata(tmp_path):
    from tivm.export.branches import Branch

    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, AUDIO_DIM))
    module = Branch(backbone, small_model("VM-M").audio_head).eval()
    path = tmp_path / "full.onnx"
    export_onnx(module, (2, 3), path, "patches", "embedding")
    with_metadata = quant.split_regions(onnx.load(str(path)), full=True)
    quant.tidy_for_shipping(path)  # as onnxruntime's optimiser may leave it
    without = quant.split_regions(onnx.load(str(path)), full=True)
    graph = onnx.load(str(path)).graph
    compute = {n.name for n in graph.node if n.op_type in ("MatMul", "Gemm", "Conv")}
    # shape arithmetic may land on either side; every layer with weights must not
    assert [compute & set(region) for region in without] == [compute & set(region) for region in with_metadata]
    backbone_nodes, head_nodes, float_nodes = without
    reads = {n.name: set(n.input) for n in graph.node}
    assert any("backbone.1.weight" in reads[n] for n in backbone_nodes)
    assert not any(i.startswith("head.") for n in backbone_nodes for i in reads[n])
    assert any(i.startswith("head.") for n in head_nodes for i in reads[n])
    # the head's MLP (Branch.head.mlp) is on the head side, so dynamic int8 quantizes it
    mlp_nodes = {n for n in reads if any(i.startswith("head.mlp.") for i in reads[n])}
    assert mlp_nodes and mlp_nodes <= set(head_nodes)
    assert float_nodes == []


def test_lstm_exports_keep_a_dynamic_time_axis_even_when_dynamo_fixes_it(tmp_path):
    """torch.export fixes T on the second nn.LSTM export in a process; the file must still be right."""
    from tivm.export.pipeline import export_fp32

    model = small_model("LIVM")
    for name in ("audio", "video"):
        plan = head_plan(name, getattr(model, f"{name}_head"), {})
        references = validate.reference_outputs(plan.module, validate.grid_inputs(plan.step_shape))
        info, axes = export_fp32(plan, tmp_path / f"{name}.onnx", references, ExportOptions())
        assert min(axes.values()) >= validate.FP32_MIN_COSINE, axes
        dims = onnx.load(str(tmp_path / f"{name}.onnx")).graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param and dims[1].dim_param
        if "TorchScript" in info.exporter:
            assert "fixed the input axes time=3" in info.fallback_reason


def test_full_branch_refuses_weights_other_than_the_training_features(tmp_path):
    from tivm.export.branches import BranchPlan
    from tivm.export.pipeline import _check_training_weights

    plan = BranchPlan(name="video", kind="full", module=torch.nn.Identity(), step_shape=(3, 224, 224),
                      feature_dim=1000, frontend={}, backbone="resnet50", backbone_weights="mine.pth",
                      backbone_weights_sha256="a" * 64)
    record = {"data": {"manifest": {"source": "tivm-features",
                                    "video": {"weights_file": "resnet50-0676ba61.pth", "weights_sha256": "b" * 64}}}}
    with pytest.raises(ModelError, match="resnet50-0676ba61.pth.*--video-weights"):
        _check_training_weights({"video": plan}, record)
    record["data"]["manifest"]["video"]["weights_sha256"] = "a" * 64
    _check_training_weights({"video": plan}, record)


def test_cli_rejects_a_missing_calibration_folder(tmp_path):
    run = small_run(tmp_path)
    result = CliRunner().invoke(app, [str(run), "-o", str(tmp_path / "m"), "--calibration", str(tmp_path / "none"),
                                      "-q"])
    assert result.exit_code == 2
    assert "--calibration names no such file or folder" in result.output


def test_weights_folder_supplies_official_files_by_name(tmp_path):
    backbones.save_random_weights("vggish", tmp_path / "vggish-10086976.pth")
    plans = plan_branches(small_model("VM-M"), {}, "full", video_backbone="efficientnet-lite0",
                          weights_dir=tmp_path, download=False)
    assert plans["audio"].backbone_weights == str(tmp_path / "vggish-10086976.pth")
    assert plans["video"].backbone == "efficientnet-lite0" and plans["video"].kind == "full"


# --------------------------------------------------------------------------------------- int8 target "amx"

def _conv_net_int8(tmp_path: Path) -> Path:
    """A static U8S8 QDQ model of a deep (64 x 3 x 3 = 576) and a shallow (64 x 1 x 1) convolution."""
    net = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(64, 8, 1)).eval()
    fp32, int8 = tmp_path / "net.onnx", tmp_path / "net.int8.onnx"
    torch.onnx.export(net, (torch.zeros(1, 64, 12, 12),), str(fp32), input_names=["x"],
                      dynamic_axes={"x": {0: "n"}}, dynamo=False)
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((2, 64, 12, 12)).astype(np.float32) for _ in range(3)]
    nodes = [node.name for node in onnx.load(str(fp32)).graph.node]
    quant.quantize_static_backbone(fp32, int8, "x", batches, nodes, progress=False)
    return int8


def _conv_weights(path: Path) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{depth: (int8 weights, scales, zero points)} of each convolution's weight DequantizeLinear."""
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    conv_weights = {n.input[1] for n in graph.node if n.op_type == "Conv"}
    return {int(np.prod(inits[n.input[0]].shape[1:])): tuple(inits[name] for name in n.input[:3])
            for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] in conv_weights}


def _dequantized(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    per_channel = (-1,) + (1,) * (q.ndim - 1)
    return (q.astype(np.float64) - zero_point.reshape(per_channel)) * scale.reshape(per_channel)


def test_amx_target_moves_only_deep_convolutions_and_keeps_the_arithmetic(tmp_path):
    import onnxruntime as ort

    portable = _conv_net_int8(tmp_path)
    amx = tmp_path / "net.amx.onnx"
    amx.write_bytes(portable.read_bytes())
    record = quant.route_deep_convs_to_gemm(amx)
    assert record["gemm_convs"] == 1 and record["symmetric_convs"] == 1
    before, after = _conv_weights(portable), _conv_weights(amx)
    assert set(before) == set(after) == {576, 64} and all(not zp.any() for _, _, zp in before.values())
    assert (after[576][2] == quant.GEMM_WEIGHT_ZERO_POINT).all() and not after[64][2].any()
    for depth in before:
        np.testing.assert_array_equal(_dequantized(*before[depth]), _dequantized(*after[depth]))
    x = np.random.default_rng(1).standard_normal((3, 64, 12, 12)).astype(np.float32)
    outputs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
               for p in (portable, amx)]
    # integer arithmetic either way: the GEMM path must agree with the symmetric conv kernels to rounding
    scale = float(np.abs(outputs[0]).max())
    assert np.abs(outputs[0] - outputs[1]).max() <= 0.02 * scale


def test_amx_target_is_recorded_and_bad_targets_are_refused(tmp_path):
    with pytest.raises(ValueError, match="int8 target"):
        quant.quantize_int8(tmp_path / "x.onnx", tmp_path / "y.onnx", full=False, input_name="x", int8_target="gpu")
    with pytest.raises(ValueError, match="QDQ"):
        quant.quantize_int8(tmp_path / "x.onnx", tmp_path / "y.onnx", full=True, input_name="x", int8_target="amx",
                            quant_format="QOperator")
    result = CliRunner().invoke(app, [str(small_run(tmp_path)), "-o", str(tmp_path / "m"), "--int8-target", "tpu",
                                      "-q"])
    assert result.exit_code == 2 and "--int8-target" in result.output


# --------------------------------------------------------------------------------------- int8 target "arm"

ARM_INT8_MIN_COSINE = 0.999  # S8S8 backbone + int8 head vs float, unseen random inputs (measured >= 0.99993)


def _tiny_full_branch(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A full branch in seconds: a small conv backbone (dense + depthwise convs, a linear layer) + TIVM head."""
    from tivm.export.branches import Branch

    torch.manual_seed(0)
    backbone = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1, groups=16),
        torch.nn.ReLU6(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, AUDIO_DIM))
    module = Branch(backbone, small_model("TIVM").audio_head).eval()
    path = tmp_path / "full.fp32.onnx"
    export_onnx(module, (3, 12, 12), path, "frames", "embedding")
    return path, module


def _quantization_types(path: Path) -> tuple[dict, dict, set[str]]:
    """(weights, activations, op types): weights {initializer: (int8 values, zero points)} of each weight
    DequantizeLinear (input an initializer) and activations {tensor: dtype} of each QuantizeLinear."""
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    weights = {n.input[0]: (inits[n.input[0]], inits[n.input[2]]) for n in graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim >= 2}
    activations = {n.input[0]: inits[n.input[2]].dtype for n in graph.node if n.op_type == "QuantizeLinear"}
    return weights, activations, {n.op_type for n in graph.node}


@pytest.mark.parametrize("head", ["dynamic", "static"])
def test_arm_target_is_s8s8_with_symmetric_weights_and_close_to_float(tmp_path, head):
    import onnxruntime as ort

    fp32, module = _tiny_full_branch(tmp_path)
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((1, 5, 3, 12, 12)).astype(np.float32) for _ in range(4)]
    arm = tmp_path / "full.arm.onnx"
    recipe = quant.quantize_int8(fp32, arm, full=True, input_name="frames", calibration_batches=batches,
                                 progress=False, int8_target="arm", head=head)
    assert recipe["backbone"]["int8_target"] == "arm" and recipe["backbone"]["activations"] == "int8"
    assert recipe["head"]["method"] == head
    weights, activations, ops = _quantization_types(arm)
    convs = [w for w in weights if w.startswith("backbone.")]
    assert len(convs) == 3  # two convolutions and the linear layer
    # symmetric int8 weights: zero point 0 (what NNAPI and the symmetric kernels take) and never -128, so no
    # pair of products overflows the int16 lanes of onnxruntime's non-dotprod ARM64 kernel (onnxruntime#31573)
    assert all(q.dtype == np.int8 and q.min() >= -127 and not zero_points.any() for q, zero_points in weights.values())
    assert activations and set(activations.values()) == {np.dtype(np.int8)}
    if head == "dynamic":
        assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    else:  # no op CoreML / NNAPI cannot run at all; the head's linear layers are int8 QDQ like the backbone
        assert not ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeLSTM"}
        assert any(w.startswith("head.") for w in weights) and recipe["head"]["nodes"] > 0
    x = rng.standard_normal((3, 5, 3, 12, 12)).astype(np.float32)  # not a calibration input
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(arm), providers=["CPUExecutionProvider"]).run(None, {"frames": x})[0]
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= ARM_INT8_MIN_COSINE, cosine


def test_arm_target_refuses_u8_activations_and_a_static_head_without_a_backbone(tmp_path):
    with pytest.raises(ValueError, match="S8S8"):
        quant.quantize_int8(tmp_path / "x.onnx", tmp_path / "y.onnx", full=True, input_name="x", int8_target="arm",
                            activation="uint8")
    with pytest.raises(ValueError, match="full branches only"):
        quant.quantize_int8(tmp_path / "x.onnx", tmp_path / "y.onnx", full=False, input_name="x", head="static")
    with pytest.raises(ValueError, match="int8_head"):
        export_model(small_run(tmp_path), tmp_path / "m", ExportOptions(int8_target="arm", int8_head="both"))
