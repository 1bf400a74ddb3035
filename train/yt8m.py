"""Read YouTube-8M TFRecord shards into a FeatureSet, without TensorFlow.

    fs = read_yt8m("/data/yt8m/video_level/*.tfrecord")            # video level: T = 1 (the means)
    music = read_yt8m("/data/yt8m/frame/*.tfrecord", label=14)      # frame level: 15 s windows, label 14 only

Framing (TFRecord): uint64 length, uint32 masked crc32c(length), data, uint32 masked crc32c(data), little
endian; both CRCs are checked. Payloads are `tf.train.Example` (video level: id, labels, mean_rgb 1024 float,
mean_audio 128 float) or `tf.train.SequenceExample` (frame level: context id, labels; feature lists rgb and
audio, one uint8 vector per second). The messages are declared here at run time with descriptor_pb2, so
neither TensorFlow nor generated code is needed; the wire format is protobuf's own parser.

Frame-level windows: non-overlapping 15 s windows from second 0 (starts 0, 15, 30, ...); a tail shorter than
15 s is dropped, and so is a video shorter than 15 s (YouTube-8M videos are 120-500 s long, so this is rare);
when rgb and audio differ in length the shorter one decides. The manifest counts what was dropped.
"""

from __future__ import annotations

import glob as globlib
import os
import struct
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from tivm.train.dataset import (
    CLIP_SECONDS,
    DEFAULT_FRACTIONS,
    DEFAULT_SALT,
    DatasetError,
    FeatureSet,
    assign_splits,
    labels_to_csr,
    make_clip_id,
    make_manifest,
    split_rule,
)

RGB_DIM = 1024
AUDIO_DIM = 128
WINDOW_SECONDS = CLIP_SECONDS
MUSIC_VIDEO_LABEL = 14  # "Music video" (/m/0mdxd) in the 3,862-class v3 vocabulary

# YouTube-8M quantised each per-second feature to uint8 over [-2, 2]; this is its inverse.
QUANT_MIN, QUANT_MAX = -2.0, 2.0
DEQUANT_SCALE = (QUANT_MAX - QUANT_MIN) / 255.0
DEQUANT_BIAS = (QUANT_MAX - QUANT_MIN) / 512.0 + QUANT_MIN

HEADER = struct.Struct("<QI")  # length, masked crc32c of the 8 length bytes
FOOTER = struct.Struct("<I")  # masked crc32c of the data
CRC_MASK_DELTA = 0xA282EAD8  # TFRecord's CRC masking constant (from LevelDB's log format)

VIDEO_LEVEL, FRAME_LEVEL = "video", "frame"
SHARD_SUFFIX = ".tfrecord"


class TFRecordError(DatasetError):
    """A TFRecord shard that cannot be used: truncated, a CRC mismatch, or a record that is not YT8M."""

    def __init__(self, path: str | os.PathLike, offset: int | None, problem: str):
        self.offset = offset
        where = f"byte {offset}: " if offset is not None else ""
        super().__init__(path, where + problem)


# --------------------------------------------------------------------------------------------- framing

def _crc32c():
    try:
        import google_crc32c
    except ImportError:  # pragma: no cover - a dependency of the train extra
        raise ImportError("reading TFRecords needs google-crc32c: pip install 'tivm[train]'") from None
    return google_crc32c.value


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C: rotate right by 15 bits, add a constant (mod 2**32)."""
    return _mask(_crc32c()(data))


def frame_record(data: bytes) -> bytes:
    """One TFRecord: header, data, footer."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + FOOTER.pack(masked_crc32c(data))


def write_tfrecord(path: str | os.PathLike, payloads: Iterable[bytes]) -> Path:
    """Write serialized protos as one TFRecord shard (for tests and small exports)."""
    path = Path(path)
    with open(path, "wb") as f:
        for data in payloads:
            f.write(frame_record(data))
    return path


def iter_records(path: str | os.PathLike, verify: bool = True) -> Iterator[tuple[int, bytes]]:
    """(byte offset, data) for every record of a shard; TFRecordError at the first bad or truncated one."""
    path = Path(path)
    crc = _crc32c() if verify else None
    with _open_mapped(path) as buf:
        yield from _records(path, buf, crc)


def _open_mapped(path: Path):
    """The shard memory-mapped (shards of the full frame-level set are hundreds of MB), or b"" if empty."""
    import contextlib
    import mmap

    try:
        f = open(path, "rb")
    except OSError as e:
        raise TFRecordError(path, None, f"cannot read ({e.strerror or e})") from None
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            return contextlib.nullcontext(b"")
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _records(path: Path, buf, crc) -> Iterator[tuple[int, bytes]]:
    verify = crc is not None
    offset, end = 0, len(buf)
    while offset < end:
        if end - offset < HEADER.size:
            raise TFRecordError(path, offset, f"truncated record header ({end - offset} of {HEADER.size} bytes)")
        length, length_crc = HEADER.unpack_from(buf, offset)
        if verify and _mask(crc(buf[offset:offset + 8])) != length_crc:
            raise TFRecordError(path, offset, "record length fails its CRC32C (corrupt or not a TFRecord file)")
        data_start = offset + HEADER.size
        data_end = data_start + length
        if data_end + FOOTER.size > end:
            raise TFRecordError(path, offset, f"truncated record: needs {length + FOOTER.size} bytes after the "
                                              f"header, the file has {end - data_start}")
        data = buf[data_start:data_end]
        if verify and _mask(crc(data)) != FOOTER.unpack_from(buf, data_end)[0]:
            raise TFRecordError(path, offset, f"record data ({length} bytes) fails its CRC32C (corrupt)")
        yield offset, data
        offset = data_end + FOOTER.size


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + CRC_MASK_DELTA) & 0xFFFFFFFF


# ----------------------------------------------------------------------------------- protobuf messages

def _message_classes() -> dict:
    """tf.train.{Example, SequenceExample} and friends, declared at run time in a private pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="tivm_tf_example.proto", package="tensorflow",
                                              syntax="proto3")

    def message(name: str, fields: Sequence[tuple], parent=None):
        msg = (parent.nested_type if parent is not None else file.message_type).add(name=name)
        for fname, number, ftype, label, type_name, *oneof in fields:
            field = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name
            if oneof:
                field.oneof_index = oneof[0]
        return msg

    def map_field(parent, name: str, number: int, value_type: str):
        entry = message(name[0].upper() + name[1:] + "Entry",
                        [("key", 1, F.TYPE_STRING, F.LABEL_OPTIONAL, None),
                         ("value", 2, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, value_type)], parent=parent)
        entry.options.map_entry = True
        parent.field.add(name=name, number=number, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                         type_name=f".tensorflow.{parent.name}.{entry.name}")

    rep = F.LABEL_REPEATED
    message("BytesList", [("value", 1, F.TYPE_BYTES, rep, None)])
    message("FloatList", [("value", 1, F.TYPE_FLOAT, rep, None)])
    message("Int64List", [("value", 1, F.TYPE_INT64, rep, None)])
    feature = message("Feature", [("bytes_list", 1, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, ".tensorflow.BytesList", 0),
                                  ("float_list", 2, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, ".tensorflow.FloatList", 0),
                                  ("int64_list", 3, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, ".tensorflow.Int64List", 0)])
    feature.oneof_decl.add(name="kind")
    map_field(message("Features", []), "feature", 1, ".tensorflow.Feature")
    message("FeatureList", [("feature", 1, F.TYPE_MESSAGE, rep, ".tensorflow.Feature")])
    map_field(message("FeatureLists", []), "feature_list", 1, ".tensorflow.FeatureList")
    message("Example", [("features", 1, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, ".tensorflow.Features")])
    message("SequenceExample", [("context", 1, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, ".tensorflow.Features"),
                                ("feature_lists", 2, F.TYPE_MESSAGE, F.LABEL_OPTIONAL,
                                 ".tensorflow.FeatureLists")])

    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    names = ("Feature", "Example", "SequenceExample")
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{n}")) for n in names}


_CLASSES: dict | None = None


def messages() -> dict:
    """{"Feature", "Example", "SequenceExample"} message classes (built once)."""
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _message_classes()
    return _CLASSES


# -------------------------------------------------------------------------------------- building records

def quantize(x: np.ndarray) -> np.ndarray:
    """YouTube-8M's uint8 quantisation (the inverse of `dequantize` up to half a step)."""
    q = (np.asarray(x, np.float64) - DEQUANT_BIAS) / DEQUANT_SCALE
    return np.clip(np.round(q), 0, 255).astype(np.uint8)


def dequantize(q: np.ndarray) -> np.ndarray:
    """float32 x * 4/255 + 4/512 - 2, YouTube-8M's dequantisation of per-second uint8 features."""
    return (np.asarray(q, np.float32) * np.float32(DEQUANT_SCALE) + np.float32(DEQUANT_BIAS)).astype(np.float32)


def video_example(video_id: str, labels: Sequence[int], mean_rgb: np.ndarray, mean_audio: np.ndarray) -> bytes:
    """A serialized video-level tf.train.Example."""
    ex = messages()["Example"]()
    feats = ex.features.feature
    feats["id"].bytes_list.value.append(video_id.encode("utf-8"))
    feats["labels"].int64_list.value.extend(int(v) for v in labels)
    feats["mean_rgb"].float_list.value.extend(np.asarray(mean_rgb, np.float32).tolist())
    feats["mean_audio"].float_list.value.extend(np.asarray(mean_audio, np.float32).tolist())
    return ex.SerializeToString()


def frame_example(video_id: str, labels: Sequence[int], rgb: np.ndarray, audio: np.ndarray) -> bytes:
    """A serialized frame-level tf.train.SequenceExample from uint8 rgb (T, 1024) and audio (T', 128)."""
    ex = messages()["SequenceExample"]()
    ex.context.feature["id"].bytes_list.value.append(video_id.encode("utf-8"))
    ex.context.feature["labels"].int64_list.value.extend(int(v) for v in labels)
    for name, frames in (("rgb", rgb), ("audio", audio)):
        flist = ex.feature_lists.feature_list[name].feature
        for row in np.asarray(frames, np.uint8):
            flist.add().bytes_list.value.append(row.tobytes())
    return ex.SerializeToString()


# ------------------------------------------------------------------------------------ parsing records

def _bytes_feature(features, name: str, path, offset) -> bytes:
    if name not in features or not features[name].bytes_list.value:
        raise TFRecordError(path, offset, f"record has no {name!r} bytes feature (not a YouTube-8M record?)")
    return features[name].bytes_list.value[0]


def _floats(features, name: str, dim: int, path, offset) -> np.ndarray:
    if name not in features:
        raise TFRecordError(path, offset, f"record has no {name!r} feature")
    values = features[name].float_list.value
    if len(values) != dim:
        raise TFRecordError(path, offset, f"{name!r} has {len(values)} values, expected {dim}")
    return np.array(values, np.float32)  # upb's repeated floats convert in C; np.fromiter is 10x slower


def _labels(features) -> list[int]:
    return list(features["labels"].int64_list.value) if "labels" in features else []


def parse_video_level(data: bytes, path="<bytes>", offset=None) -> tuple[str, list[int], np.ndarray, np.ndarray]:
    """(id, labels, mean_rgb (1024,), mean_audio (128,)) of one video-level record."""
    ex = _parse(messages()["Example"], data, path, offset)
    feats = ex.features.feature
    vid = _bytes_feature(feats, "id", path, offset).decode("utf-8", "replace")
    return (vid, _labels(feats), _floats(feats, "mean_rgb", RGB_DIM, path, offset),
            _floats(feats, "mean_audio", AUDIO_DIM, path, offset))


def parse_frame_level(data: bytes, path="<bytes>", offset=None) -> tuple[str, list[int], np.ndarray, np.ndarray]:
    """(id, labels, rgb uint8 (T, 1024), audio uint8 (T', 128)) of one frame-level record."""
    ex = _parse(messages()["SequenceExample"], data, path, offset)
    vid = _bytes_feature(ex.context.feature, "id", path, offset).decode("utf-8", "replace")
    lists = ex.feature_lists.feature_list
    rgb = _frames(lists, "rgb", RGB_DIM, path, offset)
    audio = _frames(lists, "audio", AUDIO_DIM, path, offset)
    return vid, _labels(ex.context.feature), rgb, audio


def _frames(lists, name: str, dim: int, path, offset) -> np.ndarray:
    if name not in lists:
        raise TFRecordError(path, offset, f"record has no {name!r} feature list")
    rows = [f.bytes_list.value[0] if f.bytes_list.value else b"" for f in lists[name].feature]
    if any(len(r) != dim for r in rows):
        bad = next(len(r) for r in rows if len(r) != dim)
        raise TFRecordError(path, offset, f"a {name!r} frame has {bad} bytes, expected {dim}")
    return np.frombuffer(b"".join(rows), np.uint8).reshape(len(rows), dim)


def _parse(cls, data: bytes, path, offset):
    from google.protobuf.message import DecodeError

    msg = cls()
    try:
        msg.ParseFromString(data)
    except DecodeError as e:
        raise TFRecordError(path, offset, f"record is not a valid {cls.DESCRIPTOR.name} protobuf ({e})") from None
    return msg


def detect_level(data: bytes, path="<bytes>", offset=None) -> str:
    """"frame" when the record has rgb/audio feature lists, "video" when it has mean_rgb, else an error.

    An Example parses as a SequenceExample (field 1 is Features in both), so one parse tells them apart."""
    ex = _parse(messages()["SequenceExample"], data, path, offset)
    if "rgb" in ex.feature_lists.feature_list:
        return FRAME_LEVEL
    if "mean_rgb" in ex.context.feature:
        return VIDEO_LEVEL
    raise TFRecordError(path, offset, "record is neither video-level (mean_rgb) nor frame-level (rgb list)")


# ----------------------------------------------------------------------------------------- windowing

def window_starts(n_seconds: int, window: int = WINDOW_SECONDS) -> np.ndarray:
    """Starts of the non-overlapping full windows: 0, window, 2*window, ...; the short tail is dropped."""
    return np.arange(0, n_seconds - window + 1, window, dtype=np.int64) if n_seconds >= window else \
        np.zeros(0, np.int64)


def frame_windows(rgb: np.ndarray, audio: np.ndarray, window: int = WINDOW_SECONDS):
    """(starts, video (k, window, 1024), audio (k, window, 128)) float32 windows of one video."""
    seconds = min(len(rgb), len(audio))
    starts = window_starts(seconds, window)
    take = (starts[:, None] + np.arange(window)[None, :]).reshape(-1)
    k = starts.size
    video = dequantize(rgb[take]).reshape(k, window, RGB_DIM)
    aud = dequantize(audio[take]).reshape(k, window, AUDIO_DIM)
    return starts, video, aud


# ------------------------------------------------------------------------------------------- shards

def resolve_shards(paths_or_glob: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Sorted shard paths from a glob, a directory (its *.tfrecord), a file, or a list of those."""
    items = [paths_or_glob] if isinstance(paths_or_glob, (str, os.PathLike)) else list(paths_or_glob)
    shards: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(p.glob(f"*{SHARD_SUFFIX}"))
        elif p.is_file():
            found = [p]
        else:
            found = [Path(m) for m in sorted(globlib.glob(os.fspath(item)))]
        if not found:
            raise DatasetError(item, "no TFRecord shards found (expected a file, a directory of "
                                     f"*{SHARD_SUFFIX}, or a glob)")
        shards.extend(found)
    return shards


def _label_set(label) -> set[int] | None:
    if label is None:
        return None
    return {int(label)} if np.isscalar(label) else {int(v) for v in label}


class _Collector:
    """Accumulates one shard at a time, so a bad shard can be dropped whole."""

    def __init__(self):
        self.ids, self.labels, self.starts, self.audio, self.video = [], [], [], [], []
        self.videos_read = self.videos_kept = self.too_short = self.dropped_tail_seconds = 0

    def extend(self, other: "_Collector") -> None:
        for name in ("ids", "labels", "starts", "audio", "video"):
            getattr(self, name).extend(getattr(other, name))
        for name in ("videos_read", "videos_kept", "too_short", "dropped_tail_seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def _read_shard(path: Path, level: str | None, wanted: set[int] | None, verify: bool) -> tuple[_Collector, str]:
    out = _Collector()
    for offset, data in iter_records(path, verify=verify):
        found = detect_level(data, path, offset) if level is None else level
        if level is None:
            level = found
        if level == VIDEO_LEVEL:
            vid, labels, rgb, audio = parse_video_level(data, path, offset)
        else:
            vid, labels, rgb, audio = parse_frame_level(data, path, offset)
        out.videos_read += 1
        if wanted is not None and wanted.isdisjoint(labels):
            continue
        out.videos_kept += 1
        if level == VIDEO_LEVEL:
            out.ids.append(vid), out.labels.append(labels), out.starts.append(np.zeros(1, np.int64))
            out.audio.append(audio[None, None]), out.video.append(rgb[None, None])
            continue
        starts, video, aud = frame_windows(rgb, audio)
        seconds = min(len(rgb), len(audio))
        if starts.size == 0:
            out.too_short += 1
            continue
        out.dropped_tail_seconds += seconds - (int(starts[-1]) + WINDOW_SECONDS)
        out.ids.append(vid), out.labels.append(labels), out.starts.append(starts)
        out.audio.append(aud), out.video.append(video)
    return out, level


def read_yt8m(paths_or_glob, label: int | Iterable[int] | None = None, level: str = "auto",
              progress: bool = True, on_error: str = "raise", verify_crc: bool = True,
              fractions: Sequence[float] = DEFAULT_FRACTIONS, salt: str = DEFAULT_SALT) -> FeatureSet:
    """YouTube-8M shards -> FeatureSet (audio = VGGish-PCA 128-d, video = Inception-PCA 1024-d).

    label: keep only videos carrying this label (or any of these labels); None keeps all. Labels are kept
      as CSR either way, so `fs.has_label(14)` marks them without filtering.
    level: "video" (T = 1, the means), "frame" (15 s windows, T = 15) or "auto" (from the first record).
    on_error: "raise" stops at the first bad shard (TFRecordError names file and byte offset); "skip"
      warns, drops that shard whole, lists it in manifest["skipped_shards"], and carries on.
    """
    if level not in ("auto", VIDEO_LEVEL, FRAME_LEVEL):
        raise ValueError(f"level must be 'auto', 'video' or 'frame', got {level!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    shards = resolve_shards(paths_or_glob)
    wanted = _label_set(label)
    found_level = None if level == "auto" else level
    total, skipped = _Collector(), []
    for path in _progress(shards, progress):
        try:
            part, part_level = _read_shard(path, found_level, wanted, verify_crc)
        except TFRecordError as e:
            if on_error == "raise":
                raise
            warnings.warn(f"skipping shard: {e}", stacklevel=2)
            skipped.append({"path": os.fspath(path), "problem": str(e)})
            continue
        found_level = found_level or (part_level if part.videos_read else None)
        total.extend(part)
    if found_level is None:
        raise DatasetError(paths_or_glob if isinstance(paths_or_glob, (str, os.PathLike)) else shards[0],
                           "the shards hold no readable records")
    return _assemble(total, found_level, shards, skipped, wanted, fractions, salt)


def _progress(shards: list[Path], enabled: bool):
    if not enabled:
        return shards
    from tqdm.auto import tqdm
    return tqdm(shards, desc="YouTube-8M shards", unit="shard")


def _assemble(c: _Collector, level: str, shards, skipped, wanted, fractions, salt) -> FeatureSet:
    t = 1 if level == VIDEO_LEVEL else WINDOW_SECONDS
    per_video = [len(s) for s in c.starts]
    source_id = np.array([v for v, k in zip(c.ids, per_video) for _ in range(k)], dtype=str)
    starts = np.concatenate(c.starts).astype(np.float32) if c.starts else np.zeros(0, np.float32)
    if level == VIDEO_LEVEL:
        clip_id = source_id.copy()  # one "clip" per video: the video id itself
    else:
        clip_id = np.array([make_clip_id(s, st) for s, st in zip(source_id.tolist(), starts.tolist())], dtype=str)
    indptr, labels = labels_to_csr([lab for lab, k in zip(c.labels, per_video) for _ in range(k)])
    empty = lambda d: np.zeros((0, t, d), np.float32)  # noqa: E731
    fs = FeatureSet(audio=np.concatenate(c.audio) if c.audio else empty(AUDIO_DIM),
                    video=np.concatenate(c.video) if c.video else empty(RGB_DIM),
                    clip_id=clip_id, source_id=source_id, start=starts,
                    split=assign_splits(source_id, fractions, salt), labels_indptr=indptr, labels=labels,
                    manifest=_manifest(c, level, shards, skipped, wanted, fractions, salt))
    fs.manifest = fs.complete_manifest()
    fs.validate()
    return fs


def _manifest(c: _Collector, level: str, shards, skipped, wanted, fractions, salt) -> dict:
    per_second = level == FRAME_LEVEL
    audio = {"backbone": "yt8m-vggish-pca", "dim": AUDIO_DIM,
             "features": "audio (dequantised uint8, per second)" if per_second else "mean_audio (video mean)"}
    video = {"backbone": "yt8m-inception-v3-pca", "dim": RGB_DIM,
             "features": "rgb (dequantised uint8, per second)" if per_second else "mean_rgb (video mean)"}
    source = "yt8m-frame-level" if per_second else "yt8m-video-level"
    return make_manifest(source, audio, video, clip_seconds=WINDOW_SECONDS if per_second else None,
                         rule=split_rule(fractions, salt),
                         yt8m={"level": level, "shards": len(shards), "skipped_shards": skipped,
                               "label_filter": sorted(wanted) if wanted is not None else None,
                               "videos_read": c.videos_read, "videos_kept": c.videos_kept,
                               "videos_too_short": c.too_short, "tail_seconds_dropped": c.dropped_tail_seconds,
                               "window": {"seconds": WINDOW_SECONDS, "hop": WINDOW_SECONDS,
                                          "tail": "dropped", "shorter_videos": "dropped"} if per_second else None})
