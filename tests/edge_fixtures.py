"""What the outside-Python tests share: a real int8 raw bundle, a song library for it, and a clip's frames.

The bundle is the end-to-end checkpoint's int8 export (conftest's e2e_models: EfficientNet-Lite0 with its
real weights, VGGish with random weights in the official format) made raw with golden vectors; the library
embeds the shared songs with the Python runtime and is exported flat (int8, float16 and float32) for other languages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tivm.export.raw import make_raw_bundle
from tivm.runtime.flat_library import export_flat
from tivm.runtime.library import SongLibrary, build_library
from tivm.runtime.model import Model
from tivm.runtime.video import sample_frames

CLIP = "bbb_0-15s.mp4"


@dataclass(frozen=True)
class EdgeWorld:
    bundles: dict  # "int8" / "fp32" -> raw bundle folder
    library: Path  # npz, built with the int8 raw bundle
    flat: dict  # "int8" / "float16" / "float32" -> flat library folder
    frames: np.ndarray  # the clip's frames at 1 fps, (T, H, W, 3) uint8
    frames_file: Path  # the same, raw bytes


def build_edge_world(root: Path, e2e_models, media: Path) -> EdgeWorld:
    bundles = {"int8": root / "raw int8", "fp32": root / "raw fp32"}
    make_raw_bundle(e2e_models.int8, bundles["int8"], mobile=False, threads=2)
    make_raw_bundle(e2e_models.fp32, bundles["fp32"], mobile=False, threads=2)
    library = root / "songs.npz"
    build_library(media / "songs", Model.load(bundles["int8"], intra_op_threads=2), library, progress=False)
    loaded = SongLibrary.load(library)
    flat = {dtype: export_flat(loaded, root / f"flat {dtype}", dtype=dtype) for dtype in ("int8", "float16", "float32")}
    frames = sample_frames(media / "clips" / CLIP)
    frames_file = root / "frames.u8"
    frames_file.write_bytes(np.ascontiguousarray(frames).tobytes())
    return EdgeWorld(bundles, library, flat, frames, frames_file)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
