"""The int8 recipes for ARM / mobile, measured: the figures of docs/export.md ("--int8-target arm").

The e2e checkpoint (tests/e2e_models.py: real EfficientNet-Lite0, responsive random VGGish, small TIVM head) is
exported float32 and as each int8 variant, then compared on the shared media (run from the repository root):

    .venv/bin/python tests/int8_arm_report.py build OUT      # exports: OUT/models/<variant>-<full|raw>
    .venv/bin/python tests/int8_arm_report.py accuracy OUT   # cosine vs float32, every window of the shared media
    .venv/bin/python tests/int8_arm_report.py speed OUT      # x86 ms per 15 s window; refuses at load >= 1.5
    .venv/bin/python tests/int8_arm_report.py checker OUT    # onnxruntime's mobile usability checker
    .venv/bin/python tests/int8_arm_report.py run OUT > OUT/x86.json          # the graphs on saved windows
    PYTHONPATH=.cache/arm/site qemu-aarch64-static -cpu cortex-a72 -L .cache/arm/sysroot \\
        .cache/arm/sysroot/usr/bin/python3.11 tests/int8_arm_report.py run OUT > OUT/arm.json
    .venv/bin/python tests/int8_arm_report.py compare OUT/x86.json OUT/arm.json

`-cpu max` instead of cortex-a72 emulates dotprod, i8mm, SVE2 and SME (onnxruntime then takes its KleidiAI
kernels); `run OUT --no-kleidiai` sets the session option mlas.disable_kleidiai.

`run` needs only numpy and onnxruntime (it is what runs on aarch64; tools/test-deps.sh prepares the sysroot);
emulated timings mean nothing and are not taken. Not a pytest module: it takes minutes (each export about one).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MEDIA = Path(os.environ.get("TIVM_SHARED", REPO.parent / "shared")) / "media"
BRANCHES = ("audio", "video")
# variant -> ExportOptions; "_cal8": the default 8 calibration windows from every shared file instead of the
# e2e export's 2 from the clips folder (a fairer chance for the static head's calibrated ranges)
VARIANTS = {"fp32": {"quantize": "none"},
            "portable": {"quantize": "int8", "int8_target": "portable"},
            "arm_dynamic": {"quantize": "int8", "int8_target": "arm", "int8_head": "dynamic"},
            "arm_static": {"quantize": "int8", "int8_target": "arm", "int8_head": "static"},
            "arm_dynamic_cal8": {"quantize": "int8", "int8_target": "arm", "int8_head": "dynamic",
                                 "num_calibration": 8, "calibration": "all"},
            "arm_static_cal8": {"quantize": "int8", "int8_target": "arm", "int8_head": "static",
                                "num_calibration": 8, "calibration": "all", "min_cosine": 0.0}}
RAW_VARIANTS = ("fp32", "portable", "arm_dynamic", "arm_static")  # also exported as raw bundles
TIMED = ("fp32", "portable", "arm_dynamic", "arm_static")
CLIPS_CALIBRATION = {"bbb_0-15s.mp4", "bbb_15-30s.mp4"}  # the clips folder's calibration files
MAX_LOAD = 1.5
REPEATS, WARMUP = 10, 2


def _media_all(out: Path) -> Path:
    """Every shared media file in one folder (links), for the _cal8 variants' calibration."""
    folder = out / "media_all"
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("clips", "phone", "songs"):
        for path in sorted((MEDIA / sub).iterdir()):
            link = folder / path.name
            if not link.exists():
                link.symlink_to(path)
    return folder


def build(out: Path, names: list[str]) -> None:
    sys.path.insert(0, str(REPO))
    from tests import e2e_models as E
    from tivm.export.pipeline import ExportOptions, export_model

    run = out / "run"
    if not (run / "checkpoint.json").exists():
        E.make_checkpoint(run)
    weights = out / "weights" / E.VGGISH_FILE
    if not weights.exists():
        E.save_responsive_vggish(weights)
    for name in names:
        settings = {"calibration": str(MEDIA / "clips"), "num_calibration": E.NUM_CALIBRATION, **VARIANTS[name]}
        if settings["calibration"] == "all":
            settings["calibration"] = str(_media_all(out))
        for kind in ("full", "raw") if name in RAW_VARIANTS else ("full",):
            clock = time.perf_counter()
            options = ExportOptions(branch_kind=kind, audio_backbone=E.AUDIO_BACKBONE,
                                    video_backbone=E.VIDEO_BACKBONE, audio_weights=str(weights),
                                    num_validation=E.NUM_VALIDATION, threads=2, progress=False, download=False,
                                    **settings)
            report = export_model(run, out / "models" / f"{name}-{kind}", options)
            (out / "reports").mkdir(exist_ok=True)
            (out / "reports" / f"{name}-{kind}.json").write_text(json.dumps(report, indent=1, default=str))
            print(f"{name} {kind}: {time.perf_counter() - clock:.0f} s, held-out min cosine "
                  f"{ {b: r['validation']['min'] for b, r in report['branches'].items()} }", flush=True)


def _windows(out: Path) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Every 15 s window (hop 5 s) of the shared clips (video and their audio) and songs (audio)."""
    sys.path.insert(0, str(REPO))
    from tivm.export import calibration as calib

    manifest = json.loads((out / "models" / "fp32-full" / "manifest.json").read_text())
    video_steps = calib.video_steps_fn(manifest["video"]["frontend"])
    clips = sorted((MEDIA / "clips").glob("*.mp4")) + sorted((MEDIA / "phone").glob("*.mp4"))
    songs = sorted((MEDIA / "songs").glob("*.ogg"))
    windows = {"audio": [], "video": []}
    for path in clips:
        windows["video"] += [(path.name, w) for w in calib.windows_of(video_steps(path))]
    for path in clips + songs:
        windows["audio"] += [(path.name, w) for w in calib.windows_of(calib.audio_steps(path))]
    return windows


def _session(path: Path, threads: int, kleidiai: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not kleidiai:  # onnxruntime's Arm KleidiAI kernels off (their SME dynamic-quantization GEMM: docs/export.md)
        options.add_session_config_entry("mlas.disable_kleidiai", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _held_out(variant: str, branch: str, names: list[str]) -> np.ndarray:
    """Windows of files the variant was not calibrated on (calibration.split_files: every third file)."""
    if not variant.endswith("_cal8"):
        return np.array([n not in CLIPS_CALIBRATION for n in names])
    files = sorted({n for n in names})  # the media_all folder's files with this modality, sorted as there
    held = {f for i, f in enumerate(files) if i % 3 == 2}
    return np.array([n in held for n in names])


def accuracy(out: Path) -> None:
    """One window per run (as the runtime, golden vectors and apps feed int8 graphs), 2 threads."""
    windows = _windows(out)
    variants = [v for v in VARIANTS if (out / "models" / f"{v}-full").is_dir()]
    embeddings = {}
    for variant in variants:
        for branch, items in windows.items():
            session = _session(out / "models" / f"{variant}-full" / f"{branch}.onnx", 2)
            name = session.get_inputs()[0].name
            embeddings[(variant, branch)] = np.concatenate([session.run(None, {name: w[None]})[0] for _, w in items])
    table = {}
    for branch, items in windows.items():
        names = [n for n, _ in items]
        reference = embeddings[("fp32", branch)]
        for variant in variants[1:]:
            got = embeddings[(variant, branch)]
            cosine = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
            held = _held_out(variant, branch, names)
            table[f"{variant} {branch}"] = {
                "windows": len(cosine), "files": len(set(names)), "min": float(cosine.min()),
                "median": float(np.median(cosine)), "held_out_windows": int(held.sum()),
                "held_out_min": float(cosine[held].min()), "held_out_median": float(np.median(cosine[held])),
                "worst_file": names[int(cosine.argmin())]}
            print(f"{variant:17s} {branch}: {json.dumps(table[f'{variant} {branch}'])}", flush=True)
    (out / "accuracy.json").write_text(json.dumps(table, indent=1))
    # a few windows for the aarch64 comparison: first, middle and last audio window, first and last video one
    n_audio, n_video = len(windows["audio"]), len(windows["video"])
    picks = {"audio": [0, n_audio // 2, n_audio - 1], "video": [0, n_video - 1]}
    np.savez(out / "arm_inputs.npz", **{f"{b}_{i}": windows[b][i][1] for b, index in picks.items() for i in index})


def speed(out: Path, force: bool = False) -> None:
    """Median of REPEATS runs of one 15 s window per branch, 2 threads, variants interleaved."""
    load = os.getloadavg()
    if load[0] >= MAX_LOAD and not force:
        sys.exit(f"1-minute load average {load[0]:.2f} >= {MAX_LOAD}: other jobs share the cores; try later "
                 "(or --force, and call the figures indicative)")
    inputs = np.load(out / "arm_inputs.npz")
    result: dict = {"load_before": load, "cpu": platform.processor() or platform.machine()}
    for branch in BRANCHES:
        window = inputs[f"{branch}_0"][None]
        sessions = {v: _session(out / "models" / f"{v}-full" / f"{branch}.onnx", 2) for v in TIMED}
        feeds = {v: {s.get_inputs()[0].name: window} for v, s in sessions.items()}
        times: dict[str, list[float]] = {v: [] for v in TIMED}
        for v, session in sessions.items():
            for _ in range(WARMUP):
                session.run(None, feeds[v])
        for _ in range(REPEATS):
            for v, session in sessions.items():
                clock = time.perf_counter()
                session.run(None, feeds[v])
                times[v].append(time.perf_counter() - clock)
        for v in TIMED:
            result[f"{v} {branch}"] = {"median_ms": 1e3 * statistics.median(times[v]), "min_ms": 1e3 * min(times[v])}
            print(f"{v:12s} {branch}: median {result[f'{v} {branch}']['median_ms']:.1f} ms, "
                  f"min {result[f'{v} {branch}']['min_ms']:.1f} ms", flush=True)
    result["load_after"] = os.getloadavg()
    print(f"1-minute load average before {load[0]:.2f}, after {result['load_after'][0]:.2f}")
    (out / f"speed-{int(time.time())}.json").write_text(json.dumps(result, indent=1))


def checker(out: Path) -> None:
    """tivm.export.mobile.usability (the checker, retried with explicit Transpose perms when it crashes)."""
    import re

    sys.path.insert(0, str(REPO))
    from tivm.export.mobile import usability

    report = {}
    for variant in RAW_VARIANTS:
        for kind in ("full", "raw"):
            for branch in BRANCHES:
                text, parsed = usability(out / "models" / f"{variant}-{kind}" / f"{branch}.onnx")
                if "again on a copy" in text:
                    text = text.split("again on a copy")[-1]
                nodes = {}
                for ep in ("NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram"):
                    section = text.split(f"Checking {ep}")[1].split("================")[0]
                    nodes[ep] = [f"{p} partitions, {n}/{t} nodes" for p, n, t in
                                 re.findall(r"(\d+) partitions with a total of (\d+)/(\d+) nodes", section)]
                report[f"{variant}-{kind}-{branch}"] = {**parsed, "as_is_then_fixed_shapes": nodes}
                print(f"{variant}-{kind}-{branch}: {sorted(set(parsed['verdicts'].values()))} {nodes}", flush=True)
    (out / "usability.json").write_text(json.dumps(report, indent=1))


def run(out: Path, variants: list[str], kleidiai: bool = True) -> None:
    """Each variant's full graphs on the saved windows, 1 thread: JSON on stdout (numpy + onnxruntime only)."""
    import onnxruntime as ort

    inputs = np.load(out / "arm_inputs.npz")
    result = {"machine": platform.machine(), "onnxruntime": ort.__version__, "kleidiai": kleidiai, "embeddings": {}}
    for variant in variants or TIMED:
        for branch in BRANCHES:
            session = _session(out / "models" / f"{variant}-full" / f"{branch}.onnx", 1, kleidiai)
            name = session.get_inputs()[0].name
            for key in inputs.files:
                if key.startswith(branch):
                    embedding = session.run(None, {name: inputs[key][None]})[0][0]
                    result["embeddings"][f"{variant}/{key}"] = embedding.tolist()
            print(variant, branch, file=sys.stderr, flush=True)
    print(json.dumps(result))


def compare(first: Path, second: Path) -> None:
    a_run, b_run = json.loads(first.read_text()), json.loads(second.read_text())
    print(f"{a_run['machine']} vs {b_run['machine']}, onnxruntime {a_run['onnxruntime']} / {b_run['onnxruntime']}")
    rows: dict[str, dict] = {}
    for key, b in b_run["embeddings"].items():
        a = np.array(a_run["embeddings"][key], np.float32)
        b = np.array(b, np.float32)
        variant, window = key.split("/")
        row = rows.setdefault(f"{variant} {window.split('_')[0]}", {"cos": [], "diff": [], "same": True})
        row["cos"].append(float(a.astype(np.float64) @ b / np.linalg.norm(a) / np.linalg.norm(b)))
        row["diff"].append(float(np.abs(a - b).max()))
        row["same"] &= bool(np.array_equal(a, b))
    for name, row in rows.items():
        print(f"{name:20s} {len(row['cos'])} windows: min cosine {min(row['cos']):.7f}, max |diff| "
              f"{max(row['diff']):.2e}, bit-identical {row['same']}")


def main(argv: list[str]) -> None:
    command, rest = argv[0], argv[1:]
    if command == "compare":
        compare(Path(rest[0]), Path(rest[1]))
        return
    out, extra = Path(rest[0]), rest[1:]
    if command == "build":
        build(out, extra or list(VARIANTS))
    elif command == "accuracy":
        accuracy(out)
    elif command == "speed":
        speed(out, force="--force" in extra)
    elif command == "checker":
        checker(out)
    elif command == "run":
        run(out, [v for v in extra if v != "--no-kleidiai"], kleidiai="--no-kleidiai" not in extra)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:] or ["help"])
