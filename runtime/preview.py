"""Write a preview: the clip's video with a recommended song segment as its soundtrack (PyAV).

The video stream is copied packet for packet (re-encoded to H.264 only when MP4 cannot hold its codec);
the song is decoded from the segment start, resampled to 44.1 kHz stereo and encoded as AAC, as long as
the clip. A song that ends before the clip does loops from the segment start (the library treats short
songs as loops too).
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from tivm.runtime.errors import MediaError
from tivm.runtime.files import atomic_path, check_output
from tivm.runtime.media import open_media

SAMPLE_RATE = 44100
LAYOUT = "stereo"
AAC_FRAME_SAMPLES = 1024
AUDIO_BIT_RATE = 192_000
FALLBACK_VIDEO_CODEC = "libx264"
FALLBACK_FRAME_RATE = 25  # for re-encoded video whose stream states no rate
PREVIEW_TAG = "tivm preview"  # container comment: marks a file a later --preview may replace


def write_preview(clip: str | os.PathLike, song: str | os.PathLike, start: float,
                  output: str | os.PathLike) -> Path:
    """Mux `clip`'s video with `song` from `start` seconds into `output` (an .mp4); returns the output path.

    `output` may replace only an earlier preview, never the clip, the song or any other file.
    """
    import av

    clip, song, output = Path(clip), Path(song), Path(output)
    check_preview_output(output, clip, song)
    if not (isinstance(start, (int, float)) and math.isfinite(start) and start >= 0):
        raise ValueError(f"start must be a finite number of seconds >= 0, got {start!r}")
    duration = clip_duration(clip)
    samples = song_segment(song, start, duration)
    try:
        _mux(clip, samples, output, copy_video=True)
    except av.FFmpegError:
        # packets MP4 will not take as they are (e.g. MPEG-1 timestamps): re-encode the pictures instead
        try:
            _mux(clip, samples, output, copy_video=False)
        except av.FFmpegError as exc:
            raise MediaError(output, f"cannot write the preview ({exc})") from None
    return output


def _mux(clip: Path, samples: np.ndarray, output: Path, copy_video: bool) -> None:
    import av

    with atomic_path(output) as tmp:
        with open_media(clip) as source, av.open(str(tmp), "w", format="mp4") as target:
            target.metadata["comment"] = PREVIEW_TAG
            in_stream, video_stream, copy = _add_video_stream(source, target, copy_video)
            if not copy:  # a copied stream keeps the display matrix; a re-encoded one must be told it
                matrix = _first_display_matrix(clip)
                if matrix is not None:
                    video_stream.set_display_matrix([int(v) for v in matrix])
            audio_stream = _add_audio_stream(target)
            _write_video(source, in_stream, video_stream, copy, target)
            _write_audio(samples, audio_stream, target)


def check_preview_output(output: str | os.PathLike, *inputs: str | os.PathLike) -> Path:
    """OutputError unless `output` can be written and replaces nothing but an earlier tivm preview."""
    return check_output(output, what="preview", inputs=inputs, replaceable=is_preview)


def is_preview(path: str | os.PathLike) -> bool:
    """Whether `path` is a preview tivm wrote (it carries PREVIEW_TAG as its comment)."""
    try:
        with open_media(path) as container:
            return container.metadata.get("comment") == PREVIEW_TAG
    except MediaError:
        return False


def clip_duration(clip: Path) -> float:
    """Seconds of the clip's video stream: the declared length, else the end of its last packet."""
    import av

    with open_media(clip) as container:
        if not container.streams.video:
            raise MediaError(clip, "has no video stream")
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if container.duration is not None:
            return container.duration / av.time_base
        try:
            end = _last_packet_end(container, stream)
        except av.FFmpegError as exc:
            raise MediaError(clip, f"cannot be read to find its length ({exc})") from None
    if end is None or end <= 0:
        raise MediaError(clip, "has no known duration (no timestamps)")
    return end


def _last_packet_end(container, stream) -> float | None:
    """For containers that declare no length (MPEG-1 program streams): read packets, decode nothing."""
    first = end = None
    for packet in container.demux(stream):
        if packet.pts is None or packet.time_base is None:
            continue
        at = float(packet.pts * packet.time_base)
        first = at if first is None else min(first, at)
        end = max(end or at, at + float((packet.duration or 0) * packet.time_base))
    return None if end is None else end - first


def song_segment(song: Path, start: float, duration: float) -> np.ndarray:
    """(2, n) float32 samples at 44.1 kHz from `start`, exactly `duration` long (looped if the song ends).

    Decoding stops once the segment is complete, so memory follows the clip's length, not the song's.
    """
    import av

    first, n = int(round(start * SAMPLE_RATE)), int(round(duration * SAMPLE_RATE))
    chunks, position, kept = [], 0, 0
    try:
        with open_media(song) as container:
            if not container.streams.audio:
                raise MediaError(song, "has no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp", layout=LAYOUT, rate=SAMPLE_RATE)
            for frame in _frames_then_flush(container.decode(stream)):
                for block in resampler.resample(frame):
                    samples = block.to_ndarray()
                    wanted = samples[:, max(0, first - position):]
                    position += samples.shape[1]
                    if wanted.shape[1]:
                        chunks.append(wanted[:, :n - kept])
                        kept += chunks[-1].shape[1]
                if kept >= n:
                    break
    except av.FFmpegError as exc:
        raise MediaError(song, f"cannot be decoded ({exc})") from None
    if kept == 0:
        raise MediaError(song, f"has no audio after {start:.2f} s")
    audio = np.concatenate(chunks, axis=1)
    reps = -(-n // audio.shape[1])
    return np.ascontiguousarray(np.tile(audio, (1, reps))[:, :n], dtype=np.float32)


def _frames_then_flush(frames):
    """The decoded frames, then None: the resampler's signal to hand out what it still buffers."""
    yield from frames
    yield None


def _first_display_matrix(clip: Path):
    """The display matrix (rotation/mirror) of the clip's first frame, None without one."""
    from tivm.runtime.video import display_matrix

    with open_media(clip) as source:
        for frame in source.decode(video=0):
            return display_matrix(frame)
    return None


def _add_video_stream(source, target, copy: bool = True):
    """An output stream that copies the clip's video, or an H.264 encoder when MP4 cannot hold its codec."""
    import av

    in_stream = source.streams.video[0]
    if copy:
        try:
            return in_stream, target.add_stream_from_template(in_stream), True
        except (ValueError, av.FFmpegError):
            pass
    out_stream = target.add_stream(FALLBACK_VIDEO_CODEC,
                                   rate=int(round(float(in_stream.average_rate or FALLBACK_FRAME_RATE))))
    out_stream.width, out_stream.height, out_stream.pix_fmt = in_stream.width, in_stream.height, "yuv420p"
    return in_stream, out_stream, False


def _add_audio_stream(target):
    stream = target.add_stream("aac", rate=SAMPLE_RATE, layout=LAYOUT)
    stream.bit_rate = AUDIO_BIT_RATE
    return stream


def _write_video(source, in_stream, out_stream, copy: bool, target) -> None:
    if copy:
        for packet in source.demux(in_stream):
            if packet.dts is None:
                continue
            packet.stream = out_stream
            target.mux(packet)
        return
    # pictures keep their place in time: numbered at the stream's rate from the first one (a source whose
    # timestamps MP4 refused is not a clock to trust)
    period = Fraction(1, int(round(float(in_stream.average_rate or FALLBACK_FRAME_RATE))))
    for index, frame in enumerate(source.decode(in_stream)):
        picture = frame.reformat(format="yuv420p")
        picture.pts, picture.time_base = index, period
        target.mux(out_stream.encode(picture))
    target.mux(out_stream.encode(None))


def _write_audio(samples: np.ndarray, stream, target) -> None:
    import av

    for offset in range(0, samples.shape[1], AAC_FRAME_SAMPLES):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, offset:offset + AAC_FRAME_SAMPLES]),
                                           format="fltp", layout=LAYOUT)
        frame.sample_rate = SAMPLE_RATE
        frame.pts = offset
        frame.time_base = Fraction(1, SAMPLE_RATE)
        target.mux(stream.encode(frame))
    target.mux(stream.encode(None))
