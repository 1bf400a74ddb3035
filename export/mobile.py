"""Phone packaging of a raw bundle: ORT-format files, the operator config for a reduced onnxruntime build, and
onnxruntime's mobile usability report, all in `MODEL_DIR/mobile/`, checked against the .onnx files.

* ``audio.ort``, ``video.ort``: `python -m onnxruntime.tools.convert_onnx_models_to_ort --optimization_style
  Fixed --target_platform arm --enable_type_reduction` (Fixed: the graph optimisations are applied once,
  here, so a phone loads the file without optimising it; arm: no x86-only NCHWc layout, and QDQ int8 kept
  as ARM's kernels like it. The files still run on x86: checked below).
* ``required_operators_and_types.config``: the operators and types both files use, for a reduced build
  (``build.py --minimal_build --include_ops_by_config ... --enable_reduced_operator_type_support``).
* ``usability.txt``: ``python -m onnxruntime.tools.check_onnx_model_mobile_usability`` on each .onnx file
  (whether NNAPI on Android or CoreML on iOS could take the model; its verdict here is the CPU EP).
* ``mobile.json``: what was run and what it said: tool versions, sizes and sha256s, the converter's log,
  each model's usability verdicts and unsupported operators, the float64 operators of the front end, and
  the .ort files' agreement with the .onnx files on the golden inputs (onnxruntime Python, CPU).

A tool that fails or warns is recorded there (`warnings`), not hidden; a conversion failure or an .ort file
that does not match its .onnx file raises MobileError.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tivm.export import frontend_graphs as fg
from tivm.runtime import manifest as M
from tivm.runtime.errors import ModelError
from tivm.runtime.files import write_text
from tivm.runtime.model import window_steps_for

MOBILE_DIR = "mobile"
REPORT_JSON = "mobile.json"
USABILITY_TXT = "usability.txt"
CONFIG = "required_operators_and_types.config"
TARGET_PLATFORM = "arm"
OPTIMIZATION_STYLE = "Fixed"
TOOL_TIMEOUT_S = 900
# .ort vs .onnx on the same machine and onnxruntime: the Fixed optimisations (fusions, the ARM QDQ choices)
# change float rounding order, so allow float noise, and one int8 step for the per-run quantized heads
MAX_ABS_DIFF = {"float": 1e-4, "int8": 1e-2}


class MobileError(ModelError):
    """The ORT conversion failed, or an .ort file does not give its .onnx file's outputs."""


def _run_tool(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S,
                          env=env)


def convert(model_files: list[Path], out_dir: Path) -> dict[str, Any]:
    """ORT-format files of `model_files` (one conversion, so the config covers all of them) into `out_dir`."""
    with tempfile.TemporaryDirectory(prefix=".tivm-ort-", dir=out_dir) as tmp:
        source = Path(tmp) / "onnx"
        source.mkdir()
        for path in model_files:  # a folder of just these (the tool converts every .onnx under a folder)
            try:
                os.link(path, source / path.name)
            except OSError:
                shutil.copyfile(path, source / path.name)
        done = _run_tool(["onnxruntime.tools.convert_onnx_models_to_ort", str(source), "--output_dir", str(out_dir),
                          "--optimization_style", OPTIMIZATION_STYLE, "--target_platform", TARGET_PLATFORM,
                          "--enable_type_reduction"])
    log = (done.stdout + done.stderr).replace(str(source), "<onnx>").replace(str(out_dir), "<mobile>")
    if done.returncode != 0:
        raise MobileError(f"convert_onnx_models_to_ort failed (exit {done.returncode}): {log.strip()[-2000:]}")
    missing = [p.stem + ".ort" for p in model_files if not (out_dir / (p.stem + ".ort")).is_file()]
    if missing or not (out_dir / CONFIG).is_file():
        raise MobileError(f"convert_onnx_models_to_ort wrote no {missing or CONFIG}: {log.strip()[-2000:]}")
    return {"command": f"python -m onnxruntime.tools.convert_onnx_models_to_ort <onnx> --output_dir <mobile> "
                       f"--optimization_style {OPTIMIZATION_STYLE} --target_platform {TARGET_PLATFORM} "
                       "--enable_type_reduction",
            "exit_status": done.returncode, "log": log.strip().splitlines(),
            "warnings": [line for line in log.splitlines() if re.search(r"warn|error|fail", line, re.I)]}


def usability(model_file: Path) -> tuple[str, dict[str, Any]]:
    """The mobile usability checker's text on one model, and its verdicts parsed out of it.

    onnxruntime 1.32's checker raises IndexError on a Transpose without a `perm` attribute (it reads
    ``node.attribute[0]``), which its own quantizer writes for Gemm weights: when it fails so, it is run
    again on a copy whose such Transposes name their default perm (reversed axes; the same graph), and
    both outputs are kept.
    """
    text, status = _check_usability(model_file)
    retried = None
    if status != 0 and "node.attribute[0]" in text:
        with tempfile.TemporaryDirectory(prefix=".tivm-usability-", dir=model_file.parent) as tmp:
            copy = Path(tmp) / model_file.name
            count = _write_with_explicit_perms(model_file, copy)
            if count:
                retried_text, retried_status = _check_usability(copy)
                retried = {"explicit_perms": count, "exit_status": retried_status}
                text += (f"\n----- the checker failed on the file above (IndexError on a Transpose without perm); "
                         f"again on a copy with explicit perm on those {count} Transposes -----\n{retried_text}")
                status = retried_status
    parsed = _parse_usability(text)
    return text, {"exit_status": status, "retried_with_explicit_perms": retried, **parsed}


def _check_usability(model_file: Path) -> tuple[str, int]:
    done = _run_tool(["onnxruntime.tools.check_onnx_model_mobile_usability", str(model_file)])
    return (done.stdout + done.stderr).replace(str(model_file.parent) + os.sep, ""), done.returncode


def _write_with_explicit_perms(source: Path, target: Path) -> int:
    """Copy an ONNX file, giving every Transpose without perm its default one; returns how many."""
    import onnx

    from tivm.export.quantize import spell_out_transpose_perms

    model = onnx.load(str(source))
    count = spell_out_transpose_perms(model)
    onnx.save(model, str(target))
    return count


def _parse_usability(text: str) -> dict[str, Any]:
    verdicts = {m.group(1): m.group(2) for m in re.finditer(r"Model should perform well with (.+?): (\w+)", text)}
    unsupported = {}
    section = None
    for line in text.splitlines():
        heading = re.search(r"Checking (NNAPI|CoreML \w+)", line)
        if heading:
            section = heading.group(1)
        found = re.search(r"Unsupported ops: (.*)", line)
        if found and section and section not in unsupported:  # the first listing: the model as it is
            unsupported[section] = sorted(op.split(":")[-1] for op in found.group(1).split(","))
    recommendation = next((line.split("INFO:", 1)[-1].strip() for line in text.splitlines()
                           if "For optimal performance" in line or "it is recommended to compare" in line), "")
    return {"verdicts": verdicts, "unsupported_ops": unsupported, "recommendation": recommendation}


def compare_with_onnx(model_dir: Path, mobile_dir: Path, manifest: M.ModelManifest, threads: int) -> dict:
    """Run each .ort file and its .onnx file on the golden inputs' runs; max |difference| per branch."""
    from tivm.export import golden

    results = {}
    for name in M.BRANCHES:
        spec = manifest.branch(name)
        data = golden.golden_pcm() if name == "audio" else golden.golden_frames()
        runs = golden.window_runs(name, len(data), window_steps_for(name, spec))
        onnx_out = golden.run_case(golden.open_session(model_dir / spec.file, threads), spec, data, runs)
        ort_out = golden.run_case(golden.open_session(mobile_dir / (Path(spec.file).stem + ".ort"), threads), spec,
                                  data, runs)
        method = str(spec.quantization.get("method", "none"))
        limit = MAX_ABS_DIFF["int8" if "int8" in method else "float"]
        diff = float(np.abs(onnx_out.astype(np.float64) - ort_out).max())
        results[name] = {"runs": len(runs), "max_abs_diff": diff, "limit": limit, "ok": diff <= limit}
    return results


def package(model_dir: str | os.PathLike, *, threads: int = 2) -> dict[str, Any]:
    """Write `model_dir/mobile/` for a raw bundle (see the module docstring); returns mobile.json's content."""
    import onnxruntime as ort

    model_dir = Path(model_dir)
    manifest = M.read_manifest(model_dir)
    if {manifest.branch(n).kind for n in M.BRANCHES} != {"raw"}:
        raise MobileError(f"{model_dir}: mobile packaging is for raw bundles (their graphs start at PCM / frames)")
    mobile_dir = model_dir / MOBILE_DIR
    if mobile_dir.exists():
        shutil.rmtree(mobile_dir)
    mobile_dir.mkdir()
    files = [model_dir / manifest.branch(name).file for name in M.BRANCHES]
    report: dict[str, Any] = {"onnxruntime": ort.__version__, "target_platform": TARGET_PLATFORM,
                              "optimization_style": OPTIMIZATION_STYLE, "config": CONFIG,
                              "usability_report": USABILITY_TXT, "warnings": []}
    report["converter"] = convert(files, mobile_dir)
    report["warnings"] += [f"convert_onnx_models_to_ort: {w.strip()}" for w in report["converter"]["warnings"]]
    texts, report["files"], report["usability"] = [], {}, {}
    for name, path in zip(M.BRANCHES, files):
        ort_file = mobile_dir / (path.stem + ".ort")
        report["files"][name] = {"onnx": path.name, "onnx_bytes": path.stat().st_size,
                                 "ort": f"{MOBILE_DIR}/{ort_file.name}", "ort_bytes": ort_file.stat().st_size,
                                 "ort_sha256": M.file_sha256(ort_file)}
        text, parsed = usability(path)
        texts.append(f"===== {path.name} =====\n{text.strip()}\n")
        report["usability"][name] = parsed
        if parsed["retried_with_explicit_perms"]:
            report["warnings"].append(
                f"check_onnx_model_mobile_usability failed on {path.name} (IndexError: a Transpose without perm, "
                f"written by onnxruntime's quantizer for Gemm weights); its verdicts are from a copy with "
                f"{parsed['retried_with_explicit_perms']['explicit_perms']} explicit default perms")
        if parsed["exit_status"] != 0:
            report["warnings"].append(f"check_onnx_model_mobile_usability on {path.name} exited "
                                      f"{parsed['exit_status']} (see {USABILITY_TXT})")
        no = sorted(ep for ep, verdict in parsed["verdicts"].items() if verdict != "YES")
        if no:
            report["warnings"].append(
                f"{path.name}: not recommended for {', '.join(no)} (the usability checker's verdict; its "
                f"recommendation: {parsed['recommendation'] or 'none given'}); unsupported there include "
                f"{_front_end_ops(name, parsed['unsupported_ops'])}")
        report["warnings"].append(
            f"{path.name}: the front end computes in float64 ({', '.join(fg.FLOAT64_OPS[name])}): an execution "
            "provider or reduced build without double kernels must leave those nodes on the CPU EP")
    write_text(mobile_dir / USABILITY_TXT, "\n".join(texts))
    report["ort_matches_onnx"] = compare_with_onnx(model_dir, mobile_dir, manifest, threads)
    write_text(mobile_dir / REPORT_JSON, json.dumps(report, indent=1, allow_nan=False) + "\n")
    bad = {name: r for name, r in report["ort_matches_onnx"].items() if not r["ok"]}
    if bad:
        raise MobileError(f"{mobile_dir}: .ort outputs differ from the .onnx files: {bad}")
    return report


def _front_end_ops(name: str, unsupported: dict[str, list[str]]) -> str:
    """The control flow and float64 ops of the front end among an EP's unsupported ops."""
    interesting = {"Scan", "If", "CumSum", "Mod", "Range"} | set(fg.FLOAT64_OPS[name])
    listed = sorted({op for ops in unsupported.values() for op in ops if op in interesting})
    return ", ".join(listed) if listed else "no front-end operators"


def summary(report: dict[str, Any]) -> str:
    sizes = ", ".join(f"{f['ort']} {f['ort_bytes'] / 1e6:.1f} MB (.onnx {f['onnx_bytes'] / 1e6:.1f} MB)"
                      for f in report["files"].values())
    agree = ", ".join(f"{name} max |diff| {r['max_abs_diff']:.2g}" for name, r in report["ort_matches_onnx"].items())
    return f"{sizes}; .ort vs .onnx on the golden inputs: {agree}; {len(report['warnings'])} warnings in mobile.json"
