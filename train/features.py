"""Feature extraction: a folder of videos → a tivm data set of 15 s clips with per-second audio/video features.

Audio: `load_audio` → `log_mel_patches` (per clip) → VGGish, 128-d per second. Video: `iter_frames` (the
frames `sample_frames` picks, 1 fps, streamed) → `preprocess_frames` → ResNet-50 (or EfficientNet-Lite0),
1000 logits per second. The runtime's own front
ends are used, so training sees exactly what serving computes.

Clip rule: non-overlapping 15 s windows from t = 0 (0–15, 15–30, ...); a tail shorter than 15 s is dropped.
A video shorter than 15 s (but with at least one second of both audio and frames) gives one clip at t = 0
whose seconds are repeated in order (looped) up to 15, so short videos still count. Usable length is the
shorter of the audio and the frame sequence.

Resumable: each finished video's features go to `<dataset>.parts/<id>.npz` as soon as it is done; a rerun
skips videos whose part matches the file (size, mtime) and the extraction settings, then rebuilds the data set
from all parts.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from tivm.runtime.errors import MediaError, TivmError
from tivm.runtime.files import atomic_write
from tivm.train import backbones as B
from tivm.train import dataset as D

CLIP_SECONDS = 15
SAMPLE_RATE = 16000
FPS = 1.0
DEFAULT_BATCH = 64
DEFAULT_VIDEO_BACKBONE = "resnet50"
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts")
PARTS_SUFFIX = ".parts"
CLIP_RULE = (
    "non-overlapping 15 s windows from t=0; a tail shorter than 15 s is dropped; a video shorter than 15 s "
    "gives one clip at t=0 with its seconds looped to 15; length = min(audio patches, frames at 1 fps)"
)


@dataclass
class Extractor:
    """The two backbones on one device plus what the manifest says about them."""

    audio_model: torch.nn.Module
    video_model: torch.nn.Module
    video_backbone: str
    device: torch.device
    batch_size: int
    manifest_audio: dict
    manifest_video: dict

    @property
    def settings_fingerprint(self) -> str:
        """Identifies the feature values: parts made with other settings are not reused."""
        spec = json.dumps({"audio": self.manifest_audio, "video": self.manifest_video, "rule": CLIP_RULE},
                          sort_keys=True, default=str)
        return hashlib.sha256(spec.encode()).hexdigest()


@dataclass
class ExtractionReport:
    out: str
    videos: int = 0
    extracted: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    clips: int = 0
    seconds: float = 0.0

    @property
    def succeeded(self) -> int:
        return len(self.extracted) + len(self.resumed)

    def to_json(self) -> dict:
        return {"out": self.out, "videos": self.videos, "succeeded": self.succeeded, "extracted": self.extracted,
                "resumed": self.resumed, "failed": self.failed, "clips": self.clips,
                "seconds": round(self.seconds, 3), "clip_rule": CLIP_RULE}


# ------------------------------------------------------------------------------------------- discovery

def find_videos(video_dir: str | os.PathLike, extensions: Iterable[str] = VIDEO_EXTENSIONS) -> list[Path]:
    """Every file under `video_dir` (recursively) with a video extension, sorted for a stable order."""
    root = Path(video_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory of videos")
    wanted = {e.lower() for e in extensions}
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in wanted)


def source_id_of(path: Path, root: Path) -> str:
    """The video's id in the data set: its path relative to the input folder, with forward slashes."""
    return path.relative_to(root).as_posix()


# ------------------------------------------------------------------------------------------- clip cutting

def clip_starts(seconds: int) -> list[int]:
    """Start seconds of the clips of a video with `seconds` usable seconds (see CLIP_RULE)."""
    if seconds <= 0:
        return []
    if seconds < CLIP_SECONDS:
        return [0]
    return list(range(0, seconds - CLIP_SECONDS + 1, CLIP_SECONDS))


def loop_to_length(sequence: np.ndarray, length: int = CLIP_SECONDS) -> np.ndarray:
    """Repeat a short per-second sequence in order until it has `length` entries."""
    reps = -(-length // len(sequence))
    return np.concatenate([sequence] * reps)[:length]


def clip_patches(waveform: np.ndarray, start: int, seconds: int, source=None) -> np.ndarray:
    """The log-mel patches of one clip, computed on the clip's own audio (up to `seconds` of them)."""
    from tivm.runtime.audio import log_mel_patches

    segment = waveform[start * SAMPLE_RATE:(start + CLIP_SECONDS) * SAMPLE_RATE]
    return log_mel_patches(segment, SAMPLE_RATE, source=source)[:seconds]


# ------------------------------------------------------------------------------------------- models

def build_extractor(
    video_backbone: str = DEFAULT_VIDEO_BACKBONE,
    *,
    weights_dir: str | os.PathLike | None = None,
    vggish_weights: str | os.PathLike | None = None,
    video_weights: str | os.PathLike | None = None,
    audio_postprocess: str = "none",
    pca_params: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH,
    download: bool = True,
) -> Extractor:
    """Load both backbones (strictly) on `device`; weights from explicit files, `weights_dir`, or the cache."""
    if B.get_backbone(video_backbone).modality != "video":
        raise ValueError(f"{video_backbone!r} is not a video backbone: choose one of {B.VIDEO_BACKBONES}")
    vggish_weights = vggish_weights or _in_dir(weights_dir, "vggish")
    video_weights = video_weights or _in_dir(weights_dir, video_backbone)
    pca_params = pca_params or _pca_in_dir(weights_dir, audio_postprocess)
    torch_device = B.pick_device(device)
    _check_weights_available(video_backbone, vggish_weights, video_weights, download)
    audio_model, audio_path = B.load_backbone(
        "vggish", vggish_weights, download=download, postprocess=audio_postprocess, pca_params=pca_params
    )
    video_model, video_path = B.load_backbone(video_backbone, video_weights, download=download)
    return Extractor(
        audio_model=audio_model.to(torch_device),
        video_model=video_model.to(torch_device),
        video_backbone=video_backbone,
        device=torch_device,
        batch_size=int(batch_size),
        manifest_audio=_audio_manifest(audio_path, audio_postprocess, pca_params),
        manifest_video=_video_manifest(video_backbone, video_path),
    )


def _check_weights_available(video_backbone: str, vggish_weights, video_weights, download: bool) -> None:
    """Resolve both weight files first, so a missing-weights error names every file that is needed."""
    from tivm.train.weights import WeightsError

    problems = []
    for name, path in (("vggish", vggish_weights), (video_backbone, video_weights)):
        try:
            B.weights_file(name, path, download=download)
        except WeightsError as error:
            problems.append(str(error))
    if problems:
        raise WeightsError("missing weights:\n  " + "\n  ".join(problems))


def _in_dir(weights_dir, name: str) -> Path | None:
    """The official file name of backbone `name` inside `weights_dir`, when that file is there."""
    spec = B.get_backbone(name).weights
    if weights_dir is None or spec is None:
        return None
    candidate = Path(weights_dir) / spec.filename
    return candidate if candidate.is_file() else None


def _pca_in_dir(weights_dir, postprocess: str) -> Path | None:
    if weights_dir is None or postprocess == "none":
        return None
    from tivm.train.weights import VGGISH_PCA_NPZ, VGGISH_PCA_PTH

    for spec in (VGGISH_PCA_NPZ, VGGISH_PCA_PTH):
        if (Path(weights_dir) / spec.filename).is_file():
            return Path(weights_dir) / spec.filename
    return None


def _audio_manifest(weights_path: Path, postprocess: str, pca_params) -> dict:
    from tivm.runtime.manifest import audio_frontend
    from tivm.train.weights import VGGISH_PCA_NPZ, file_sha256, resolve_weights

    entry = {
        "backbone": "vggish",
        "weights_file": weights_path.name,
        "weights_sha256": file_sha256(weights_path),
        "postprocess": postprocess,
        "frontend": audio_frontend(),
    }
    if postprocess != "none":
        pca_path = resolve_weights(VGGISH_PCA_NPZ, pca_params, download=False)
        entry["pca_sha256"] = file_sha256(pca_path)
    return entry


def _video_manifest(name: str, weights_path: Path) -> dict:
    from tivm.runtime.manifest import video_frontend
    from tivm.train.weights import file_sha256

    backbone = B.get_backbone(name)
    return {
        "backbone": name,
        "output": "logits",
        "weights_file": weights_path.name,
        "weights_sha256": file_sha256(weights_path),
        "frontend": video_frontend(FPS, **backbone.image_preprocessing),
    }


def _forward(model: torch.nn.Module, batch: np.ndarray, device: torch.device) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(np.ascontiguousarray(batch)).to(device)).float().cpu().numpy()


def _run_batched(model: torch.nn.Module, inputs: np.ndarray, extractor: Extractor) -> np.ndarray:
    """Model outputs for `inputs` in batches of extractor.batch_size, as float32 numpy."""
    outputs = [_forward(model, inputs[begin:begin + extractor.batch_size], extractor.device)
               for begin in range(0, len(inputs), extractor.batch_size)]
    return np.concatenate(outputs).astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------- one video

def frame_features(path: Path, extractor: Extractor) -> np.ndarray:
    """(T, Dv) video features, one per second, streamed: memory stays at one batch whatever the length.

    Frames are preprocessed one by one, so a stream whose frame size changes midway still works.
    """
    from tivm.runtime.image import preprocess_frames
    from tivm.runtime.video import iter_frames

    preprocessing = B.get_backbone(extractor.video_backbone).image_preprocessing
    outputs, batch = [], []
    for _, frame in iter_frames(path, FPS):
        batch.append(preprocess_frames(frame[None], **preprocessing)[0])
        if len(batch) == extractor.batch_size:
            outputs.append(_forward(extractor.video_model, np.stack(batch), extractor.device))
            batch = []
    if batch:
        outputs.append(_forward(extractor.video_model, np.stack(batch), extractor.device))
    return np.concatenate(outputs).astype(np.float32, copy=False)


def extract_video(path: Path, extractor: Extractor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts (k,), audio (k, 15, 128), video (k, 15, Dv)) for one video; TivmError if it cannot be used."""
    from tivm.runtime.audio import load_audio

    waveform = load_audio(path, SAMPLE_RATE)
    per_second_video = frame_features(path, extractor)
    frames = len(per_second_video)
    usable = min(int(len(waveform) // SAMPLE_RATE), frames)
    if usable < CLIP_SECONDS:
        # short video: the patches it has (a partial last second still gives a 0.96 s patch)
        usable = min(len(clip_patches(waveform, 0, CLIP_SECONDS, path)), frames)
    starts = clip_starts(usable)
    if not starts:
        raise MediaError(path, f"shorter than one second of both audio and video ({len(waveform)} samples, "
                               f"{frames} frames)")
    seconds = min(usable, CLIP_SECONDS)

    patches = np.stack([loop_to_length(clip_patches(waveform, s, seconds, path)) for s in starts])
    audio = _run_batched(extractor.audio_model, patches.reshape(-1, *patches.shape[2:]), extractor)
    video = np.stack([loop_to_length(per_second_video[s:s + seconds]) for s in starts])
    k = len(starts)
    return np.asarray(starts, np.float32), audio.reshape(k, CLIP_SECONDS, -1), video


# ------------------------------------------------------------------------------------------- parts (resume)

def parts_dir(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.parent / (out.name + PARTS_SUFFIX)


def _file_identity(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _part_path(parts: Path, source_id: str) -> Path:
    return parts / (hashlib.sha256(source_id.encode()).hexdigest()[:24] + ".npz")


def _write_part(part: Path, source_id: str, identity: str, settings: str, starts, audio, video) -> None:
    """Atomic: written to a temporary name, then renamed, so a killed run never leaves a half part."""
    with atomic_write(part) as f:
        np.savez(f, source_id=np.array(source_id), identity=np.array(identity), settings=np.array(settings),
                 starts=starts, audio=audio, video=video)


def _read_part(part: Path, identity: str, settings: str):
    """(starts, audio, video) when `part` is a finished, matching result; None to (re-)extract."""
    if not part.is_file():
        return None
    try:
        with np.load(part, allow_pickle=False) as data:
            if str(data["identity"]) != identity or str(data["settings"]) != settings:
                return None
            return data["starts"], data["audio"], data["video"]
    except (OSError, ValueError, KeyError):
        return None  # unreadable part (e.g. disk full last time): extract again


# ------------------------------------------------------------------------------------------- the folder

def extract_folder(video_dir: str | os.PathLike, out: str | os.PathLike, extractor: Extractor,
                   progress: bool = True, on_failure: Callable[[str], None] | None = None) -> ExtractionReport:
    """Extract every video under `video_dir` and write the data set to `out` (see module docstring).

    A video that raises TivmError is recorded in the report (and passed to `on_failure`); the rest carry on.
    """
    root = Path(video_dir)
    videos = find_videos(root)
    report = ExtractionReport(out=str(out), videos=len(videos))
    parts = parts_dir(out)
    parts.mkdir(parents=True, exist_ok=True)
    settings = extractor.settings_fingerprint
    builder = D.FeatureSetBuilder(D.make_manifest(
        "tivm-features", audio=extractor.manifest_audio, video=extractor.manifest_video,
        clip_rule=CLIP_RULE, extracted_from=str(root.resolve()),
    ))
    started = time.perf_counter()
    for path in tqdm(videos, desc="videos", unit="video", disable=not progress):
        source_id = source_id_of(path, root)
        part = _part_path(parts, source_id)
        identity = _file_identity(path)
        done = _read_part(part, identity, settings)
        if done is not None:
            report.resumed.append(source_id)
        else:
            try:
                done = extract_video(path, extractor)
            except TivmError as error:
                report.failed.append({"path": str(path), "error": str(error)})
                if on_failure is not None:
                    on_failure(str(error))
                continue
            _write_part(part, source_id, identity, settings, *done)
            report.extracted.append(source_id)
        starts, audio, video = done
        builder.add(source_id, starts, audio, video)
        report.clips += len(starts)
    report.seconds = time.perf_counter() - started
    if len(builder):
        builder.build().save(out, overwrite=True)
    return report
