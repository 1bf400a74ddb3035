"""Which onnxruntime kernel runs an int8 convolution fastest on this CPU, by convolution depth.

onnxruntime runs a U8S8 QLinearConv whose weight zero point is 0 through its symmetric indirect-convolution
kernels, and one with any other (common) zero point through im2col + its integer GEMM, which uses AMX tiles
where the CPU has them. This script takes an int8 model directory written by `tivm-export --quantize int8`,
writes a copy of its branch with every convolution routed to the GEMM (`route_deep_convs_to_gemm` with depth
0) and one with the export's rule (depth >= GEMM_MIN_DEPTH), and measures:

* per convolution: median kernel time of each variant (onnxruntime's profiler), grouped by depth = input
  channels per group x kernel area and output channels; the faster kernel per group;
* the whole branch: median of --runs interleaved runs per variant (50 ms settle before each), and the largest
  absolute difference of the outputs against the symmetric-kernel file (the arithmetic is the same).

    .venv/bin/python benchmarks/int8_conv_kernels.py MODEL_DIR [--branch video] [--threads 2] [--runs 10]
                                                     [--json FILE]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import _machine  # noqa: E402
from benchmarks._stats import SETTLE_S  # noqa: E402
from tivm.export.quantize import GEMM_MIN_DEPTH, route_deep_convs_to_gemm  # noqa: E402

PROFILED_RUNS = 5
CLIP = Path(os.environ.get("TIVM_SHARED", REPO.parent / "shared")) / "media" / "clips" / "bbb_0-15s.mp4"


def session(path: Path, threads: int, profile_prefix: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if profile_prefix:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def branch_input(model_dir: Path, branch: str) -> tuple[Path, np.ndarray]:
    """The branch file and one real 15 s input through the runtime's front end."""
    from tivm.runtime.manifest import read_manifest
    from tivm.runtime.model import image_arguments

    spec = read_manifest(model_dir).branch(branch)
    if spec.kind != "full":
        raise SystemExit(f"{model_dir}: the {branch} branch is a head (no convolutions); export --branch-kind full")
    if branch == "video":
        from tivm.runtime import image, video

        steps = image.preprocess_frames(video.sample_frames(CLIP), **image_arguments(spec.frontend))
    else:
        from tivm.runtime import audio

        steps = audio.log_mel_patches(audio.load_audio(CLIP))[:15]
    return model_dir / spec.file, np.ascontiguousarray(steps[None], np.float32)


def conv_depths(path: Path) -> dict[str, tuple[int, int]]:
    """{Conv node name: (depth, output channels)} from the weight initializers behind each Conv."""
    graph = onnx.load(str(path)).graph
    dims = {t.name: list(t.dims) for t in graph.initializer}
    weight_of = {n.output[0]: dims.get(n.input[0]) for n in graph.node if n.op_type == "DequantizeLinear"}
    out = {}
    for node in graph.node:
        shape = weight_of.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if shape and len(shape) >= 3:
            out[node.name] = (int(np.prod(shape[1:])), int(shape[0]))
    return out


def per_conv_ms(path: Path, x: np.ndarray, threads: int, scratch: Path) -> dict[str, float]:
    """{Conv node name: median QLinearConv kernel ms} over PROFILED_RUNS profiled runs."""
    s = session(path, threads, str(scratch / path.stem))
    feed = {s.get_inputs()[0].name: x}
    for _ in range(PROFILED_RUNS):
        s.run(None, feed)
    events = json.loads(Path(s.end_profiling()).read_text())
    times = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["args"].get("op_name") == "QLinearConv":
            times[e["name"].split("_token_")[0]].append(e["dur"] / 1000.0)
    return {name: float(np.median(v[1:] or v)) for name, v in times.items()}  # first run: warm-up


def whole_branch(paths: dict[str, Path], x: np.ndarray, threads: int, runs: int) -> dict:
    sessions = {k: session(p, threads) for k, p in paths.items()}
    outputs = {}
    for key, s in sessions.items():
        outputs[key] = s.run(None, {s.get_inputs()[0].name: x})[0]  # warm-up, and the output compared
    timed = {k: [] for k in sessions}
    for _ in range(runs):
        for key, s in sessions.items():
            time.sleep(SETTLE_S)
            started = time.perf_counter()
            s.run(None, {s.get_inputs()[0].name: x})
            timed[key].append((time.perf_counter() - started) * 1000.0)
    base = outputs["symmetric"]
    return {k: {"median_ms": float(np.median(v)), "max_abs_diff_vs_symmetric": float(np.abs(outputs[k] - base).max())}
            for k, v in timed.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="a tivm-export --quantize int8 --branch-kind full directory")
    parser.add_argument("--branch", default="video", choices=("video", "audio"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    source, x = branch_input(args.model_dir, args.branch)
    with tempfile.TemporaryDirectory(prefix="tivm-convk-") as tmp:
        tmp = Path(tmp)
        paths = {"symmetric": tmp / "symmetric.onnx", "gemm_all": tmp / "gemm_all.onnx",
                 f"gemm_depth_{GEMM_MIN_DEPTH}": tmp / "gemm_rule.onnx"}
        shutil.copyfile(source, paths["symmetric"])
        for key, depth in (("gemm_all", 0), (f"gemm_depth_{GEMM_MIN_DEPTH}", GEMM_MIN_DEPTH)):
            shutil.copyfile(source, paths[key])
            route_deep_convs_to_gemm(paths[key], depth)
        if not conv_depths(paths["gemm_all"]):
            raise SystemExit(f"{source}: no int8 convolutions (is it a portable int8 export?)")
        depths = conv_depths(paths["symmetric"])
        sym, gemm = (per_conv_ms(paths[k], x, args.threads, tmp) for k in ("symmetric", "gemm_all"))
        whole = whole_branch(paths, x, args.threads, args.runs)
    groups = collections.defaultdict(lambda: {"convs": 0, "symmetric_ms": 0.0, "gemm_ms": 0.0})
    for name, (depth, out_channels) in depths.items():
        if name in sym and name in gemm:
            g = groups[(depth, out_channels)]
            g["convs"] += 1
            g["symmetric_ms"] += sym[name]
            g["gemm_ms"] += gemm[name]
    rows = [{"depth": d, "out_channels": m, **g, "faster": "gemm" if g["gemm_ms"] < g["symmetric_ms"] else "symmetric"}
            for (d, m), g in sorted(groups.items())]
    print(f"{source} ({args.branch}, input {list(x.shape)}), {args.threads} threads; per-conv medians of "
          f"{PROFILED_RUNS - 1} profiled runs, summed per group")
    print(f"{'depth':>6} {'out':>5} {'convs':>5} {'symmetric ms':>13} {'gemm ms':>8}  faster")
    for r in rows:
        print(f"{r['depth']:>6} {r['out_channels']:>5} {r['convs']:>5} {r['symmetric_ms']:>13.2f} "
              f"{r['gemm_ms']:>8.2f}  "
              f"{r['faster']}")
    print("sum of the faster kernel per group: "
          f"{sum(min(r['symmetric_ms'], r['gemm_ms']) for r in rows):.1f} ms (all symmetric "
          f"{sum(r['symmetric_ms'] for r in rows):.1f}, all gemm {sum(r['gemm_ms'] for r in rows):.1f})")
    for key, entry in whole.items():
        print(f"whole branch, {key}: {entry['median_ms']:.1f} ms median of {args.runs}; "
              f"max |output - symmetric| {entry['max_abs_diff_vs_symmetric']:.3g}")
    if args.json:
        args.json.write_text(json.dumps({"machine": _machine.describe(REPO, args.threads), "model": str(source),
                                         "groups": rows, "whole_branch": whole}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
