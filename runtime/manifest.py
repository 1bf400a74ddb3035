"""The model manifest: what `tivm-export` writes next to `audio.onnx` / `video.onnx`, and all the runtime reads.

`manifest.json` (format "tivm-model", version 2; version 1 still loads)::

    {"format": "tivm-model", "version": 2,
     "audio": {"file": "audio.onnx", "sha256": "...", "kind": "full" | "head" | "raw",
               "input": {"name": "...", "shape": ["batch", "time", 96, 64], "dtype": "float32"},
               "output": {"name": "...", "shape": ["batch", 512], "dtype": "float32"},
               "frontend": {...},          # audio_frontend(): tivm.runtime.audio.frontend_params()
               "clip_seconds": 15.0, "embedding_dim": 512, "feature_dim": null | 128,
               "configuration": "TIVM", "quantization": {"method": "none" | "dynamic-int8" | ...}},
     "video": {... same keys; "frontend": video_frontend(): {"fps", **image.preprocess_params()} ...},
     "data_fingerprint": "...", "tivm_version": "0.1.0", "created": "2026-...Z",
     "model_fingerprint": "..."}

"full" branches take what the runtime's front ends compute (log-mel patches (B, T, 96, 64) or preprocessed
frames (B, T, 3, 224, 224)); "head" branches take per-second backbone features (B, T, D), D = `feature_dim`.
"raw" branches hold the front end too (tivm.export.frontend_graphs in front of a full branch): they take
16 kHz PCM (``"input": {"name": "pcm", "shape": ["samples"], "dtype": "float32"}``) or RGB frames sampled
at the front end's fps (``{"name": "frames", "shape": ["time", "height", "width", 3], "dtype": "uint8"}``)
plus a second input, the window hop, described by ``"hop": {"name": "hop_patches" | "hop_frames", "shape": [],
"dtype": "int64", "unit_seconds": 0.96 | 1 / fps}``, and give one embedding per window, ``["windows", 512]``.
Their ``frontend`` is the full branch's (what the graph computes), checked against this runtime the same way.
Only raw branches have the "hop" key, so full and head manifests (and their fingerprints) are unchanged.
`model_fingerprint` is the sha256 over the two branch files' sha256s and every setting that changes an
embedding (version 1: the files only): a song library records it, so a library is only ever queried with
the model that embedded its songs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tivm.runtime.errors import ModelError
from tivm.runtime.files import read_json_object, write_text

FORMAT = "tivm-model"
# 2: model_fingerprint also covers every setting that changes an embedding (EMBEDDING_FIELDS), so editing
# fps or a mean in manifest.json yields another model, whose libraries must be rebuilt. 1: files only.
VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
BRANCHES = ("audio", "video")
KINDS = ("full", "head", "raw")
FRONTEND_KINDS = ("full", "raw")  # kinds whose `frontend` is one this runtime computes (checked at load)
RAW_INPUTS = {"audio": ("float32", 1), "video": ("uint8", 4)}  # raw branch: main input dtype and rank
FINGERPRINT_DOMAIN = b"tivm-model-fingerprint/v1\n"
FINGERPRINT_DOMAIN_V2 = b"tivm-model-fingerprint/v2\n"
# What a branch's embedding depends on besides its ONNX file (quantization and provenance do not matter:
# they describe how the file was made, and the file's sha256 covers the result).
# "hop" (raw branches only) is hashed only when present, so full/head fingerprints stay what they were.
EMBEDDING_FIELDS = ("kind", "input", "output", "frontend", "clip_seconds", "embedding_dim", "feature_dim", "hop",
                    "stream")
OPTIONAL_EMBEDDING_FIELDS = ("hop", "stream")
MAX_CLIP_SECONDS = 600.0  # one window; the paper's is 15 s
MAX_FPS = 30.0  # frames per second the video front end samples; the paper's is 1
HASH_CHUNK_BYTES = 1 << 20
MAX_MANIFEST_BYTES = 1 << 20  # a real manifest is a few kB; a huge one is not worth parsing


@dataclass(frozen=True)
class TensorSpec:
    """One ONNX input or output: name, shape (ints, or strings for dynamic axes) and dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> "TensorSpec":
        _require(data, ("name", "shape", "dtype"), where)
        return cls(name=str(data["name"]), shape=tuple(data["shape"]), dtype=str(data["dtype"]))


@dataclass(frozen=True)
class HopSpec:
    """A raw branch's second input: the window hop, an int64 scalar counted in steps of `unit_seconds`
    (0.96 s log-mel patches for audio, 1 / fps frames for video)."""

    name: str
    unit_seconds: float
    dtype: str = "int64"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": [], "dtype": self.dtype, "unit_seconds": self.unit_seconds}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> "HopSpec":
        _require(data, ("name", "dtype", "unit_seconds"), where)
        if data.get("shape", []) != []:
            raise ModelError(f"{where}: the hop is a scalar (shape []), got shape {data.get('shape')!r}")
        return cls(name=str(data["name"]), unit_seconds=float(data["unit_seconds"]), dtype=str(data["dtype"]))


@dataclass(frozen=True)
class StreamSpec:
    """A full video branch split for streaming (tivm.export.streaming): the branch file's extra output holds
    the per-frame backbone features, and `file` is the head cut out of the same graph, features -> embedding.
    Bit-identical to the whole graph by construction (checked at export); lets the runtime run the backbone
    on each frame while the next is being decoded."""

    file: str
    features: TensorSpec
    sha256: str = ""  # empty: write_manifest fills it in from the file

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "features": self.features.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> "StreamSpec":
        _require(data, ("file", "sha256", "features"), where)
        return cls(file=str(data["file"]), sha256=str(data["sha256"]),
                   features=TensorSpec.from_json(data["features"], f"{where}.features"))


@dataclass(frozen=True)
class BranchManifest:
    """One branch (audio or video): its ONNX file and everything needed to feed it."""

    file: str
    kind: str
    input: TensorSpec
    frontend: dict[str, Any]
    embedding_dim: int
    configuration: str
    sha256: str = ""  # empty: write_manifest fills it in from the file
    output: TensorSpec | None = None
    clip_seconds: float = 15.0
    feature_dim: int | None = None  # "head" kind: D of the (B, T, D) features
    quantization: dict[str, Any] = field(default_factory=lambda: {"method": "none"})
    hop: HopSpec | None = None  # "raw" kind: the hop input
    stream: StreamSpec | None = None  # full video branches exported with a per-frame split

    def to_json(self) -> dict[str, Any]:
        data = {
            "file": self.file,
            "sha256": self.sha256,
            "kind": self.kind,
            "input": self.input.to_json(),
            "output": None if self.output is None else self.output.to_json(),
            "frontend": self.frontend,
            "clip_seconds": self.clip_seconds,
            "embedding_dim": self.embedding_dim,
            "feature_dim": self.feature_dim,
            "configuration": self.configuration,
            "quantization": self.quantization,
        }
        if self.hop is not None:  # raw branches only: full/head manifests keep their exact keys
            data["hop"] = self.hop.to_json()
        if self.stream is not None:  # split branches only: other manifests keep their exact keys
            data["stream"] = self.stream.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str, name: str | None = None) -> "BranchManifest":
        _require(data, ("file", "sha256", "kind", "input", "frontend", "embedding_dim", "configuration"), where)
        output = data.get("output")
        hop = data.get("hop")
        stream = data.get("stream")
        try:
            branch = cls(
                file=str(data["file"]),
                sha256=str(data["sha256"]),
                kind=str(data["kind"]),
                input=TensorSpec.from_json(data["input"], f"{where}.input"),
                output=None if output is None else TensorSpec.from_json(output, f"{where}.output"),
                frontend=dict(data["frontend"]),
                clip_seconds=float(data.get("clip_seconds", 15.0)),
                embedding_dim=int(data["embedding_dim"]),
                feature_dim=None if data.get("feature_dim") is None else int(data["feature_dim"]),
                configuration=str(data["configuration"]),
                quantization=dict(data.get("quantization") or {"method": "none"}),
                hop=None if hop is None else HopSpec.from_json(hop, f"{where}.hop"),
                stream=None if stream is None else StreamSpec.from_json(stream, f"{where}.stream"),
            )
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{where}: malformed field ({exc})") from None
        branch.validate(where, name)
        return branch

    def validate(self, where: str, name: str | None = None) -> None:
        """Raise ModelError when the fields contradict each other (`name`, "audio" or "video", adds the
        checks that depend on the branch: a raw branch's input dtype and rank and its hop unit)."""
        if self.kind not in KINDS:
            raise ModelError(f"{where}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "head" and not self.feature_dim:
            raise ModelError(f"{where}: a 'head' branch needs feature_dim (D of its (B, T, D) input)")
        if Path(self.file).name != self.file:
            raise ModelError(f"{where}: file must be a plain name inside the model directory, got {self.file!r}")
        if self.embedding_dim <= 0:
            raise ModelError(f"{where}: embedding_dim must be positive, got {self.embedding_dim}")
        if not (math.isfinite(self.clip_seconds) and 0 < self.clip_seconds <= MAX_CLIP_SECONDS):
            raise ModelError(f"{where}: clip_seconds must be in (0, {MAX_CLIP_SECONDS:g}], got {self.clip_seconds}")
        if self.kind in FRONTEND_KINDS:
            problem = _frontend_problem(self.frontend)
            if problem:
                raise ModelError(f"{where}: frontend {problem}")
        if (self.hop is not None) != (self.kind == "raw"):
            raise ModelError(f"{where}: a 'raw' branch needs a hop input and only a raw branch has one")
        if self.kind == "raw":
            problem = _raw_problem(self, name)
            if problem:
                raise ModelError(f"{where}: {problem}")
        if self.stream is not None:
            problem = _stream_problem(self, name)
            if problem:
                raise ModelError(f"{where}: stream {problem}")

    def embedding_settings(self) -> dict[str, Any]:
        """The fields besides the file that change what this branch embeds (hashed into the fingerprint)."""
        data = self.to_json()
        return {key: data[key] for key in EMBEDDING_FIELDS if key in data or key not in OPTIONAL_EMBEDDING_FIELDS}


def _raw_problem(branch: BranchManifest, name: str | None) -> str | None:
    """What contradicts itself in a raw branch: hop not an int64 scalar in steps of the front end's step."""
    hop = branch.hop
    if hop.dtype != "int64":
        return f"hop input must be int64, got {hop.dtype!r}"
    if not (_is_number(hop.unit_seconds) and hop.unit_seconds > 0):
        return f"hop unit_seconds must be a positive number, got {hop.unit_seconds!r}"
    if name is None:
        return None
    dtype, rank = RAW_INPUTS[name]
    if branch.input.dtype != dtype or len(branch.input.shape) != rank:
        return (f"a raw {name} branch takes {dtype} of rank {rank}, manifest says {branch.input.dtype} "
                f"{list(branch.input.shape)}")
    step = raw_step_seconds(name, branch.frontend)
    if step is None or not math.isclose(hop.unit_seconds, step, rel_tol=1e-9):
        return f"hop unit_seconds {hop.unit_seconds} is not the front end's step ({step} s)"
    return None


def _stream_problem(branch: BranchManifest, name: str | None) -> str | None:
    """What contradicts itself in a streaming split: only full video branches have one, its file is a plain
    name beside the branch file, and its features are (batch, time, F) float32, F > 0."""
    stream = branch.stream
    if branch.kind != "full" or name not in (None, "video"):
        return f"belongs to full video branches only, this is a {branch.kind} {name or ''} branch".replace("  ", " ")
    if Path(stream.file).name != stream.file or stream.file == branch.file:
        return f"file must be a plain name inside the model directory, other than {branch.file}, got {stream.file!r}"
    shape = stream.features.shape
    if (stream.features.dtype != "float32" or len(shape) != 3 or not isinstance(shape[2], int)
            or isinstance(shape[2], bool) or shape[2] <= 0):
        return f"features must be float32 (batch, time, F) with F > 0, got {stream.features.dtype} {list(shape)}"
    return None


def raw_step_seconds(name: str, frontend: dict[str, Any]) -> float | None:
    """Seconds per step of a front end: one frame (1 / fps) for video, one log-mel patch for audio."""
    if name == "video":
        fps = frontend.get("fps")
        return 1.0 / fps if _is_number(fps) and fps > 0 else None
    seconds = frontend.get("patch_seconds")
    return float(seconds) if _is_number(seconds) else None


def _frontend_problem(frontend: dict[str, Any]) -> str | None:
    """What is out of range in a full branch's front end (video: fps, crop, mean, std); None if nothing.

    The audio front end must equal this runtime's exactly (checked at load), the video front end's numbers
    are per model, so they are bounded here.
    """
    if "fps" not in frontend:
        return None  # audio: compared key by key with audio_frontend() when the model is loaded
    numbers = {key: frontend.get(key) for key in ("fps", "resize_shorter_side", "center_crop")}
    if not all(_is_number(v) and v > 0 for v in numbers.values()):
        return f"fps, resize_shorter_side and center_crop must be positive numbers, got {numbers}"
    if frontend["fps"] > MAX_FPS:
        return f"fps must be at most {MAX_FPS:g}, got {frontend['fps']}"
    if frontend["center_crop"] > frontend["resize_shorter_side"]:
        return "center_crop is larger than resize_shorter_side"
    mean, std = frontend.get("mean"), frontend.get("std")
    if not (_triple(mean) and all(0.0 <= m <= 1.0 for m in mean)):
        return f"mean must be three numbers in [0, 1], got {mean!r}"
    if not (_triple(std) and all(0.0 < v <= 1.0 for v in std)):
        return f"std must be three numbers in (0, 1], got {std!r}"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _triple(values: Any) -> bool:
    return isinstance(values, list) and len(values) == 3 and all(_is_number(v) for v in values)


@dataclass(frozen=True)
class ModelManifest:
    """Both branches plus provenance: which training data, which tivm, when."""

    audio: BranchManifest
    video: BranchManifest
    data_fingerprint: str
    tivm_version: str
    created: str = ""  # empty: write_manifest stamps the current UTC time
    format: str = FORMAT
    version: int = VERSION

    @property
    def model_fingerprint(self) -> str:
        if self.version == 1:  # kept so that libraries built with version-1 models still match
            return model_fingerprint(self.audio.sha256, self.video.sha256)
        return model_fingerprint_v2(self.audio, self.video)

    @property
    def embedding_dim(self) -> int:
        return self.audio.embedding_dim

    @property
    def configuration(self) -> str:
        return self.audio.configuration

    def branch(self, name: str) -> BranchManifest:
        if name not in BRANCHES:
            raise ValueError(f"branch must be one of {BRANCHES}, got {name!r}")
        return getattr(self, name)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "version": self.version,
            "audio": self.audio.to_json(),
            "video": self.video.to_json(),
            "data_fingerprint": self.data_fingerprint,
            "tivm_version": self.tivm_version,
            "created": self.created,
            "model_fingerprint": self.model_fingerprint,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> "ModelManifest":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelError(f"{where}: not a tivm model manifest (format is not {FORMAT!r})")
        version = data.get("version")
        if version not in SUPPORTED_VERSIONS:
            raise ModelError(
                f"{where}: manifest version {version!r} is not supported by this tivm "
                f"(supports {list(SUPPORTED_VERSIONS)}); upgrade tivm or re-export the model")
        _require(data, ("audio", "video", "data_fingerprint", "tivm_version", "model_fingerprint"), where)
        manifest = cls(
            audio=BranchManifest.from_json(data["audio"], f"{where}: audio", "audio"),
            video=BranchManifest.from_json(data["video"], f"{where}: video", "video"),
            data_fingerprint=str(data["data_fingerprint"]),
            tivm_version=str(data["tivm_version"]),
            created=str(data.get("created", "")),
            version=int(version),
        )
        if manifest.audio.embedding_dim != manifest.video.embedding_dim:
            raise ModelError(f"{where}: audio and video embedding_dim differ "
                             f"({manifest.audio.embedding_dim} vs {manifest.video.embedding_dim})")
        if data["model_fingerprint"] != manifest.model_fingerprint:
            raise ModelError(f"{where}: model_fingerprint does not match the branch sha256s (edited by hand?)")
        return manifest


def audio_frontend() -> dict[str, Any]:
    """The audio front end this runtime computes (log-mel patches), as recorded in a manifest."""
    from tivm.runtime import audio

    return audio.frontend_params()


def video_frontend(fps: float = 1.0, **image_arguments: Any) -> dict[str, Any]:
    """The video front end: frames per second plus image.preprocess_params(resize, crop, mean, std)."""
    from tivm.runtime import image

    return {"fps": float(fps), **image.preprocess_params(**image_arguments)}


def model_fingerprint(audio_sha256: str, video_sha256: str) -> str:
    """sha256 over both branch files' sha256s: identifies the exact pair of ONNX files."""
    digest = hashlib.sha256(FINGERPRINT_DOMAIN)
    digest.update(f"audio {audio_sha256}\nvideo {video_sha256}\n".encode())
    return digest.hexdigest()


def model_fingerprint_v2(audio: BranchManifest, video: BranchManifest) -> str:
    """sha256 over both files' sha256s and both branches' embedding settings (canonical JSON)."""
    digest = hashlib.sha256(FINGERPRINT_DOMAIN_V2)
    for name, branch in (("audio", audio), ("video", video)):
        settings = json.dumps(branch.embedding_settings(), sort_keys=True, separators=(",", ":"))
        digest.update(f"{name} {branch.sha256}\n{settings}\n".encode())
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(model_dir: str | os.PathLike) -> ModelManifest:
    """Read and validate `<model_dir>/manifest.json`; ModelError naming the file on any problem."""
    path = Path(model_dir) / MANIFEST_NAME
    if not Path(model_dir).is_dir():
        raise ModelError(f"{model_dir}: not a model directory (no such directory)")
    if not path.is_file():
        raise ModelError(f"{path}: missing (a model directory holds audio.onnx, video.onnx, manifest.json)")
    data = read_json_object(path, lambda problem: ModelError(f"{path}: {problem}"), max_bytes=MAX_MANIFEST_BYTES)
    return ModelManifest.from_json(data, str(path))


def write_manifest(model_dir: str | os.PathLike, manifest: ModelManifest) -> ModelManifest:
    """Write `<model_dir>/manifest.json` atomically; returns the manifest as written.

    Empty branch sha256s are computed from the files; given ones must match the files (ModelError if not).
    An empty `created` is stamped with the current UTC time.
    """
    model_dir = Path(model_dir)
    branches = {name: _with_checked_sha256(model_dir, manifest.branch(name)) for name in BRANCHES}
    branches = {name: _with_checked_stream(model_dir, branch) for name, branch in branches.items()}
    created = manifest.created or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest = dataclasses.replace(manifest, created=created, **branches)
    for name in BRANCHES:
        manifest.branch(name).validate(f"{model_dir / MANIFEST_NAME}: {name}", name)
    text = json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n"
    write_text(model_dir / MANIFEST_NAME, text)
    return manifest


def _with_checked_sha256(model_dir: Path, branch: BranchManifest | StreamSpec) -> BranchManifest | StreamSpec:
    path = model_dir / branch.file
    if not path.is_file():
        raise ModelError(f"{path}: missing (cannot write a manifest for a file that is not there)")
    actual = file_sha256(path)
    if branch.sha256 and branch.sha256 != actual:
        raise ModelError(f"{path}: sha256 {actual} does not match the manifest's {branch.sha256}")
    return dataclasses.replace(branch, sha256=actual)


def _with_checked_stream(model_dir: Path, branch: BranchManifest) -> BranchManifest:
    if branch.stream is None:
        return branch
    checked = _with_checked_sha256(model_dir, branch.stream)  # the same checks: present, sha256 as given
    return dataclasses.replace(branch, stream=checked)


def _require(data: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(data, dict):
        raise ModelError(f"{where}: expected a JSON object")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ModelError(f"{where}: missing field(s) {', '.join(missing)}")
