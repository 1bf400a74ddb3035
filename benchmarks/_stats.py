"""Timing statistics: warm-up, measured runs, median and p90, and the not-measured marker."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

P90 = 90.0
# Pause before each timed call of an interleaved round. Without it the previous engine's worker threads (an
# onnxruntime session's pool, torch's OpenMP team) are still spinning when the next engine starts and take
# its cores: measured on the 2-core machine, int8 ResNet-50 read 143 ms right after the fp32 session and
# 116-121 ms after a pause of 50 ms or more (20 ms: 122 ms, 5 ms: 139 ms). A deployed runtime runs one model.
SETTLE_S = 0.05


class NotMeasured(Exception):
    """A figure that could not be measured; the message says why (shown as "not measured: <reason>")."""


def not_measured(reason: str) -> dict:
    return {"status": "not measured", "reason": str(reason)}


def is_measured(entry: Any) -> bool:
    return isinstance(entry, dict) and bool(entry) and entry.get("status") != "not measured"


def summarize(seconds: list[float]) -> dict:
    """Median, p90, min and max in milliseconds of a list of durations in seconds, plus every run."""
    if not seconds:
        raise ValueError("no runs to summarize")
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {"runs": int(ms.size), "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, P90)),
            "min_ms": float(ms.min()), "max_ms": float(ms.max()), "all_ms": [round(float(x), 3) for x in ms]}


def time_call(fn: Callable[[], Any], warmup: int, runs: int) -> tuple[dict, Any]:
    """Call fn `warmup` times unmeasured, then `runs` times measured; (summary, the last result)."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    result = None
    for _ in range(warmup):
        result = fn()
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - started)
    return summarize(seconds), result


def time_interleaved(calls: dict[Any, Callable[[], Any]], warmup: int, runs: int,
                     settle_s: float = SETTLE_S) -> dict[Any, dict]:
    """Time several calls round-robin (one run of each per round), so a change in machine load between
    rounds touches every call alike and their ratios stay fair; each timed call starts after `settle_s`
    idle seconds (see SETTLE_S). {key: summary}."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    seconds: dict[Any, list[float]] = {key: [] for key in calls}
    for _ in range(runs):
        for key, fn in calls.items():
            if settle_s > 0:
                time.sleep(settle_s)
            started = time.perf_counter()
            fn()
            seconds[key].append(time.perf_counter() - started)
    return {key: summarize(values) for key, values in seconds.items()}


def cosine_summary(a: np.ndarray, b: np.ndarray) -> dict:
    """Per-row cosine similarity of two (N, D) embedding sets: min, p1, median."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"embeddings must have the same (N, D) shape, got {a.shape} and {b.shape}")
    cos = (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    # the whole distribution as its percentiles 0, 1, ..., 100 (compact in the JSON, enough to plot it)
    percentiles = np.percentile(cos, np.arange(101))
    return {"n": int(cos.size), "min": float(cos.min()), "p1": float(np.percentile(cos, 1)),
            "median": float(np.median(cos)), "percentiles": [float(x) for x in percentiles]}
