"""The tivm data-set format (version 1): a directory of memory-mappable .npy files plus manifest.json.

numpy only (no torch), so tools that only inspect or assemble data sets import fast.

    fs = FeatureSet(audio, video, clip_id, source_id, start, split, manifest=make_manifest("tivm-features", ...))
    fs.save("data/my_set")                  # atomic: a half-written directory never has a manifest.json
    fs = load("data/my_set")                # memory-mapped, validated
    train = fs.split_view("train")
    music = fs.subset(fs.has_label(14))

Splits come from `assign_splits(source_ids)`: a hash of the source id, so every clip of one video (or song)
lands in the same split, whatever order or subset of sources a data set holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from tivm.runtime.errors import TivmError
from tivm.runtime.files import read_json_object
from tivm.runtime.version import tivm_version

FORMAT_NAME = "tivm-dataset"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
CLIP_SECONDS = 15

SPLITS = {"train": 0, "val": 1, "test": 2}
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
DEFAULT_SALT = "tivm"
SPLIT_HASH = "blake2b-64"  # first 8 bytes of blake2b("<salt>:<source_id>") as a big-endian uint64 / 2**64

REQUIRED_ARRAYS = ("audio", "video", "clip_id", "source_id", "start", "split")
LABEL_ARRAYS = ("labels_indptr", "labels")
SOURCES = ("tivm-features", "yt8m-video-level", "yt8m-frame-level", "synthetic")


class DatasetError(TivmError):
    """A data-set directory (or in-memory FeatureSet) that cannot be used. Message: "<path>: <problem>"."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)


# ----------------------------------------------------------------------------------------------- splits

def split_rule(fractions: Sequence[float] = DEFAULT_FRACTIONS, salt: str = DEFAULT_SALT) -> dict:
    """The manifest's record of how `assign_splits` was called (enough to reproduce it)."""
    return {"by": "source_id", "hash": SPLIT_HASH, "salt": salt, "fractions": [float(f) for f in fractions]}


def source_uniform(source_id: str, salt: str = DEFAULT_SALT) -> float:
    """A number in [0, 1) that depends only on (salt, source_id): the source's position on the split line."""
    digest = hashlib.blake2b(f"{salt}:{source_id}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def assign_splits(source_ids: Iterable[str], fractions: Sequence[float] = DEFAULT_FRACTIONS,
                  salt: str = DEFAULT_SALT) -> np.ndarray:
    """uint8 split per entry (0 train, 1 val, 2 test), decided by a hash of its source id alone.

    Deterministic, disjoint by source, and independent of order and of how many sources there are.
    """
    fractions = _checked_fractions(fractions)
    ids = np.asarray(list(source_ids) if not isinstance(source_ids, np.ndarray) else source_ids).astype(str)
    if ids.size == 0:
        return np.zeros(0, np.uint8)
    unique, inverse = np.unique(ids, return_inverse=True)
    u = np.array([source_uniform(s, salt) for s in unique.tolist()], np.float64)
    edges = np.cumsum(fractions)[:-1]  # u < f0 -> train, u < f0 + f1 -> val, else test
    per_source = np.searchsorted(edges, u, side="right").astype(np.uint8)
    return per_source[inverse.reshape(-1)]


def _checked_fractions(fractions: Sequence[float]) -> np.ndarray:
    f = np.asarray(fractions, np.float64)
    if f.shape != (3,) or np.any(f < 0) or not np.isclose(f.sum(), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    return f


# ---------------------------------------------------------------------------------------------- manifest

def make_manifest(source: str, audio: dict, video: dict, *, clip_seconds: float = CLIP_SECONDS,
                  rule: dict | None = None, **extra: Any) -> dict:
    """A manifest skeleton; `save` fills in format, version, n, seq_len and the dims from the arrays.

    `audio`/`video` describe the features (`backbone`, `weights_sha256`, `frontend`, ...): they are what
    `fingerprint` hashes, so put there everything that changes the feature values and nothing else.
    """
    if source not in SOURCES:
        raise ValueError(f"manifest source must be one of {SOURCES}, got {source!r}")
    return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "source": source, "audio": dict(audio),
            "video": dict(video), "clip_seconds": clip_seconds, "split_rule": rule or split_rule(),
            "tivm_version": tivm_version(), **extra}


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def fingerprint(manifest: dict) -> str:
    """sha256 (hex) of the canonical JSON of the manifest's `audio` and `video` entries."""
    feature_spec = {"audio": manifest.get("audio", {}), "video": manifest.get("video", {})}
    return hashlib.sha256(_canonical_json(feature_spec).encode("utf-8")).hexdigest()


def make_clip_id(source_id: str, start: float) -> str:
    """The conventional clip id: "<source>@<start seconds>" (e.g. "abcd@15")."""
    return f"{source_id}@{float(start):g}"


# ---------------------------------------------------------------------------------------------- FeatureSet

@dataclass
class FeatureSet:
    """N clips: per-second audio (N, T, Da) and video (N, T, Dv) features plus ids, starts, splits, labels."""

    audio: np.ndarray
    video: np.ndarray
    clip_id: np.ndarray
    source_id: np.ndarray
    start: np.ndarray
    split: np.ndarray
    labels_indptr: np.ndarray | None = None
    labels: np.ndarray | None = None
    manifest: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        labels = ", labelled" if self.has_labels else ""
        counts = np.bincount(np.asarray(self.split), minlength=3).tolist() if len(self) else [0, 0, 0]
        return (f"FeatureSet(n={len(self)}, T={self.seq_len}, audio_dim={self.audio_dim}, "
                f"video_dim={self.video_dim}, train/val/test={counts}{labels}, "
                f"source={self.manifest.get('source')!r})")

    # -- shape ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.audio.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.audio.shape[1])

    @property
    def audio_dim(self) -> int:
        return int(self.audio.shape[2])

    @property
    def video_dim(self) -> int:
        return int(self.video.shape[2])

    @property
    def has_labels(self) -> bool:
        return self.labels_indptr is not None

    @property
    def fingerprint(self) -> str:
        """fingerprint() of the completed manifest (dims included), as save() will write it."""
        return fingerprint(self.complete_manifest())

    # -- selection ------------------------------------------------------------------------------------
    def subset(self, mask_or_indices: np.ndarray | Sequence[int] | Sequence[bool]) -> "FeatureSet":
        """A new FeatureSet holding the selected clips (in memory), labels kept, manifest n updated."""
        index = _as_index(mask_or_indices, len(self))
        indptr, labels = (None, None)
        if self.has_labels:
            indptr, labels = _csr_take(self.labels_indptr, self.labels, index)
        manifest = dict(self.manifest, n=int(index.size))
        return FeatureSet(audio=np.ascontiguousarray(self.audio[index]),
                          video=np.ascontiguousarray(self.video[index]),
                          clip_id=self.clip_id[index], source_id=self.source_id[index],
                          start=self.start[index], split=self.split[index],
                          labels_indptr=indptr, labels=labels, manifest=manifest)

    def split_view(self, name: str) -> "FeatureSet":
        """The clips of one split: "train", "val" or "test"."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {tuple(SPLITS)}, got {name!r}")
        return self.subset(np.asarray(self.split) == SPLITS[name])

    def labels_of(self, i: int) -> np.ndarray:
        """The class labels of clip i (empty when the data set has none)."""
        if not self.has_labels:
            return np.zeros(0, np.int64)
        return np.asarray(self.labels[self.labels_indptr[i]:self.labels_indptr[i + 1]])

    def has_label(self, label: int) -> np.ndarray:
        """bool (N,): which clips carry `label`. A data set without labels is an error, not all-False."""
        if not self.has_labels:
            raise DatasetError(None, f"this data set has no labels (source {self.manifest.get('source')!r})")
        counts = np.diff(np.asarray(self.labels_indptr))
        rows = np.repeat(np.arange(len(self)), counts)
        mask = np.zeros(len(self), bool)
        mask[rows[np.asarray(self.labels) == label]] = True
        return mask

    # -- checks and i/o -------------------------------------------------------------------------------
    def validate(self, where: str | os.PathLike | None = None) -> None:
        """Raise DatasetError(where, problem) unless shapes, dtypes and the manifest agree."""
        problem = _first_problem(self)
        if problem:
            raise DatasetError(where, problem)

    def complete_manifest(self) -> dict:
        """The manifest with the fields the arrays determine filled in (format, version, n, seq_len, dims)."""
        m = dict(self.manifest)
        m.setdefault("source", "synthetic")
        m.setdefault("clip_seconds", CLIP_SECONDS)
        m.setdefault("split_rule", split_rule())
        m.setdefault("tivm_version", tivm_version())
        m["format"], m["version"] = FORMAT_NAME, FORMAT_VERSION
        m["n"], m["seq_len"] = len(self), self.seq_len
        m["audio"] = dict(m.get("audio", {}), dim=self.audio_dim)
        m["video"] = dict(m.get("video", {}), dim=self.video_dim)
        m["has_labels"] = self.has_labels
        return m

    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the data set to `directory` atomically (built in a sibling temp dir, then renamed)."""
        return save(self, directory, overwrite=overwrite)


def _as_index(mask_or_indices, n: int) -> np.ndarray:
    sel = np.asarray(mask_or_indices)
    if sel.dtype == bool:
        if sel.shape != (n,):
            raise ValueError(f"boolean mask has shape {sel.shape}, expected ({n},)")
        return np.flatnonzero(sel)
    if sel.size == 0:
        return np.zeros(0, np.int64)
    if not np.issubdtype(sel.dtype, np.integer):
        raise ValueError(f"subset takes a bool mask or integer indices, got dtype {sel.dtype}")
    sel = sel.reshape(-1).astype(np.int64)
    if sel.min() < -n or sel.max() >= n:
        raise IndexError(f"subset index out of range for {n} clips")
    return np.where(sel < 0, sel + n, sel)


def _csr_take(indptr: np.ndarray, labels: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.asarray(indptr)
    starts, ends = indptr[index], indptr[index + 1]
    counts = ends - starts
    new_indptr = np.zeros(index.size + 1, np.int64)
    np.cumsum(counts, out=new_indptr[1:])
    if new_indptr[-1] == 0:
        return new_indptr, np.zeros(0, np.int64)
    # position of every kept label in the old array: start of its row + offset within the row
    offsets = np.arange(new_indptr[-1]) - np.repeat(new_indptr[:-1], counts)
    return new_indptr, np.asarray(labels)[np.repeat(starts, counts) + offsets].astype(np.int64)


def labels_to_csr(label_lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, labels) int64 from a list of per-clip label lists."""
    counts = np.fromiter((len(x) for x in label_lists), np.int64, count=len(label_lists))
    indptr = np.zeros(len(label_lists) + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    flat = np.fromiter((int(v) for x in label_lists for v in x), np.int64, count=int(indptr[-1]))
    return indptr, flat


# --------------------------------------------------------------------------------------------- validation

def _first_problem(fs: FeatureSet) -> str | None:
    """The first thing wrong with fs, in words, or None."""
    for name in ("audio", "video"):
        a = getattr(fs, name)
        if a.dtype != np.float32 or a.ndim != 3:
            return f"{name} must be float32 (N, T, D), got {a.dtype} {a.shape}"
    n, t = fs.audio.shape[:2]
    if fs.video.shape[:2] != (n, t):
        return f"audio {fs.audio.shape} and video {fs.video.shape} disagree on (N, T)"
    for name in ("clip_id", "source_id"):
        a = getattr(fs, name)
        if a.dtype.kind != "U" or a.shape != (n,):
            return f"{name} must be a unicode array of shape ({n},), got {a.dtype} {a.shape}"
    for name, dtype in (("start", np.float32), ("split", np.uint8)):
        a = getattr(fs, name)
        if a.dtype != dtype or a.shape != (n,):
            return f"{name} must be {np.dtype(dtype)} ({n},), got {a.dtype} {a.shape}"
    if n and int(np.max(fs.split)) > 2:
        return f"split holds {int(np.max(fs.split))}; only 0 (train), 1 (val), 2 (test) are allowed"
    problem = _labels_problem(fs.labels_indptr, fs.labels, n)
    if problem:
        return problem
    return _manifest_problem(fs.manifest, n, t, fs.audio.shape[2], fs.video.shape[2])


def _labels_problem(indptr, labels, n: int) -> str | None:
    if indptr is None and labels is None:
        return None
    if indptr is None or labels is None:
        return "labels_indptr and labels come together: one is missing"
    if indptr.dtype != np.int64 or indptr.shape != (n + 1,):
        return f"labels_indptr must be int64 ({n + 1},), got {indptr.dtype} {indptr.shape}"
    if labels.dtype != np.int64 or labels.ndim != 1:
        return f"labels must be int64 1-d, got {labels.dtype} {labels.shape}"
    if indptr[0] != 0 or indptr[-1] != labels.shape[0] or np.any(np.diff(indptr) < 0):
        return "labels_indptr is not a valid CSR index (must start at 0, not decrease, end at len(labels))"
    return None


def _manifest_problem(m: dict, n: int, t: int, da: int, dv: int) -> str | None:
    """Only fields present are checked, so an in-memory manifest may be partial until save()."""
    if not isinstance(m, dict):
        return f"manifest must be a dict, got {type(m).__name__}"
    if "format" in m and m["format"] != FORMAT_NAME:
        return f"manifest format is {m['format']!r}, expected {FORMAT_NAME!r}"
    if "version" in m and m["version"] != FORMAT_VERSION:
        newer = isinstance(m["version"], int) and m["version"] > FORMAT_VERSION
        hint = " (written by a newer tivm: upgrade tivm)" if newer else ""
        return f"data-set format version {m['version']!r} is not supported, expected {FORMAT_VERSION}{hint}"
    for key, actual in (("n", n), ("seq_len", t)):
        if key in m and m[key] != actual:
            return f"manifest says {key} = {m[key]} but the arrays hold {actual}"
    for modality, actual in (("audio", da), ("video", dv)):
        dim = m.get(modality, {}).get("dim") if isinstance(m.get(modality), dict) else None
        if dim is not None and dim != actual:
            return f"manifest says {modality} dim = {dim} but {modality}.npy has {actual}"
    return None


# ------------------------------------------------------------------------------------------------- save

def save(fs: FeatureSet, directory: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write fs as a data-set directory. manifest.json is written last inside a temp sibling directory
    that is then renamed into place, so an interrupted save never looks like a finished data set."""
    target = Path(directory)
    fs.validate(target)
    if target.exists() and not overwrite:
        raise DatasetError(target, "already exists (pass overwrite=True to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_arrays(fs, tmp)
        _write_json(tmp / MANIFEST_FILE, fs.complete_manifest())
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _write_arrays(fs: FeatureSet, directory: Path) -> None:
    names = REQUIRED_ARRAYS + (LABEL_ARRAYS if fs.has_labels else ())
    for name in names:
        with open(directory / f"{name}.npy", "wb") as f:
            np.save(f, np.ascontiguousarray(getattr(fs, name)), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())


def _write_json(path: Path, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _swap_into_place(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- load

def load(directory: str | os.PathLike, mmap: bool = True) -> FeatureSet:
    """Open a data-set directory (memory-mapped read-only by default), validated; DatasetError otherwise."""
    root = Path(directory)
    if not root.is_dir():
        raise DatasetError(root, "not a directory (expected a tivm data-set directory)")
    manifest = _read_manifest(root)
    present = [name for name in LABEL_ARRAYS if (root / f"{name}.npy").exists()]
    names = REQUIRED_ARRAYS + (LABEL_ARRAYS if present else ())
    arrays = {name: _load_array(root, name, mmap) for name in names}
    fs = FeatureSet(**arrays, manifest=manifest)
    for key in ("format", "version", "n", "seq_len"):
        if key not in manifest:
            raise DatasetError(root / MANIFEST_FILE, f"manifest has no {key!r} entry")
    if manifest.get("has_labels") and not fs.has_labels:
        raise DatasetError(root, "manifest says the data set has labels but labels.npy is missing")
    fs.validate(root)
    return fs


def _read_manifest(root: Path) -> dict:
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise DatasetError(root, f"no {MANIFEST_FILE}: not a tivm data set, or a save that did not finish")
    manifest = read_json_object(path, lambda problem: DatasetError(path, f"manifest: {problem}"))
    if manifest.get("format") != FORMAT_NAME:
        raise DatasetError(path, f"format is {manifest.get('format')!r}, expected {FORMAT_NAME!r}")
    return manifest


def _load_array(root: Path, name: str, mmap: bool) -> np.ndarray:
    path = root / f"{name}.npy"
    if not path.is_file():
        raise DatasetError(root, f"{path.name} is missing")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DatasetError(path, f"not a readable .npy file ({e})") from None


# --------------------------------------------------------------------------------------------- assembling

def concatenate(parts: Sequence[FeatureSet], manifest: dict | None = None) -> FeatureSet:
    """One FeatureSet from several with the same T, dims and feature spec (fingerprint).

    Labels are kept only when every part has them (mixing labelled and unlabelled parts is an error).
    The manifest is `manifest` if given, else the first part's, with n updated.
    """
    if not parts:
        raise ValueError("concatenate needs at least one FeatureSet")
    first = parts[0]
    for p in parts[1:]:
        if p.audio.shape[1:] != first.audio.shape[1:] or p.video.shape[1:] != first.video.shape[1:]:
            raise DatasetError(None, f"cannot concatenate: per-clip shapes {p.audio.shape[1:]}/"
                                     f"{p.video.shape[1:]} vs {first.audio.shape[1:]}/{first.video.shape[1:]}")
        if fingerprint(p.manifest) != fingerprint(first.manifest):
            raise DatasetError(None, "cannot concatenate: parts come from different feature extractors "
                                     "(manifest audio/video entries differ)")
    labelled = {p.has_labels for p in parts}
    if len(labelled) > 1:
        raise DatasetError(None, "cannot concatenate labelled and unlabelled parts")
    indptr = labels = None
    if first.has_labels:
        sizes = [int(p.labels_indptr[-1]) for p in parts]
        offsets = np.cumsum([0] + sizes[:-1])
        indptr = np.concatenate([[0]] + [np.asarray(p.labels_indptr[1:]) + o for p, o in zip(parts, offsets)])
        indptr = indptr.astype(np.int64)
        labels = np.concatenate([np.asarray(p.labels) for p in parts]).astype(np.int64)
    cat = lambda name: np.concatenate([np.asarray(getattr(p, name)) for p in parts])  # noqa: E731
    n = sum(len(p) for p in parts)
    return FeatureSet(audio=cat("audio"), video=cat("video"), clip_id=cat("clip_id"),
                      source_id=cat("source_id"), start=cat("start"), split=cat("split"),
                      labels_indptr=indptr, labels=labels,
                      manifest=dict(manifest if manifest is not None else first.manifest, n=n))


class FeatureSetBuilder:
    """Collects clips one source at a time (e.g. per extracted video) and builds a FeatureSet at the end.

        builder = FeatureSetBuilder(make_manifest("tivm-features", audio={...}, video={...}))
        for video in videos:
            builder.add(source_id, starts, audio_seq, video_seq)   # (k, T, Da), (k, T, Dv)
        builder.build().save(out_dir)

    Splits are assigned at build() from the source ids with the manifest's split_rule.
    """

    def __init__(self, manifest: dict):
        self.manifest = dict(manifest)
        self._parts: list[dict] = []

    def __len__(self) -> int:
        return sum(p["audio"].shape[0] for p in self._parts)

    def add(self, source_id: str, starts: Sequence[float], audio: np.ndarray, video: np.ndarray,
            labels: Sequence[Sequence[int]] | None = None, clip_ids: Sequence[str] | None = None) -> None:
        """Append k clips of one source. clip_ids default to "<source>@<start>"."""
        audio = np.asarray(audio, np.float32)
        video = np.asarray(video, np.float32)
        starts = np.asarray(starts, np.float32).reshape(-1)
        k = starts.size
        if audio.ndim != 3 or video.ndim != 3 or audio.shape[:2] != video.shape[:2] or audio.shape[0] != k:
            raise ValueError(f"{source_id}: expected audio (k, T, Da) and video (k, T, Dv) with k = {k} "
                             f"starts, got {audio.shape} and {video.shape}")
        if self._parts and (audio.shape[1:] != self._parts[0]["audio"].shape[1:]
                            or video.shape[1:] != self._parts[0]["video"].shape[1:]):
            raise ValueError(f"{source_id}: per-clip shapes {audio.shape[1:]}/{video.shape[1:]} differ from "
                             f"earlier clips {self._parts[0]['audio'].shape[1:]}/"
                             f"{self._parts[0]['video'].shape[1:]}")
        ids = [make_clip_id(source_id, s) for s in starts.tolist()] if clip_ids is None else list(clip_ids)
        if labels is not None and len(labels) != k:
            raise ValueError(f"{source_id}: {len(labels)} label lists for {k} clips")
        self._parts.append({"audio": audio, "video": video, "starts": starts, "source_id": str(source_id),
                            "clip_ids": ids, "labels": labels})

    def build(self) -> FeatureSet:
        """The FeatureSet of everything added, splits assigned by source."""
        if not self._parts:
            raise ValueError("FeatureSetBuilder.build: no clips were added")
        with_labels = {p["labels"] is not None for p in self._parts}
        if len(with_labels) > 1:
            raise ValueError("FeatureSetBuilder: some sources were added with labels and some without")
        source_id = np.array([p["source_id"] for p in self._parts for _ in range(len(p["starts"]))], dtype=str)
        rule = self.manifest.get("split_rule") or split_rule()
        indptr = labels = None
        if with_labels == {True}:
            indptr, labels = labels_to_csr([lab for p in self._parts for lab in p["labels"]])
        fs = FeatureSet(audio=np.concatenate([p["audio"] for p in self._parts]),
                        video=np.concatenate([p["video"] for p in self._parts]),
                        clip_id=np.array([c for p in self._parts for c in p["clip_ids"]], dtype=str),
                        source_id=source_id,
                        start=np.concatenate([p["starts"] for p in self._parts]),
                        split=assign_splits(source_id, rule["fractions"], rule["salt"]),
                        labels_indptr=indptr, labels=labels, manifest=dict(self.manifest, split_rule=rule))
        fs.manifest = fs.complete_manifest()
        fs.validate()
        return fs


def with_manifest(fs: FeatureSet, **updates: Any) -> FeatureSet:
    """A shallow copy of fs with manifest keys updated."""
    return replace(fs, manifest=dict(fs.manifest, **updates))
