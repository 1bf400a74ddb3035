"""Export figures: file sizes (float32 / int8 / fp16), export and quantization time, held-out cosines, and
which int8 format is fast on this CPU.

Branches (paper-size heads, randomly initialised; backbones with random official-format weights for VGGish
and ResNet-50, the packaged ImageNet weights for EfficientNet-Lite0):
* TIVM and LIVM heads (features in), validated on Gaussian draws from the heads' input statistics;
* full VGGish, ResNet-50 and EfficientNet-Lite0 branches (with a TIVM head), calibrated and validated on
  disjoint real media from ../shared/media through the runtime front ends.
Speed: a bare ResNet-50 at batch 15 with 2 onnxruntime threads, float32 vs static int8 formats (QDQ S8S8, QDQ
U8S8 per tensor and per channel, QOperator U8S8), calibrated on real frames, timed interleaved (the machine
may be shared), plus logits cosine vs PyTorch on other real frames; the same for EfficientNet-Lite0 (real
weights) with int8 weights per tensor vs per channel.

    .venv/bin/python benchmarks/export_report.py [--json FILE] [--repeats 5] [--threads 2]
                                                 [--only heads,head_recipes,full,speed,per_channel]
                                                 [--media DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import _machine  # noqa: E402
from tivm.export import calibration as calib  # noqa: E402
from tivm.export import quantize as quant  # noqa: E402
from tivm.export import validate  # noqa: E402
from tivm.export.branches import full_plan, head_plan  # noqa: E402
from tivm.export.pipeline import ExportOptions, branch_inputs, export_fp32, make_final  # noqa: E402
from tivm.train import backbones  # noqa: E402
from tivm.train.heads import build_model  # noqa: E402

DEFAULT_MEDIA = Path(os.environ.get("TIVM_SHARED", REPO.parent / "shared")) / "media"
SECTIONS = ("heads", "head_recipes", "full", "speed", "per_channel")
QUANTIZE_MODES = ("none", "fp16", "int8")
HEAD_CASES = (("TIVM", "audio"), ("TIVM", "video"), ("LIVM", "audio"), ("LIVM", "video"))
FULL_CASES = (("vggish", "audio"), ("efficientnet-lite0", "video"), ("resnet50", "video"))
HEAD_CONFIG = "TIVM"
NUM_CALIBRATION = 8
NUM_VALIDATION = 4
SPEED_BATCH = 15
SPEED_FORMATS = {
    "qdq_s8s8": dict(quant_format="QDQ", activation="int8", per_channel=False),
    "qdq_u8s8": dict(quant_format="QDQ", activation="uint8", per_channel=False),
    "qdq_u8s8_per_channel": dict(quant_format="QDQ", activation="uint8", per_channel=True),
    "qoperator_u8s8": dict(quant_format="QOperator", activation="uint8", per_channel=False),
}
SEED = 0


def model(config: str = HEAD_CONFIG):
    torch.manual_seed(SEED)
    return build_model(config, 128, 1000).eval()


def timed_session_run(session, batch: np.ndarray) -> float:
    started = time.perf_counter()
    validate.run_onnx(session, batch)
    return time.perf_counter() - started


# ------------------------------------------------------------------------------------------ branches

def measure_branch(plan, options: ExportOptions, work: Path, repeats: int) -> dict:
    """float32 export once, then every quantize mode: size, time, held-out cosine, window latency."""
    inputs = branch_inputs(plan, ExportOptions(**{**options.__dict__, "quantize": "int8"}))
    fp32 = work / f"{plan.name}.fp32.onnx"
    references = validate.reference_outputs(plan.module, validate.grid_inputs(plan.step_shape))
    started = time.perf_counter()
    info, axes = export_fp32(plan, fp32, references, options)
    row = {"kind": plan.kind, "backbone": plan.backbone, "exporter": info.exporter,
           "export_seconds": round(time.perf_counter() - started, 1), "fp32_grid_min_cosine": min(axes.values()),
           "inputs": inputs.to_json(), "modes": {}}
    window = np.stack(inputs.validation[:1])
    for mode in QUANTIZE_MODES:
        target = work / f"{plan.name}.{mode}.onnx"
        started = time.perf_counter()
        recipe = make_final(plan, fp32, target, inputs, ExportOptions(**{**options.__dict__, "quantize": mode}))
        quant.tidy_for_shipping(target)
        seconds = time.perf_counter() - started
        session = validate.open_session(target, options.threads)
        cosine = validate.compare_windows(plan.module, target, inputs.validation, session=session)
        grid = validate.check_time_axes(target, references, session=session)
        validate.run_onnx(session, window)  # warm-up
        runs = [timed_session_run(session, window) for _ in range(repeats)]
        latency = statistics.median(runs)
        row["modes"][mode] = {"bytes": target.stat().st_size, "seconds": round(seconds, 1),
                              "cosine_min": cosine.minimum, "cosine_median": cosine.median,
                              "grid_min_cosine": min(grid.values()), "window_seconds": latency,
                              "window_seconds_min": min(runs),
                              "float_ops": recipe.get("float_ops")}
        print(f"  {plan.name:5s} {plan.backbone or 'head':18s} {mode:5s} {target.stat().st_size / 1e6:7.1f} MB "
              f"{seconds:6.1f} s  cosine min {cosine.minimum:.4f} median {cosine.median:.4f}  "
              f"grid min {min(grid.values()):.4f}  {latency * 1000:7.1f} ms/window (min {min(runs) * 1000:.1f})",
              flush=True)
        target.unlink()
    fp32.unlink()
    return row


def heads_section(options: ExportOptions, work: Path, repeats: int) -> dict:
    results = {}
    for config, branch in HEAD_CASES:
        net = model(config)
        plan = head_plan(branch, getattr(net, f"{branch}_head"), {})
        results[f"{config} {branch} head"] = measure_branch(plan, options, work, repeats)
    return results


def full_section(options: ExportOptions, work: Path, repeats: int, media: Path) -> dict:
    results = {}
    net = model()
    for name, branch in FULL_CASES:
        weights = None
        if name != "efficientnet-lite0":  # official weights are not downloadable here: random, official format
            weights = backbones.save_random_weights(name, work / f"{name}.pth", seed=SEED)
        plan = full_plan(branch, getattr(net, f"{branch}_head"), {}, name, weights, download=False)
        opts = ExportOptions(**{**options.__dict__, "calibration": str(media)})
        results[f"{name} full ({HEAD_CONFIG} head)"] = measure_branch(plan, opts, work, repeats)
        (work / f"{name}.pth").unlink(missing_ok=True)
    return results


# ------------------------------------------------------------------------------------------ head recipes

HEAD_RECIPE_FLOAT_OPS = ("LayerNormalization", "Softmax", "Add")
HEAD_RECIPE_BATCH = 8


def head_recipes_section(options: ExportOptions, work: Path, repeats: int) -> dict:
    """TIVM video head: dynamic int8 (the recipe) vs static QDQ U8S8 of everything vs static with LayerNorm,
    Softmax and the residual adds kept float; cosine on held-out draws and latency on (8, 15, 1000)."""
    plan = head_plan("video", model("TIVM").video_head, {})
    inputs = calib.from_statistics(plan.module.input_mean.numpy(), plan.module.input_std.numpy(),
                                   NUM_CALIBRATION, 2 * NUM_VALIDATION)
    fp32, pre = work / "head.fp32.onnx", work / "head.pre.onnx"
    references = validate.reference_outputs(plan.module, validate.grid_inputs(plan.step_shape))
    export_fp32(plan, fp32, references, options)
    quant.preprocess(fp32, pre)
    graph = onnx.load(str(pre)).graph
    every = [n.name for n in graph.node]
    kept_float = [n.name for n in graph.node if n.op_type not in HEAD_RECIPE_FLOAT_OPS]
    batches = [w[None] for w in inputs.calibration]
    files = {"fp32": fp32, "dynamic (recipe)": work / "head.dynamic.onnx",
             "static all": work / "head.static_all.onnx",
             "static, norms/softmax/adds float": work / "head.static_kept.onnx"}
    quant.quantize_int8(fp32, files["dynamic (recipe)"], full=False, input_name=plan.input_name, progress=False)
    quant.quantize_static_backbone(pre, files["static all"], plan.input_name, batches, every, progress=False,
                                   per_channel=True)
    quant.quantize_static_backbone(pre, files["static, norms/softmax/adds float"], plan.input_name, batches,
                                   kept_float, progress=False, per_channel=True)
    window = np.stack(inputs.validation[:HEAD_RECIPE_BATCH])
    results = {}
    for name, path in files.items():
        session = validate.open_session(path, options.threads)
        cosine = validate.compare_windows(plan.module, path, inputs.validation, session=session)
        validate.run_onnx(session, window)
        runs = [timed_session_run(session, window) for _ in range(repeats)]
        latency = statistics.median(runs)
        results[name] = {"bytes": path.stat().st_size, "cosine_min": cosine.minimum, "cosine_median": cosine.median,
                         "batch_seconds": latency, "batch_seconds_min": min(runs)}
        print(f"  {name:34s} {path.stat().st_size / 1e6:6.1f} MB  cosine min {cosine.minimum:.4f} "
              f"median {cosine.median:.4f}  {latency * 1000:6.1f} ms per ({HEAD_RECIPE_BATCH}, 15, 1000)", flush=True)
    return {"configuration": "TIVM video head", "validation_windows": len(inputs.validation), "recipes": results}


# ------------------------------------------------------------------------------------------ speed

def export_bare_backbone(module: torch.nn.Module, path: Path) -> None:
    from tivm.export.onnx_export import OPSET, export_mode, quiet_export

    with export_mode(module), quiet_export():
        program = torch.onnx.export(module, (torch.randn(2, 3, 224, 224),), dynamo=True, input_names=["images"],
                                    output_names=["logits"], opset_version=OPSET,
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        program.save(str(path), external_data=False)


def real_frames(media: Path, frontend: dict) -> tuple[np.ndarray, np.ndarray]:
    """(calibration frames, test frames): preprocessed frames of different clips."""
    steps = calib.video_steps_fn(frontend)
    clips = calib.media_files(media / "clips")
    return np.concatenate([steps(c) for c in clips[1:]]), steps(clips[0])[:SPEED_BATCH]


def format_comparison(backbone: str, formats: dict, options: ExportOptions, work: Path, repeats: int,
                      media: Path) -> dict:
    """A bare image backbone as float32 and each static int8 format: batch-15 latency and logits cosine."""
    weights = None
    if backbone != "efficientnet-lite0":
        weights = backbones.save_random_weights(backbone, work / f"{backbone}.pth", seed=SEED)
    net, _ = backbones.load_backbone(backbone, weights, download=False)
    spec = backbones.get_backbone(backbone)
    from tivm.runtime.manifest import video_frontend

    calibration, test = real_frames(media, video_frontend(1.0, **spec.image_preprocessing))
    with torch.no_grad():
        expected = net(torch.from_numpy(test)).numpy()
    fp32, pre = work / f"{backbone}.onnx", work / f"{backbone}.pre.onnx"
    export_bare_backbone(net, fp32)
    quant.preprocess(fp32, pre)
    files = {"fp32": fp32}
    batches = [calibration[i:i + 5] for i in range(0, len(calibration), 5)]
    for name, fmt in formats.items():
        files[name] = work / f"{backbone}.{name}.onnx"
        started = time.perf_counter()
        quant.quantize_static_backbone(pre, files[name], "images", batches,
                                       nodes=[n.name for n in onnx.load(str(pre)).graph.node],
                                       progress=False, **fmt)
        print(f"  quantized {name} in {time.perf_counter() - started:.1f} s", flush=True)
    sessions = {name: validate.open_session(path, options.threads) for name, path in files.items()}
    times: dict[str, list[float]] = {name: [] for name in files}
    for session in sessions.values():
        validate.run_onnx(session, test)  # warm-up
    for _ in range(repeats):  # interleaved: a burst of load from other processes hits every format alike
        for name, session in sessions.items():
            times[name].append(timed_session_run(session, test))
    results = {}
    base = statistics.median(times["fp32"])
    for name, session in sessions.items():
        cosine = validate.row_cosines(expected, validate.run_onnx(session, test))
        median = statistics.median(times[name])
        results[name] = {"median_seconds": median, "min_seconds": min(times[name]), "speedup_vs_fp32": base / median,
                         "bytes": files[name].stat().st_size, "logits_cosine_min": float(cosine.min()),
                         "logits_cosine_median": float(np.median(cosine)), "times": times[name]}
        print(f"  {name:22s} median {median * 1000:7.1f} ms  min {min(times[name]) * 1000:7.1f} ms  "
              f"x{base / median:4.2f} vs fp32  {files[name].stat().st_size / 1e6:6.1f} MB  "
              f"logits cosine min {cosine.min():.4f} median {np.median(cosine):.4f}", flush=True)
    for path in files.values():
        path.unlink()
    return {"backbone": backbone, "weights": "packaged ImageNet" if weights is None else "random, official format",
            "batch": SPEED_BATCH, "threads": options.threads, "repeats": repeats,
            "calibration_frames": int(len(calibration)), "formats": results}


def speed_section(options: ExportOptions, work: Path, repeats: int, media: Path) -> dict:
    return format_comparison("resnet50", SPEED_FORMATS, options, work, repeats, media)


PER_CHANNEL_FORMATS = {name: SPEED_FORMATS[name] for name in ("qdq_u8s8", "qdq_u8s8_per_channel")}


def per_channel_section(options: ExportOptions, work: Path, repeats: int, media: Path) -> dict:
    """EfficientNet-Lite0 (real weights): per-tensor vs per-channel int8 weights, logits cosine on real frames."""
    return format_comparison("efficientnet-lite0", PER_CHANNEL_FORMATS, options, work, repeats, media)


# ------------------------------------------------------------------------------------------ main

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--media", type=Path, default=DEFAULT_MEDIA)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sections = [s for s in args.only.split(",") if s]
    options = ExportOptions(num_calibration=NUM_CALIBRATION, num_validation=NUM_VALIDATION, threads=args.threads,
                            progress=False)
    results: dict = {"machine": {"cpu": _machine.cpu_model(), "flags": _machine.cpu_flags(),
                                 "load_average_before": os.getloadavg()}}
    with tempfile.TemporaryDirectory(prefix="tivm-export-bench-") as work_name:
        work = Path(work_name)
        if "heads" in sections:
            print("heads (features in):", flush=True)
            results["heads"] = heads_section(options, work, args.repeats)
        if "head_recipes" in sections:
            print("TIVM head int8 recipes:", flush=True)
            results["head_recipes"] = head_recipes_section(options, work, args.repeats)
        if "full" in sections:
            print(f"full branches (media {args.media}):", flush=True)
            results["full"] = full_section(options, work, args.repeats, args.media)
        if "speed" in sections:
            print(f"ResNet-50 int8 formats, batch {SPEED_BATCH}, {args.threads} threads:", flush=True)
            results["speed"] = speed_section(options, work, args.repeats, args.media)
        if "per_channel" in sections:
            print(f"EfficientNet-Lite0 int8 weights per tensor vs per channel, batch {SPEED_BATCH}:", flush=True)
            results["per_channel"] = per_channel_section(options, work, args.repeats, args.media)
    results["machine"]["load_average_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
