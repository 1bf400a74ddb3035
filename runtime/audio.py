"""VGGish's audio front end: any media file -> 16 kHz mono waveform -> log-mel patches (N, 96, 64).

`load_audio` decodes the audio track of any file FFmpeg (bundled with PyAV) reads (wav, flac, ogg, mp3, m4a,
mp4/webm/mkv/mov, ...), averages its channels and resamples it while decoding, so a long file never sits in
memory at its native rate. The resampler is resampy's 'kaiser_best' filter (`tivm.runtime.resample`, numpy
only), the one VGGish's reference pipeline used: it rolls off inside the top mel band (6.9-7.5 kHz), so a
steeper resampler (soxr VHQ, still available as `resample(..., method="soxr_vhq")`) would change that band's
log-mels by ~0.3. `log_mel_patches` is VGGish's `waveform_to_examples`: 25 ms periodic
Hann windows every 10 ms, |rfft| (512 points), 64 HTK mel bands from 125 to 7500 Hz, log(mel + 0.01), then
non-overlapping patches of 96 frames (0.96 s).

Length rule: frames are taken without padding (1 + (n - 400) // 160 of them) and the incomplete last patch
is dropped, so N = (1 + (n - 400) // 160) // 96 and one patch needs PATCH_SAMPLES = 15,600 samples
(0.975 s) at 16 kHz. Shorter input raises `AudioTooShortError` saying how much was given and how much is
needed; it never returns an empty array. Every problem with a file raises one `MediaError` naming the file.
"""

from __future__ import annotations

import functools
import os
from typing import Iterator

import av
import av.error
import numpy as np

from tivm.runtime import resample as resampling
from tivm.runtime.errors import AudioTooShortError, MediaError
from tivm.runtime.media import open_media

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 400  # 25 ms
HOP_SAMPLES = 160  # 10 ms
FFT_LENGTH = 512  # next power of two above the window, as the reference computes it
NUM_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
MEL_BREAK_HZ = 700.0  # HTK mel scale: 1127 * ln(1 + f / 700)
MEL_HIGH_Q = 1127.0
LOG_OFFSET = 0.01
PATCH_FRAMES = 96
PATCH_HOP_FRAMES = 96  # patches do not overlap
PATCH_SECONDS = PATCH_FRAMES * HOP_SAMPLES / SAMPLE_RATE  # 0.96
PATCH_SAMPLES = WINDOW_SAMPLES + (PATCH_FRAMES - 1) * HOP_SAMPLES  # 15,600: the shortest input with a patch
PATCH_HOP_SAMPLES = PATCH_HOP_FRAMES * HOP_SAMPLES  # 15,360: samples from one patch's start to the next one's
RESAMPLE_METHOD = "kaiser_best"  # resampy's filter, as VGGish's reference resampled; or "soxr_vhq"
FRONTEND_NAME = "vggish-log-mel"
FRONTEND_VERSION = 1

# Native-rate samples handed to the resampler at once: fewer calls than one per decoded frame.
RESAMPLE_BLOCK_SAMPLES = 1 << 16
# Frames per STFT block: bounds memory for hour-long input (a block's complex spectrum is ~4 MB).
STFT_BLOCK_FRAMES = 2048
# A track that decodes to less than its declared length by more than this is damaged (see _check_complete);
# codec delay and padding differ from the header by a few ms, never by this much.
MISSING_AUDIO_TOLERANCE_SECONDS = 0.25
MISSING_AUDIO_TOLERANCE = 0.02
_ESTIMATED_LENGTH_FORMATS = {"mp3", "aac"}
# Integer sample formats FFmpeg decoders emit, mapped to (offset, scale) that bring them into [-1, 1).
_INT_SCALES = {
    np.dtype(np.uint8): (128.0, 1.0 / 128.0),
    np.dtype(np.int16): (0.0, 1.0 / 32768.0),
    np.dtype(np.int32): (0.0, 1.0 / 2147483648.0),
    np.dtype(np.int64): (0.0, 1.0 / 9223372036854775808.0),
}


def frontend_params() -> dict:
    """Every parameter of this front end, for model and data-set manifests (JSON-serialisable)."""
    return {
        "name": FRONTEND_NAME,
        "version": FRONTEND_VERSION,
        "sample_rate": SAMPLE_RATE,
        "channel_mix": "mean",
        "resampler": RESAMPLE_METHOD,
        "window_samples": WINDOW_SAMPLES,
        "hop_samples": HOP_SAMPLES,
        "window": "periodic_hann",
        "fft_length": FFT_LENGTH,
        "spectrum": "magnitude",
        "mel_scale": "htk",
        "num_bands": NUM_BANDS,
        "mel_min_hz": MEL_MIN_HZ,
        "mel_max_hz": MEL_MAX_HZ,
        "dc_bin_weight": 0.0,
        "log_offset": LOG_OFFSET,
        "patch_frames": PATCH_FRAMES,
        "patch_hop_frames": PATCH_HOP_FRAMES,
        "patch_seconds": PATCH_SECONDS,
        "min_samples": PATCH_SAMPLES,
        "padding": "none; incomplete frames and patches dropped",
    }


# ----------------------------------------------------------------------------------------------------------
# Decoding


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    *,
    offset: float = 0.0,
    duration: float | None = None,
) -> np.ndarray:
    """Decode the audio track of `path` to float32 mono at `sample_rate`, in [-1, 1].

    `offset` and `duration` (seconds) select a part of the file: decoding still runs from the start (sample-exact,
    no seeking; decoding is the cheap part) but only that part is mixed down and resampled.
    Raises MediaError (naming the file) for anything that is not a readable file with a decodable audio track.
    """
    path = os.fspath(path)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if offset < 0 or (duration is not None and duration <= 0):
        raise ValueError(f"offset must be >= 0 and duration > 0, got offset={offset}, duration={duration}")
    container = open_media(path, metadata_errors="replace")
    with container:
        stream = _audio_stream(container, path)
        waveform = _decode_resampled(container, stream, path, sample_rate, offset, duration)
    if waveform.size == 0:
        if offset > 0:
            raise AudioTooShortError(path, f"no audio after offset {offset:g} s")
        raise MediaError(path, "the audio track decodes to no samples")
    if not np.isfinite(waveform).all():  # float wav/flac can store them; they would poison every log-mel
        raise MediaError(path, "the audio contains NaN or infinite samples")
    # Resampling and lossy decoders overshoot full scale slightly; callers are promised [-1, 1].
    return np.clip(waveform, -1.0, 1.0, out=waveform)


def _reason(error: BaseException) -> str:
    """FFmpeg's own words for an error, without the file name PyAV appends."""
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def _audio_stream(container, path: str):
    stream = container.streams.best("audio")
    if stream is None:
        kinds = sorted({s.type for s in container.streams})
        found = f"it has {', '.join(kinds)} streams only" if kinds else "it has no streams"
        raise MediaError(path, f"no audio track ({found})")
    return stream


def _decode_resampled(container, stream, path, sample_rate, offset, duration) -> np.ndarray:
    """Decode `stream` between offset and offset + duration, resampling mono blocks as they arrive."""
    estimate = _estimated_seconds(container, stream, offset, duration)
    output = _SampleBuffer(int(estimate * sample_rate) + sample_rate)
    resampler = None
    native_rate = None
    pending, pending_samples = [], 0  # decoded frames are small (vorbis: 128-1024 samples); resample in blocks
    for chunk, rate in _decoded_mono(container, stream, path, offset, duration):
        if native_rate is None:
            native_rate = rate
            if rate != sample_rate:
                resampler = resampling.open_stream(rate, sample_rate, RESAMPLE_METHOD)
        elif rate != native_rate:
            raise MediaError(path, f"the sample rate changes mid-stream ({native_rate} -> {rate} Hz)")
        pending.append(chunk)
        pending_samples += chunk.size
        if pending_samples >= RESAMPLE_BLOCK_SAMPLES:
            _flush(pending, resampler, output, last=False)
            pending_samples = 0
    _flush(pending, resampler, output, last=True)
    return output.result()


def _flush(pending: list, resampler, output: "_SampleBuffer", last: bool) -> None:
    block = np.concatenate(pending) if pending else np.zeros(0, np.float32)
    pending.clear()
    if resampler is None:
        output.append(block)
    elif block.size or last:
        output.append(resampler.resample_chunk(block.astype(np.float32, copy=False), last=last))


def _estimated_seconds(container, stream, offset, duration) -> float:
    """Rough length of what will be decoded, to size the output buffer once (0 when unknown)."""
    if duration is not None:
        return duration
    total = None
    if stream.duration is not None and stream.time_base is not None:
        total = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        total = container.duration / av.time_base
    return max(0.0, (total or 0.0) - offset)


def _decoded_mono(container, stream, path, offset, duration) -> Iterator[tuple[np.ndarray, int]]:
    """Yield (float32 mono chunk, sample rate) for the samples in [offset, offset + duration).

    Decodes from the start and counts samples rather than seeking: after a seek, lossy formats (vorbis in
    ogg especially) report timestamps several hundred samples off, and an offset must cut the same samples
    whether or not it is used. Frames before the offset are decoded but not converted or resampled.
    """
    position = 0  # native-rate index of the next decoded sample
    rate = stream.codec_context.sample_rate or 1
    try:
        for frame in container.decode(stream):
            rate = frame.sample_rate
            first = round(offset * rate)
            stop = None if duration is None else round((offset + duration) * rate)
            begin, end = position, position + frame.samples
            position = end
            if end <= first or frame.samples == 0:
                continue
            mono = _frame_to_mono(frame)[max(0, first - begin) :]
            if stop is not None and end >= stop:
                yield mono[: max(0, stop - max(begin, first))], rate
                return
            yield mono, rate
    except av.error.FFmpegError as e:
        raise MediaError(path, f"corrupt audio data near {position / rate:.2f} s ({_reason(e)})") from None
    _check_complete(container, stream, path, position / rate)


def _check_complete(container, stream, path, decoded_seconds: float) -> None:
    """Raise when the whole track decoded to clearly less than the length its header declares.

    FFmpeg's demuxers skip damaged pages/frames (bad CRC in ogg or flac) without an error; the shortfall is
    the only sign. Raw mp3/aac streams are exempt: their length is only an estimate from the bit rate.
    """
    if stream.duration is None or stream.time_base is None or container.format.name in _ESTIMATED_LENGTH_FORMATS:
        return
    declared = float(stream.duration * stream.time_base)
    if declared - decoded_seconds > max(MISSING_AUDIO_TOLERANCE_SECONDS, MISSING_AUDIO_TOLERANCE * declared):
        raise MediaError(
            path, f"damaged or truncated audio: decoded {decoded_seconds:.2f} s of the {declared:.2f} s it declares"
        )


def _frame_to_mono(frame) -> np.ndarray:
    """One decoded frame as float32 mono: integer formats scaled to [-1, 1), channels averaged."""
    samples = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:  # packed: one row of interleaved samples
        samples = samples.reshape(-1, channels).T
    if samples.dtype in _INT_SCALES:
        shift, scale = _INT_SCALES[samples.dtype]
        return ((samples.mean(axis=0, dtype=np.float64) - shift) * scale).astype(np.float32)
    if channels == 1:
        return samples[0].astype(np.float32)
    # float32 sums of a few channels lose nothing that matters (~1e-7 relative) and skip a float64 pass
    return (np.add.reduce(samples.astype(np.float32, copy=False), axis=0) / channels).astype(np.float32)


def as_float_waveform(samples) -> np.ndarray:
    """A mono waveform given by a caller as float32 in [-1, 1].

    Integer PCM (uint8, int16, int32, int64) is scaled as decoders do (int16: / 32768), so a buffer
    straight from a WAV reader or a phone's recorder works; a float waveform must already be in [-1, 1]
    (values beyond are clipped, as decoded audio is) and finite; anything else is a ValueError.
    """
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"expected a mono waveform (n,), got shape {samples.shape}")
    if samples.dtype in _INT_SCALES:
        shift, scale = _INT_SCALES[samples.dtype]
        return ((samples.astype(np.float64) - shift) * scale).astype(np.float32)
    if samples.dtype.kind != "f":
        raise ValueError(f"expected float or integer PCM samples, got dtype {samples.dtype}")
    waveform = samples.astype(np.float32)
    if not np.isfinite(waveform).all():
        raise ValueError("waveform contains NaN or infinite samples")
    return np.clip(waveform, -1.0, 1.0, out=waveform)


class _SampleBuffer:
    """A float32 array that grows by appending, without keeping a list of chunks alive."""

    def __init__(self, capacity: int):
        self._data = np.empty(max(capacity, 1), np.float32)
        self._size = 0

    def append(self, chunk: np.ndarray) -> None:
        needed = self._size + chunk.size
        if needed > self._data.size:
            grown = np.empty(max(needed, int(self._data.size * 1.5)), np.float32)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size : needed] = chunk
        self._size = needed

    def result(self) -> np.ndarray:
        if self._size < 0.9 * self._data.size:  # do not hand back an oversized estimate
            return self._data[: self._size].copy()
        return self._data[: self._size]


# ----------------------------------------------------------------------------------------------------------
# Log-mel patches


def resample(
    waveform: np.ndarray, orig_rate: float, target_rate: float = SAMPLE_RATE, method: str = RESAMPLE_METHOD
) -> np.ndarray:
    """Resample a mono waveform to float32: "kaiser_best" (the front end's, resampy's) or "soxr_vhq"."""
    waveform = np.asarray(waveform, dtype=np.float32)
    if orig_rate == target_rate:
        return waveform
    return resampling.resample(waveform, orig_rate, target_rate, method=method)


def periodic_hann(length: int) -> np.ndarray:
    """Hann window of period `length` (ends one sample before the final zero), as the reference uses."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)


def frame_signal(signal: np.ndarray, window: int = WINDOW_SAMPLES, hop: int = HOP_SAMPLES) -> np.ndarray:
    """(1 + (n - window) // hop, window) read-only view of successive frames; no padding, tail dropped."""
    if signal.shape[0] < window:
        return np.zeros((0, window), signal.dtype)
    return np.lib.stride_tricks.sliding_window_view(signal, window)[::hop]


def stft_magnitude(frames: np.ndarray) -> np.ndarray:
    """|rfft| (FFT_LENGTH points, zero-padded) of periodic-Hann-windowed frames: (F, FFT_LENGTH // 2 + 1)."""
    # float64: quiet bands sit ~1e-7 below loud ones in the same frame, where float32 FFT rounding
    # would move log(mel + 0.01) by ~1e-3.
    windowed = frames * periodic_hann(frames.shape[1])
    return np.abs(np.fft.rfft(windowed, FFT_LENGTH))


def hertz_to_mel(hertz):
    return MEL_HIGH_Q * np.log1p(np.asarray(hertz, dtype=np.float64) / MEL_BREAK_HZ)


@functools.lru_cache(maxsize=8)
def mel_matrix(
    sample_rate: int = SAMPLE_RATE,
    fft_length: int = FFT_LENGTH,
    num_bands: int = NUM_BANDS,
    min_hz: float = MEL_MIN_HZ,
    max_hz: float = MEL_MAX_HZ,
) -> np.ndarray:
    """(fft_length // 2 + 1, num_bands) triangular HTK mel weights, read-only and cached.

    Band edges are evenly spaced in mel; each FFT bin's weight comes from the mel value of its frequency
    (triangles linear in mel, not in Hz); the DC bin gets weight zero.
    """
    if not 0.0 <= min_hz < max_hz <= sample_rate / 2:
        raise ValueError(f"need 0 <= min_hz < max_hz <= Nyquist, got {min_hz}, {max_hz}, {sample_rate / 2}")
    bin_mel = hertz_to_mel(np.linspace(0.0, sample_rate / 2, fft_length // 2 + 1))[:, None]
    edges = np.linspace(hertz_to_mel(min_hz), hertz_to_mel(max_hz), num_bands + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mel - lower) / (center - lower)
    falling = (upper - bin_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    weights.setflags(write=False)
    return weights


def log_mel_spectrogram(waveform: np.ndarray) -> np.ndarray:
    """(F, NUM_BANDS) float32 log(mel + LOG_OFFSET) of a 16 kHz mono waveform, F = 1 + (n - 400) // 160."""
    frames = frame_signal(np.asarray(waveform, dtype=np.float64))
    out = np.empty((frames.shape[0], NUM_BANDS), np.float32)
    weights = mel_matrix()
    for start in range(0, frames.shape[0], STFT_BLOCK_FRAMES):
        block = frames[start : start + STFT_BLOCK_FRAMES]
        out[start : start + block.shape[0]] = np.log(stft_magnitude(block) @ weights + LOG_OFFSET)
    return out


def num_patches(num_samples: int) -> int:
    """Patches `log_mel_patches` makes from `num_samples` samples at 16 kHz (0 below PATCH_SAMPLES)."""
    if num_samples < WINDOW_SAMPLES:
        return 0
    return (1 + (num_samples - WINDOW_SAMPLES) // HOP_SAMPLES) // PATCH_FRAMES


def patch_samples(patches: int) -> int:
    """Samples that `patches` consecutive patches cover, from the first one's first sample (15 patches: 230,640)."""
    return WINDOW_SAMPLES + (patches * PATCH_FRAMES - 1) * HOP_SAMPLES


def log_mel_patches(
    waveform: np.ndarray, sample_rate: int = SAMPLE_RATE, *, source: str | os.PathLike | None = None
) -> np.ndarray:
    """(N, 96, 64) float32 VGGish log-mel patches of a mono waveform (resampled to 16 kHz first if needed).

    Raises AudioTooShortError when there is less than one patch (PATCH_SAMPLES at 16 kHz); `source`, if
    given, names where the waveform came from in that message.
    """
    waveform = patch_pcm(waveform, sample_rate, source=source)
    n = num_patches(waveform.shape[0])
    log_mel = log_mel_spectrogram(waveform[:patch_samples(n)])  # the samples the kept frames cover
    return log_mel.reshape(n, PATCH_FRAMES, NUM_BANDS)


def patch_pcm(
    waveform: np.ndarray, sample_rate: int = SAMPLE_RATE, *, source: str | os.PathLike | None = None
) -> np.ndarray:
    """The 16 kHz mono waveform `log_mel_patches` cuts its patches from (resampled first if needed), checked
    as it checks it; what a raw model's graph takes. AudioTooShortError below one patch (see log_mel_patches).
    """
    waveform = np.asarray(waveform)
    if waveform.ndim != 1:
        raise ValueError(f"waveform must be mono, shape (n,); got shape {waveform.shape}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not np.isfinite(waveform).all():
        raise ValueError("waveform contains NaN or infinite samples")
    given = waveform.shape[0]
    waveform = resample(waveform, sample_rate, SAMPLE_RATE) if sample_rate != SAMPLE_RATE else waveform
    n = num_patches(waveform.shape[0])
    if n == 0:
        at_rate = "" if sample_rate == SAMPLE_RATE else f" at {sample_rate:g} Hz"
        raise AudioTooShortError(
            source,
            f"audio is too short for one log-mel patch: {given} samples{at_rate} "
            f"({given / sample_rate:.3f} s) given, at least {PATCH_SAMPLES} samples at {SAMPLE_RATE} Hz "
            f"({PATCH_SAMPLES / SAMPLE_RATE:.3f} s) needed",
        )
    return waveform
