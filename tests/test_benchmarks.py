"""The benchmark harness's own logic on fake timings: statistics, targets, report and plots.

Benchmarks are not tests: nothing here times a model or runs benchmarks/run.py's sections.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import _report, _stats, _targets
from benchmarks.run import parse_args, write_outputs


def fake_timing(median: float, runs: int = 10) -> dict:
    return _stats.summarize([median / 1000.0] * runs)


def fake_results(int8_ms: float = 150.0, int8_bytes: int = 26_000_000, delta: float = 0.2) -> dict:
    search = {**fake_timing(5.0), "windows": 10_000, "songs": 250}

    def row(model_ms: float) -> dict:
        return {"decode": fake_timing(900), "preprocess": fake_timing(300), "model": fake_timing(model_ms),
                "head": fake_timing(2.0), "backbone": {"median_ms": model_ms - 2.0, "derived": True},
                "search": search, "total_ms": 1205.0 + model_ms}

    recall = {"1": 10.0, "5": 30.0, "10": 40.0, "25": 60.0, "50": 75.0}
    shifted = {k: v + delta for k, v in recall.items()}
    parity = {"n": 1015, "configuration": "IVM-M", "data": "fake", "epochs": 1,
              "fp32_pytorch": {"video_to_audio": recall, "audio_to_video": recall},
              "int8_runtime": {"video_to_audio": shifted, "audio_to_video": recall},
              "delta_points": {"video_to_audio": {k: delta for k in recall},
                               "audio_to_video": {k: 0.0 for k in recall}},
              "random": {k: int(k) / 10.15 for k in recall},
              "cosine_fp32_vs_int8": {b: {"n": 1015, "min": 0.99, "p1": 0.995, "median": 0.999}
                                      for b in ("audio", "video")}}
    return {
        "plan": {"mode": "quick"},
        "machine": {"cpu": "fake", "threads": 2, "versions": {}, "load_average_start": [0.1, 0.1, 0.1]},
        "latency": {"clip": "/x/bbb_0-15s.mp4", "threads": 2, "warmup": 1, "runs": 10, "frames": [15, 720, 1280, 3],
                    "patches": [15, 96, 64], "search": search,
                    "branches": {"resnet50": {"pytorch-fp32": row(1200.0), "onnxruntime-fp32": row(600.0),
                                              "onnxruntime-int8": row(int8_ms),
                                              "onnxruntime-fp16": _stats.not_measured("export failed")}}},
        "sizes": {"branches": {"resnet50": {"onnxruntime-fp32": {"bytes": 100_000_000, "share_of_fp32": 1.0},
                                            "onnxruntime-int8": {"bytes": int8_bytes,
                                                                 "share_of_fp32": int8_bytes / 100_000_000}}},
                  "heads": {}},
        "parity_yt8m": parity,
        "library_size": _stats.not_measured("faiss missing"),
    }


def test_summarize_gives_median_and_p90_in_milliseconds():
    summary = _stats.summarize([0.001 * x for x in range(1, 11)])  # 1 .. 10 ms
    assert summary["runs"] == 10
    assert summary["median_ms"] == pytest.approx(5.5)
    assert summary["p90_ms"] == pytest.approx(9.1)
    assert summary["min_ms"] == pytest.approx(1.0) and summary["max_ms"] == pytest.approx(10.0)


def test_time_call_runs_warmup_unmeasured_then_the_measured_runs():
    calls = []
    summary, last = _stats.time_call(lambda: calls.append(1) or len(calls), warmup=2, runs=3)
    assert len(calls) == 5 and last == 5 and summary["runs"] == 3
    with pytest.raises(ValueError):
        _stats.time_call(lambda: None, warmup=0, runs=0)


def test_cosine_summary_of_identical_and_flipped_rows():
    a = np.random.default_rng(0).normal(size=(50, 8))
    b = a.copy()
    b[0] *= -1
    summary = _stats.cosine_summary(a, b)
    assert summary["min"] == pytest.approx(-1.0) and summary["median"] == pytest.approx(1.0)
    assert len(summary["percentiles"]) == 101 and summary["percentiles"][0] == pytest.approx(-1.0)
    assert summary["percentiles"][-1] == pytest.approx(1.0) and summary["percentiles"] == sorted(summary["percentiles"])
    with pytest.raises(ValueError):
        _stats.cosine_summary(a, b[:, :4])


def test_targets_met_when_the_figures_are_inside_them():
    checks = _targets.check(fake_results(int8_ms=150.0))
    by_name = {c["target"].split(":")[0][:40]: c for c in checks}
    assert all(c["met"] for c in checks if "int8 ≤" in c["target"] or "faster" in c["target"]), checks
    sizes = [c for c in checks if "files" in c["target"]][0]
    assert sizes["met"] is True and "26%" in sizes["measured"]
    recall = [c for c in checks if "Recall" in c["target"]][0]
    assert recall["met"] is True
    assert by_name  # every target has a name


def test_targets_missed_and_unmeasured_are_reported_as_such():
    results = fake_results(int8_ms=250.0, int8_bytes=40_000_000, delta=0.8)
    checks = _targets.check(results)
    latency = [c for c in checks if "≤ 200 ms" in c["target"]][0]
    assert latency["met"] is False and "250 ms" in latency["measured"]
    speedup_fp32 = [c for c in checks if "onnxruntime fp32" in c["target"]][0]
    assert speedup_fp32["met"] is False and "2.40×" in speedup_fp32["measured"]
    assert [c for c in checks if "files" in c["target"]][0]["met"] is False
    assert [c for c in checks if "Recall" in c["target"]][0]["met"] is False
    del results["latency"]
    assert all(c["met"] is None for c in _targets.latency_targets(results))


def test_report_shows_figures_and_not_measured_reasons(tmp_path):
    results = fake_results()
    results["targets"] = _targets.check(results)
    report = write_outputs(results, tmp_path)
    text = report.read_text()
    assert "| onnxruntime-int8 | 900.0 (900.0) | 300.0 (300.0) | 148.0† | 2.00 (2.00) | 150.0 (150.0) |" in text
    assert "not measured: export failed" in text
    assert "not measured: faiss missing" in text
    assert "### Synthetic sequences\n\nnot measured: section not run" in text
    assert "- [x] ResNet-50 video branch" in text
    assert "+0.20" in text  # the recall delta row
    saved = json.loads((tmp_path / "benchmarks" / "results.json").read_text())
    assert saved["latency"]["branches"]["resnet50"]["onnxruntime-int8"]["model"]["median_ms"] == 150.0
    pngs = sorted(p.name for p in (tmp_path / "benchmarks").glob("*.png"))
    assert pngs == ["latency_stages.png", "recall_parity.png"]  # fake cosines carry no percentiles: no plot
    assert all((tmp_path / "benchmarks" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_headline_table_has_the_speedup_against_pytorch():
    lines = _report.headline(fake_results(int8_ms=150.0))
    int8_row = [line for line in lines if line.startswith("| onnxruntime-int8")][0]
    assert "8.0×" in int8_row  # 1200 / 150


def test_cli_rejects_unknown_sections():
    with pytest.raises(SystemExit):
        parse_args(["--only", "latency,nonsense"])
    assert parse_args(["--quick", "--only", "sizes"]).quick


def test_merge_keeps_sections_not_rerun_and_refuses_another_mode(tmp_path):
    from benchmarks.run import merge_previous

    earlier = fake_results()
    earlier["measured_at"] = {"parity_yt8m": "2026-01-01T00:00:00Z", "latency": "2026-01-01T00:00:00Z"}
    write_outputs(earlier, tmp_path)
    now = {"plan": {"mode": "quick"}, "machine": {}}
    merge_previous(now, tmp_path, ["latency"], "quick")
    assert now["parity_yt8m"]["n"] == 1015 and "latency" not in now
    assert now["measured_at"] == {"parity_yt8m": "2026-01-01T00:00:00Z"}
    assert "parity_yt8m" in now["merged_from"]["sections"] and "parity_yt8m" in now["merged_from"]["origin"]
    assert "carried over" in _report.render({**now, "targets": []})
    with pytest.raises(SystemExit):
        merge_previous({"plan": {"mode": "full"}}, tmp_path, ["latency"], "full")


def test_amx_layout_gets_its_own_targets_and_headline_row():
    results = fake_results(int8_ms=150.0)
    results["latency"]["branches"]["resnet50"]["onnxruntime-int8-amx"] = fake_results(int8_ms=100.0)[
        "latency"]["branches"]["resnet50"]["onnxruntime-int8"]
    checks = _targets.latency_targets(results)
    amx = [c for c in checks if "amx" in c["target"] and "onnxruntime fp32" in c["target"]][0]
    assert amx["met"] is True and "6.00×" in amx["measured"]  # 600 / 100
    portable = [c for c in checks if "amx" not in c["target"] and "onnxruntime fp32" in c["target"]][0]
    assert portable["met"] is True and "4.00×" in portable["measured"]
    assert any(line.startswith("| onnxruntime-int8-amx") for line in _report.headline(results))
    assert not any("amx" in c["target"] for c in _targets.latency_targets(fake_results()))


def test_recall_target_is_not_judged_on_a_gallery_too_small_to_resolve_it():
    results = fake_results(delta=0.0)
    results["parity_yt8m"]["n"] = 43  # one clip = 2.33 points
    recall = _targets.recall_targets(results)[0]
    assert recall["met"] is None and "N = 43" in recall["note"]


def test_interleaved_timing_settles_before_each_call_without_timing_the_pause():
    import time

    starts = []
    timed = _stats.time_interleaved({"a": lambda: starts.append(time.perf_counter()), "b": lambda: None},
                                    warmup=0, runs=3, settle_s=0.02)
    assert all(v["max_ms"] < 15 for v in timed.values())  # the 20 ms pause is outside the measured window
    assert min(np.diff(starts)) >= 0.04  # two pauses between consecutive runs of "a"


def test_render_only_rewrites_the_report_from_results_json(tmp_path):
    from benchmarks.run import main

    results = fake_results(int8_ms=150.0)
    write_outputs(results, tmp_path)
    (tmp_path / "benchmarks.md").write_text("stale")
    assert main(["--out", str(tmp_path), "--render-only"]) == 0
    text = (tmp_path / "benchmarks.md").read_text()
    assert "- [x] ResNet-50 video branch" in text  # targets were checked again, not carried as text
    with pytest.raises(SystemExit, match="results.json is missing"):
        main(["--out", str(tmp_path / "empty"), "--render-only"])


def test_cosine_distribution_is_plotted_when_percentiles_were_measured(tmp_path):
    from benchmarks import _plots

    results = fake_results()
    for branch in ("audio", "video"):
        results["parity_yt8m"]["cosine_fp32_vs_int8"][branch]["percentiles"] = list(np.linspace(0.999, 1.0, 101))
    path = _plots.cosine_distribution(results, tmp_path / "c.png")
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"


def fake_raw_bundle() -> dict:
    """A raw_bundle section: ResNet-50 int8 measured (Node too), fp32 failed, VGGish not measured at all."""
    row = {"bundle": "x-raw-1", "build": {"seconds": 41.5, "reused": False},
           "sizes": {"full_onnx": {"bytes": 26_100_000}, "raw_onnx": {"bytes": 26_140_000},
                     "mobile_ort": _stats.not_measured("audio.ort is missing")},
           "agreement": {"windows": 1, "cosine_min": 1.0, "max_abs_diff": 0.0},
           "full": fake_timing(120.0), "raw": fake_timing(150.0),
           "frontend_in_graph": {"median_ms": 30.0, "derived": True},
           "numpy_frontend_plus_full": {"median_ms": 420.0, "derived": True},
           "node": {"wall": fake_timing(900.0, runs=3), "own": fake_timing(400.0, runs=3), "runs": 3, "threads": 2,
                    "windows": 1, "vs_python_raw": {"windows": 1, "cosine_min": 0.9999991, "max_abs_diff": 1e-6}}}
    resnet = {"modality": "video", "input": [15, 720, 1280, 3], "steps": [15, 3, 224, 224],
              "frontend": {"numpy": fake_timing(300.0), "graph": fake_timing(60.0),
                           "graph_vs_numpy": {"max_abs_diff": 0.0}},
              "precisions": {"int8": row, "fp32": _stats.not_measured("make_raw_bundle failed: MobileError: x")}}
    return {"clip": "/x/bbb_0-15s.mp4", "threads": 2, "warmup": 1, "runs": 10, "interleaved": True,
            "settle_ms": 50.0, "node_runs": 3, "frames": [15, 720, 1280, 3], "pcm_samples": 240_000,
            "branches": {"resnet50": resnet, "vggish": _stats.not_measured("the clip has no soundtrack")}}


def test_raw_bundle_section_renders_figures_and_reasons(tmp_path):
    results = fake_results()
    results["raw_bundle"] = fake_raw_bundle()
    text = "\n".join(_report.raw_bundle_section(results))
    assert text.startswith('## Raw-input ("edge") bundle')
    assert "| resnet50 | frames 15 × 720 × 1280 × 3 | 300.0 (300.0) | 60.0 (60.0) | 0.20× | 0.0e+00 |" in text
    assert "| vggish | not measured: the clip has no soundtrack |" in text
    assert ("| resnet50 | int8 | 120.0 (120.0) | 150.0 (150.0) | 30.0† | 420.0† | 1.000000 | 0.0e+00 |"
            in text)
    assert "| resnet50 | fp32 | not measured: make_raw_bundle failed: MobileError: x |" in text
    assert "| resnet50 | int8 | 26.1 | 26.1 (+0.04) | not measured: audio.ort is missing | 41.5 |" in text
    assert "| resnet50 | int8 | 900.0 (900.0) | 400.0 (400.0) | 150.0 (150.0) | 0.999999 |" in text
    assert "benchmarks/raw_bundle.png" in text
    # Node missing: its reason in the Node table, the rest as before
    results["raw_bundle"]["branches"]["resnet50"]["precisions"]["int8"]["node"] = _stats.not_measured(
        "`node` is not on PATH")
    assert "| resnet50 | int8 | not measured: `node` is not on PATH |" in "\n".join(_report.raw_bundle_section(results))
    # the section not run, or failed as a whole
    assert "section not run" in "\n".join(_report.raw_bundle_section(fake_results()))
    results["raw_bundle"] = _stats.not_measured("no clip")
    assert "not measured: no clip" in _report.render(results)
    # rendered into the report, with its plot
    results["raw_bundle"] = fake_raw_bundle()
    report = write_outputs(results, tmp_path).read_text()
    assert "### Model per 15 s window (one window per run)" in report
    assert (tmp_path / "benchmarks" / "raw_bundle.png").read_bytes()[:4] == b"\x89PNG"
    assert "max \\|Δ\\|" in report and "max |Δ|" not in report.split("## Raw-input")[1]  # a bare | splits a cell
