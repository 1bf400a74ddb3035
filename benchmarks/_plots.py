"""PNG plots of results.json (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

from benchmarks._engines import BRANCHES, SPEED_PRECISIONS, engine_name
from benchmarks._report import ENGINES, raw_rows
from benchmarks._stats import is_measured
from benchmarks._targets import parity_cases

DPI = 110
SHORT = {"resnet50": "ResNet-50", "efficientnet-lite0": "Lite0", "vggish": "VGGish"}
STACK = ("decode", "preprocess", "model", "search")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def latency_stages(results: dict, path: Path) -> Path | None:
    latency = results.get("latency")
    if not is_measured(latency):
        return None
    labels, values = [], {s: [] for s in STACK}
    for backbone in BRANCHES:
        for engine in ENGINES:
            row = latency["branches"].get(backbone, {}).get(engine)
            if not is_measured(row):
                continue
            short_engine = engine.replace("onnxruntime-", "ort ").replace("pytorch-", "torch ")
            labels.append(f"{SHORT.get(backbone, backbone)}\n{short_engine}")
            for stage in STACK:
                values[stage].append(row[stage]["median_ms"])
    if not labels:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels)), 4.5))
    bottom = [0.0] * len(labels)
    for stage in STACK:
        ax.bar(range(len(labels)), values[stage], bottom=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, values[stage])]
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("ms (median)")
    ax.set_title(f"One 15 s clip, per stage ({latency['threads']} threads)")
    ax.legend()
    return _save(plt, fig, path)


def clip_length(results: dict, path: Path) -> Path | None:
    clip = results.get("clip_length")
    if not is_measured(clip):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for precision in SPEED_PRECISIONS:
        points = [(int(s), e[engine_name(precision)]["total_ms"]) for s, e in clip["lengths"].items()
                  if is_measured(e.get(engine_name(precision)))]
        if points:
            ax.plot(*zip(*points), marker="o", label=f"onnxruntime {precision}")
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("clip length (s)")
    ax.set_ylabel("decode → songs (ms, median)")
    ax.set_title("ResNet-50 query path against clip length")
    ax.legend()
    return _save(plt, fig, path)


def library_size(results: dict, path: Path) -> Path | None:
    lib = results.get("library_size")
    if not is_measured(lib):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in ("exact", "hnsw"):
        points = [(int(n), e[method]["median_ms"]) for n, e in lib["sizes"].items() if is_measured(e.get(method))]
        if points:
            ax.plot(*zip(*points), marker="o", label=method)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("library windows")
    ax.set_ylabel("query ms (median)")
    ax.set_title("Search against library size")
    ax.legend()
    return _save(plt, fig, path)


def recall_parity(results: dict, path: Path) -> Path | None:
    yt8m = results.get("parity_yt8m")
    if not is_measured(yt8m):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ks = [int(k) for k in yt8m["random"]]
    for direction, style in (("video_to_audio", "-"), ("audio_to_video", "--")):
        for model, marker in (("fp32_pytorch", "o"), ("int8_runtime", "x")):
            ax.plot(ks, [yt8m[model][direction][str(k)] for k in ks], style, marker=marker,
                    label=f"{direction.replace('_to_', '→')} {model.replace('_', ' ')}")
    ax.plot(ks, [yt8m["random"][str(k)] for k in ks], ":", color="grey", label="random")
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("Recall@k (%)")
    ax.set_title(f"YouTube-8M music videos (N = {yt8m['n']})")
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def _cosine_cases(results: dict) -> dict[str, list[float]]:
    """{"<case> <branch>": percentiles 0..100 of the per-item fp32-vs-int8 cosine}."""
    return {f"{name} {branch}": summary["percentiles"]
            for name, entry in parity_cases(results).items()
            for branch, summary in entry.get("cosine_fp32_vs_int8", {}).items() if "percentiles" in summary}


def cosine_distribution(results: dict, path: Path) -> Path | None:
    """Per-item 1 - cosine(fp32, int8) as a distribution (percentile curves, log scale), one line per case."""
    cases = _cosine_cases(results)
    if not cases:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, percentiles in cases.items():
        gap = [max(1.0 - c, 1e-7) for c in percentiles]  # 1e-7: float32 rounding floor, keeps log scale finite
        ax.plot(range(101), gap, label=name, linestyle="--" if name.endswith("audio") else "-")
    ax.set_yscale("log")
    ax.set_xlabel("percentile of items")
    ax.set_ylabel("1 − cosine(fp32 PyTorch, int8 runtime)")
    ax.set_title("Per-item embedding agreement, int8 vs fp32")
    ax.legend(fontsize=6, ncol=2)
    return _save(plt, fig, path)


def raw_bundle(results: dict, path: Path) -> Path | None:
    """Per branch x precision, from the same raw input: numpy front end + full branch (stacked) vs the raw
    branch (front end inside the graph), medians of one 15 s window."""
    raw = results.get("raw_bundle")
    if not is_measured(raw):
        return None
    bars = [(f"{SHORT.get(b, b)} {p}", raw["branches"][b]["frontend"]["numpy"]["median_ms"], row)
            for b, p, row in raw_rows(raw)
            if p and is_measured(row) and is_measured(row.get("full")) and is_measured(row.get("raw"))]
    if not bars:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(bars)), 4))
    x = list(range(len(bars)))
    numpy_ms = [numpy for _, numpy, _ in bars]
    full_ms = [row["full"]["median_ms"] for _, _, row in bars]
    width = 0.38
    ax.bar([i - width / 2 for i in x], numpy_ms, width, label="numpy front end", color="tab:orange")
    ax.bar([i - width / 2 for i in x], full_ms, width, bottom=numpy_ms, label="full branch (steps)", color="tab:blue")
    ax.bar([i + width / 2 for i in x], [row["raw"]["median_ms"] for _, _, row in bars], width,
           label="raw branch (front end in graph)", color="tab:green")
    ax.set_xticks(x, [label for label, _, _ in bars], fontsize=8)
    ax.set_ylabel("ms per 15 s window (median)")
    ax.set_title(f"Full vs raw bundle from the same raw input ({raw['threads']} threads)", fontsize=10)
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def draw_all(results: dict, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    made = [latency_stages(results, folder / "latency_stages.png"), clip_length(results, folder / "clip_length.png"),
            library_size(results, folder / "library_size.png"), recall_parity(results, folder / "recall_parity.png"),
            cosine_distribution(results, folder / "cosine_distribution.png"),
            raw_bundle(results, folder / "raw_bundle.png")]
    return [p for p in made if p is not None]
