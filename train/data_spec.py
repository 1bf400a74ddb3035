"""From a data SPEC to train / validation / test FeatureSets, plus the training-split input statistics.

SPEC (what `tivm-train --data` and `tivm-eval --data` take):
* a tivm data-set directory (`tivm-features` output; manifest.json inside),
* YouTube-8M TFRecord shards: a glob, a directory of *.tfrecord, or one file (video level gives T = 1),
* `synthetic[:n=...,seed=...,t=...]` (tivm.train.synthetic).

Splits: the data set's own hash-by-source split, unless `label` is given (the YouTube-8M protocol): then the
clips carrying `label` are the test gallery and all others train, with a validation share of the non-test
sources picked by a second hash of the source id (salt VAL_SALT), so it is deterministic and disjoint by
source.

Extra sources (`tivm-train --extra-data`, the YouTube-8M protocol only): more clips of the same features that
join training and validation but never the test gallery, which stays the `label` clips of the main SPEC.
Validation then looks like the test: it is the share `domain_val_fraction` of the extra sources' `label`
clips (by a hash of the source id, salt DOMAIN_VAL_SALT); their other `label` clips are in-domain training
pairs, and every clip without the label, of either source, trains. A source id found in both the main SPEC
and an extra one is an error (it could sit in the test gallery and in training at once).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tivm.train import synthetic
from tivm.train.dataset import SPLITS, DatasetError, FeatureSet, concatenate, fingerprint, load, source_uniform

VAL_SALT = "tivm-val"
DEFAULT_VAL_FRACTION = 0.1
DOMAIN_VAL_SALT = "tivm-domain-val"
DEFAULT_DOMAIN_VAL_FRACTION = 0.5
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


def _hashed_share(source_id: np.ndarray, salt: str, fraction: float) -> np.ndarray:
    """bool per clip: its source's hash (with salt) falls below fraction; all clips of a source agree."""
    unique, inverse = np.unique(np.asarray(source_id).astype(str), return_inverse=True)
    return np.array([source_uniform(s, salt) < fraction for s in unique.tolist()], bool)[inverse]


def domain_splits(main: FeatureSet, extras: list[FeatureSet], label: int,
                  domain_val_fraction: float = DEFAULT_DOMAIN_VAL_FRACTION) -> FeatureSet:
    """main and extras as one FeatureSet with the in-domain split (module docstring): test = main's `label`
    clips; val = a hashed share of the extras' `label` clips; train = everything else."""
    if not 0.0 < domain_val_fraction < 1.0:
        raise ValueError(f"domain_val_fraction must be in (0, 1), got {domain_val_fraction!r}")
    test = main.has_label(int(label))
    if not test.any():
        raise DatasetError(None, f"no clip carries label {label}: the test gallery would be empty")
    extra = concatenate(extras) if len(extras) > 1 else extras[0]
    shared = np.intersect1d(np.asarray(main.source_id).astype(str), np.asarray(extra.source_id).astype(str))
    if shared.size:
        raise DatasetError(None, f"the extra data shares {shared.size} source ids with the main data (e.g. "
                                 f"{shared[0]!r}); a clip could be in the test gallery and in training")
    in_domain = extra.has_label(int(label))
    if not in_domain.any():
        raise DatasetError(None, f"the extra data holds no clip with label {label}: no in-domain validation")
    in_val = in_domain & _hashed_share(extra.source_id, DOMAIN_VAL_SALT, domain_val_fraction)
    if not in_val.any() or in_val.sum() < 2:
        raise DatasetError(None, f"only {int(in_val.sum())} in-domain validation clips: raise domain_val_fraction")
    main_split = np.where(test, SPLITS["test"], SPLITS["train"]).astype(np.uint8)
    extra_split = np.where(in_val, SPLITS["val"], SPLITS["train"]).astype(np.uint8)
    return concatenate([with_splits(main, main_split), with_splits(extra, extra_split)])


def load_data(spec: str, label: int | None = None, val_fraction: float = DEFAULT_VAL_FRACTION,
              extra_specs: list[str] | tuple[str, ...] = (),
              domain_val_fraction: float = DEFAULT_DOMAIN_VAL_FRACTION,
              progress: bool = True) -> tuple[FeatureSet, dict[str, FeatureSet]]:
    """(all clips, {"train", "val", "test"}) for a SPEC plus optional extra SPECs: split_data's rules without
    extras, domain_splits' with them (which need `label`)."""
    fs = load_spec(spec, progress=progress)
    if not extra_specs:
        return fs, split_data(fs, label, val_fraction)
    if label is None:
        raise DatasetError(None, "extra data needs --label: it joins training and in-domain validation, "
                                 "and the test gallery is the label's clips of the main data")
    extras = [load_spec(s, progress=progress) for s in extra_specs]
    for spec_text, extra in zip(extra_specs, extras):
        if (extra.audio.shape[1:], extra.video.shape[1:]) != (fs.audio.shape[1:], fs.video.shape[1:]):
            raise DatasetError(spec_text, f"clips are {extra.audio.shape[1:]}/{extra.video.shape[1:]} but the "
                                          f"main data's are {fs.audio.shape[1:]}/{fs.video.shape[1:]}")
    combined = domain_splits(fs, extras, label, domain_val_fraction)
    return combined, {name: combined.split_view(name) for name in SPLITS}


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


def data_record(fs: FeatureSet, spec: str, label: int | None, parts: dict[str, FeatureSet],
                extra_specs: list[str] | tuple[str, ...] = (),
                domain_val_fraction: float | None = None) -> dict:
    """What a checkpoint records about its data: fingerprint, manifest, spec, split rule and sizes (and,
    with extra sources, their specs and the in-domain validation share)."""
    manifest = fs.complete_manifest()
    record = {"fingerprint": fingerprint(manifest), "manifest": manifest,
              "spec": os.fspath(spec), "label": label, "sizes": {k: len(v) for k, v in parts.items()}}
    if extra_specs:
        record.update(extra_specs=[os.fspath(s) for s in extra_specs], domain_val_fraction=domain_val_fraction)
    return record
