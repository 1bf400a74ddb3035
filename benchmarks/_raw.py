"""The raw-input ("edge") bundle: what moving the front end into the graph costs, how big the files are, what
a Node app sees, and whether the raw graphs embed the clip as the full ones do.

A raw bundle is `tivm.export.raw.make_raw_bundle` of a full export (golden vectors and mobile files included),
built once and cached (`_artifacts.raw_bundle`). Per branch of the plan (ResNet-50 / EfficientNet-Lite0 video,
VGGish audio, whose raw graph comes from ResNet-50's full export as in every section):

* front end per 15 s clip: the runtime's numpy front end (`log_mel_patches` on 240,000 samples of the clip's
  soundtrack, `preprocess_frames` on its 15 frames at native 720p) against the front-end graph alone
  (`frontend_graphs.build_*_frontend(windowed=False)` in an onnxruntime session with the suite's threads);
* model per 15 s window: the full branch on the preprocessed steps against the raw branch on the raw input
  (the runtime's Branch sessions: `run(steps[None])` and `run_window(pcm or frames)`, one window per run, as
  `Model.embed_*` runs them), so raw − full is the front end's cost inside the graph;
* all of one branch's calls timed interleaved (one run of each per round, `_stats.SETTLE_S` pause before each);
* sizes of the full and raw .onnx files and mobile/*.ort;
* `node js/recommend.mjs` on the clip's 15 frames (video branches), a fresh process per run;
* agreement: raw vs full embedding of the clip (cosine, max |Δ|), front-end graph vs numpy (max |Δ|).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks import _artifacts as A
from benchmarks._context import Context
from benchmarks._engines import modality, ort_branch, preprocess_args
from benchmarks._footprint import _probe_env, run_cold
from benchmarks._stats import SETTLE_S, NotMeasured, not_measured, summarize, time_interleaved

CLIP_SAMPLES = 240_000  # 15 s of 16 kHz PCM: exactly 15 log-mel patches
WINDOW_STEPS = 15
NODE_CLIENT = A.REPO / "js" / "recommend.mjs"
NODE_MODULE = A.REPO / "js" / "node_modules" / "onnxruntime-node"
NODE_THREADS = 2  # js/recommend.mjs creates its sessions with intraOpNumThreads: 2, whatever --threads says


def _failure(exc: BaseException) -> dict:
    return not_measured(str(exc) if isinstance(exc, NotMeasured) else f"{type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------------------------ inputs

def clip_inputs(ctx: Context) -> dict:
    """The clip's 15 frames at native size (uint8) and its first 240,000 samples of 16 kHz mono PCM."""
    from tivm.runtime import audio, video

    frames = video.sample_frames(ctx.clip)
    waveform = audio.load_audio(ctx.clip)
    if len(waveform) < CLIP_SAMPLES:
        pcm = NotMeasured(f"the clip's soundtrack has {len(waveform)} samples at 16 kHz, fewer than {CLIP_SAMPLES:,}")
    else:
        pcm = np.ascontiguousarray(waveform[:CLIP_SAMPLES], np.float32)
    return {"frames": np.ascontiguousarray(frames, np.uint8), "pcm": pcm}


def frontend_session(backbone: str, threads: int):
    """The front-end graph alone (windowed=False: raw input -> the steps a full branch takes)."""
    import onnxruntime as ort

    from tivm.export import frontend_graphs as fg
    from tivm.runtime.model import session_options

    if modality(backbone) == "audio":
        graph, feed = fg.build_audio_frontend(windowed=False), fg.AUDIO_INPUT
    else:
        graph, feed = fg.build_video_frontend(**preprocess_args(backbone), windowed=False), fg.VIDEO_INPUT
    session = ort.InferenceSession(graph.SerializeToString(), sess_options=session_options(threads),
                                   providers=["CPUExecutionProvider"])
    return session, feed


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Rows of two (W, D) embedding sets: lowest cosine and largest |difference|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"embeddings differ in shape: {a.shape} vs {b.shape}")
    cos = (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"windows": int(len(a)), "cosine_min": float(cos.min()), "max_abs_diff": float(np.abs(a - b).max())}


def _bytes(path: Path) -> dict:
    return {"bytes": path.stat().st_size} if path.is_file() else not_measured(f"{path.name} is missing")


def bundle_sizes(full_dir: Path, raw_dir: Path, branch: str) -> dict:
    raw_file = A.branch_file(raw_dir, branch)
    return {"full_onnx": _bytes(A.branch_file(full_dir, branch)), "raw_onnx": _bytes(raw_file),
            "mobile_ort": _bytes(raw_dir / "mobile" / (raw_file.stem + ".ort"))}


# ------------------------------------------------------------------------------------------ Node client

def node_unavailable() -> str | None:
    """Why the Node client cannot run here, or None."""
    if shutil.which("node") is None:
        return "`node` is not on PATH"
    if not NODE_MODULE.is_dir():
        return "js/node_modules/onnxruntime-node is missing (run tools/test-deps.sh)"
    return None


def frames_file(frames: np.ndarray) -> Path:
    """The clip's frames as the client reads them: uint8 (T, H, W, 3) row-major, written once per shape."""
    t, h, w, _ = frames.shape
    path = A.scratch("raw") / f"clip_frames_{t}x{h}x{w}.u8"
    data = np.ascontiguousarray(frames, np.uint8).tobytes()
    if not path.exists() or path.stat().st_size != len(data) or path.read_bytes() != data:
        path.write_bytes(data)
    return path


def node_client(ctx: Context, raw_dir: Path, frames: np.ndarray, python_vectors: np.ndarray) -> dict:
    """`node js/recommend.mjs --model RAW_DIR --frames F --shape T,H,W`, a fresh process per run: its wall
    time (spawn to exit) and the `ms` it reports itself (session creation + reading the frames + embedding)."""
    reason = node_unavailable()
    if reason:
        return not_measured(reason)
    t, h, w, _ = frames.shape
    command = [shutil.which("node"), str(NODE_CLIENT), "--model", str(raw_dir), "--frames", str(frames_file(frames)),
               "--shape", f"{t},{h},{w}"]
    walls, own, vectors = [], [], None
    try:
        for _ in range(ctx.plan.node_runs):
            time.sleep(SETTLE_S)
            wall, stdout = run_cold(command, _probe_env(ctx.threads))
            out = json.loads(stdout.strip().splitlines()[-1])
            walls.append(wall)
            own.append(float(out["ms"]) / 1000.0)
            vectors = np.asarray(out["vectors"], np.float64)
    except NotMeasured as exc:
        return not_measured(f"node js/recommend.mjs {exc}")
    except (ValueError, KeyError, IndexError) as exc:
        return not_measured(f"node js/recommend.mjs printed no usable JSON: {type(exc).__name__}: {exc}")
    return {"wall": summarize(walls), "own": summarize(own), "runs": len(walls), "threads": NODE_THREADS,
            "windows": int(len(vectors)), "vs_python_raw": agreement(vectors, python_vectors),
            "command": "node js/recommend.mjs --model RAW_DIR --frames F --shape " + f"{t},{h},{w}"}


# ------------------------------------------------------------------------------------------ one branch

def branch_entry(ctx: Context, backbone: str, inputs: dict) -> dict:
    """Front end and model timings (interleaved), sizes, agreement and the Node client for one branch."""
    from tivm.runtime import audio, image

    p, is_audio = ctx.plan, modality(backbone) == "audio"
    raw_input = inputs["pcm" if is_audio else "frames"]
    if isinstance(raw_input, NotMeasured):
        raise raw_input
    if is_audio:
        def numpy_frontend():
            return audio.log_mel_patches(raw_input)
        window_input = raw_input[:audio.patch_samples(WINDOW_STEPS)]  # one window's 15 patches, as the runtime feeds
    else:
        kwargs = preprocess_args(backbone)

        def numpy_frontend():
            return image.preprocess_frames(raw_input, **kwargs)
        window_input = raw_input
    steps = numpy_frontend()
    calls = {("frontend", "numpy"): numpy_frontend}
    entry: dict = {"modality": modality(backbone), "input": list(raw_input.shape), "steps": list(steps.shape),
                   "frontend": {}, "precisions": {}}
    try:
        session, feed = frontend_session(backbone, ctx.threads)
        graph_steps = session.run(None, {feed: raw_input})[0]
        entry["frontend"]["graph_vs_numpy"] = {"max_abs_diff": float(np.abs(graph_steps.astype(np.float64)
                                                                            - steps).max())}
        calls[("frontend", "graph")] = lambda: session.run(None, {feed: raw_input})
    except Exception as exc:  # the numpy figures stand without it
        entry["frontend"]["graph"] = _failure(exc)
    vectors = {}
    for precision in p.raw_precisions:
        try:
            full_dir, _ = ctx.full_export_for(backbone, precision)
            raw_dir, record = ctx.raw_export_for(backbone, precision)
            full, raw = ort_branch(full_dir, backbone, ctx.threads), ort_branch(raw_dir, backbone, ctx.threads)
            full_vec, raw_vec = full.run(steps[None]), raw.run_window(window_input)  # also a smoke run of each
            row = {"bundle": raw_dir.name, "build": {"seconds": record.get("seconds"), "reused": record.get("reused")},
                   "sizes": bundle_sizes(full_dir, raw_dir, modality(backbone)),
                   "agreement": agreement(full_vec, raw_vec)}
        except Exception as exc:
            entry["precisions"][precision] = _failure(exc)
            A.say(f"raw bundle, {backbone} {precision}: not measured: {entry['precisions'][precision]['reason']}")
            continue
        calls[(precision, "full")] = lambda full=full: full.run(steps[None])
        calls[(precision, "raw")] = lambda raw=raw: raw.run_window(window_input)
        entry["precisions"][precision] = row
        vectors[precision] = (raw_dir, raw_vec)
    timed = time_interleaved(calls, p.warmup, p.runs)
    entry["frontend"]["numpy"] = timed[("frontend", "numpy")]
    if ("frontend", "graph") in timed:
        entry["frontend"]["graph"] = timed[("frontend", "graph")]
    for precision, (raw_dir, raw_vec) in vectors.items():
        row = entry["precisions"][precision]
        row["full"], row["raw"] = timed[(precision, "full")], timed[(precision, "raw")]
        row["frontend_in_graph"] = {"median_ms": row["raw"]["median_ms"] - row["full"]["median_ms"], "derived": True}
        row["numpy_frontend_plus_full"] = {"median_ms": entry["frontend"]["numpy"]["median_ms"]
                                           + row["full"]["median_ms"], "derived": True}
        if not is_audio:  # after the timing, so its processes do not disturb it
            row["node"] = node_client(ctx, raw_dir, raw_input, raw_vec)
    return entry


def raw_bundle(ctx: Context) -> dict:
    """The raw-input bundle section: every branch x precision of the plan (see the module docstring)."""
    inputs = clip_inputs(ctx)
    pcm = inputs["pcm"]
    out = {"clip": str(ctx.clip), "threads": ctx.threads, "warmup": ctx.plan.warmup, "runs": ctx.plan.runs,
           "interleaved": True, "settle_ms": SETTLE_S * 1000, "node_runs": ctx.plan.node_runs,
           "frames": list(inputs["frames"].shape),
           "pcm_samples": None if isinstance(pcm, NotMeasured) else int(len(pcm)), "branches": {}}
    for backbone in ctx.plan.raw_branches:
        try:
            out["branches"][backbone] = branch_entry(ctx, backbone, inputs)
        except Exception as exc:  # one branch's failure leaves the others measured
            out["branches"][backbone] = _failure(exc)
            A.say(f"raw bundle, {backbone}: not measured: {out['branches'][backbone]['reason']}")
    return out
