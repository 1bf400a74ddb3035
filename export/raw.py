"""Raw branches: the front-end graph (tivm.export.frontend_graphs) merged in front of an exported full branch,
so one ONNX file per branch goes from 16 kHz PCM or uint8 RGB frames to window embeddings, and an app needs
nothing but onnxruntime.

A raw bundle is made from a full one, after quantization and validation: `tivm-export --branch-kind raw`
exports and checks full branches exactly as `--branch-kind full` does, then calls `make_raw_bundle` on them.
Merging after quantization keeps the int8 quantizer away from the front end, which stays float (float64 DFT
and resize products, float32 elsewhere: tivm.export.frontend_graphs). The raw bundle adds golden vectors
(tivm.export.golden) and ORT-format files for phones (tivm.export.mobile).

    make_raw_bundle("models/tivm-full", "models/tivm-raw")    # a full model directory -> a raw one
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import onnx
import onnx.compose

from tivm.export import frontend_graphs as fg
from tivm.runtime import manifest as M
from tivm.runtime.model import image_arguments, window_steps_for

FRONTEND_PRECISION = {
    "audio": "float64: the framed samples and the windowed DFT (Cast, MatMul); float32: |X|, mel matrix, "
             "log, windowing",
    "video": "float64: the antialiased-bilinear resize products and Pillow's rounding after each pass, and the "
             "per-axis weight tables; uint8 between the passes; float32: the normalisation lookup and windowing",
}
FRONTEND_IO = {"audio": (fg.AUDIO_INPUT, fg.AUDIO_HOP, fg.AUDIO_OUTPUT),
               "video": (fg.VIDEO_INPUT, fg.VIDEO_HOP, fg.VIDEO_OUTPUT)}
RAW_INPUT_SHAPES = {"audio": ("samples",), "video": ("time", "height", "width", 3)}


def default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def build_frontend(name: str, spec: M.BranchManifest, *, opset: int = fg.OPSET,
                   ir_version: int = fg.IR_VERSION) -> onnx.ModelProto:
    """The front-end graph a full branch's manifest describes: windows of the runtime's window length."""
    window = window_steps_for(name, spec)
    if name == "audio":
        return fg.build_audio_frontend(window_patches=window, opset=opset, ir_version=ir_version)
    return fg.build_video_frontend(**image_arguments(spec.frontend), window_frames=window, opset=opset,
                                   ir_version=ir_version)


def merge_branch(name: str, full_path: str | os.PathLike, spec: M.BranchManifest,
                 out_path: str | os.PathLike) -> dict[str, Any]:
    """Write the raw graph (front end + the full branch file as it is, quantized or not) to `out_path`.

    Returns what the manifest records about the front end (under `quantization.frontend`).
    """
    if spec.kind != "full":
        raise ValueError(f"{full_path}: a raw branch is made from a full branch, this one is {spec.kind!r}")
    branch = onnx.load(str(full_path))
    _drop_stream_output(branch)
    opset = default_opset(branch)
    front = build_frontend(name, spec, opset=opset, ir_version=branch.ir_version)
    windows = FRONTEND_IO[name][2]
    output = spec.output.name if spec.output is not None else branch.graph.output[0].name
    merged = onnx.compose.merge_models(
        front, branch, io_map=[(windows, spec.input.name)], outputs=[output],
        producer_name="tivm.export.raw", producer_version=branch.producer_version or "",
        doc_string=f"tivm raw {name} branch: {front.doc_string}, then the {spec.configuration} backbone + head "
                   f"({spec.quantization.get('method')})")
    del merged.metadata_props[:]
    merged.metadata_props.extend(branch.metadata_props)
    onnx.checker.check_model(merged)
    onnx.save(merged, str(out_path))
    return {"graph": "tivm.export.frontend_graphs", "precision": FRONTEND_PRECISION[name],
            "float64_ops": list(fg.FLOAT64_OPS[name]), "nodes": len(front.graph.node), "opset": opset,
            "ir_version": branch.ir_version, "window_steps": window_steps_for(name, spec),
            "quantized": False, "branch_sha256": spec.sha256}


def raw_branch_manifest(name: str, full: M.BranchManifest, frontend_record: dict[str, Any]) -> M.BranchManifest:
    """The manifest entry of the raw graph made from `full` (sha256 left for write_manifest to fill in)."""
    main, hop, _ = FRONTEND_IO[name]
    dtype, _ = M.RAW_INPUTS[name]
    output = full.output.name if full.output is not None else "embedding"
    return dataclasses.replace(
        full, kind="raw", sha256="", input=M.TensorSpec(main, RAW_INPUT_SHAPES[name], dtype),
        output=M.TensorSpec(output, ("windows", full.embedding_dim)),
        hop=M.HopSpec(hop, M.raw_step_seconds(name, full.frontend)),
        quantization={**full.quantization, "frontend": frontend_record},
        stream=None)  # a raw graph runs one window per run: the per-frame split is the full runtime's


def _drop_stream_output(branch: onnx.ModelProto) -> None:
    """A full branch split for streaming (tivm.export.streaming) has a second output, the per-frame features:
    a raw graph runs whole windows, so it goes (with the Identity that names it)."""
    from tivm.export.streaming import FEATURES_OUTPUT

    graph = branch.graph
    if not any(o.name == FEATURES_OUTPUT for o in graph.output):
        return
    kept_outputs = [o for o in graph.output if o.name != FEATURES_OUTPUT]
    kept_nodes = [n for n in graph.node if FEATURES_OUTPUT not in n.output]
    del graph.output[:]
    graph.output.extend(kept_outputs)
    del graph.node[:]
    graph.node.extend(kept_nodes)


def make_raw_bundle(full_dir: str | os.PathLike, out_dir: str | os.PathLike, *, golden: bool = True,
                    mobile: bool = True, threads: int = 2, progress: bool = False) -> dict[str, Any]:
    """A full model directory -> a raw one in `out_dir`: audio.onnx, video.onnx, manifest.json, plus golden/
    (golden vectors and their inputs) and mobile/ (ORT-format files, operator config, usability report).

    `full_dir` must be a full bundle (both branches kind "full"); it is not changed. Returns a report.
    """
    full_dir, out_dir = Path(full_dir), Path(out_dir)
    if full_dir.resolve() == out_dir.resolve():
        raise ValueError(f"{out_dir}: write the raw bundle to another folder than the full one")
    manifest = M.read_manifest(full_dir)
    kinds = {name: manifest.branch(name).kind for name in M.BRANCHES}
    if set(kinds.values()) != {"full"}:
        raise ValueError(f"{full_dir}: a raw bundle is made from full branches (backbone + head), got {kinds}")
    out_dir.mkdir(parents=True, exist_ok=True)
    branches, report = {}, {"from": str(full_dir), "branches": {}}
    for name in M.BRANCHES:
        spec = manifest.branch(name)
        record = merge_branch(name, full_dir / spec.file, spec, out_dir / spec.file)
        branches[name] = raw_branch_manifest(name, spec, record)
        report["branches"][name] = {"frontend": record, "bytes": (out_dir / spec.file).stat().st_size}
        if progress:
            print(f"{name}: raw branch (front end + {spec.quantization.get('method')} branch), "
                  f"{(out_dir / spec.file).stat().st_size / 1e6:.1f} MB", flush=True)
    written = M.write_manifest(out_dir, dataclasses.replace(manifest, created="", **branches))
    report["manifest"] = written.to_json()
    if golden:
        from tivm.export import golden as golden_vectors

        report["golden"] = golden_vectors.write(out_dir, threads=threads)
        if progress:
            print(f"golden vectors: {golden_vectors.GOLDEN_DIR}/{golden_vectors.GOLDEN_JSON}", flush=True)
    if mobile:
        from tivm.export import mobile as mobile_package

        report["mobile"] = mobile_package.package(out_dir, threads=threads)
        if progress:
            print(f"mobile: {mobile_package.summary(report['mobile'])}", flush=True)
    return report
