"""From a data SPEC to train / validation / test FeatureSets, plus the training-split input statistics.

SPEC (what `tivm-train --data` and `tivm-eval --data` take):
* a tivm data-set directory (`tivm-features` output; manifest.json inside),
* YouTube-8M TFRecord shards: a glob, a directory of *.tfrecord, or one file (video level gives T = 1),
* `synthetic[:n=...,seed=...,t=...]` (tivm.train.synthetic).

Splits: the data set's own hash-by-source split, unless `label` is given (the YouTube-8M protocol): then the
clips carrying `label` are the test gallery and all others train, with a validation share of the non-test
sources picked by a second hash of the source id (salt VAL_SALT), so it is deterministic and disjoint by
source.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tivm.train import synthetic
from tivm.train.dataset import SPLITS, DatasetError, FeatureSet, fingerprint, load, source_uniform

VAL_SALT = "tivm-val"
DEFAULT_VAL_FRACTION = 0.1
STATS_CHUNK = 4096  # clips per chunk when summing statistics (memory-mapped data sets can be large)


def load_spec(spec: str, progress: bool = True) -> FeatureSet:
    """The FeatureSet a SPEC names (see the module docstring)."""
    spec = str(spec)
    if synthetic.is_spec(spec):
        return synthetic.from_spec(spec)
    path = Path(spec)
    if path.is_dir() and (path / "manifest.json").is_file():
        return load(path)
    from tivm.train.yt8m import read_yt8m  # imported here: only TFRecord specs need protobuf
    return read_yt8m(spec, progress=progress)


def label_splits(fs: FeatureSet, label: int, val_fraction: float = DEFAULT_VAL_FRACTION) -> np.ndarray:
    """uint8 splits: test = clips with `label`; of the rest, a val_fraction of sources (by hash) validate."""
    test = fs.has_label(int(label))
    if not test.any():
        raise DatasetError(None, f"no clip carries label {label}: the test gallery would be empty")
    sources = np.asarray(fs.source_id).astype(str)
    unique, inverse = np.unique(sources, return_inverse=True)
    in_val = np.array([source_uniform(s, VAL_SALT) < val_fraction for s in unique.tolist()], bool)[inverse]
    split = np.where(in_val, SPLITS["val"], SPLITS["train"]).astype(np.uint8)
    split[test] = SPLITS["test"]
    return split


def with_splits(fs: FeatureSet, split: np.ndarray) -> FeatureSet:
    return FeatureSet(audio=fs.audio, video=fs.video, clip_id=fs.clip_id, source_id=fs.source_id,
                      start=fs.start, split=split, labels_indptr=fs.labels_indptr, labels=fs.labels,
                      manifest=dict(fs.manifest))


def split_data(fs: FeatureSet, label: int | None = None,
               val_fraction: float = DEFAULT_VAL_FRACTION) -> dict[str, FeatureSet]:
    """{"train", "val", "test"} views; the label rule when `label` is given, the data set's splits otherwise."""
    if label is not None:
        fs = with_splits(fs, label_splits(fs, label, val_fraction))
    return {name: fs.split_view(name) for name in SPLITS}


def input_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and population std over all clips and seconds of (N, T, D), in float64."""
    n, t, d = features.shape
    if n == 0:
        raise ValueError("cannot compute input statistics of an empty training split")
    total = np.zeros(d, np.float64)
    squares = np.zeros(d, np.float64)
    for start in range(0, n, STATS_CHUNK):
        chunk = np.asarray(features[start:start + STATS_CHUNK], np.float64).reshape(-1, d)
        total += chunk.sum(axis=0)
        squares += (chunk * chunk).sum(axis=0)
    mean = total / (n * t)
    std = np.sqrt(np.maximum(squares / (n * t) - mean * mean, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


def data_record(fs: FeatureSet, spec: str, label: int | None, parts: dict[str, FeatureSet]) -> dict:
    """What a checkpoint records about its data: fingerprint, manifest, spec, split rule and sizes."""
    manifest = fs.complete_manifest()
    return {"fingerprint": fingerprint(manifest), "manifest": manifest,
            "spec": os.fspath(spec), "label": label, "sizes": {k: len(v) for k, v in parts.items()}}
