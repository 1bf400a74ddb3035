"""results.json -> the Markdown report and its PNG plots (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

from benchmarks._engines import BRANCHES, PRECISIONS, REFERENCE, SPEED_PRECISIONS, engine_name
from benchmarks._stats import SETTLE_S, is_measured

ENGINES = (REFERENCE,) + tuple(engine_name(p) for p in PRECISIONS)
SPEED_ENGINES = tuple(engine_name(p) for p in SPEED_PRECISIONS)


def present(engines, *tables: dict) -> list[str]:
    """The engines (in report order) that any of the tables has an entry for."""
    return [e for e in engines if any(e in t for t in tables)]
STAGE_COLUMNS = ("decode", "preprocess", "backbone", "head", "model", "search")
MB = 1e6


# ------------------------------------------------------------------------------------------ formatting

def reason(entry) -> str:
    if entry is None:
        return "not measured: section not run (see --only)"
    if isinstance(entry, dict) and entry.get("status") == "not measured":
        return f"not measured: {entry.get('reason', '')}".replace("|", "/")
    return "not measured"


def ms(entry, p90: bool = True) -> str:
    if not is_measured(entry) or "median_ms" not in entry:
        return reason(entry) if isinstance(entry, dict) or entry is None else "—"
    text = _number(entry["median_ms"])
    if entry.get("derived"):
        return text + "†"
    if p90 and "p90_ms" in entry:
        text += f" ({_number(entry['p90_ms'])})"
    return text


def _number(value: float) -> str:
    """Milliseconds with a resolution that keeps small figures readable."""
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"


def mb(entry) -> str:
    if not is_measured(entry) or "bytes" not in entry:
        return reason(entry) if isinstance(entry, dict) else "—"
    text = f"{entry['bytes'] / MB:.1f}"
    if "share_of_fp32" in entry:
        text += f" ({entry['share_of_fp32']:.0%})"
    return text


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def section_missing(title: str, entry) -> list[str]:
    return [f"## {title}", "", reason(entry), ""]


# ------------------------------------------------------------------------------------------ sections

def headline(results: dict) -> list[str]:
    """The README table: ResNet-50 video branch, 15 s clip."""
    latency = results.get("latency", {})
    rows_in = latency.get("branches", {}).get("resnet50", {}) if is_measured(latency) else {}
    e2e = results.get("end_to_end", {}).get("configs", {}) if is_measured(results.get("end_to_end")) else {}
    sizes = (results.get("sizes", {}).get("branches", {}).get("resnet50", {})
             if is_measured(results.get("sizes")) else {})
    memory = (results.get("cold_start_memory", {}).get("configs", {})
              if is_measured(results.get("cold_start_memory")) else {})
    reference = rows_in.get(REFERENCE, {})
    base = reference.get("model", {}).get("median_ms") if is_measured(reference) else None
    rows = []
    for engine in [REFERENCE] + present(SPEED_ENGINES, rows_in):
        row = rows_in.get(engine, {})
        model = row.get("model") if is_measured(row) else row
        speed = (f"{base / model['median_ms']:.1f}×" if base and is_measured(model) and "median_ms" in (model or {})
                 else "—")
        mem = memory.get(f"resnet50 {engine}", {})
        rows.append([engine, ms(model, p90=False), speed, ms(e2e.get(f"resnet50 {engine}"), p90=False)
                     if engine != REFERENCE else "—",
                     mb(sizes.get(engine)).split(" (")[0] if sizes.get(engine) else "—",
                     f"{mem['peak_rss_mib']:.0f}" if is_measured(mem) and "peak_rss_mib" in mem else "—"])
    return table(["ResNet-50 video branch, 15 s 720p clip", "backbone + head (ms)", "vs PyTorch",
                  "clip → top-10 songs (ms)", "file (MB)", "peak RSS (MiB)"], rows)


def machine_section(results: dict) -> list[str]:
    m = results.get("machine", {})
    v = m.get("versions", {})
    return ["## Machine", "",
            f"* CPU: {m.get('cpu')} — {m.get('cores')} usable cores ({m.get('logical_cpus')} logical), "
            f"flags {', '.join(m.get('cpu_flags', [])) or 'n/a'}; memory {m.get('memory_gib')} GiB; {m.get('os')}",
            f"* Threads: torch.set_num_threads({m.get('threads')}), onnxruntime intra_op_num_threads="
            f"{m.get('threads')} (inter_op 1), OMP_NUM_THREADS={m.get('threads')} in child processes",
            f"* Load average (1, 5, 15 min) at start {m.get('load_average_start')}, at end "
            f"{m.get('load_average_end')}" + (" — above 0.5 at the start: other work was running or had just "
                                               "ended (the 1-minute average decays over minutes), so figures may "
                                               "be disturbed" if m.get("loaded") else ""),
            "* Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
            f"* tivm commit {m.get('git_commit')}; started {m.get('started')}; wall time of the run "
            f"{results.get('wall_seconds', 0):.0f} s"] + _merged_lines(results) + [""]


def _merged_lines(results: dict) -> list[str]:
    merged = results.get("merged_from")
    if not merged or not merged.get("sections"):
        return []
    lines = ["* Sections carried over from an earlier run of the same mode (`--merge`):"]
    for name in merged["sections"]:
        o = merged.get("origin", {}).get(name, {})
        lines.append(f"  {name} (run started {o.get('started')}, commit {o.get('commit')}, load at its start "
                     f"{o.get('load_average_start')})")
    return lines


def targets_section(results: dict) -> list[str]:
    lines = ["## Targets (2-core machine)", ""]
    for t in results.get("targets", []):
        box = {True: "[x]", False: "[ ] **missed**", None: "[ ] not measured"}[t["met"]]
        note = f" — {t['note']}" if t.get("note") else ""
        lines.append(f"- {box} {t['target']}: {t['measured']}{note}")
    return lines + [""]


def latency_section(results: dict) -> list[str]:
    latency = results.get("latency")
    if not is_measured(latency):
        return section_missing("Latency per stage, one 15 s clip", latency)
    lines = ["## Latency per stage, one 15 s clip", "",
             f"Clip `{Path(latency['clip']).name}` (15 s, 1280×720, 24 fps): {latency['frames'][0]} frames, "
             f"{latency['patches'][0]} log-mel patches. {latency['threads']} threads, {latency['warmup']} warm-up "
             f"+ {latency['runs']} measured runs per figure; milliseconds, median (p90). Decode and preprocessing "
             "are the runtime's front ends, shared by every engine; search = exact search of the pooled query over "
             f"{latency['search']['windows']:,} library windows ({latency['search']['songs']:,} songs). "
             "model = backbone + head in one call; total = decode + preprocess + model + search (medians). "
             "The model stages of all engines of a branch are timed interleaved (one run of each per round), so "
             "a change in machine load touches every engine alike; each timed run starts after a "
             f"{SETTLE_S * 1000:.0f} ms pause, so the previous engine's spinning worker threads do not take its "
             "cores. onnxruntime-int8-amx is the same int8 model exported with `--int8-target amx` (deep "
             "convolutions through onnxruntime's AMX-capable int8 GEMM; identical arithmetic). "
             "† backbone = model − head (onnxruntime runs them as one graph; the head is timed on the head-only "
             "export).", ""]
    for backbone in BRANCHES:
        rows_in = latency["branches"].get(backbone, {})
        rows = []
        for engine in ENGINES:
            row = rows_in.get(engine)
            if row is None:
                continue
            if not is_measured(row):
                rows.append([engine, reason(row)] + [""] * len(STAGE_COLUMNS))
                continue
            rows.append([engine] + [ms(row.get(c)) for c in STAGE_COLUMNS] + [f"{row['total_ms']:.0f}"])
        lines += [f"### {backbone}", ""] + table(["engine"] + list(STAGE_COLUMNS) + ["total"], rows)
    return lines


def end_to_end_section(results: dict) -> list[str]:
    e2e = results.get("end_to_end")
    if not is_measured(e2e):
        return section_missing("End to end", e2e)
    rows = [[name, ms(entry)] for name, entry in e2e["configs"].items()]
    return (["## End to end: `Recommender.recommend(clip)`", "",
             f"File in, top-10 songs out, measured as one call ({e2e['threads']} threads, {e2e['runs']} runs, "
             f"exact search over {e2e['windows']:,} synthetic windows).", ""]
            + table(["model", "ms, median (p90)"], rows))


def memory_section(results: dict) -> list[str]:
    cold = results.get("cold_start_memory")
    if not is_measured(cold):
        return section_missing("Cold start and peak memory", cold)
    rows = []
    for name, entry in cold["configs"].items():
        if not is_measured(entry):
            rows.append([name, reason(entry), ""])
        else:
            rows.append([name, f"{entry['cold_start']['median_ms'] / 1000:.2f}", f"{entry['peak_rss_mib']:.0f}"])
    lines = ["## Cold start and peak memory", "",
             "Each configuration in a fresh process (`benchmarks/_probe.py`): interpreter start, imports, model "
             "load, decode + preprocess + embed the 15 s clip, print; wall time seen by the parent, peak RSS "
             "(VmHWM) reported by the child. PyTorch rows import torch; onnxruntime rows never do.", ""]
    lines += table(["configuration", "process start → embedding (s)", "peak RSS (MiB)"], rows)
    build = results.get("library_build", {})
    cli = build.get("cli_cold_start", {}) if is_measured(build) else {}
    if cli:
        lines += ["`tivm-recommend` (the installed command, ResNet-50 + VGGish model, library from the build "
                  "below), process start to exit:", ""]
        lines += table(["model", "s"], [[n, f"{e['median_ms'] / 1000:.2f}" if is_measured(e) else reason(e)]
                                         for n, e in cli.items()])
    return lines


def size_section(results: dict) -> list[str]:
    sizes = results.get("sizes")
    if not is_measured(sizes):
        return section_missing("Size on disk", sizes)
    header = ["branch"] + list(ENGINES)
    rows = [[name] + [mb(row.get(e)) for e in ENGINES] for name, row in sizes["branches"].items()]
    rows += [[name] + [mb(row.get(e)) for e in ENGINES] for name, row in sizes["heads"].items()]
    lines = ["## Size on disk", "", "MB (10^6 bytes); in brackets the share of the onnxruntime fp32 file. "
             "PyTorch = backbone weights file + the head's float32 tensors.", ""] + table(header, rows)
    exports = sizes.get("exports", {})
    if exports:
        rows = []
        for name, entry in exports.items():
            if not is_measured(entry):
                rows.append([name, reason(entry), "", ""])
                continue
            branches = ((entry.get("report") or {}).get("branches") or {})
            cos = "; ".join(f"{b}: {d['validation']['min']:.4f} / {d['validation']['median']:.4f}"
                            for b, d in branches.items() if isinstance(d, dict) and "validation" in d)
            rows.append([name, f"{entry['seconds']}", "yes" if entry.get("reused") else "no", cos])
        lines += ["Exports used (setup, not timed figures): seconds `tivm-export` took, whether reused from the "
                  "cache, and the export's own validation cosine vs PyTorch (min / median, held-out windows). "
                  "ResNet-50 and VGGish carry random weights, so their cosines say nothing about accuracy.", ""]
        lines += table(["export", "seconds", "cached", "validation cosine"], rows)
    return lines


def _mb_fine(entry) -> str:
    """MB with two decimals under 10 MB (the video files are a few MB; the front end adds tenths)."""
    if not is_measured(entry) or "bytes" not in entry:
        return reason(entry) if isinstance(entry, dict) else "—"
    value = entry["bytes"] / MB
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def raw_rows(raw: dict):
    """(backbone, precision, entry) of the raw-bundle section, in run order; a branch or precision that was
    not measured comes with precision None or its not-measured entry."""
    for backbone, branch in raw.get("branches", {}).items():
        if not is_measured(branch):
            yield backbone, None, branch
            continue
        for precision, row in branch.get("precisions", {}).items():
            yield backbone, precision, row


def raw_bundle_section(results: dict) -> list[str]:
    """The raw-input ("edge") bundle: front end in numpy vs in the graph, full vs raw model per window, file
    sizes, the Node client and raw-vs-full agreement."""
    raw = results.get("raw_bundle")
    title = 'Raw-input ("edge") bundle'
    if not is_measured(raw):
        return section_missing(title, raw)
    frames = raw.get("frames") or []
    shape = " × ".join(str(d) for d in frames) if frames else "?"
    pcm = f"{raw['pcm_samples']:,}" if raw.get("pcm_samples") else "no"
    lines = [f"## {title}", "",
             "`tivm.export.raw.make_raw_bundle` of the full export (front-end graph merged in front of the full "
             "branch, golden vectors, `mobile/*.ort`; built once and cached). Inputs: the 15 s clip's frames at "
             f"native size ({shape}, uint8) and {pcm} samples of its 16 kHz soundtrack. {raw['threads']} "
             f"onnxruntime threads; {raw['warmup']} warm-up + {raw['runs']} measured runs; all calls of a branch "
             f"are timed interleaved, each after a {raw['settle_ms']:.0f} ms pause; ms, median (p90); † derived "
             "from medians.", ""]
    rows = []
    for backbone, branch in raw.get("branches", {}).items():
        if not is_measured(branch):
            rows.append([backbone, reason(branch), "", "", "", ""])
            continue
        fe = branch["frontend"]
        numpy_t, graph_t = fe.get("numpy"), fe.get("graph")
        ratio = (f"{graph_t['median_ms'] / numpy_t['median_ms']:.2f}×"
                 if is_measured(graph_t) and is_measured(numpy_t) and numpy_t.get("median_ms") else "—")
        diff = fe.get("graph_vs_numpy", {}).get("max_abs_diff")
        what = ("PCM " if branch["modality"] == "audio" else "frames ") + " × ".join(map(str, branch["input"]))
        rows.append([backbone, what, ms(numpy_t), ms(graph_t), ratio, f"{diff:.1e}" if diff is not None else "—"])
    lines += ["### Front end per 15 s clip", "",
              "numpy = the Python runtime's front end (`log_mel_patches`, `preprocess_frames` with the backbone's "
              "preprocessing); graph = `frontend_graphs.build_*_frontend(windowed=False)` alone in onnxruntime, "
              "same input, same output (the steps a full branch takes).", ""]
    lines += table(["branch", "input", "numpy", "ONNX graph", "graph / numpy", "graph vs numpy max \\|Δ\\|"], rows)
    model_rows, file_rows, node_rows = [], [], []
    for backbone, precision, row in raw_rows(raw):
        label = [backbone, precision or ""]
        if not is_measured(row):
            model_rows.append(label + [reason(row)] + [""] * 5)
            file_rows.append(label + [reason(row)] + [""] * 3)
            continue
        a = row.get("agreement", {})
        model_rows.append(label + [ms(row.get("full")), ms(row.get("raw")), ms(row.get("frontend_in_graph")),
                                   ms(row.get("numpy_frontend_plus_full")),
                                   f"{a['cosine_min']:.6f}" if "cosine_min" in a else "—",
                                   f"{a['max_abs_diff']:.1e}" if "max_abs_diff" in a else "—"])
        sz = row.get("sizes", {})
        build = row.get("build") or {}
        built = "cached" if build.get("reused") else (f"{build['seconds']}" if build.get("seconds") is not None
                                                       else "—")
        full_b, raw_b = sz.get("full_onnx", {}).get("bytes"), sz.get("raw_onnx", {}).get("bytes")
        added = f" (+{(raw_b - full_b) / MB:.2f})" if full_b and raw_b else ""
        file_rows.append(label + [_mb_fine(sz.get("full_onnx")), _mb_fine(sz.get("raw_onnx")) + added,
                                  _mb_fine(sz.get("mobile_ort")), built])
        if "node" in row:
            n = row["node"]
            if not is_measured(n):
                node_rows.append(label + [reason(n), "", "", ""])
            else:
                node_rows.append(label + [ms(n["wall"]), ms(n["own"]), ms(row.get("raw")),
                                          f"{n['vs_python_raw']['cosine_min']:.6f}"])
    lines += ["### Model per 15 s window (one window per run)", "",
              "full = the full branch on the numpy front end's steps (`Branch.run`); raw = the raw branch on the raw "
              "input (`Branch.run_window`: the samples of the window's 15 patches, or the 15 uint8 frames), so "
              "front end in graph = raw − full, and numpy + full is the full bundle's cost from the same raw "
              "input. Agreement: the clip's raw vs full embedding (one window).", ""]
    lines += table(["branch", "precision", "full (steps)", "raw (raw input)", "front end in graph",
                    "numpy front end + full", "raw vs full cosine", "max \\|Δ\\|"], model_rows)
    lines += ["### Files", "", "MB (10^6 bytes) of the branch file: the full export's .onnx, the raw bundle's .onnx "
              "(front end + the same full file; in brackets what the front end adds) and its `mobile/*.ort` (ORT "
              "format, optimised for arm); the raw bundle's build seconds (setup, not a figure), or cached.", ""]
    lines += table(["branch", "precision", "full .onnx", "raw .onnx", "mobile .ort", "bundle built (s)"], file_rows)
    if node_rows:
        lines += ["### Node client (`js/recommend.mjs`, onnxruntime-node)", "",
                  "`node js/recommend.mjs --model RAW_DIR --frames F --shape T,H,W` on the clip's frames, a fresh "
                  f"process per run ({raw.get('node_runs')} run(s)): wall = spawn to exit (Node start, module load, "
                  "session creation, reading the frames file, one window); own = the `ms` the client prints (after "
                  "its imports: session creation, reading, embedding). The client's sessions use 2 threads "
                  "(hard-coded in it). Python raw = the warm raw branch above; cosine = the client's embedding vs "
                  "the Python runtime's.", ""]
        lines += table(["branch", "precision", "process wall", "client's own ms", "Python raw (warm)",
                        "cosine vs Python"], node_rows)
    if any(is_measured(r) and precision for _, precision, r in raw_rows(raw)):
        lines += ["![raw vs full bundle per window](benchmarks/raw_bundle.png)", ""]
    return lines


def scaling_section(results: dict) -> list[str]:
    lines = ["## Scaling", ""]
    clip = results.get("clip_length")
    if is_measured(clip):
        rows = []
        for seconds, e in clip["lengths"].items():
            for engine in present(SPEED_ENGINES, e):
                r = e.get(engine, {})
                if not is_measured(r):
                    rows.append([seconds, engine, reason(r), "", "", "", "", ""])
                    continue
                rows.append([seconds, engine, f"{e['decode']['median_ms']:.0f}",
                             f"{e['preprocess']['median_ms']:.0f}", f"{r['model']['median_ms']:.0f}",
                             f"{r['search']['median_ms']:.1f}", f"{r['total_ms']:.0f}", f"{r['x_real_time']:.1f}×"])
        how = "; ".join(f"{s} s: {e['clip']} ({e['runs']} runs)" for s, e in clip["lengths"].items())
        lines += ["### Against clip length (ResNet-50 video query path)", "", f"Clips: {how}. Medians in ms; "
                  "model runs one 15 s window per 15 s (the last flush with the end).", ""]
        lines += table(["clip (s)", "engine", "decode", "preprocess", "model", "search", "total",
                        "× real time"], rows)
        lines += ["![latency against clip length](benchmarks/clip_length.png)", ""]
    else:
        lines += section_missing("Against clip length", clip)[2:]
    lib = results.get("library_size")
    if is_measured(lib):
        rows = []
        for n, e in lib["sizes"].items():
            h = e["hnsw"]
            rows.append([f"{int(n):,}", f"{e['songs']:,}", ms(e["exact"]),
                         ms(h) if is_measured(h) else reason(h),
                         f"{h['build_s']:.1f}" if is_measured(h) else "",
                         f"{h['recall_at_10_vs_exact']:.3f}" if is_measured(h) else "",
                         f"{h['recall_at_1_vs_exact']:.3f}" if is_measured(h) and "recall_at_1_vs_exact" in h else "",
                         f"{h['score_ratio_vs_exact']:.4f}" if is_measured(h) and h.get("score_ratio_vs_exact")
                         else ""])
        lines += ["### Against library size (search only)", "",
                  f"{lib['library']}; {lib['queries']} queries per size, top-{lib['k']} songs, "
                  f"{lib['threads']} threads. ms median (p90).", ""]
        lines += ["HNSW agreement with exact search: recall@10 and @1 (share of exact top songs returned) and the "
                  "ratio of the returned songs' summed scores to exact's. In this synthetic library only the "
                  "query's own song stands out; exact ranks 2-10 are near-ties between unrelated songs, so "
                  "recall@10 drops where the score ratio shows the substitutes score almost the same.", ""]
        lines += table(["windows", "songs", "exact", "HNSW", "HNSW build (s)", "recall@10", "recall@1",
                        "score ratio"], rows)
        lines += ["![search against library size](benchmarks/library_size.png)", ""]
    else:
        lines += ["### Against library size", "", reason(lib), ""]
    threads = results.get("threads")
    if is_measured(threads):
        engines = [REFERENCE] + present(SPEED_ENGINES, *threads["by_threads"].values())
        rows = [[t] + [ms(row.get(e)) for e in engines] for t, row in threads["by_threads"].items()]
        lines += ["### Against threads (ResNet-50 branch, backbone + head, one 15 s clip)", "",
                  f"{threads['runs']} measured runs each, engines interleaved; ms median (p90); † PyTorch = backbone + "
                  "head medians.", ""] + table(["threads"] + engines, rows)
    else:
        lines += ["### Against threads", "", reason(threads), ""]
    build = results.get("library_build")
    if is_measured(build):
        rows = []
        for name, e in build["configs"].items():
            rows.append([name, reason(e)] if not is_measured(e) else
                        [name, f"{e['median_ms'] / 1000:.1f}", f"{e['windows']}", f"{e['x_real_time']:.1f}×"])
        lines += ["### Library build speed (`build_library`, VGGish audio branch)", "",
                  f"{len(build['songs'])} real songs, {build['audio_seconds']:.0f} s of audio, hop "
                  f"{build['hop_seconds']:g} s, {build['threads']} threads, one build each.", ""]
        lines += table(["model", "seconds", "windows", "× real time"], rows)
    else:
        lines += ["### Library build speed", "", reason(build), ""]
    return lines


def _recall_rows(entry: dict) -> list[list[str]]:
    rows = []
    for direction in ("video_to_audio", "audio_to_video"):
        ks = list(entry["fp32_pytorch"][direction])
        rows.append([direction.replace("_to_", " → "), "fp32 PyTorch"]
                    + [f"{entry['fp32_pytorch'][direction][k]:.2f}" for k in ks])
        rows.append(["", "int8 runtime"] + [f"{entry['int8_runtime'][direction][k]:.2f}" for k in ks])
        rows.append(["", "Δ points"] + [f"{entry['delta_points'][direction][k]:+.2f}" for k in ks])
    rows.append(["", "random (k/N)"] + [f"{entry['random'][k]:.2f}" for k in entry["random"]])
    return rows


def _cosine_text(entry: dict) -> str:
    c = entry["cosine_fp32_vs_int8"]
    return "; ".join(f"{b}: min {c[b]['min']:.4f}, p1 {c[b]['p1']:.4f}, median {c[b]['median']:.4f}"
                     for b in ("audio", "video"))


def parity_section(results: dict) -> list[str]:
    lines = ["## Recall parity: int8 runtime vs fp32 PyTorch", "",
             "The per-item cosine between each clip's fp32 PyTorch and int8 runtime embedding, as a distribution "
             "(percentiles 0-100 of 1 − cosine; every case below):", "",
             "![per-item cosine distribution](benchmarks/cosine_distribution.png)", ""]
    yt8m = results.get("parity_yt8m")
    if is_measured(yt8m):
        ks = list(yt8m["random"])
        lines += [f"### YouTube-8M music videos ({yt8m['configuration']}, head-only export)", "",
                  f"{yt8m['data']}: gallery N = {yt8m['n']:,}. Trained {yt8m['epochs']} epochs "
                  f"(best on validation kept). Recall@k in %.", ""]
        lines += table(["direction", "model"] + [f"R@{k}" for k in ks], _recall_rows(yt8m))
        lines += [f"Per-item cosine, fp32 vs int8 embedding — {_cosine_text(yt8m)}.", "",
                  "![recall parity](benchmarks/recall_parity.png)", ""]
    else:
        lines += ["### YouTube-8M music videos", "", reason(yt8m), ""]
    synthetic = results.get("parity_synthetic")
    if is_measured(synthetic):
        rows = []
        for name, e in synthetic["configs"].items():
            if not is_measured(e):
                rows.append([name, reason(e)] + [""] * 6)
                continue
            ks = list(e["random"])
            rows.append([name, str(e["n"])] + [f"{e['fp32_pytorch']['video_to_audio'][k]:.1f} / "
                                               f"{e['int8_runtime']['video_to_audio'][k]:.1f}" for k in ks]
                        + [f"{max(abs(d) for dd in e['delta_points'].values() for d in dd.values()):.2f}",
                           f"{min(e['cosine_fp32_vs_int8'][b]['min'] for b in ('audio', 'video')):.4f}"])
        lines += [f"### Synthetic sequences (`{synthetic['data']}`, {synthetic['epochs']} epochs)", "",
                  f"Gallery: {synthetic.get('gallery', 'test split')} — parity compares two implementations of "
                  "one model, so training clips may rank. "
                  "Video → audio Recall@k in %, fp32 PyTorch / int8 runtime; max |Δ| over both directions and "
                  "every k; lowest per-item cosine over both branches. The synthetic pairing lives only in "
                  "temporal order, so the pooling configurations sit at chance on held-out clips by design; on this "
                  "gallery, which holds the training clips, a pooling model can still memorise training pairs.", ""]
        lines += table(["config", "N", "R@1", "R@5", "R@10", "R@25", "R@50", "max \\|Δ\\| (points)", "min cosine"],
                       rows)
    else:
        lines += ["### Synthetic sequences", "", reason(synthetic), ""]
    return lines


def render(results: dict) -> str:
    plan = results.get("plan", {})
    lines = ["# Benchmarks", "",
             f"Written by `python benchmarks/run.py{' --quick' if plan.get('mode') == 'quick' else ''}` "
             f"({plan.get('mode')} mode) — every figure below was measured by it"
             + (" (some sections in an earlier run: see Machine)" if (results.get("merged_from") or {}).get("sections")
                else " in one run") + "; nothing is copied from elsewhere. Raw numbers: `benchmarks/results.json`.", "",
             "ResNet-50 and VGGish run with random weights in their official formats (the official weights "
             "cannot be downloaded here): identical graphs and arithmetic, so identical speed and size, but "
             "their embeddings mean nothing. EfficientNet-Lite0 has its real ImageNet weights. Recall parity "
             "is measured on trained heads over real YouTube-8M features and on synthetic sequences.", ""]
    lines += headline(results)
    lines += targets_section(results) + machine_section(results) + latency_section(results)
    lines += ["![latency per stage](benchmarks/latency_stages.png)", ""]
    lines += end_to_end_section(results) + memory_section(results) + size_section(results)
    lines += raw_bundle_section(results)
    lines += scaling_section(results) + parity_section(results)
    if results.get("errors"):
        lines += ["## Sections that failed", ""] + [f"* {k}: {v}" for k, v in results["errors"].items()] + [""]
    return "\n".join(lines).rstrip() + "\n"
