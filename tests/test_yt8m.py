"""YouTube-8M reader: records written here (real protobuf wire format, real CRCs) and the 120 real shards."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tivm.train import dataset as ds
from tivm.train import yt8m
from tivm.train.yt8m import TFRecordError, read_yt8m

RNG = np.random.default_rng(7)


def _video_record(vid, labels):
    rgb = RNG.standard_normal(yt8m.RGB_DIM).astype(np.float32)
    audio = RNG.standard_normal(yt8m.AUDIO_DIM).astype(np.float32)
    return yt8m.video_example(vid, labels, rgb, audio), rgb, audio


def _frame_record(vid, labels, rgb_seconds, audio_seconds):
    rgb = RNG.integers(0, 256, (rgb_seconds, yt8m.RGB_DIM), dtype=np.uint8)
    audio = RNG.integers(0, 256, (audio_seconds, yt8m.AUDIO_DIM), dtype=np.uint8)
    return yt8m.frame_example(vid, labels, rgb, audio), rgb, audio


@pytest.fixture
def video_shards(tmp_path):
    """Two video-level shards: 3 + 2 videos, two of them carrying label 14."""
    videos = {}
    for shard, spec in enumerate([[("aaaa", [14, 3]), ("bbbb", [1]), ("cccc", [])], [("dddd", [2, 14]),
                                                                                     ("eeee", [5])]]):
        records = []
        for vid, labels in spec:
            data, rgb, audio = _video_record(vid, labels)
            videos[vid] = (labels, rgb, audio)
            records.append(data)
        yt8m.write_tfrecord(tmp_path / f"train{shard:04d}.tfrecord", records)
    return tmp_path, videos


# ------------------------------------------------------------------------------------------- framing

def test_masked_crc_matches_the_crc32c_check_value():
    import google_crc32c
    assert google_crc32c.value(b"123456789") == 0xE3069283  # the CRC-32C (Castagnoli) check value
    crc = 0xE3069283
    assert yt8m.masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_records_round_trip_with_offsets(tmp_path):
    payloads = [b"", b"x", bytes(range(256)) * 5]
    path = yt8m.write_tfrecord(tmp_path / "a.tfrecord", payloads)
    got = list(yt8m.iter_records(path))
    assert [d for _, d in got] == payloads
    assert [o for o, _ in got] == [0, 16, 33]


def test_corrupt_data_crc_names_file_and_offset(tmp_path):
    path = yt8m.write_tfrecord(tmp_path / "a.tfrecord", [b"first", b"second record"])
    raw = bytearray(path.read_bytes())
    second = 12 + 5 + 4
    raw[second + 12 + 3] ^= 0x01  # one bit inside the second record's data
    path.write_bytes(bytes(raw))
    with pytest.raises(TFRecordError, match=f"byte {second}: record data .* fails its CRC32C") as e:
        list(yt8m.iter_records(path))
    assert str(path) in str(e.value) and e.value.offset == second
    assert [d for _, d in yt8m.iter_records(path, verify=False)][1] != b"second record"


def test_corrupt_length_is_caught_before_trusting_it(tmp_path):
    path = yt8m.write_tfrecord(tmp_path / "a.tfrecord", [b"payload"])
    raw = bytearray(path.read_bytes())
    raw[6] = 0x7F  # the length now claims ~petabytes
    path.write_bytes(bytes(raw))
    with pytest.raises(TFRecordError, match="byte 0: record length fails its CRC32C"):
        list(yt8m.iter_records(path))


@pytest.mark.parametrize("cut, problem", [(3, "truncated record: needs"), (30, "truncated record header")])
def test_truncated_file(tmp_path, cut, problem):
    path = yt8m.write_tfrecord(tmp_path / "a.tfrecord", [b"a" * 20, b"b" * 20])
    raw = path.read_bytes()
    path.write_bytes(raw[:-cut])
    with pytest.raises(TFRecordError, match=problem) as e:
        list(yt8m.iter_records(path))
    assert str(path) in str(e.value)


def test_framed_garbage_is_not_a_protobuf(tmp_path):
    yt8m.write_tfrecord(tmp_path / "a.tfrecord", [b"\xff\xff\xff\xff"])
    with pytest.raises(TFRecordError, match="not a valid"):
        read_yt8m(tmp_path, progress=False)


def test_no_shards(tmp_path):
    with pytest.raises(ds.DatasetError, match="no TFRecord shards"):
        read_yt8m(str(tmp_path / "*.tfrecord"), progress=False)


# -------------------------------------------------------------------------------------- video level

def test_video_level_round_trip(video_shards):
    root, videos = video_shards
    fs = read_yt8m(str(root / "*.tfrecord"), progress=False)
    assert fs.manifest["source"] == "yt8m-video-level" and fs.manifest["yt8m"]["level"] == "video"
    assert fs.audio.shape == (5, 1, 128) and fs.video.shape == (5, 1, 1024)
    assert fs.clip_id.tolist() == fs.source_id.tolist() == ["aaaa", "bbbb", "cccc", "dddd", "eeee"]
    for i, vid in enumerate(fs.source_id):
        labels, rgb, audio = videos[vid]
        np.testing.assert_array_equal(fs.video[i, 0], rgb)
        np.testing.assert_array_equal(fs.audio[i, 0], audio)
        assert fs.labels_of(i).tolist() == labels
    np.testing.assert_array_equal(fs.split, ds.assign_splits(fs.source_id))
    assert fs.has_label(14).tolist() == [True, False, False, True, False]
    assert (fs.start == 0).all()


def test_label_filter_keeps_only_carriers(video_shards):
    root, _ = video_shards
    music = read_yt8m(root, label=14, progress=False)
    assert music.source_id.tolist() == ["aaaa", "dddd"]
    assert music.has_label(14).all()
    assert music.manifest["yt8m"]["videos_read"] == 5 and music.manifest["yt8m"]["videos_kept"] == 2
    either = read_yt8m(root, label=[1, 5], progress=False)
    assert either.source_id.tolist() == ["bbbb", "eeee"]


def test_saved_and_loaded_through_the_dataset_format(video_shards, tmp_path):
    root, _ = video_shards
    fs = read_yt8m(root, progress=False)
    back = ds.load(fs.save(tmp_path / "out"))
    np.testing.assert_array_equal(np.asarray(back.video), fs.video)
    assert back.fingerprint == fs.fingerprint


def test_bad_shard_raises_or_is_skipped_when_asked(video_shards):
    root, _ = video_shards
    bad = root / "train0001.tfrecord"
    raw = bytearray(bad.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(TFRecordError, match="train0001.tfrecord: byte"):
        read_yt8m(root, progress=False)
    with pytest.warns(UserWarning, match="skipping shard.*train0001"):
        fs = read_yt8m(root, progress=False, on_error="skip")
    assert fs.source_id.tolist() == ["aaaa", "bbbb", "cccc"]  # the bad shard is dropped whole
    skipped = fs.manifest["yt8m"]["skipped_shards"]
    assert len(skipped) == 1 and skipped[0]["path"].endswith("train0001.tfrecord") and "CRC32C" in \
        skipped[0]["problem"]


# -------------------------------------------------------------------------------------- frame level

def test_dequantization_formula():
    q = np.array([0, 1, 128, 255], np.uint8)
    np.testing.assert_allclose(yt8m.dequantize(q), q.astype(np.float64) * 4 / 255 + 4 / 512 - 2, rtol=0, atol=1e-6)
    x = RNG.uniform(-1.9, 1.9, 1000)
    assert np.abs(yt8m.dequantize(yt8m.quantize(x)) - x).max() <= 2 / 255 + 1e-6


def test_window_rule():
    assert yt8m.window_starts(14).tolist() == []
    assert yt8m.window_starts(15).tolist() == [0]
    assert yt8m.window_starts(44).tolist() == [0, 15]
    assert yt8m.window_starts(45).tolist() == [0, 15, 30]


def test_frame_level_windows_and_dequantisation(tmp_path):
    long_rec, long_rgb, long_audio = _frame_record("long", [14], 40, 40)        # windows at 0, 15; 10 s tail
    odd_rec, odd_rgb, odd_audio = _frame_record("odd_", [2, 7], 31, 30)          # audio decides: 30 s -> 2
    short_rec, _, _ = _frame_record("shrt", [14], 10, 10)                        # shorter than a window
    yt8m.write_tfrecord(tmp_path / "frames.tfrecord", [long_rec, short_rec, odd_rec])
    fs = read_yt8m(tmp_path, progress=False)
    assert fs.manifest["source"] == "yt8m-frame-level" and fs.seq_len == 15
    assert fs.clip_id.tolist() == ["long@0", "long@15", "odd_@0", "odd_@15"]
    assert fs.start.tolist() == [0.0, 15.0, 0.0, 15.0]
    np.testing.assert_allclose(fs.video[1], yt8m.dequantize(long_rgb[15:30]))
    expected = long_audio[15:30].astype(np.float64) * 4 / 255 + 4 / 512 - 2
    np.testing.assert_allclose(fs.audio[1], expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fs.video[3], yt8m.dequantize(odd_rgb[15:30]))
    np.testing.assert_allclose(fs.audio[2], yt8m.dequantize(odd_audio[0:15]))
    assert fs.labels_of(2).tolist() == [2, 7] and fs.labels_of(3).tolist() == [2, 7]
    assert fs.split[0] == fs.split[1] and fs.split[2] == fs.split[3]  # windows of one video stay together
    info = fs.manifest["yt8m"]
    assert (info["videos_read"], info["videos_too_short"], info["tail_seconds_dropped"]) == (3, 1, 10)
    assert read_yt8m(tmp_path, label=14, progress=False).source_id.tolist() == ["long", "long"]


def _wire(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, encoded by hand (independent of our descriptors)."""
    def varint(n):
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def test_descriptors_follow_tensorflows_field_numbers(tmp_path):
    # example.proto/feature.proto: SequenceExample{context = 1, feature_lists = 2}, FeatureLists{map = 1},
    # FeatureList{feature = 1}, Features{map = 1}, Feature{bytes_list = 1, int64_list = 3}, *List{value = 1}
    def bytes_feature(b):
        return _wire(1, _wire(1, b))

    def map_entry(key, value):
        return _wire(1, _wire(1, key.encode()) + _wire(2, value))

    rgb = RNG.integers(0, 256, (15, 1024), dtype=np.uint8)
    audio = RNG.integers(0, 256, (15, 128), dtype=np.uint8)
    labels = _wire(3, _wire(1, bytes([14, 200, 1])))  # packed varints 14, 200
    context = map_entry("id", bytes_feature(b"wire")) + map_entry("labels", labels)
    lists = b"".join(map_entry(name, b"".join(_wire(1, bytes_feature(row.tobytes())) for row in frames))
                     for name, frames in (("rgb", rgb), ("audio", audio)))
    data = _wire(1, context) + _wire(2, lists)
    vid, got_labels, got_rgb, got_audio = yt8m.parse_frame_level(data)
    assert (vid, got_labels) == ("wire", [14, 200])
    np.testing.assert_array_equal(got_rgb, rgb)
    np.testing.assert_array_equal(got_audio, audio)
    assert yt8m.detect_level(data) == "frame"


def test_level_is_detected_and_a_forced_wrong_level_is_an_error(tmp_path, video_shards):
    rec, _, _ = _frame_record("fram", [1], 15, 15)
    yt8m.write_tfrecord(tmp_path / "f.tfrecord", [rec])
    assert read_yt8m(tmp_path / "f.tfrecord", progress=False).manifest["yt8m"]["level"] == "frame"
    with pytest.raises(TFRecordError, match="f.tfrecord: byte 0: record has no 'mean_rgb'"):
        read_yt8m(tmp_path / "f.tfrecord", level="video", progress=False)
    root, _ = video_shards
    with pytest.raises(TFRecordError, match="no 'rgb' feature list"):
        read_yt8m(root, level="frame", progress=False)


# -------------------------------------------------------------------------------------- real shards

def test_real_validate_shards(yt8m_dir):
    started = time.perf_counter()
    fs = read_yt8m(yt8m_dir / "*.tfrecord", progress=False)  # CRCs verified on every record
    seconds = time.perf_counter() - started
    assert fs.manifest["yt8m"]["shards"] == 120
    assert len(fs) == 34550 and np.unique(fs.source_id).size == 34550
    assert int(fs.has_label(yt8m.MUSIC_VIDEO_LABEL).sum()) == 1015
    assert fs.audio.shape == (34550, 1, 128) and fs.video.shape == (34550, 1, 1024)
    assert np.isfinite(fs.audio).all() and np.isfinite(fs.video).all()
    assert fs.audio.std() > 0.1 and fs.video.std() > 0.1  # real features, not zeros
    counts = np.bincount(fs.split, minlength=3) / len(fs)
    np.testing.assert_allclose(counts, [0.8, 0.1, 0.1], atol=0.01)
    assert seconds < 60, f"reading the 120 shards took {seconds:.1f} s"


def test_real_shards_label_filter(yt8m_dir):
    music = read_yt8m(sorted(yt8m_dir.glob("validate00[0-1]*.tfrecord")), label=14, progress=False)
    full = read_yt8m(sorted(yt8m_dir.glob("validate00[0-1]*.tfrecord")), progress=False)
    assert len(music) == int(full.has_label(14).sum()) > 0
    assert music.source_id.tolist() == full.source_id[full.has_label(14)].tolist()


def test_real_extra_shards_give_in_domain_validation_and_leave_the_test_gallery_alone(yt8m_dir):
    from tivm.train.data_spec import label_splits, load_data
    extra_dir = yt8m_dir.parent / "video_level_extra"
    if not extra_dir.is_dir():
        pytest.skip(f"needs {extra_dir}")
    main = read_yt8m(yt8m_dir / "*.tfrecord", progress=False)
    extra = read_yt8m(extra_dir / "*.tfrecord", progress=False)
    assert len(extra) == 14632 and int(extra.has_label(14).sum()) == 453
    assert not set(main.source_id.tolist()) & set(extra.source_id.tolist())
    fs, parts = load_data(str(yt8m_dir / "*.tfrecord"), 14, extra_specs=[str(extra_dir / "*.tfrecord")],
                          progress=False)
    # the test gallery is exactly the 1,015 music videos of video_level/, as without the extra shards
    old_test = main.source_id[label_splits(main, 14) == 2]
    assert parts["test"].source_id.tolist() == old_test.tolist() and len(parts["test"]) == 1015
    # validation: extra music videos only, about half of the 453; the other half trains
    val_ids = set(parts["val"].source_id.tolist())
    assert val_ids <= set(extra.source_id[extra.has_label(14)].tolist()) and 180 < len(val_ids) < 270
    train_music = parts["train"].has_label(14)
    assert int(train_music.sum()) == 453 - len(val_ids)
    assert len(parts["train"]) == len(main) - 1015 + len(extra) - len(val_ids)
    assert not (set(parts["train"].source_id.tolist()) & (val_ids | set(old_test.tolist())))
