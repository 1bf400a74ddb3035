"""tivm.runtime.resample against resampy's kaiser_best (VGGish's reference resampler, installed for tests):
waveforms, lengths, edges, streaming, and log-mels of real songs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import resampy
import soxr
from conftest import shared_path

from tivm.runtime import resample as rs
from tivm.runtime.audio import load_audio, log_mel_patches

WAVE_TOLERANCE = 1e-5  # max |sample difference|, full scale 1
LOG_MEL_TOLERANCE = 1e-3  # max |log-mel difference|
SYNTHETIC_SECONDS = 0.5
SONG_SECONDS = 10.0
# 44056: rational with 2000 phases (polyphase bank); 44101: 16000 phases (per-output taps); 22050.5: not integer
RATES = [44100, 48000, 22050, 11025, 8000, 32000, 44056, 44101, 22050.5]
SONGS = [
    "kevin_macleod_vibe_ace_10-40s.ogg",  # 44.1 kHz
    "singularity_Nebula_60-90s.ogg",  # 48 kHz
    "pygame_house_lo.ogg",  # 11,025 Hz, 7 s
]


def _reference(x: np.ndarray, rate: float) -> np.ndarray:
    """What VGGish's pipeline computed: resampy kaiser_best on float64 samples."""
    return resampy.resample(np.asarray(x, np.float64), rate, 16000, filter="kaiser_best")


def _synthetic(rate: float, kind: str) -> np.ndarray:
    n = int(SYNTHETIC_SECONDS * rate)
    t = np.arange(n) / rate
    if kind == "noise":
        return (np.random.default_rng(7).uniform(-1, 1, n)).astype(np.float32)
    if kind == "edge_sines":  # around VGGish's top band and the filter's roll-off, and above the new Nyquist
        top = min(rate, 16000) / 2
        tones = [0.86 * top, 0.92 * top, 0.97 * top, 1.04 * top]
        tones = [f for f in tones if f < rate / 2]
        return (sum(np.sin(2 * np.pi * f * t) for f in tones) / len(tones)).astype(np.float32)
    if kind == "impulses":  # first, last and interior samples: the edge rule shows here
        x = np.zeros(n, np.float32)
        x[[0, 1, n // 3, n // 2 + 1, n - 2, n - 1]] = [1.0, -0.5, 1.0, -1.0, 0.5, 1.0]
        return x
    raise ValueError(kind)


def test_filter_table_is_resampys_kaiser_best():
    table, _ = resampy.filters.get_filter("kaiser_best")[:2]
    window, delta = rs.kaiser_best_table()
    assert window.shape == table.shape == (rs.KAISER_BEST_ZEROS * rs.KAISER_BEST_TABLE_DENSITY + 1,)
    assert np.abs(window - table).max() < 1e-9
    assert delta[-1] == 0 and delta[5] == window[6] - window[5]


@pytest.mark.parametrize("kind", ["noise", "edge_sines", "impulses"])
@pytest.mark.parametrize("rate", RATES)
def test_synthetic_signals_match_resampy(rate, kind):
    x = _synthetic(rate, kind)
    expected = _reference(x, rate)
    got = rs.resample(x, rate, 16000)
    assert got.dtype == np.float32
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= WAVE_TOLERANCE


@pytest.mark.parametrize("rate", [44100, 48000])
def test_float64_input_matches_to_float32_rounding(rate):
    x = np.random.default_rng(3).standard_normal(int(0.3 * rate)) * 0.3
    expected = _reference(x, rate)
    got = rs.resample(x, rate, 16000)
    assert np.abs(got - expected).max() <= 4 * np.finfo(np.float32).eps * np.abs(expected).max()


def test_upsampling_to_other_rates_matches_resampy():
    x = _synthetic(16000, "noise")
    for target in (22050, 44100, 48000):
        expected = resampy.resample(x.astype(np.float64), 16000, target, filter="kaiser_best")
        got = rs.resample(x, 16000, target)
        assert got.shape == expected.shape and np.abs(got - expected).max() <= WAVE_TOLERANCE


def _native(name: str) -> tuple[np.ndarray, int]:
    path = shared_path("media", "songs", name)
    with av.open(str(path)) as container:
        rate = container.streams.audio[0].sample_rate
    return load_audio(path, sample_rate=rate, duration=SONG_SECONDS), rate


@pytest.mark.parametrize("name", SONGS)
def test_real_songs_match_resampy_in_waveform_and_log_mel(name):
    x, rate = _native(name)
    expected = _reference(x, rate)
    got = rs.resample(x, rate, 16000)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= WAVE_TOLERANCE
    mel_got, mel_expected = log_mel_patches(got), log_mel_patches(expected)
    assert mel_got.shape[0] >= 7
    assert np.abs(mel_got - mel_expected).max() <= LOG_MEL_TOLERANCE
    if rate < 32000:
        return  # nothing above 5.5 kHz at 11,025 Hz: the top band is silent under any resampler
    # soxr VHQ keeps 7-7.5 kHz where kaiser_best rolls off: the comparison above tells resamplers apart
    mel_soxr = log_mel_patches(rs.resample(x, rate, 16000, method="soxr_vhq")[: expected.size])
    assert np.abs(mel_soxr[..., -1] - mel_expected[..., -1]).mean() > 10 * LOG_MEL_TOLERANCE


@pytest.mark.parametrize("rate", [44100, 48000, 11025, 22050.5, 44101])
def test_output_lengths_are_resampys(rate):
    lengths = [1, 2, 3, 11, 441, 442, 1323, 4409, 44100, 44101, 48000, 99999]
    for n in lengths:
        expected = int(n * float(16000) / float(rate))
        assert rs.output_length(n, rate, 16000) == expected
        if n <= 4409 or n in (44100, 48000):
            assert rs.resample(np.ones(n, np.float32), rate, 16000).shape == (expected,)
    for n in lengths[3:]:
        assert _reference(np.zeros(n), rate).shape == (rs.output_length(n, rate, 16000),)


@pytest.mark.parametrize("rate", [44100, 48000, 8000, 44101])
def test_inputs_shorter_than_the_filter(rate):
    rng = np.random.default_rng(5)
    for n in (3, 10, 50, 137, 300):
        x = rng.uniform(-1, 1, n).astype(np.float32)
        expected = _reference(x, rate)
        got = rs.resample(x, rate, 16000)
        assert got.shape == expected.shape and np.abs(got - expected).max() <= WAVE_TOLERANCE
    # too short for one output sample: resampy raises; the runtime returns nothing and the caller decides
    assert rs.resample(np.ones(1, np.float32), 44100, 16000).shape == (0,)


def test_equal_rates_return_a_float32_copy():
    x = np.linspace(-1, 1, 1000)
    got = rs.resample(x, 16000, 16000)
    assert got.dtype == np.float32 and np.array_equal(got, x.astype(np.float32))
    x32 = x.astype(np.float32)
    assert rs.resample(x32, 16000, 16000) is not x32


@pytest.mark.parametrize("rate", [44100, 48000, 8000, 44101, 22050.5])
def test_streaming_in_chunks_equals_one_call(rate):
    x = _synthetic(rate, "noise")
    whole = rs.resample(x, rate, 16000)
    stream = rs.open_stream(rate, 16000)
    rng = np.random.default_rng(11)
    pieces, start, held = [], 0, []
    while start < x.size:
        size = int(rng.integers(1, 3000))
        pieces.append(stream.resample_chunk(x[start : start + size]))
        held.append(stream._signal.size)
        start += size
    pieces.append(stream.resample_chunk(np.zeros(0, np.float32), last=True))
    joined = np.concatenate(pieces)
    assert joined.dtype == np.float32 and joined.shape == whole.shape
    assert np.abs(joined - whole).max() <= 1e-7
    assert max(held) < 20000  # only the filter's reach plus one block stays buffered
    with pytest.raises(RuntimeError, match="ended"):
        stream.resample_chunk(x[:10])


def test_stream_never_holds_the_callers_array():
    x = _synthetic(44100, "noise")
    expected = rs.resample(x, 44100, 16000)
    stream = rs.open_stream(44100, 16000)
    buffer = x[:5000].copy()
    first = stream.resample_chunk(buffer)
    buffer[:] = 0  # a decoder reusing its buffer must not change what comes out next
    rest = stream.resample_chunk(x[5000:], last=True)
    assert np.abs(np.concatenate([first, rest]) - expected).max() <= 1e-7


def test_soxr_method_is_soxr_vhq():
    x = _synthetic(44100, "noise")
    np.testing.assert_array_equal(rs.resample(x, 44100, 16000, method="soxr_vhq"),
                                  soxr.resample(x, 44100, 16000, quality="VHQ"))
    stream = rs.open_stream(44100, 16000, method="soxr_vhq")
    joined = np.concatenate([stream.resample_chunk(x[:9000]), stream.resample_chunk(x[9000:], last=True)])
    assert abs(joined.size - 8000) <= 1


def test_bad_arguments_raise_clear_errors():
    x = np.zeros(1000, np.float32)
    with pytest.raises(ValueError, match="unknown resampling method 'linear'"):
        rs.resample(x, 44100, 16000, method="linear")
    with pytest.raises(ValueError, match="orig_rate must be a positive"):
        rs.resample(x, 0, 16000)
    with pytest.raises(ValueError, match="target_rate must be a positive"):
        rs.open_stream(44100, float("nan"))
    with pytest.raises(ValueError, match="mono"):
        rs.resample(np.zeros((2, 1000)), 44100, 16000)
    with pytest.raises(TypeError, match="real numbers"):
        rs.resample(x.astype(np.complex64), 44100, 16000)


def test_runtime_import_needs_neither_numba_nor_torch():
    code = (
        "import sys, numpy as np; from tivm.runtime import resample as rs; "
        "y = rs.resample(np.ones(4410, np.float32), 44100, 16000); assert y.shape == (1600,); "
        "print(sorted(m for m in ('numba', 'torch', 'resampy', 'soxr') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent)
    assert out.stdout.strip() == "[]"


def test_load_audio_resamples_like_resampy_while_streaming():
    name = "kevin_macleod_vibe_ace_10-40s.ogg"
    native, rate = _native(name)  # SONG_SECONDS at 44.1 kHz, no resampling
    expected = np.clip(_reference(native, rate), -1.0, 1.0)
    got = load_audio(shared_path("media", "songs", name), duration=SONG_SECONDS)  # 64k-sample blocks
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= WAVE_TOLERANCE
