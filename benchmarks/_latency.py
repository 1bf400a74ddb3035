"""Latency: per stage for one 15 s clip, end to end, against threads and against clip length.

Stages: decode + frame sampling (or audio decode + resampling), preprocessing (ImageNet resize/crop/normalise,
or log-mel patches), backbone, head, and search (exact, over a synthetic library). Decode and
preprocessing are the runtime's own front ends for every engine (the PyTorch reference is trained on the same
features), so they are measured once and shared by every row. onnxruntime runs backbone + head as one graph
("model"); its head alone is timed on the head-only export and backbone = model − head (derived).
"""

from __future__ import annotations

import numpy as np

from benchmarks import _artifacts as A
from benchmarks import _search_data
from benchmarks._clips import clip_of_length
from benchmarks._context import Context
from benchmarks._engines import (
    AUDIO_BACKBONE,
    REFERENCE,
    VIDEO_BACKBONES,
    TorchBranch,
    engine_name,
    modality,
    ort_branch,
    preprocess_args,
    set_torch_threads,
)
from benchmarks._stats import NotMeasured, not_measured, time_call, time_interleaved

TOP_K = 10
STAGES = ("decode", "preprocess", "backbone", "head", "model", "search")


def _sum_medians(*entries: dict) -> float:
    return float(sum(e["median_ms"] for e in entries))


# ------------------------------------------------------------------------------------------ inputs

def front_ends(ctx: Context) -> dict:
    """Decode and preprocessing of the clip, timed; the arrays they produce feed every engine."""
    from tivm.runtime import audio, image, video

    p, clip = ctx.plan, ctx.clip
    out: dict = {"timings": {}, "arrays": {}}
    out["timings"]["video_decode"], frames = time_call(lambda: video.sample_frames(clip), p.warmup, p.runs)
    out["timings"]["audio_decode"], waveform = time_call(lambda: audio.load_audio(clip), p.warmup, p.runs)
    out["timings"]["vggish_preprocess"], patches = time_call(lambda: audio.log_mel_patches(waveform),
                                                             p.warmup, p.runs)
    out["arrays"][AUDIO_BACKBONE] = patches
    for name in [b for b in ctx.plan.branches if b in VIDEO_BACKBONES]:
        kwargs = preprocess_args(name)
        out["timings"][f"{name}_preprocess"], steps = time_call(
            lambda: image.preprocess_frames(frames, **kwargs), p.warmup, p.runs)
        out["arrays"][name] = steps
    out["frames_shape"], out["patches_shape"] = list(frames.shape), list(patches.shape)
    return out


def search_stage(ctx: Context, n_windows: int) -> dict:
    from tivm.runtime.search import ExactSearch

    embeddings, offsets = _search_data.window_embeddings(n_windows)
    query = _search_data.queries(embeddings, 1)[0]
    search = ExactSearch(embeddings, offsets)
    summary, _ = time_call(lambda: search.top_songs(query, TOP_K), ctx.plan.warmup, ctx.plan.runs)
    return {**summary, "windows": n_windows, "songs": len(offsets) - 1, "method": "exact", "k": TOP_K}


# ------------------------------------------------------------------------------------------ one branch

def model_calls(ctx: Context, backbone: str, steps: np.ndarray, threads: int,
                precisions: tuple[str, ...]) -> tuple[dict, dict]:
    """({(engine, stage): call}, {engine: NotMeasured}) for the model stages of one branch.

    PyTorch: "backbone" and "head" (eager modules run one after the other). onnxruntime: "model" (backbone +
    head, one graph) and "head" (the head-only export), fed the PyTorch backbone's features.
    """
    calls, missing = {}, {}
    set_torch_threads(threads)
    try:
        branch = TorchBranch.load(backbone, A.backbone_weights(backbone), A.latency_checkpoint())
        features = branch.features(steps)
        calls[(REFERENCE, "backbone")] = lambda: branch.features(steps)
        calls[(REFERENCE, "head")] = lambda: branch.embed_features(features)
        features_np = features.numpy()
    except NotMeasured as exc:
        missing[REFERENCE] = exc
        features_np = None
    for precision in precisions:
        engine = engine_name(precision)
        try:
            graph = ort_branch(ctx.full_export_for(backbone, precision)[0], backbone, threads)
            calls[(engine, "model")] = lambda graph=graph: graph.run(steps[None])
        except NotMeasured as exc:
            missing[engine] = exc
            continue
        try:
            if features_np is None:
                raise NotMeasured("no backbone features to feed the head")
            head = ort_branch(ctx.export("head", None, precision)[0], backbone, threads)
            calls[(engine, "head")] = lambda head=head: head.run(features_np[None])
        except NotMeasured as exc:
            missing[f"{engine} head"] = exc
    return calls, missing


def model_rows(ctx: Context, backbone: str, steps: np.ndarray, threads: int, runs: int,
               precisions: tuple[str, ...]) -> dict:
    """{engine: {"backbone", "head", "model"}} timed interleaved; derived figures are marked."""
    calls, missing = model_calls(ctx, backbone, steps, threads, precisions)
    timed = time_interleaved(calls, ctx.plan.warmup, runs)
    rows: dict = {}
    if REFERENCE in missing:
        rows[REFERENCE] = not_measured(str(missing[REFERENCE]))
    else:
        b, h = timed[(REFERENCE, "backbone")], timed[(REFERENCE, "head")]
        # eager PyTorch runs the two modules one after the other: model = backbone + head (medians, derived)
        rows[REFERENCE] = {"backbone": b, "head": h, "model": {"median_ms": b["median_ms"] + h["median_ms"],
                                                               "derived": True}}
    for precision in precisions:
        engine = engine_name(precision)
        if engine in missing:
            rows[engine] = not_measured(str(missing[engine]))
            continue
        model = timed[(engine, "model")]
        row = {"model": model}
        if (engine, "head") in timed:
            row["head"] = timed[(engine, "head")]
            row["backbone"] = {"median_ms": max(0.0, model["median_ms"] - row["head"]["median_ms"]), "derived": True}
        else:
            row["head"] = not_measured(str(missing.get(f"{engine} head", "head-only export missing")))
            row["backbone"] = not_measured("needs the head-only time")
        rows[engine] = row
    return rows


def per_stage(ctx: Context) -> dict:
    """The main table: every branch x engine, stage by stage, for the 15 s clip."""
    inputs = front_ends(ctx)
    timings = inputs["timings"]
    search = search_stage(ctx, ctx.plan.search_windows)
    result = {"clip": str(ctx.clip), "threads": ctx.threads, "warmup": ctx.plan.warmup, "runs": ctx.plan.runs,
              "interleaved": True, "frames": inputs["frames_shape"], "patches": inputs["patches_shape"],
              "front_ends": timings, "search": search, "branches": {}}
    for backbone in ctx.plan.branches:
        decode = timings["audio_decode" if modality(backbone) == "audio" else "video_decode"]
        preprocess = timings[f"{backbone}_preprocess"]
        rows = model_rows(ctx, backbone, inputs["arrays"][backbone], ctx.threads, ctx.plan.runs,
                          ctx.plan.precisions)
        for row in rows.values():
            if row.get("status") != "not measured":
                row["decode"], row["preprocess"], row["search"] = decode, preprocess, search
                row["total_ms"] = _sum_medians(decode, preprocess, row["model"], search)
        result["branches"][backbone] = rows
    return result


# ------------------------------------------------------------------------------------------ end to end

def end_to_end(ctx: Context) -> dict:
    """Recommender.recommend(clip) measured whole: file in, ranked songs out (synthetic library)."""
    from tivm.runtime.model import Model
    from tivm.runtime.recommend import Recommender

    p = ctx.plan
    out = {"windows": p.search_windows, "threads": ctx.threads, "runs": p.runs, "configs": {}}
    for backbone in [b for b in ctx.plan.branches if b in VIDEO_BACKBONES]:
        for precision in ctx.plan.e2e_precisions:
            name = f"{backbone} {engine_name(precision)}"
            try:
                model_dir, _ = ctx.export("full", backbone, precision)
                model = Model.load(model_dir, intra_op_threads=ctx.threads)
                library = _search_data.library(p.search_windows, model.fingerprint, str(model_dir))
                recommender = Recommender(model, library, search="exact")
                out["configs"][name], _ = time_call(lambda: recommender.recommend(ctx.clip, TOP_K), p.warmup, p.runs)
            except NotMeasured as exc:
                out["configs"][name] = not_measured(str(exc))
    return out


# ------------------------------------------------------------------------------------------ threads

def threads_scaling(ctx: Context) -> dict:
    """ResNet-50 video branch at each thread count: PyTorch backbone + head, onnxruntime's one graph."""
    from tivm.runtime import image, video

    backbone = VIDEO_BACKBONES[0]
    steps = image.preprocess_frames(video.sample_frames(ctx.clip), **preprocess_args(backbone))
    out = {"branch": backbone, "runs": ctx.plan.thread_runs, "interleaved": True, "by_threads": {}}
    for threads in ctx.plan.thread_counts:
        rows = model_rows(ctx, backbone, steps, threads, ctx.plan.thread_runs, ctx.plan.speed_precisions)
        out["by_threads"][str(threads)] = {engine: row.get("model", row) for engine, row in rows.items()}
    set_torch_threads(ctx.threads)
    return out


# ------------------------------------------------------------------------------------------ clip length

def clip_length_scaling(ctx: Context) -> dict:
    """The video query path (decode, preprocess, model over 15 s windows, search) against clip length."""
    from tivm.runtime import image, video
    from tivm.runtime.search import ExactSearch

    backbone = VIDEO_BACKBONES[0]
    kwargs = preprocess_args(backbone)
    graphs = {}
    for precision in ctx.plan.speed_precisions:
        try:
            graphs[precision] = ort_branch(ctx.export("full", backbone, precision)[0], backbone, ctx.threads)
        except NotMeasured as exc:
            graphs[precision] = exc
    embeddings, offsets = _search_data.window_embeddings(ctx.plan.search_windows)
    search = ExactSearch(embeddings, offsets)
    out = {"branch": backbone, "threads": ctx.threads, "search_windows": ctx.plan.search_windows, "lengths": {}}
    for seconds, runs in ctx.plan.clip_runs.items():
        path, how = clip_of_length(ctx.clip, seconds, A.scratch("clips"))
        decode, frames = time_call(lambda: video.sample_frames(path), 0 if seconds > 60 else 1, runs)
        preprocess, steps = time_call(lambda: image.preprocess_frames(frames, **kwargs), 0, runs)
        entry = {"clip": how, "frames": int(len(frames)), "runs": runs, "decode": decode, "preprocess": preprocess}
        for precision, graph in graphs.items():
            if isinstance(graph, NotMeasured):
                entry[engine_name(precision)] = not_measured(str(graph))
                continue
            model_t, windows = time_call(lambda: graph.embed_steps(steps), 1, runs)
            query = windows.pooled()
            search_t, _ = time_call(lambda: search.top_songs(query, TOP_K), 1, max(runs, 3))
            total = _sum_medians(decode, preprocess, model_t, search_t)
            entry[engine_name(precision)] = {"model": model_t, "search": search_t, "windows": int(len(windows.vectors)),
                                             "total_ms": total, "x_real_time": seconds * 1000.0 / total}
        out["lengths"][str(seconds)] = entry
    return out
