"""Size on disk, peak memory and cold start (each configuration in its own process), library build speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import _artifacts as A
from benchmarks._context import SONGS, Context
from benchmarks._engines import REFERENCE, VIDEO_BACKBONES, engine_name, modality
from benchmarks._stats import NotMeasured, not_measured, summarize, time_call

PROBE = Path(__file__).with_name("_probe.py")
PROBE_TIMEOUT_S = 300
MIB = 1 << 20


# ------------------------------------------------------------------------------------------ sizes

def _head_bytes(checkpoint: Path, branch: str) -> int:
    """Bytes of one branch's head tensors (float32) in the checkpoint (the PyTorch head on disk)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as f:
        for key in f.keys():
            if key.startswith(f"{branch}_head."):
                tensor = f.get_tensor(key)
                total += tensor.numel() * tensor.element_size()
    return total


def sizes(ctx: Context) -> dict:
    """Per branch file: bytes of the PyTorch reference (backbone weights + head tensors) and each export."""
    checkpoint = A.latency_checkpoint()
    out: dict = {"branches": {}, "heads": {}}
    for backbone in ctx.plan.branches:
        branch = modality(backbone)
        row = {REFERENCE: {"bytes": A.backbone_weights(backbone).stat().st_size + _head_bytes(checkpoint, branch),
                           "what": "backbone .pth + head tensors"}}
        for precision in ctx.plan.precisions:
            try:
                model_dir, record = ctx.full_export_for(backbone, precision)
                row[engine_name(precision)] = {"bytes": A.branch_file(model_dir, branch).stat().st_size}
            except NotMeasured as exc:
                row[engine_name(precision)] = not_measured(str(exc))
        out["branches"][backbone] = row
    for branch in ("audio", "video"):
        row = {REFERENCE: {"bytes": _head_bytes(checkpoint, branch), "what": "head tensors"}}
        for precision in ctx.plan.precisions:
            try:
                model_dir, _ = ctx.export("head", None, precision)
                row[engine_name(precision)] = {"bytes": A.branch_file(model_dir, branch).stat().st_size}
            except NotMeasured as exc:
                row[engine_name(precision)] = not_measured(str(exc))
        out["heads"][f"{A.LATENCY_CONFIG} {branch} head"] = row
    for table in (out["branches"], out["heads"]):
        for row in table.values():
            fp32 = row.get(engine_name("fp32"), {}).get("bytes")
            for entry in row.values():
                if fp32 and "bytes" in entry:
                    entry["share_of_fp32"] = entry["bytes"] / fp32
    out["exports"] = {f"{k[0]} {k[1] or ''} {k[2]}".replace("  ", " "): _export_summary(v)
                      for k, v in ctx.exports.items()}
    return out


def _export_summary(found) -> dict:
    if isinstance(found, NotMeasured):
        return not_measured(str(found))
    model_dir, record = found
    return {"dir": model_dir.name, "seconds": record.get("seconds"), "reused": record.get("reused"),
            "report": record.get("report")}


# ------------------------------------------------------------------------------------------ processes

def _probe_command(ctx: Context, engine: str, backbone: str, precision: str) -> list[str]:
    branch = modality(backbone)
    command = [sys.executable, str(PROBE), engine, branch, str(ctx.clip), "--threads", str(ctx.threads)]
    if engine == "ort":
        model_dir, _ = ctx.full_export_for(backbone, precision)
        return command + ["--model-dir", str(model_dir)]
    return command + ["--checkpoint", str(A.latency_checkpoint()), "--backbone", backbone,
                      "--weights", str(A.backbone_weights(backbone))]


def run_cold(command: list[str], env: dict | None = None) -> tuple[float, str]:
    """(seconds from spawning the process to its exit, stdout); NotMeasured when it fails."""
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=env,
                              cwd=str(A.REPO))
    except subprocess.TimeoutExpired:
        raise NotMeasured(f"{Path(command[1]).name} took over {PROBE_TIMEOUT_S} s") from None
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = " | ".join((done.stderr.strip() or done.stdout.strip()).splitlines()[-2:])
        raise NotMeasured(f"exited {done.returncode}: {tail[:300]}")
    return seconds, done.stdout


def _probe_env(threads: int) -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def cold_start_memory(ctx: Context) -> dict:
    """Process start → embedding of the 15 s clip printed, and that process's peak RSS, per configuration."""
    out = {"threads": ctx.threads, "repeats": ctx.plan.cold_start_repeats, "configs": {}}
    for backbone in ctx.plan.cold_start_branches:
        for engine, precision in [("torch", "fp32") if e == REFERENCE else ("ort", e)
                                  for e in ctx.plan.cold_start_engines]:
            name = f"{backbone} {REFERENCE if engine == 'torch' else engine_name(precision)}"
            try:
                command = _probe_command(ctx, engine, backbone, precision)
                seconds, peaks = [], []
                for _ in range(ctx.plan.cold_start_repeats):
                    wall, stdout = run_cold(command, _probe_env(ctx.threads))
                    report = json.loads(stdout.strip().splitlines()[-1])
                    seconds.append(wall)
                    peaks.append(report["peak_rss_mib"])
                out["configs"][name] = {"cold_start": summarize(seconds), "peak_rss_mib": max(peaks),
                                        "what": f"load + embed the clip ({modality(backbone)} branch)"}
            except NotMeasured as exc:
                out["configs"][name] = not_measured(str(exc))
    return out


# ------------------------------------------------------------------------------------------ library build

def _songs_folder(ctx: Context) -> tuple[Path, float]:
    """A folder of links to the plan's songs, and their total seconds."""
    from tivm.runtime.audio import load_audio

    folder = A.scratch(f"songs-{ctx.plan.mode}")
    total = 0.0
    for name in ctx.plan.build_songs:
        source = ctx.shared(f"{SONGS}/{name}")
        link = folder / name
        if not link.exists():
            link.symlink_to(source)
        total += len(load_audio(source)) / 16000.0
    return folder, total


def library_build(ctx: Context) -> dict:
    """tivm.runtime.library.build_library over real songs (VGGish audio branch, hop 5 s), fp32 vs int8,
    then the `tivm-recommend` command's cold start against that library."""
    from tivm.runtime.library import build_library
    from tivm.runtime.model import Model

    folder, audio_seconds = _songs_folder(ctx)
    out = {"songs": list(ctx.plan.build_songs), "audio_seconds": audio_seconds, "hop_seconds": 5.0,
           "threads": ctx.threads, "configs": {}, "cli_cold_start": {}}
    for precision in ctx.plan.speed_precisions:
        name = engine_name(precision)
        try:
            model_dir, _ = ctx.export("full", VIDEO_BACKBONES[0], precision)
            model = Model.load(model_dir, intra_op_threads=ctx.threads)
            library_path = A.scratch("libraries") / f"{ctx.plan.mode}-{precision}.npz"
            summary, report = time_call(lambda: build_library(folder, model, library_path, progress=False), 0, 1)
            out["configs"][name] = {**summary, "windows": report.library.n_windows,
                                    "x_real_time": audio_seconds * 1000.0 / summary["median_ms"]}
            if precision in ctx.plan.cli_cold_start_precisions:
                out["cli_cold_start"][name] = _cli_cold_start(ctx, model_dir, library_path)
        except NotMeasured as exc:
            out["configs"].setdefault(name, not_measured(str(exc)))
            out["cli_cold_start"].setdefault(name, not_measured(str(exc)))
    return out


def _cli_cold_start(ctx: Context, model_dir: Path, library: Path) -> dict:
    try:
        command = [A.tool("tivm-recommend"), str(ctx.clip), "--library", str(library), "--model", str(model_dir),
                   "--json", "--threads", str(ctx.threads), "--search", "exact"]
        seconds = [run_cold(command, _probe_env(ctx.threads))[0] for _ in range(ctx.plan.cold_start_repeats)]
    except NotMeasured as exc:
        return not_measured(f"tivm-recommend {exc}")
    return {**summarize(seconds), "command": "tivm-recommend CLIP --library LIB --model DIR --json"}
