"""The benchmark suite: how fast, how small, and does int8 still rank like the fp32 reference?

    python benchmarks/run.py [--quick] [--out DIR] [--threads 2] [--only latency,sizes,...] [--merge]

Writes DIR/benchmarks.md (the report), DIR/benchmarks/results.json and DIR/benchmarks/*.png (default DIR:
benchmarks/results/). `--out docs` writes the committed report (docs/benchmarks.md). Full mode takes about
40 minutes on 2 cores the first time (exports and training runs are built then and cached; see
benchmarks/README.md), about 15 once they are. --quick (ResNet-50 + VGGish, fp32 and int8, 1 warm-up + 2
runs) takes 45 s on 2 cores once its exports are cached; its first run builds them (3-3½ minutes), printing
what it builds.
A section whose piece is missing or fails is reported as "not measured: <reason>", never guessed.
--merge keeps the other sections of DIR's results.json (each section records when it was measured).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script: make `benchmarks` importable

from benchmarks import _footprint, _latency, _machine, _overlap, _parity, _plots, _raw, _report, _search, _targets  # noqa: E402,E501
from benchmarks._context import FULL, QUICK, Context  # noqa: E402
from benchmarks._stats import NotMeasured, not_measured  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results"
DEFAULT_THREADS = 2
REPORT_NAME = "benchmarks.md"
DATA_DIR = "benchmarks"  # next to the report: results.json and the plots
LOADED_AT = 0.5  # 1-min load average before the run above which the machine counts as shared

SECTIONS = {
    "latency": _latency.per_stage,
    "end_to_end": _latency.end_to_end,
    "threads": _latency.threads_scaling,
    "clip_length": _latency.clip_length_scaling,
    "library_size": _search.library_scaling,
    "library_build": _footprint.library_build,
    "cold_start_memory": _footprint.cold_start_memory,
    "sizes": _footprint.sizes,
    "raw_bundle": _raw.raw_bundle,
    "pipeline": _overlap.pipeline,
    "long_clips": _overlap.long_clips,
    "startup": _overlap.startup,
    "parity_yt8m": _parity.yt8m_parity,
    "parity_synthetic": _parity.synthetic_parity,
}


def run_section(name: str, ctx: Context, results: dict) -> None:
    """One section into results[name]; a failure becomes "not measured" with its reason, never a crash."""
    started = time.perf_counter()
    print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
    try:
        results[name] = SECTIONS[name](ctx)
    except NotMeasured as exc:
        results[name] = not_measured(str(exc))
    except Exception as exc:  # a broken piece must not take the rest of the report with it
        results[name] = not_measured(f"{type(exc).__name__}: {exc}")
        results.setdefault("errors", {})[name] = traceback.format_exc(limit=4).strip().splitlines()[-1]
        traceback.print_exc()
    seconds = time.perf_counter() - started
    results.setdefault("section_seconds", {})[name] = round(seconds, 1)
    results.setdefault("measured_at", {})[name] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"[{time.strftime('%H:%M:%S')}] {name} done in {seconds:.0f} s"
          + (f" — {results[name]['reason']}" if results[name].get("status") == "not measured" else ""), flush=True)


def merge_previous(results: dict, out: Path, chosen: list[str], mode: str) -> None:
    """Carry over the sections not being re-run from an earlier run of the same mode in `out`."""
    path = out / DATA_DIR / "results.json"
    if not path.exists():
        return
    previous = json.loads(path.read_text())
    if previous.get("plan", {}).get("mode") != mode:
        raise SystemExit(f"--merge: {path} is from a {previous.get('plan', {}).get('mode')} run, this is {mode}")
    for name in SECTIONS:
        if name not in chosen and name in previous:
            results[name] = previous[name]
            for key in ("section_seconds", "measured_at"):
                if name in previous.get(key, {}):
                    results.setdefault(key, {})[name] = previous[key][name]
    kept = [n for n in SECTIONS if n not in chosen and n in previous]
    earlier = previous.get("machine") or {}
    here = {"commit": earlier.get("git_commit"), "started": earlier.get("started"),
            "load_average_start": earlier.get("load_average_start")}
    origins = (previous.get("merged_from") or {}).get("origin", {})
    results["merged_from"] = {"sections": kept, "origin": {n: origins.get(n, here) for n in kept}}


def write_outputs(results: dict, out: Path) -> Path:
    data = out / DATA_DIR
    data.mkdir(parents=True, exist_ok=True)
    (data / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    _plots.draw_all(results, data)
    report = out / REPORT_NAME
    report.write_text(_report.render(results))
    return report


def render_only(out: Path) -> int:
    """Report and plots again from results.json (after a change to the report code); targets re-checked."""
    path = out / DATA_DIR / "results.json"
    if not path.exists():
        raise SystemExit(f"--render-only: {path} is missing (run the benchmarks first)")
    results = json.loads(path.read_text())
    results["targets"] = _targets.check(results)
    print(f"wrote {write_outputs(results, out)} from {path}")
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few runs and small sizes (development)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the report, JSON and plots")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch / onnxruntime threads")
    parser.add_argument("--only", default="", help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    parser.add_argument("--merge", action="store_true",
                        help="keep the sections not run now from DIR's results.json (same mode only)")
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: rewrite DIR's report and plots from its results.json")
    args = parser.parse_args(argv)
    unknown = [s for s in filter(None, args.only.split(",")) if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render_only:
        return render_only(args.out)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    plan = QUICK if args.quick else FULL
    ctx = Context(plan=plan, threads=args.threads, out=args.out)
    from benchmarks._engines import set_torch_threads

    set_torch_threads(args.threads)
    started = time.perf_counter()
    machine = _machine.describe(REPO, args.threads)
    machine["loaded"] = bool(machine["load_average_start"] and machine["load_average_start"][0] > LOADED_AT)
    results: dict = {"plan": {k: (v if not isinstance(v, dict) else {str(a): b for a, b in v.items()})
                              for k, v in plan.__dict__.items()}, "machine": machine}
    chosen = [s for s in filter(None, args.only.split(","))] or list(SECTIONS)
    if args.merge:
        merge_previous(results, args.out, chosen, plan.mode)
    for name in chosen:
        run_section(name, ctx, results)
        write_outputs(results, args.out)  # partial results survive an interrupted run
    machine["load_average_end"] = _machine.load_average()
    results["wall_seconds"] = time.perf_counter() - started
    results["targets"] = _targets.check(results)
    report = write_outputs(results, args.out)
    print(f"wrote {report} and {args.out / DATA_DIR}/ in {results['wall_seconds']:.0f} s")
    for target in results["targets"]:
        mark = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
        print(f"  [{mark}] {target['target']}: {target['measured']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
