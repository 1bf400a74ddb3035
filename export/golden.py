"""Golden vectors of a raw bundle: fixed inputs and the embeddings the raw graphs give them, so an app on any
platform (Android, iOS, a browser) can check its onnxruntime build and its feeding code against this one.

`MODEL_DIR/golden/` holds

* ``audio_pcm.f32``: 16 s of 16 kHz mono PCM, float32 little-endian (a log chirp, an amplitude-modulated
  tone and a gated tone, so every mel band sees sound and silence);
* ``video_frames.u8``: 15 RGB frames of 120 x 160, uint8, (T, H, W, 3) row-major (moving gradients, a
  checkerboard, a moving disc and diagonal lines: edges for the resize, colour for the normalisation);
* ``golden.json``: for each input, its file, dtype, byte order, shape and sha256, the model file it was
  computed with (and its sha256), and a list of **runs**: a slice of the input (samples ``[start, stop)``
  or frames ``[start, stop)``), the hop fed with it, and the expected ``embedding`` row (the graph's output
  as it is: unit L2 norm), plus the tolerances a comparison must meet, the onnxruntime version, opset and IR
  version, and the platform they were computed on.

Each run feeds the graph one window, as the runtime does (tivm.runtime.model: one window per run, hop =
window length): the audio runs are windows 0 and 1 of the 16 s signal (1 is the window flush with the
end) and a 4-patch prefix (one window loop-padded inside the graph); the video runs are the 15 frames and
the first 4 (loop-padded).

Check an export (exit status 0 when every comparison is within its tolerance, 1 when one is not, 2 on a
missing or malformed file)::

    python -m tivm.export.golden MODEL_DIR            # check: the .onnx files, mobile/*.ort, the Python runtime
    python -m tivm.export.golden MODEL_DIR --write    # recompute them here (after re-exporting)

or ``tivm.export.golden.check(model_dir)`` (returns the comparisons, raises GoldenMismatch). Only numpy,
onnxruntime and tivm.runtime are needed, not torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tivm.runtime import audio as _audio
from tivm.runtime import manifest as M
from tivm.runtime.errors import ModelError
from tivm.runtime.files import read_json_object, write_text
from tivm.runtime.model import l2_normalize, window_starts, window_steps_for

FORMAT = "tivm-golden"
VERSION = 1
GOLDEN_DIR = "golden"
GOLDEN_JSON = "golden.json"
AUDIO_FILE = "audio_pcm.f32"
VIDEO_FILE = "video_frames.u8"
AUDIO_SECONDS = 16.0  # 16 patches: window 0 and the window flush with the end (start 1)
VIDEO_SHAPE = (15, 120, 160, 3)  # T, H, W, 3: one window of small frames, upscaled by the resize
SHORT_STEPS = 4  # the short runs: 4 patches / 4 frames, loop-padded to a window inside the graph
DTYPES = {"float32": "<f4", "uint8": "u1", "int64": "<i8"}
# Tolerances an app's result must meet against the stored embeddings, per kind of comparison. float32 and
# fp16-stored graphs differ across CPUs and builds by float rounding only; int8 graphs quantize their head's
# activations per run from their own range, so a rounding difference upstream can move one quantization
# step: measured here (threads 1-4, graph optimizations off/on, ARM-targeted .ort) int8 runs differed from
# each other by at most MEASURED_INT8 (docs/export.md), and the tolerance leaves room for other kernels.
TOLERANCES = {
    "float": {"max_abs_diff": 1e-4, "min_cosine": 0.99999},
    "int8": {"max_abs_diff": 1e-2, "min_cosine": 0.9995},
}
THREADS = 2


class GoldenMismatch(ModelError):
    """A comparison outside its tolerance, or golden files that do not fit the model. `report` has them all."""

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report or {}


# ------------------------------------------------------------------------------------------ inputs

def golden_pcm(seconds: float = AUDIO_SECONDS, sample_rate: int = _audio.SAMPLE_RATE) -> np.ndarray:
    """float32 (n,) in [-1, 1]: a log chirp 60 Hz -> 7 kHz, a 440 Hz tone at 2 Hz AM, a 2.5 kHz tone every other
    half second."""
    t = np.arange(int(round(seconds * sample_rate)), dtype=np.float64) / sample_rate
    low, high = 60.0, 7000.0
    rate = math.log(high / low) / seconds
    chirp = np.sin(2 * np.pi * low * (np.exp(rate * t) - 1.0) / rate)
    tone = np.sin(2 * np.pi * 440.0 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 2.0 * t))
    gated = np.sin(2 * np.pi * 2500.0 * t) * (np.floor(2 * t) % 2 == 0)
    return (0.45 * chirp + 0.3 * tone + 0.15 * gated).astype(np.float32)


def golden_frames(shape: tuple[int, int, int, int] = VIDEO_SHAPE) -> np.ndarray:
    """uint8 (T, H, W, 3) pictures with structure, computed in integers (the same bytes on every machine)."""
    count, height, width, _ = shape
    y, x = np.mgrid[0:height, 0:width]
    frames = np.empty(shape, np.uint8)
    for t in range(count):
        red = (x * 255 // max(width - 1, 1) + 17 * t) % 256  # horizontal gradient, scrolling
        green = np.where(((x + 3 * t) // 8 + y // 8) % 2 == 0, 40 + 10 * t, 215 - 5 * t)  # moving checkerboard
        cy, cx = height // 2 + (t % 5) * 4 - 8, 20 + 8 * t
        disc = (y - cy) ** 2 + (x - cx) ** 2 <= (height // 5) ** 2
        blue = np.where(disc, 250, y * 255 // max(height - 1, 1))  # vertical gradient under a moving disc
        lines = (x + y + 2 * t) % 23 == 0  # thin diagonal lines: the sharpest edges
        frame = np.stack([red, green, blue], axis=-1)
        frame[lines] = (255, 255, 255)
        frames[t] = frame
    return frames


def window_runs(name: str, length: int, window: int) -> list[dict[str, Any]]:
    """The slices fed one per run: the runtime's windows of the whole input (one window per run), then a short
    prefix of SHORT_STEPS steps."""
    if name == "audio":
        steps, per_step = _audio.num_patches(length), _audio.PATCH_HOP_SAMPLES
        span = _audio.patch_samples(min(window, steps))
        short = _audio.patch_samples(SHORT_STEPS)
    else:
        steps, per_step, span, short = length, 1, min(window, length), SHORT_STEPS
    runs = [{"slice": [int(s * per_step), int(s * per_step + span)], "hop": window, "whole_input_window": i,
             "what": f"window {i} of the whole input" + (" (flush with its end)" if i and s + window == steps else "")}
            for i, s in enumerate(window_starts(steps, window, window))]
    runs.append({"slice": [0, short], "hop": window, "whole_input_window": None,
                 "what": f"the first {SHORT_STEPS} {'patches' if name == 'audio' else 'frames'} alone: one window, "
                         "loop-padded inside the graph"})
    return runs


# ------------------------------------------------------------------------------------------ running

def open_session(path: Path, threads: int = THREADS):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def run_case(session, spec: M.BranchManifest, data: np.ndarray, runs: list[dict]) -> np.ndarray:
    """(len(runs), D) graph outputs, one run per slice, as the graph gives them."""
    rows = []
    for run in runs:
        start, stop = run["slice"]
        feeds = {spec.input.name: np.ascontiguousarray(data[start:stop]),
                 spec.hop.name: np.array(run["hop"], np.int64)}
        out = session.run([spec.output.name], feeds)[0]
        if out.shape[0] != 1:
            raise GoldenMismatch(f"{spec.file}: the run on {run['what']} gave {out.shape[0]} windows, expected 1")
        rows.append(out.reshape(-1))
    return np.stack(rows).astype(np.float32)


def compare(got: np.ndarray, expected: np.ndarray, tolerance: dict) -> dict[str, Any]:
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    diff = float(np.abs(got - expected).max())
    cosines = np.sum(l2_normalize(got) * l2_normalize(expected), axis=-1, dtype=np.float64)
    cosine = float(cosines.min())
    ok = diff <= tolerance["max_abs_diff"] and cosine >= tolerance["min_cosine"]
    return {"max_abs_diff": diff, "min_cosine": cosine, "ok": bool(ok)}


def _tolerance(spec: M.BranchManifest) -> dict[str, float]:
    method = str((spec.quantization or {}).get("method", "none"))
    return dict(TOLERANCES["int8" if "int8" in method else "float"])


def _opset_and_ir(path: Path) -> tuple[int | None, int | None]:
    try:
        import onnx
    except ImportError:  # an app's check without onnx: not needed to run the graphs
        return None, None
    model = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return opset, model.ir_version


# ------------------------------------------------------------------------------------------ write / check

def write(model_dir: str | Path, *, threads: int = THREADS) -> dict[str, Any]:
    """Compute the golden vectors of a raw bundle with onnxruntime (CPU) and write `model_dir/golden/`."""
    import onnxruntime as ort

    model_dir = Path(model_dir)
    manifest = _raw_manifest(model_dir)
    folder = model_dir / GOLDEN_DIR
    folder.mkdir(exist_ok=True)
    inputs = {"audio": (AUDIO_FILE, golden_pcm()), "video": (VIDEO_FILE, golden_frames())}
    cases = []
    for name in M.BRANCHES:
        spec = manifest.branch(name)
        file_name, data = inputs[name]
        raw = np.ascontiguousarray(data, DTYPES[spec.input.dtype]).tobytes()
        (folder / file_name).write_bytes(raw)
        runs = window_runs(name, len(data), window_steps_for(name, spec))
        expected = run_case(open_session(model_dir / spec.file, threads), spec, data, runs)
        for run, row in zip(runs, expected):
            run["embedding"] = [float(v) for v in row]
        opset, ir_version = _opset_and_ir(model_dir / spec.file)
        cases.append({
            "branch": name,
            "model_file": spec.file, "model_sha256": spec.sha256, "opset": opset, "ir_version": ir_version,
            "quantization": spec.quantization.get("method"),
            "input": {"file": file_name, "name": spec.input.name, "dtype": spec.input.dtype, "byte_order": "little",
                      "shape": list(data.shape), "sha256": hashlib.sha256(raw).hexdigest(),
                      **({"sample_rate": _audio.SAMPLE_RATE} if name == "audio" else {"layout": "THWC, RGB"})},
            "hop_input": {"name": spec.hop.name, "dtype": spec.hop.dtype, "unit_seconds": spec.hop.unit_seconds},
            "output": {"name": spec.output.name, "shape": [1, spec.embedding_dim], "dtype": "float32"},
            "window_steps": window_steps_for(name, spec),
            "tolerance": _tolerance(spec),
            "runs": runs,
        })
    golden = {
        "format": FORMAT, "version": VERSION, "model_fingerprint": manifest.model_fingerprint,
        "computed_with": {"onnxruntime": ort.__version__, "provider": "CPUExecutionProvider",
                          "intra_op_threads": threads, "graph_optimization_level": "ORT_ENABLE_ALL (default)",
                          "numpy": np.__version__, "python": platform.python_version(),
                          "machine": platform.machine(), "system": platform.system()},
        "how_to_compare": "feed each run's slice of the input file and its hop (int64 scalar) to the model file; "
                          "the output (1, D) must be within the case's tolerance of `embedding`: "
                          "max |difference| <= max_abs_diff and cosine >= min_cosine",
        "cases": cases,
    }
    write_text(folder / GOLDEN_JSON, json.dumps(golden, indent=1, allow_nan=False) + "\n")
    return {"folder": str(folder), "runs": {c["branch"]: len(c["runs"]) for c in cases},
            "onnxruntime": ort.__version__}


def read(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / GOLDEN_DIR / GOLDEN_JSON
    golden = read_json_object(path, lambda problem: GoldenMismatch(f"{path}: {problem}"))
    if golden.get("format") != FORMAT or golden.get("version") != VERSION:
        raise GoldenMismatch(f"{path}: not {FORMAT} version {VERSION}")
    return golden


def load_input(model_dir: str | Path, case: dict) -> np.ndarray:
    """A case's input file as the array golden.json describes, after checking its size and sha256."""
    spec = case["input"]
    path = Path(model_dir) / GOLDEN_DIR / Path(str(spec["file"])).name
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GoldenMismatch(f"{path}: cannot read ({exc.strerror or exc})") from None
    if spec.get("dtype") not in DTYPES:
        raise GoldenMismatch(f"{path}: golden.json gives dtype {spec.get('dtype')!r}, not one of {sorted(DTYPES)}")
    dtype = np.dtype(DTYPES[spec["dtype"]])
    shape = tuple(int(v) for v in spec["shape"])
    if len(raw) != dtype.itemsize * math.prod(shape):
        raise GoldenMismatch(f"{path}: {len(raw)} bytes, golden.json describes {spec['dtype']} {list(shape)}")
    if hashlib.sha256(raw).hexdigest() != spec["sha256"]:
        raise GoldenMismatch(f"{path}: sha256 differs from golden.json's (the input file was changed)")
    return np.frombuffer(raw, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def check(model_dir: str | Path, *, threads: int = THREADS, ort_files: bool = True, runtime: bool = True,
          raise_on_failure: bool = True) -> dict[str, Any]:
    """Compare the golden vectors with the bundle's .onnx files, its mobile/*.ort files (when there) and the
    Python runtime (`Model.embed_audio` / `embed_video` on the same inputs). Returns every comparison;
    raises GoldenMismatch when one is outside its tolerance (unless raise_on_failure=False)."""
    model_dir = Path(model_dir)
    manifest = _raw_manifest(model_dir)
    golden = read(model_dir)
    model = None
    if runtime:
        from tivm.runtime.model import Model

        model = Model.load(model_dir, intra_op_threads=threads)
    try:
        comparisons = _compare_cases(model_dir, manifest, golden, model, threads, ort_files)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        where = model_dir / GOLDEN_DIR / GOLDEN_JSON
        raise GoldenMismatch(f"{where}: malformed ({type(exc).__name__}: {exc})") from None
    problems = [f"{item['branch']} via {item['engine']} ({item['file']}): max |diff| {item['max_abs_diff']:.3g}, "
                f"min cosine {item['min_cosine']:.6f}" for item in comparisons if not item["ok"]]
    report = {"passed": not problems, "comparisons": comparisons, "model_dir": str(model_dir)}
    if problems and raise_on_failure:
        raise GoldenMismatch(f"{model_dir}: golden vectors differ beyond tolerance: " + "; ".join(problems), report)
    return report


def _compare_cases(model_dir: Path, manifest: M.ModelManifest, golden: dict, model, threads: int,
                   ort_files: bool) -> list[dict[str, Any]]:
    comparisons = []
    covered = sorted(str(case["branch"]) for case in golden["cases"] if case["runs"])
    if covered != sorted(M.BRANCHES):
        raise GoldenMismatch(f"{model_dir / GOLDEN_DIR / GOLDEN_JSON}: needs one case with runs per branch "
                             f"{list(M.BRANCHES)}, has {covered}")
    for case in golden["cases"]:
        name = case["branch"]
        spec = manifest.branch(name)
        if case["model_sha256"] != spec.sha256:
            raise GoldenMismatch(f"{model_dir / GOLDEN_DIR / GOLDEN_JSON}: computed with another {spec.file} "
                                 f"(sha256 {case['model_sha256'][:12]}…, the bundle's is {spec.sha256[:12]}…); "
                                 "regenerate with --write")
        data = load_input(model_dir, case)
        runs, tolerance = case["runs"], case["tolerance"]
        expected = np.array([run["embedding"] for run in runs], np.float64)
        engines = {"onnx": model_dir / spec.file}
        ort_file = model_dir / "mobile" / (Path(spec.file).stem + ".ort")
        if ort_files and ort_file.is_file():
            engines["ort"] = ort_file
        for engine, path in engines.items():
            got = run_case(open_session(path, threads), spec, data, runs)
            comparisons.append({"branch": name, "engine": engine, "file": str(path.relative_to(model_dir)),
                                **compare(got, expected, tolerance)})
        if model is not None:
            got = _runtime_embeddings(model, name, data, runs)
            rows = [i for i, run in enumerate(runs) if run.get("whole_input_window") is not None]
            comparisons.append({"branch": name, "engine": "runtime", "file": "tivm.runtime.Model",
                                **compare(got, l2_normalize(expected[rows + [len(runs) - 1]]), tolerance)})
    return comparisons


def _runtime_embeddings(model, name: str, data: np.ndarray, runs: list[dict]) -> np.ndarray:
    """The Python runtime on the whole input (its windows) and on the short run's slice (one window)."""
    embed = model.embed_audio if name == "audio" else model.embed_video
    whole = embed(data).vectors
    start, stop = runs[-1]["slice"]
    short = embed(data[start:stop]).vectors
    return np.concatenate([whole, short])


def _raw_manifest(model_dir: Path) -> M.ModelManifest:
    manifest = M.read_manifest(model_dir)
    kinds = {name: manifest.branch(name).kind for name in M.BRANCHES}
    if set(kinds.values()) != {"raw"}:
        raise GoldenMismatch(f"{model_dir}: golden vectors are for raw bundles (tivm-export --branch-kind raw), "
                             f"this one has {kinds}")
    return manifest


# ------------------------------------------------------------------------------------------ command line

def main(argv: Optional[list[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tivm.export.golden", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="a raw model directory (tivm-export --branch-kind raw)")
    parser.add_argument("--write", action="store_true", help="recompute and write golden/ instead of checking")
    parser.add_argument("--threads", type=int, default=THREADS, help="onnxruntime threads")
    parser.add_argument("--json", action="store_true", help="print the comparisons as JSON")
    args = parser.parse_args(argv)
    try:
        if args.write:
            result = write(args.model_dir, threads=args.threads)
            print(json.dumps(result) if args.json else f"{result['folder']}: golden vectors written "
                  f"({result['runs']} runs, onnxruntime {result['onnxruntime']})")
            return 0
        report = check(args.model_dir, threads=args.threads, raise_on_failure=False)
    except ModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for item in report["comparisons"]:
            print(f"{item['branch']:5} {item['engine']:7} {item['file']:28} max |diff| {item['max_abs_diff']:.3g}  "
                  f"min cosine {item['min_cosine']:.7f}  {'ok' if item['ok'] else 'FAIL'}")
        print("golden check: " + ("passed" if report["passed"] else "FAILED"))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
