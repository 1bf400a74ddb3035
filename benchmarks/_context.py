"""Run settings (quick / full) and the shared state of one benchmark run: exports, clip, reference inputs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import _artifacts as A
from benchmarks._engines import AUDIO_BACKBONE, BRANCHES, EXPORT_FLAGS, HEAD_PRECISION, PRECISIONS, VIDEO_BACKBONES
from benchmarks._stats import NotMeasured

REPO = A.REPO
SHARED = Path(os.environ.get("TIVM_SHARED", REPO.parent / "shared"))
CLIP = "media/clips/bbb_0-15s.mp4"
MEDIA = "media"
SONGS = "media/songs"
YT8M = "data/yt8m/video_level"
YT8M_MUSIC_LABEL = 14
FULL_EXPORT_MIN_COSINE = -1.0  # random-weight backbones: the export's cosines are recorded, not enforced


@dataclass(frozen=True)
class Plan:
    """How much a run measures. Full mode is what docs/benchmarks.md reports."""

    mode: str
    branches: tuple[str, ...]  # per-stage latency, sizes
    precisions: tuple[str, ...]  # onnxruntime precisions next to the PyTorch reference
    e2e_precisions: tuple[str, ...]
    speed_precisions: tuple[str, ...]  # onnxruntime precisions of the threads, clip-length and build sections
    cold_start_branches: tuple[str, ...]
    cold_start_engines: tuple[str, ...]  # "pytorch-fp32" and onnxruntime precisions, one fresh process each
    cli_cold_start_precisions: tuple[str, ...]  # `tivm-recommend` start to exit, after the library build
    warmup: int
    runs: int
    thread_runs: int
    thread_counts: tuple[int, ...]
    clip_runs: dict  # clip seconds -> measured runs
    search_windows: int  # library size behind the per-stage "search" column
    library_sizes: tuple[int, ...]
    hnsw_max_windows: int
    search_queries: int
    build_songs: tuple[str, ...]
    yt8m_shards: str  # glob under the video-level folder
    yt8m_config: str
    yt8m_epochs: int
    synthetic_spec: str
    synthetic_configs: tuple[str, ...]
    synthetic_epochs: int
    cold_start_repeats: int
    raw_branches: tuple[str, ...]  # raw ("edge") bundle section: branches and precisions measured
    raw_precisions: tuple[str, ...]
    node_runs: int  # `node js/recommend.mjs` processes per raw video bundle


FULL = Plan(mode="full", branches=BRANCHES, precisions=PRECISIONS, e2e_precisions=("fp32", "int8", "int8-amx"),
            speed_precisions=("fp32", "int8", "int8-amx"),
            cold_start_branches=BRANCHES, cold_start_engines=("pytorch-fp32",) + PRECISIONS,
            cli_cold_start_precisions=("fp32", "int8", "int8-amx"), warmup=2, runs=10, thread_runs=5,
            thread_counts=(1, 2),
            clip_runs={5: 5, 15: 5, 60: 3, 300: 2}, search_windows=100_000,
            library_sizes=(1_000, 10_000, 100_000, 1_000_000), hnsw_max_windows=1_000_000, search_queries=50,
            build_songs=("singularity_Aberrations_60-90s.ogg", "singularity_Nebula_60-90s.ogg",
                         "singularity_Through_Space_60-90s.ogg", "kevin_macleod_vibe_ace_10-40s.ogg"),
            yt8m_shards="*.tfrecord", yt8m_config="IVM-M", yt8m_epochs=10, synthetic_spec="synthetic:n=3000",
            synthetic_configs=("VM-M", "VM-R", "VM-MS", "IVM-M", "IVM-MS", "LIVM", "TIVM"), synthetic_epochs=4,
            cold_start_repeats=1, raw_branches=BRANCHES, raw_precisions=("fp32", "int8"), node_runs=3)
QUICK = Plan(mode="quick", branches=(VIDEO_BACKBONES[0], AUDIO_BACKBONE), precisions=("fp32", "int8"),
             e2e_precisions=("int8",), speed_precisions=("fp32", "int8"), cold_start_branches=(VIDEO_BACKBONES[0],),
             cold_start_engines=("fp32", "int8"), cli_cold_start_precisions=("int8",),
             warmup=1, runs=2, thread_runs=1, thread_counts=(1,), clip_runs={5: 1, 15: 1},
             search_windows=10_000, library_sizes=(1_000, 10_000), hnsw_max_windows=1_000, search_queries=10,
             build_songs=("kevin_macleod_vibe_ace_10-40s.ogg",), yt8m_shards="*.tfrecord",
             yt8m_config="IVM-M", yt8m_epochs=1,
             synthetic_spec="synthetic:n=600", synthetic_configs=("TIVM",), synthetic_epochs=1,
             cold_start_repeats=1, raw_branches=(VIDEO_BACKBONES[0],), raw_precisions=("int8",), node_runs=1)


@dataclass
class Context:
    plan: Plan
    threads: int
    out: Path
    exports: dict = field(default_factory=dict)  # (kind, backbone, precision) -> (dir, record) or NotMeasured
    raw_bundles: dict = field(default_factory=dict)  # full export dir -> (raw dir, record) or NotMeasured
    notes: list = field(default_factory=list)

    def shared(self, relative: str) -> Path:
        path = SHARED / relative
        if not path.exists():
            raise NotMeasured(f"{path} is missing (the project's ../shared folder; set TIVM_SHARED)")
        return path

    @property
    def clip(self) -> Path:
        return self.shared(CLIP)

    def export(self, kind: str, backbone: str | None, precision: str) -> tuple[Path, dict]:
        """A cached export of the latency checkpoint: "full" with a video backbone, or "head"."""
        if kind == "head":
            precision = HEAD_PRECISION.get(precision, precision)
        key = (kind, backbone if kind == "full" else None, precision)

        def build():
            checkpoint = A.latency_checkpoint()
            quantize, int8_target = EXPORT_FLAGS[precision]
            if kind == "full":
                return A.export(checkpoint, quantize, "full", backbone, calibration=self.shared(MEDIA),
                                min_cosine=FULL_EXPORT_MIN_COSINE, int8_target=int8_target)
            return A.export(checkpoint, quantize, "head")

        return _once(self.exports, key, build)

    def full_export_for(self, backbone: str, precision: str) -> tuple[Path, dict]:
        """The full export holding this backbone's branch (VGGish is in every full export: use ResNet-50's)."""
        return self.export("full", backbone if backbone in VIDEO_BACKBONES else VIDEO_BACKBONES[0], precision)

    def raw_export_for(self, backbone: str, precision: str) -> tuple[Path, dict]:
        """The raw ("edge") bundle made from full_export_for(backbone, precision), cached (_artifacts.raw_bundle)."""
        full_dir, _ = self.full_export_for(backbone, precision)
        return _once(self.raw_bundles, full_dir, lambda: A.raw_bundle(full_dir, self.threads))


def _once(store: dict, key, build):
    """build()'s result for `key`, built at most once per run: a NotMeasured is remembered and raised again."""
    if key not in store:
        try:
            store[key] = build()
        except NotMeasured as exc:
            store[key] = exc
    if isinstance(store[key], NotMeasured):
        raise store[key]
    return store[key]
