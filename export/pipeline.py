"""Checkpoint -> model directory (`audio.onnx`, `video.onnx`, `manifest.json`), validated.

Per branch: plan (head or backbone + head) -> float32 ONNX (dynamo) -> time/batch axes checked against
PyTorch at T = 1, 7, 15, 30 -> int8 / fp16 / float32 file -> held-out validation. Files are written to a
staging folder and only moved into the model directory, with the manifest last, when every branch passes.
Raw branches (`branch_kind="raw"`) are full branches made and checked exactly so, then given their front-end
graphs, golden vectors and mobile files in the staging folder (tivm.export.raw.make_raw_bundle).

    report = export_model("runs/tivm", "models/tivm", quantize="int8", calibration="media/")
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tivm.export import calibration as calib
from tivm.export import golden as golden_vectors
from tivm.export import mobile as mobile_package
from tivm.export import quantize as quant
from tivm.export import streaming, validate
from tivm.export.branches import (
    BRANCH_NAMES,
    DEFAULT_CLIP_SECONDS,
    OUTPUT_NAME,
    BranchPlan,
    data_manifest,
    plan_branches,
)
from tivm.export.onnx_export import DYNAMO, ExportError, ExportInfo, export_onnx
from tivm.export.raw import make_raw_bundle
from tivm.runtime import manifest as M
from tivm.runtime.errors import ModelError
from tivm.train import synthetic
from tivm.train.checkpoint import load_checkpoint

DEFAULT_NUM_CALIBRATION = 8  # 15 s windows: 120 frames / patches
DEFAULT_NUM_VALIDATION = 4
DEFAULT_THREADS = 2
VALIDATION_SPLIT_WINDOWS = 2  # windows run frame by frame to check the streaming split (it is exact: cheap proof)
REPORT_FORMAT = "tivm-export-report"
RAW = "raw"  # branch kind: a full branch with its front-end graph in front (tivm.export.raw)
# what a raw export adds beside the ONNX files, each recognised by the file that marks it as ours
RAW_EXTRAS = {golden_vectors.GOLDEN_DIR: golden_vectors.GOLDEN_JSON,
              mobile_package.MOBILE_DIR: mobile_package.REPORT_JSON}


@dataclass
class ExportOptions:
    quantize: str = "int8"
    int8_target: str = "portable"  # or "amx" (x86 with AMX), "arm" (ARM / mobile): see tivm.export.quantize
    int8_head: str | None = None  # "dynamic" | "static"; None: the target's (quantize.TARGET_HEADS)
    branch_kind: str = "auto"
    audio_backbone: str | None = None
    video_backbone: str | None = None
    audio_weights: str | None = None
    video_weights: str | None = None
    pca_params: str | None = None
    weights_dir: str | None = None
    vggish_postprocess: str | None = None
    download: bool = True
    calibration: str | None = None
    num_calibration: int = DEFAULT_NUM_CALIBRATION
    num_validation: int = DEFAULT_NUM_VALIDATION
    min_cosine: float = validate.DEFAULT_MIN_COSINE
    threads: int = DEFAULT_THREADS
    progress: bool = True
    exporter: str = "dynamo"
    stream_split: bool = True  # full video branches: also ship the per-frame split (tivm.export.streaming)


@dataclass
class BranchResult:
    """What happened to one branch: for the manifest and the JSON report."""

    plan: BranchPlan
    info: ExportInfo
    recipe: dict
    inputs: calib.BranchInputs
    fp32_axes: dict[str, float]
    axes: dict[str, float]
    cosine: validate.CosineStats
    fp32_bytes: int
    bytes: int
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        plan = self.plan
        return {"kind": plan.kind, "backbone": plan.backbone, "backbone_weights": plan.backbone_weights,
                "backbone_weights_sha256": plan.backbone_weights_sha256, "input": plan.input_name,
                "step_shape": list(plan.step_shape), **self.info.to_json(), "quantization": self.recipe,
                "inputs": self.inputs.to_json(), "fp32_time_axes_min_cosine": self.fp32_axes,
                "time_axes_min_cosine": self.axes, "validation": self.cosine.to_json(),
                "fp32_bytes": self.fp32_bytes, "bytes": self.bytes,
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()}}


class ExportFailed(RuntimeError):
    """Validation below threshold: nothing was written. `report` holds the figures."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def say(message: str, enabled: bool = True) -> None:
    if enabled:
        print(message, flush=True)


# ------------------------------------------------------------------------------------------ inputs

def branch_inputs(plan: BranchPlan, options: ExportOptions, record: dict | None = None) -> calib.BranchInputs:
    """Calibration / validation windows for a branch from --calibration (see tivm.export.calibration)."""
    source = options.calibration
    if source and not Path(source).exists():
        raise ValueError(f"{source}: --calibration names no such file or folder")
    n_cal, n_val = options.num_calibration, options.num_validation
    if plan.kind == "full":
        if source and calib.is_dataset(source):
            raise ValueError(f"{source}: a data set holds backbone features; a full {plan.name} branch "
                             "calibrates on media: pass a folder of video/audio files to --calibration")
        if source:
            return calib.from_media(source, plan.name, plan.frontend, n_cal, n_val, progress=options.progress)
        if options.quantize == "int8":
            raise ValueError(f"int8 {plan.name} branch with a backbone: static quantization calibrates on real "
                             "media; pass --calibration FOLDER (videos and songs), or --quantize fp16 / none")
        return calib.random_inputs(plan.step_shape, 0, n_val)
    if source and calib.is_dataset(source):
        return calib.from_dataset(source, plan.name, plan.feature_dim, n_cal, n_val)
    spec = str(((record or {}).get("data") or {}).get("spec") or "")
    note = f" ({source} is media; a head branch takes features)" if source else ""
    if spec and (synthetic.is_spec(spec) or calib.is_dataset(spec)):
        features = _training_features(spec)
        if (features.audio if plan.name == "audio" else features.video).shape[-1] == plan.feature_dim:
            inputs = calib.from_feature_set(features, spec, plan.name, plan.feature_dim, n_cal, n_val)
            inputs.description += note
            return inputs
    head = plan.module
    inputs = calib.from_statistics(head.input_mean.numpy(), head.input_std.numpy(), n_cal, n_val)
    inputs.description += note
    return inputs


@functools.lru_cache(maxsize=2)
def _training_features(spec: str):
    """The checkpoint's training data (synthetic spec or data-set folder), loaded once for both branches."""
    from tivm.train.data_spec import load_spec

    return load_spec(spec, progress=False)


# ------------------------------------------------------------------------------------------ one branch

def export_fp32(plan: BranchPlan, path: Path, references, options: ExportOptions
                ) -> tuple[ExportInfo, dict[str, float]]:
    """Float32 file whose outputs match PyTorch at every grid (B, T); TorchScript if dynamo's does not."""
    info = export_onnx(plan.module, plan.step_shape, path, plan.input_name, OUTPUT_NAME, exporter=options.exporter)
    try:
        axes = validate.check_time_axes(path, references, threads=options.threads)
        worst = min(axes.values())
        if worst >= validate.FP32_MIN_COSINE:
            return info, axes
        reason = f"{info.exporter} file differs from PyTorch (min cosine {worst:.6f} over {sorted(axes)})"
    except validate.ValidationError as error:
        reason = f"{info.exporter} file: {error}"
    if info.exporter == DYNAMO:
        retry = export_onnx(plan.module, plan.step_shape, path, plan.input_name, OUTPUT_NAME, exporter="torchscript")
        axes = validate.check_time_axes(path, references, threads=options.threads)
        if min(axes.values()) >= validate.FP32_MIN_COSINE:
            return ExportInfo(retry.exporter, retry.opset, fallback_reason=reason, seconds=retry.seconds), axes
    raise ExportError(f"{plan.name}: {reason}; the float32 export is wrong, not just imprecise")


def make_final(plan: BranchPlan, fp32: Path, target: Path, inputs: calib.BranchInputs,
               options: ExportOptions) -> dict:
    if options.quantize == "none":
        return quant.copy_fp32(fp32, target)
    if options.quantize == "fp16":
        return quant.convert_fp16(fp32, target)
    batches = list(calib.calibration_batches(inputs.calibration)) if plan.kind == "full" else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        recipe = quant.quantize_int8(fp32, target, full=plan.kind == "full", input_name=plan.input_name,
                                     calibration_batches=batches, progress=options.progress,
                                     int8_target=options.int8_target,
                                     head=int8_head(options) if plan.kind == "full" else "dynamic")
    recipe["calibration"] = ({"source": inputs.source, "description": inputs.description,
                              "windows": len(inputs.calibration),
                              "steps": int(sum(len(w) for w in inputs.calibration))}
                             if plan.kind == "full" else {"source": "none (dynamic quantization)"})
    return recipe


def int8_head(options: ExportOptions) -> str:
    return options.int8_head or quant.TARGET_HEADS[options.int8_target]


def export_branch(plan: BranchPlan, staging: Path, options: ExportOptions, record: dict | None = None
                  ) -> BranchResult:
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    inputs = branch_inputs(plan, options, record)
    seconds["inputs"] = time.perf_counter() - clock

    clock = time.perf_counter()
    say(f"{plan.name}: exporting the {plan.kind} branch"
        + (f" ({plan.backbone} + head)" if plan.backbone else "") + " ...", options.progress)
    fp32 = staging / f"{plan.name}.fp32.onnx"
    references = validate.reference_outputs(plan.module, validate.grid_inputs(plan.step_shape))
    info, fp32_axes = export_fp32(plan, fp32, references, options)
    seconds["export"] = time.perf_counter() - clock
    say(f"{plan.name}: {plan.kind} branch exported with {info.exporter}; float32 vs PyTorch min cosine "
        f"{min(fp32_axes.values()):.6f} at (B, T) in {', '.join(fp32_axes)}", options.progress)

    clock = time.perf_counter()
    final = staging / f"{plan.name}.onnx"
    recipe = make_final(plan, fp32, final, inputs, options)
    quant.tidy_for_shipping(final)
    recipe.update(info.to_json())
    seconds["quantize"] = time.perf_counter() - clock

    clock = time.perf_counter()
    session = validate.open_session(final, options.threads)
    axes = validate.check_time_axes(final, references, session=session)
    cosine = validate.compare_windows(plan.module, final, inputs.validation, session=session)
    seconds["validate"] = time.perf_counter() - clock
    recipe["validation"] = {**cosine.to_json(), "inputs": inputs.source, "min_median": options.min_cosine}
    say(f"{plan.name}: {options.quantize} file {final.stat().st_size / 1e6:.1f} MB, held-out {cosine} "
        f"({inputs.source})", options.progress)
    return BranchResult(plan, info, recipe, inputs, fp32_axes, axes, cosine, fp32.stat().st_size,
                        final.stat().st_size, seconds)


# ------------------------------------------------------------------------------------------ manifest

def branch_manifest(result: BranchResult, record: dict) -> M.BranchManifest:
    plan = result.plan
    clip_seconds = float(data_manifest(record).get("clip_seconds") or DEFAULT_CLIP_SECONDS)
    return M.BranchManifest(
        file=f"{plan.name}.onnx", kind=plan.kind,
        input=M.TensorSpec(plan.input_name, plan.input_shape),
        output=M.TensorSpec(OUTPUT_NAME, ("batch", int(record.get("embed_dim") or 512))),
        frontend=plan.frontend, clip_seconds=clip_seconds,
        embedding_dim=int(record.get("embed_dim") or 512),
        feature_dim=plan.feature_dim if plan.kind == "head" else None,
        configuration=str(record.get("name") or record.get("config", {}).get("name", "custom")),
        quantization={**result.recipe, **_backbone_provenance(plan)},
    )


def _backbone_provenance(plan: BranchPlan) -> dict:
    # the manifest has no field for the backbone (nothing the runtime does depends on its name): provenance,
    # kept beside the recipe
    if plan.kind != "full":
        return {}
    return {"backbone": {"name": plan.backbone, "weights_file": Path(plan.backbone_weights).name,
                         "weights_sha256": plan.backbone_weights_sha256, **plan.backbone_options}}


def tivm_version() -> str:
    from tivm.train.dataset import tivm_version as version

    return version()


# ------------------------------------------------------------------------------------------ all

def export_model(checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
                 options: ExportOptions | None = None, **overrides: Any) -> dict:
    """Export both branches of a checkpoint into `out_dir`; returns the JSON report.

    Raises ExportFailed (nothing written) when a branch's held-out median cosine is below options.min_cosine.
    """
    options = options or ExportOptions()
    for key, value in overrides.items():
        setattr(options, key, value)
    if options.quantize not in quant.QUANTIZE_CHOICES:
        raise ValueError(f"--quantize must be one of {quant.QUANTIZE_CHOICES}, got {options.quantize!r}")
    if options.int8_target not in quant.INT8_TARGETS:
        raise ValueError(f"--int8-target must be one of {quant.INT8_TARGETS}, got {options.int8_target!r}")
    if options.int8_head not in (None, *quant.HEAD_METHODS):
        raise ValueError(f"int8_head must be one of {quant.HEAD_METHODS}, got {options.int8_head!r}")
    started = time.perf_counter()
    raw = options.branch_kind == RAW
    model, record = load_checkpoint(checkpoint)
    plans = plan_branches(model, record, "full" if raw else options.branch_kind, audio_backbone=options.audio_backbone,
                          video_backbone=options.video_backbone, audio_weights=options.audio_weights,
                          video_weights=options.video_weights, vggish_postprocess=options.vggish_postprocess,
                          pca_params=options.pca_params, weights_dir=options.weights_dir,
                          download=options.download)
    _check_training_weights(plans, record)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tivm-export-", dir=out_dir) as staging_name:
        staging = Path(staging_name)
        results = {name: export_branch(plans[name], staging, options, record) for name in BRANCH_NAMES}
        report = _report(checkpoint, out_dir, record, options, results, time.perf_counter() - started)
        failures = [f"{name}: held-out median cosine {r.cosine.median:.4f} < {options.min_cosine}"
                    for name, r in results.items() if not r.cosine.median >= options.min_cosine]
        if failures:
            report["passed"] = False
            raise ExportFailed("validation failed, nothing written: " + "; ".join(failures) +
                               ". Try --quantize fp16 or none, more --num-calibration windows, or a lower "
                               "--min-cosine.", report)
        manifest = M.ModelManifest(
            audio=branch_manifest(results["audio"], record), video=branch_manifest(results["video"], record),
            data_fingerprint=str((record.get("data") or {}).get("fingerprint") or ""),
            tivm_version=tivm_version())
        # raw bundles are made from these same files (behind their front ends, without the split's output)
        if options.stream_split and results["video"].plan.kind == "full":
            manifest = dataclasses.replace(manifest, video=split_video(staging, manifest.video, results["video"],
                                                                       options, report))
        source = staging
        if raw:  # the checked full files, merged behind their front ends, plus golden/ and mobile/
            M.write_manifest(staging, manifest)
            source = staging / RAW
            report["raw"] = make_raw_bundle(staging, source, threads=options.threads, progress=options.progress)
            report["raw"]["from"] = "the full branches above, as checked"
            manifest = M.read_manifest(source)
        _remove_raw_extras(out_dir)
        _remove_stale_split(out_dir, manifest)
        for name in BRANCH_NAMES:
            os.replace(source / f"{name}.onnx", out_dir / f"{name}.onnx")
        if manifest.video.stream is not None:
            os.replace(source / manifest.video.stream.file, out_dir / manifest.video.stream.file)
        if raw:
            for extra in RAW_EXTRAS:
                os.replace(source / extra, out_dir / extra)
    manifest = M.write_manifest(out_dir, manifest)
    report["manifest"] = manifest.to_json()
    report["passed"] = True
    return report


def split_video(staging: Path, spec: M.BranchManifest, result: BranchResult, options: ExportOptions,
                report: dict) -> M.BranchManifest:
    """Cut the checked full video graph into per-frame backbone + window head (tivm.export.streaming) and
    keep the cut only when both paths give the whole graph's embeddings on the validation windows."""
    path = staging / spec.file
    original = staging / f"{path.stem}.unsplit.onnx"
    shutil.copyfile(path, original)
    try:
        window = streaming.split_for_streaming(path)
        worst, features = streaming.check_split(path, result.inputs.validation[:VALIDATION_SPLIT_WINDOWS],
                                                threads=options.threads)
        if not worst <= streaming.MAX_ABS_DIFFERENCE:
            raise streaming.SplitError(f"frame by frame differs from the whole graph by {worst:.2e}")
    except streaming.SplitError as exc:
        os.replace(original, path)
        streaming.window_path(path).unlink(missing_ok=True)
        report["stream"] = {"split": False, "reason": str(exc)}
        say(f"video: not split for streaming ({exc}); the runtime runs the whole graph per window", options.progress)
        return spec
    original.unlink()
    report["stream"] = {"split": True, "file": window.name, "bytes": window.stat().st_size,
                        "max_abs_difference": worst, "windows_checked": min(len(result.inputs.validation),
                                                                            VALIDATION_SPLIT_WINDOWS)}
    say(f"video: split for streaming (per-frame backbone + {window.name}, {window.stat().st_size / 1e6:.1f} MB; "
        f"max |difference| {worst:.1e})", options.progress)
    features_spec = M.TensorSpec(streaming.FEATURES_OUTPUT, ("batch", "time", features))
    return dataclasses.replace(spec, stream=M.StreamSpec(file=window.name, features=features_spec))


def _remove_stale_split(out_dir: Path, manifest: M.ModelManifest) -> None:
    """An earlier export's window head, when this export ships none under that name (only files the earlier
    manifest names as its stream)."""
    try:
        earlier = M.read_manifest(out_dir).video.stream
    except ModelError:
        return
    current = manifest.video.stream.file if manifest.video.stream is not None else None
    if earlier is not None and earlier.file != current:
        (out_dir / earlier.file).unlink(missing_ok=True)


def _remove_raw_extras(out_dir: Path) -> None:
    """golden/ and mobile/ of an earlier raw export describe files about to be replaced: remove them (only
    when they are ours, marked by golden.json / mobile.json)."""
    for folder, marker in RAW_EXTRAS.items():
        if (out_dir / folder / marker).is_file() and not (out_dir / folder).is_symlink():
            shutil.rmtree(out_dir / folder)


def _check_training_weights(plans: dict[str, BranchPlan], record: dict) -> None:
    """A full branch must use the backbone weights its training features were computed with."""
    manifest = data_manifest(record)
    for name, plan in plans.items():
        block = manifest.get(name) or {}
        trained = block.get("weights_sha256") if isinstance(block, dict) else None
        if plan.kind == "full" and trained and trained != plan.backbone_weights_sha256:
            raise ModelError(f"{plan.backbone_weights}: sha256 {plan.backbone_weights_sha256[:12]}… is not the "
                             f"{block.get('weights_file', 'weights')} ({trained[:12]}…) the training features were "
                             f"computed with; pass that file with --{name}-weights")


def _report(checkpoint, out_dir: Path, record: dict, options: ExportOptions, results: dict[str, BranchResult],
            seconds: float) -> dict:
    return {"format": REPORT_FORMAT, "checkpoint": str(checkpoint), "out": str(out_dir),
            "configuration": record.get("name"), "quantize": options.quantize,
            "branch_kind": RAW if options.branch_kind == RAW else next(iter(results.values())).plan.kind,
            "int8_target": options.int8_target if options.quantize == "int8" else None,
            "int8_head": int8_head(options) if options.quantize == "int8" else None,  # full branches' heads
            "min_cosine": options.min_cosine, "seconds": round(seconds, 2),
            "branches": {name: r.to_json() for name, r in results.items()}}

