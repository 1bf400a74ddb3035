"""A model directory served with onnxruntime: one small class per branch, and `Model.load(dir)`.

Each branch maps a sequence of steps (log-mel patches, preprocessed frames, or backbone features) to one
embedding per window of 15 steps, the paper's (15, 128) / (15, 1000) sequences: 15 frames at 1 fps span
15 s; 15 non-overlapping 0.96 s patches span 14.4 s, and window start times are step x 0.96 s. Long inputs
are cut into windows every hop (default: one window), plus one window flush with the end so the tail is
covered; inputs shorter than one window are loop-padded (tiled) to a full window, so the ONNX graph always
sees the window length it was trained on, whatever its exported time axis.

Steps stream into windows (`WindowStream`): a batch of windows runs as soon as it is complete, and only the
last window's steps are kept, so embedding a long video costs the same memory as a short one.

"raw" branches (front end + backbone + head in one graph) take 16 kHz PCM or uint8 RGB frames and are run
ONE WINDOW PER RUN: exactly the samples of one window's 15 patches, or that window's 15 frames, with the
hop input set to the window length, so the graph makes exactly one window. The int8 head quantizes its
activations per run, so batching windows together would move each embedding by up to 2e-3 with its
neighbours; one window per run gives every platform (this runtime, a phone, a browser) the same result.
The windows themselves (starts, the flush-end window, loop-padding) are the ones full branches get.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tivm.runtime.errors import MediaError, ModelError
from tivm.runtime.manifest import (
    BRANCHES,
    FRONTEND_KINDS,
    BranchManifest,
    ModelManifest,
    StreamSpec,
    file_sha256,
    read_manifest,
)
from tivm.runtime.prefetch import prefetched

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
PREFETCH_FRAMES = 2  # decoded frames waiting for preprocessing: enough to keep both threads busy
DEFAULT_BATCH_WINDOWS = 8  # windows per session.run(): bounds memory for video (15 x 3 x 224 x 224 each)
RAW_BATCH_WINDOWS = 1  # raw branches: one window per run (see the module docstring)
ORT_TYPES = {"float32": "tensor(float)", "uint8": "tensor(uint8)", "int64": "tensor(int64)"}
AUDIO_STEP_SECONDS = 0.96  # one VGGish log-mel patch: 96 frames of 10 ms, patches do not overlap
EPS = 1e-12


@dataclass(frozen=True)
class WindowEmbeddings:
    """One L2-normalised embedding per window, with each window's start time (seconds) in its source."""

    vectors: np.ndarray  # float32 (W, D)
    starts: np.ndarray  # float32 (W,)
    duration: float  # seconds of input the windows were cut from

    def pooled(self) -> np.ndarray:
        """Mean of the window embeddings, re-normalised: one vector for the whole input."""
        return l2_normalize(self.vectors.mean(axis=0))


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), EPS)


def window_starts(n_steps: int, window_steps: int, hop_steps: int) -> np.ndarray:
    """Start step of each window: every `hop_steps`, plus one window flush with the end so the tail is covered."""
    if n_steps <= window_steps:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, n_steps - window_steps + 1, hop_steps, dtype=np.int64)
    if starts[-1] + window_steps < n_steps:
        starts = np.append(starts, n_steps - window_steps)
    return starts


def loop_pad(steps: np.ndarray, length: int) -> np.ndarray:
    """Repeat a short sequence along time until it is `length` steps long."""
    reps = -(-length // len(steps))
    return np.concatenate([steps] * reps, axis=0)[:length]


def window_steps_for(name: str, spec: BranchManifest) -> int:
    """Steps per window: the graph's fixed time axis, else clip_seconds x fps frames, or one 0.96 s patch per
    second of clip for audio (15 patches, as the paper's (15, 128) sequences). A raw graph's input has no
    time axis of windows (its front end makes them), so it takes the clip_seconds rule, as its exporter did."""
    time_axis = spec.input.shape[1] if len(spec.input.shape) > 1 and spec.kind != "raw" else None
    if isinstance(time_axis, int) and time_axis > 0:
        return time_axis
    per_second = float(spec.frontend.get("fps", 1.0)) if name == "video" else 1.0
    return max(1, int(round(spec.clip_seconds * per_second)))


def session_options(intra_op_threads: int | None, spinning: bool = True):
    """`spinning`: onnxruntime's idle threads busy-wait for the next run (faster back-to-back runs); off for
    sessions that run beside the decoder thread, whose CPU the spinning would take."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: onnxruntime's warnings are not the user's business
    options.inter_op_num_threads = 1
    if intra_op_threads:
        options.intra_op_num_threads = int(intra_op_threads)
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def resolve_providers(providers: Sequence[str] | None) -> list[str]:
    """CPU unless asked; an execution provider that is not installed is an error, not a silent fallback."""
    import onnxruntime as ort

    wanted = list(providers or DEFAULT_PROVIDERS)
    available = ort.get_available_providers()
    missing = [p for p in wanted if p not in available]
    if missing:
        raise ModelError(f"execution provider(s) {missing} not installed; available: {available}")
    if "CPUExecutionProvider" not in wanted:
        wanted.append("CPUExecutionProvider")  # ops the accelerator lacks fall back to CPU
    return wanted


class Branch:
    """One ONNX branch: owns its onnxruntime session. `run()` is safe to call from several threads."""

    def __init__(self, name: str, path: str | os.PathLike, spec: BranchManifest, *,
                 intra_op_threads: int | None = None, providers: Sequence[str] | None = None,
                 batch_windows: int = DEFAULT_BATCH_WINDOWS, verified: bool = False):
        """`verified`: the files' sha256s were checked against the manifest (Model.load does), so the
        optimized-graph cache, keyed by them, may be used."""
        self.name = name
        self.path = Path(path)
        self.spec = spec
        self.batch_windows = RAW_BATCH_WINDOWS if spec.kind == "raw" else batch_windows
        # a streaming split runs per frame beside the decoder thread: no spinning (session_options)
        self.session = _open_session(self.path, intra_op_threads, resolve_providers(providers),
                                     spec.sha256 if verified else None, spinning=spec.stream is None)
        self.input_name, self.output_name = _check_io(self.path, self.session, spec)
        self.hop_name = spec.hop.name if spec.hop is not None else None
        self.window_steps = window_steps_for(name, spec)

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def step_dtype(self) -> type:
        """What one step is made of: uint8 frames for a raw video branch, float32 otherwise."""
        return np.uint8 if self.kind == "raw" and self.name == "video" else np.float32

    @property
    def step_seconds(self) -> float:
        """Seconds between consecutive steps: 0.96 s per log-mel patch, 1 / fps per frame."""
        frontend = self.spec.frontend
        if self.name == "video":
            return 1.0 / float(frontend.get("fps", 1.0))
        if self.kind in FRONTEND_KINDS and {"patch_hop_frames", "hop_samples", "sample_rate"} <= set(frontend):
            return frontend["patch_hop_frames"] * frontend["hop_samples"] / frontend["sample_rate"]
        return float(frontend.get("step_seconds", AUDIO_STEP_SECONDS if self.kind == "full" else 1.0))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(B, T, ...) model input -> (B, D) L2-normalised embeddings (raw branches: B windows of frames,
        each run on its own)."""
        if self.kind == "raw":
            return np.concatenate([self.run_window(window) for window in batch])
        out = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]
        return l2_normalize(out.reshape(out.shape[0], -1))

    def run_window(self, window_input: np.ndarray) -> np.ndarray:
        """Raw branches: one window's PCM samples or frames -> (1, D), the hop input set to the window length
        so the graph's front end makes exactly one window of them."""
        feeds = {self.input_name: np.ascontiguousarray(window_input, self.step_dtype),
                 self.hop_name: np.array(self.window_steps, np.int64)}
        out = self.session.run([self.output_name], feeds)[0]
        if out.shape[0] != 1:
            raise ModelError(f"{self.path}: one window's input gave {out.shape[0]} embeddings instead of one")
        return l2_normalize(out.reshape(1, -1))

    def embed_steps(self, steps: np.ndarray, hop_seconds: float | None = None,
                    duration: float | None = None) -> WindowEmbeddings:
        """A (T, ...) sequence of steps -> one embedding per window (hop default: one window length)."""
        if self.kind == "raw":
            raise ModelError(
                f"{self.path}: the {self.name} branch is 'raw' (its graph computes the front end from "
                f"{'16 kHz PCM' if self.name == 'audio' else 'uint8 RGB frames'}): it takes no per-step features; "
                f"use embed_{self.name}() with a file or {'a waveform' if self.name == 'audio' else 'frames'}")
        steps = np.asarray(steps, dtype=np.float32)
        if steps.ndim < 2 or len(steps) == 0:
            raise ValueError(f"{self.name} branch: expected a (T, ...) sequence with T >= 1, got shape {steps.shape}")
        stream = self.window_stream(hop_seconds)
        for step in steps:
            stream.push(step)
        return stream.finish(duration)

    def hop_steps(self, hop_seconds: float | None = None) -> int:
        """Window hop in steps: one window length by default, else hop_seconds rounded to whole steps."""
        return self.window_steps if hop_seconds is None else max(1, int(round(hop_seconds / self.step_seconds)))

    def window_stream(self, hop_seconds: float | None = None) -> WindowStream:
        """A WindowStream for this branch: push steps as they are computed, then finish()."""
        return WindowStream(self, self.hop_steps(hop_seconds), dtype=self.step_dtype)

    def _check_step_shape(self, step_shape: tuple[int, ...]) -> None:
        # full/head input (batch, time, *step); raw video input (time, *frame)
        expected = tuple(self.spec.input.shape[1:] if self.kind == "raw" else self.spec.input.shape[2:])
        if len(step_shape) != len(expected) or any(
                isinstance(e, int) and e != s for e, s in zip(expected, step_shape)):
            raise ValueError(f"{self.name} branch ({self.path.name}): each step must have shape "
                             f"{expected}, got {step_shape}")

    def require_media(self, what: str) -> None:
        """Only full and raw branches embed media; a head takes backbone features."""
        if self.kind not in FRONTEND_KINDS:
            raise ModelError(
                f"{self.path}: the {self.name} branch is a 'head' over per-second {self.spec.feature_dim}-d "
                f"features and cannot embed {what}; pass features to embed_{self.name}_features()")


class AudioBranch(Branch):
    """Audio: a waveform or file -> log-mel patches (0.96 s each) -> window embeddings.

    A raw branch is fed the 16 kHz PCM itself, one window per run: the samples under that window's 15
    patches (audio.patch_samples), so each window sees exactly the patches a full branch's window holds.
    """

    def embed(self, source: str | os.PathLike | np.ndarray, sample_rate: int = 16000,
              hop_seconds: float | None = None) -> WindowEmbeddings:
        self.require_media("audio")
        from tivm.runtime import audio

        path = None
        if isinstance(source, (str, os.PathLike)):
            path, waveform, sample_rate = source, audio.load_audio(source), audio.SAMPLE_RATE
        else:
            waveform = audio.as_float_waveform(source)
        duration = len(waveform) / sample_rate
        if self.kind == "raw":
            pcm = audio.patch_pcm(waveform, sample_rate=sample_rate, source=path)
            return self._embed_pcm(pcm, hop_seconds, duration)
        patches = audio.log_mel_patches(waveform, sample_rate=sample_rate, source=path)
        return self.embed_steps(patches, hop_seconds, duration=duration)

    def _embed_pcm(self, pcm: np.ndarray, hop_seconds: float | None, duration: float) -> WindowEmbeddings:
        """16 kHz PCM (at least one patch long) -> the windows WindowStream makes of its patches."""
        from tivm.runtime import audio

        n_patches = audio.num_patches(len(pcm))
        starts = window_starts(n_patches, self.window_steps, self.hop_steps(hop_seconds))
        span = audio.patch_samples(min(self.window_steps, n_patches))  # short input: its patches, tiled in-graph
        vectors = [self.run_window(pcm[offset:offset + span]) for offset in starts * audio.PATCH_HOP_SAMPLES]
        return WindowEmbeddings(np.concatenate(vectors), (starts * self.step_seconds).astype(np.float32), duration)


class VideoBranch(Branch):
    """Video: a file or RGB frames (one per second) -> preprocessed frames -> window embeddings.

    Frames are preprocessed one at a time and streamed into windows (WindowStream), so memory holds one
    window of 224 x 224 crops and one batch of windows, never the decoded or preprocessed video. A raw branch
    streams the uint8 frames themselves and runs each window on its own: memory holds two windows of
    decoded frames (the ring and the window being run: 15 x H x W x 3 bytes each, 41 MB at 720p).

    A full branch exported with a streaming split (manifest `stream`, tivm.export.streaming) runs its
    backbone on each frame as soon as it is preprocessed, while the decoder thread decodes the next one, and
    only the head waits for the window: the model then hides behind decoding instead of following it, and the
    window ring holds F-d features instead of frames. The split is the same graph cut in two, so the
    embeddings are the whole graph's (checked bit for bit at export).
    """

    def __init__(self, name: str, path: str | os.PathLike, spec: BranchManifest, **options):
        self.decoder_threads = None  # FFmpeg's choice, unless the model runs beside the decoder (below)
        if spec.stream is not None:
            self.decoder_threads, model_threads = streaming_threads()
            if not options.get("intra_op_threads"):
                options = {**options, "intra_op_threads": model_threads}
        super().__init__(name, path, spec, **options)
        self.window_head = (WindowHead(self, Path(path).with_name(spec.stream.file), spec, **options)
                            if spec.stream is not None else None)

    def embed(self, source: str | os.PathLike | np.ndarray, hop_seconds: float | None = None,
              decode: str = "exact") -> WindowEmbeddings:
        """`decode`: "exact" (every reference picture decoded as the codec specifies) or "fast" (the
        in-loop deblocking filter skipped: see tivm.runtime.video.DECODE_MODES)."""
        self.require_media("video")
        stream = self.window_stream(hop_seconds) if self.window_head is None else self.window_head.stream(
            self.hop_steps(hop_seconds))
        if self.kind == "raw":
            step = lambda frame: frame
        elif self.window_head is not None:
            step = lambda frame: self.window_head.frame_features(self._preprocess(frame[None]))
        else:
            step = lambda frame: self._preprocess(frame[None])[0]
        if isinstance(source, (str, os.PathLike)):
            from tivm.runtime import video

            fps = float(self.spec.frontend.get("fps", 1.0))
            # decoding (a thread of its own) overlaps preprocessing and the model on the frames before
            frames = video.iter_frames(source, fps=fps, decode=decode, threads=self.decoder_threads)
            for second, frame in prefetched(frames, depth=PREFETCH_FRAMES):
                if self.kind == "raw" and stream.count and frame.shape != stream.step_shape:
                    raise MediaError(source, f"the frame size changes from {_size(stream.step_shape)} to "
                                             f"{_size(frame.shape)} at {second:g} s; a raw model needs one frame "
                                             "size per window")
                stream.push(step(frame))
            if stream.count == 0:
                raise MediaError(source, "no video frames could be decoded")
        else:
            frames = _checked_frames(source)
            if self.kind == "raw":
                from tivm.runtime import image

                image.check_frames(frames)  # the dtype and size checks preprocess_frames makes for full branches
            for frame in frames:
                stream.push(step(frame))
        return stream.finish()

    def _preprocess(self, frames: np.ndarray) -> np.ndarray:
        from tivm.runtime import image

        return image.preprocess_frames(frames, **image_arguments(self.spec.frontend))


def streaming_threads() -> tuple[int, int]:
    """(decoder threads, model threads) when the backbone runs beside the decoder: the cores split between the
    two stages, so neither waits for a core the other holds. On 2 cores, 1 + 1 measured best (ResNet-50 int8,
    docs/benchmarks/end_to_end.md); FFmpeg's default alone would take every core plus one."""
    cores = os.cpu_count() or 1
    decoder = max(1, cores // 2)
    return decoder, max(1, cores - decoder)


class WindowHead:
    """The two halves of a split full video branch: the branch's own session run for its per-frame
    features output, and the head graph over a window of them. Quacks like a Branch for WindowStream."""

    def __init__(self, branch: VideoBranch, path: Path, spec: BranchManifest, *,
                 intra_op_threads: int | None = None, providers: Sequence[str] | None = None,
                 batch_windows: int = DEFAULT_BATCH_WINDOWS, verified: bool = False):
        self.branch = branch
        self.name = branch.name
        self.path = path
        self.features = spec.stream.features
        self.window_steps = branch.window_steps
        self.batch_windows = batch_windows
        self.step_seconds = branch.step_seconds
        if self.features.name not in [o.name for o in branch.session.get_outputs()]:
            raise ModelError(f"{branch.path}: no output named {self.features.name!r} (the manifest's stream "
                             "features): the file is not the one the split was made from")
        self.session = _open_session(path, intra_op_threads, resolve_providers(providers),
                                     spec.stream.sha256 if verified else None, spinning=False)
        inputs = self.session.get_inputs()
        if [i.name for i in inputs] != [self.features.name] or len(inputs[0].shape) != 3:
            raise ModelError(f"{path}: expected one (batch, time, F) input named {self.features.name!r}, the graph "
                             f"has {[(i.name, i.shape) for i in inputs]}")
        if branch.output_name not in [o.name for o in self.session.get_outputs()]:
            raise ModelError(f"{path}: no output named {branch.output_name!r}")

    def stream(self, hop_steps: int) -> WindowStream:
        return WindowStream(self, hop_steps)

    def frame_features(self, preprocessed: np.ndarray) -> np.ndarray:
        """One preprocessed frame (1, 3, H, W) -> its (F,) backbone features (the head is not waited for)."""
        batch = np.ascontiguousarray(preprocessed[None], np.float32)  # (batch 1, time 1, 3, H, W)
        out = self.branch.session.run([self.features.name], {self.branch.input_name: batch})[0]
        return out.reshape(-1)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(B, T, F) features -> (B, D) L2-normalised embeddings."""
        out = self.session.run([self.branch.output_name],
                               {self.features.name: np.ascontiguousarray(batch, np.float32)})[0]
        return l2_normalize(out.reshape(out.shape[0], -1))

    def _check_step_shape(self, step_shape: tuple[int, ...]) -> None:
        if step_shape != (self.features.shape[2],):
            raise ModelError(f"{self.branch.path}: per-frame features have shape {step_shape}, the manifest says "
                             f"({self.features.shape[2]},)")


class WindowStream:
    """Steps in one at a time, window embeddings out: each batch of windows runs as soon as it is complete.

    The windows are the ones `window_starts` gives for the final step count (every hop, one flush with the
    end, loop-padding below one window) and run in the same batches as over the whole sequence at once, so
    the result is identical; memory holds the last window's steps and one batch of windows, whatever the
    length. Every window is the `window_steps` steps that ended when it completed, so a ring of the most
    recent steps is all the history needed.
    """

    def __init__(self, branch: Branch, hop_steps: int, dtype: type = np.float32):
        self.branch = branch
        self.dtype = dtype  # of the steps kept: float32 model inputs, or a raw video branch's uint8 frames
        self.window = branch.window_steps
        self.hop = int(hop_steps)
        self.count = 0  # steps pushed so far
        self._recent: np.ndarray | None = None  # ring of the last `window` steps; step i sits at i % window
        self._batch: np.ndarray | None = None  # (batch_windows, window, ...) windows waiting to run
        self._pending = 0
        self._vectors: list[np.ndarray] = []

    @property
    def step_shape(self) -> tuple[int, ...] | None:
        """Shape of the steps pushed so far (None before the first)."""
        return None if self._recent is None else self._recent.shape[1:]

    def push(self, step: np.ndarray) -> None:
        step = np.asarray(step, dtype=self.dtype)
        if self._recent is None:
            self.branch._check_step_shape(step.shape)
            self._recent = np.empty((self.window, *step.shape), dtype=self.dtype)
        elif step.shape != self._recent.shape[1:]:
            raise ValueError(f"{self.branch.name} branch: step {self.count} has shape {step.shape}, "
                             f"the earlier ones {self._recent.shape[1:]}")
        self._recent[self.count % self.window] = step
        self.count += 1
        start = self.count - self.window
        if start >= 0 and start % self.hop == 0:
            self._copy_latest(self._slot())
            self._added()

    def finish(self, duration: float | None = None) -> WindowEmbeddings:
        """Run what is pending (plus the window flush with the end, or the loop-padded short input)."""
        if self.count == 0:
            raise ValueError(f"{self.branch.name} branch: expected at least one step, got none")
        if self.count < self.window:
            self._slot()[:] = loop_pad(self._recent[:self.count], self.window)
            self._added()
        elif (self.count - self.window) % self.hop != 0:
            self._copy_latest(self._slot())
            self._added()
        if self._pending:
            self._run()
        starts = window_starts(self.count, self.window, self.hop)
        vectors = np.concatenate(self._vectors)
        assert len(vectors) == len(starts), (len(vectors), len(starts))
        step_seconds = self.branch.step_seconds
        return WindowEmbeddings(vectors, (starts * step_seconds).astype(np.float32),
                                duration=self.count * step_seconds if duration is None else duration)

    def _slot(self) -> np.ndarray:
        """The batch row the next window goes into."""
        if self._batch is None:
            # untouched rows of np.empty are never paged in: a one-window input costs one window
            self._batch = np.empty((self.branch.batch_windows, *self._recent.shape), dtype=self.dtype)
        return self._batch[self._pending]

    def _added(self) -> None:
        """A window was written to its slot: run the batch as soon as it is full."""
        self._pending += 1
        if self._pending == len(self._batch):
            self._run()

    def _copy_latest(self, out: np.ndarray) -> None:
        """The last `window` steps, oldest first, into `out`."""
        split = self.count % self.window
        out[:self.window - split] = self._recent[split:]
        out[self.window - split:] = self._recent[:split]

    def _run(self) -> None:
        self._vectors.append(self.branch.run(self._batch[:self._pending]))
        self._pending = 0


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}"


def _checked_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"expected RGB frames (T, H, W, 3) with T >= 1, got shape {frames.shape}")
    return frames


def image_arguments(frontend: dict[str, Any]) -> dict[str, Any]:
    """preprocess_frames() arguments from a video front end as written by image.preprocess_params()."""
    try:
        return {"resize": int(frontend["resize_shorter_side"]), "crop": int(frontend["center_crop"]),
                "mean": tuple(frontend["mean"]), "std": tuple(frontend["std"])}
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"video front end lacks or garbles {exc}: expected image.preprocess_params() keys") from None


BRANCH_CLASSES = {"audio": AudioBranch, "video": VideoBranch}


class Model:
    """Both branches of one exported model. Immutable after load (a branch not opened at load opens once,
    under a lock, on first use); safe to share between threads."""

    def __init__(self, model_dir: Path, manifest: ModelManifest, audio: AudioBranch | None = None,
                 video: VideoBranch | None = None, branch_options: dict[str, Any] | None = None):
        self.model_dir = model_dir
        self.manifest = manifest
        self._branches = {"audio": audio, "video": video}
        self._branch_options = branch_options or {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model_dir: str | os.PathLike, *, intra_op_threads: int | None = None,
             providers: Sequence[str] | None = None, branches: Sequence[str] = BRANCHES) -> "Model":
        """Check the manifest, then each of `branches`' file (sha256) and front end, and open its session
        (ModelError naming the file). A branch left out opens, with the same checks, when first used:
        recommending for a clip needs only the video branch, and the audio branch (VGGish) is the slower
        one to open."""
        model_dir = Path(model_dir).resolve()
        manifest = read_manifest(model_dir)
        unknown = set(branches) - set(BRANCHES)
        if unknown:
            raise ValueError(f"branches must be among {BRANCHES}, got {sorted(unknown)}")
        options = dict(intra_op_threads=intra_op_threads, providers=providers)
        opened = {name: _open_branch(model_dir, manifest, name, options) for name in branches}
        _warn_if_laid_out_for_another_cpu(model_dir, manifest)
        return cls(model_dir, manifest, branch_options=options, **opened)

    @property
    def audio(self) -> AudioBranch:
        return self._branch("audio")

    @property
    def video(self) -> VideoBranch:
        return self._branch("video")

    def _branch(self, name: str):
        branch = self._branches[name]
        if branch is None:
            with self._lock:
                if self._branches[name] is None:
                    self._branches[name] = _open_branch(self.model_dir, self.manifest, name, self._branch_options)
                branch = self._branches[name]
        return branch

    @property
    def fingerprint(self) -> str:
        return self.manifest.model_fingerprint

    @property
    def embedding_dim(self) -> int:
        return self.manifest.embedding_dim

    def embed_audio(self, source, sample_rate: int = 16000, hop_seconds: float | None = None) -> WindowEmbeddings:
        """A waveform (mono float32) or audio/video file -> one embedding per 15 s window."""
        return self.audio.embed(source, sample_rate=sample_rate, hop_seconds=hop_seconds)

    def embed_video(self, source, hop_seconds: float | None = None, decode: str = "exact") -> WindowEmbeddings:
        """A video file or RGB uint8 frames sampled at the model's fps -> one embedding per 15 s window.
        `decode`: "exact" or "fast" (tivm.runtime.video.DECODE_MODES; files only)."""
        return self.video.embed(source, hop_seconds=hop_seconds, decode=decode)

    def embed_audio_features(self, features: np.ndarray, hop_seconds: float | None = None) -> WindowEmbeddings:
        """Per-second inputs of the audio graph ((T, D) features for a head, (T, 96, 64) patches for full;
        a raw branch takes none: ModelError)."""
        return self.audio.embed_steps(features, hop_seconds)

    def embed_video_features(self, features: np.ndarray, hop_seconds: float | None = None) -> WindowEmbeddings:
        """Per-second inputs of the video graph ((T, D) features for a head, (T, 3, 224, 224) for full;
        a raw branch takes none: ModelError)."""
        return self.video.embed_steps(features, hop_seconds)


def _open_branch(model_dir: Path, manifest: ModelManifest, name: str, options: dict[str, Any]):
    spec = manifest.branch(name)
    path = _checked_file(model_dir, spec)
    if spec.stream is not None:
        _checked_file(model_dir, spec.stream)
    _check_frontend(name, spec, model_dir)
    return BRANCH_CLASSES[name](name, path, spec, verified=True, **options)


def cpu_has_amx() -> bool | None:
    """Whether this CPU has AMX-int8, from /proc/cpuinfo (Linux: x86 "flags", ARM "Features"); None elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features") and ":" in line:
            return "amx_int8" in line.split(":", 1)[1].split()
    return None


def _warn_if_laid_out_for_another_cpu(model_dir: Path, manifest: ModelManifest) -> None:
    """A `--int8-target amx` export computes the same anywhere, but only AMX CPUs run it faster."""
    targets = {((manifest.branch(name).quantization or {}).get("backbone") or {}).get("int8_target")
               for name in ("audio", "video")}
    if "amx" in targets and cpu_has_amx() is False:
        warnings.warn(f"{model_dir}: exported with --int8-target amx (convolutions laid out for Intel AMX), but "
                      "this CPU has no AMX: results are the same, but a --int8-target portable export is likely "
                      "faster here", RuntimeWarning, stacklevel=3)


def _checked_file(model_dir: Path, spec: BranchManifest | StreamSpec) -> Path:
    path = model_dir / spec.file
    if not path.is_file():
        raise ModelError(f"{path}: missing (listed in {model_dir / 'manifest.json'})")
    actual = file_sha256(path)
    if actual != spec.sha256:
        raise ModelError(f"{path}: sha256 mismatch (file {actual[:12]}…, manifest {spec.sha256[:12]}…): "
                         "the file is corrupt, truncated or from another export")
    return path


def _check_frontend(name: str, spec: BranchManifest, model_dir: Path) -> None:
    """A full or raw branch must have been exported with the front end this runtime computes (a raw graph
    computes it itself, but this runtime decodes, resamples and windows for it with these parameters)."""
    if spec.kind not in FRONTEND_KINDS:
        return
    from tivm.runtime import manifest as manifest_module

    if name == "audio":
        current = manifest_module.audio_frontend()
    else:
        current = manifest_module.video_frontend(fps=float(spec.frontend.get("fps", 1.0)),
                                                 **image_arguments(spec.frontend))
    current, exported = _canonical(current), _canonical(spec.frontend)
    if current != exported:
        diff = sorted(k for k in set(current) | set(exported) if current.get(k) != exported.get(k))
        raise ModelError(f"{model_dir / 'manifest.json'}: {name} front end differs from this runtime's "
                         f"in {diff}; re-export the model with this tivm")


def _canonical(params: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(params, sort_keys=True))


def _open_session(path: Path, intra_op_threads: int | None, providers: list[str], sha256: str | None = None,
                  spinning: bool = True):
    """An onnxruntime session for `path`; with the file's (checked) sha256, through the optimized-graph cache."""
    import onnxruntime as ort

    def open_file(file: Path, options):
        try:
            return ort.InferenceSession(str(file), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/RuntimeException types
            problem = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{path}: not a loadable ONNX model ({problem})") from None

    if sha256 is None:
        return open_file(path, session_options(intra_op_threads, spinning))
    from tivm.runtime.session_cache import open_cached

    return open_cached(path, sha256, providers, lambda: session_options(intra_op_threads, spinning), open_file)


def _check_io(path: Path, session, spec: BranchManifest) -> tuple[str, str]:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if spec.kind == "raw":
        _check_raw_inputs(path, inputs, spec)
    elif len(inputs) != 1:
        raise ModelError(f"{path}: expected one input, the graph has {[i.name for i in inputs]}")
    graph_input = next((i for i in inputs if i.name == spec.input.name), inputs[0])
    if graph_input.name != spec.input.name:
        raise ModelError(f"{path}: input is named {graph_input.name!r}, manifest says {spec.input.name!r}")
    if len(graph_input.shape) != len(spec.input.shape):
        raise ModelError(f"{path}: input rank {len(graph_input.shape)} differs from the manifest's "
                         f"{list(spec.input.shape)}")
    output_name = spec.output.name if spec.output is not None else outputs[0].name
    if output_name not in [o.name for o in outputs]:
        raise ModelError(f"{path}: no output named {output_name!r}")
    return graph_input.name, output_name



def _check_raw_inputs(path: Path, inputs, spec: BranchManifest) -> None:
    """A raw graph takes the main input (PCM or frames) and the hop, with the manifest's names and dtypes."""
    names = sorted(i.name for i in inputs)
    expected = sorted([spec.input.name, spec.hop.name])
    if names != expected:
        raise ModelError(f"{path}: inputs are {names}, the manifest says {expected}")
    by_name = {i.name: i for i in inputs}
    for tensor, dtype, rank in ((spec.input.name, spec.input.dtype, len(spec.input.shape)),
                                (spec.hop.name, spec.hop.dtype, 0)):
        graph_input = by_name[tensor]
        if graph_input.type != ORT_TYPES.get(dtype) or len(graph_input.shape) != rank:
            raise ModelError(f"{path}: input {tensor!r} is {graph_input.type} of rank {len(graph_input.shape)}, "
                             f"the manifest says {dtype} of rank {rank}")
