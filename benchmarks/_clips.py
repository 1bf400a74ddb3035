"""Test clips of other lengths, made from the real 15 s clip with PyAV (video stream only).

Longer clips (whole multiples of the source) loop the source by copying its compressed packets with shifted
timestamps: no re-encoding, so every second decodes exactly like the real clip. Shorter clips re-encode the
first seconds with libx264 at the source's size and frame rate (a cut without re-encoding could only end on
a keyframe).
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av

SHORT_CLIP_CRF = 20


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise ValueError(f"{path}: no video stream")
    return container.streams.video[0]


def source_seconds(path: Path) -> float:
    with av.open(str(path)) as container:
        stream = _video_stream(container, path)
        if stream.duration is not None:
            return float(stream.duration * stream.time_base)
        return float(container.duration / av.time_base)


def looped_clip(source: Path, copies: int, out: Path) -> Path:
    """`copies` back-to-back copies of the source's video stream, remuxed without re-encoding."""
    with av.open(str(source)) as src:
        stream = _video_stream(src, source)
        packets = [p for p in src.demux(stream) if p.dts is not None]
        period = stream.duration or (max(p.pts for p in packets) + packets[-1].duration - packets[0].pts)
        with av.open(str(out), "w") as dst:
            out_stream = dst.add_stream_from_template(stream)
            for copy in range(copies):
                shift = copy * period
                for packet in packets:
                    packet.pts += shift if copy else 0
                    packet.dts += shift if copy else 0
                    packet.stream = out_stream
                    dst.mux(packet)
                    packet.pts -= shift if copy else 0
                    packet.dts -= shift if copy else 0
    return out


def cut_clip(source: Path, seconds: float, out: Path) -> Path:
    """The first `seconds` of the source's video, re-encoded with libx264 (same size and frame rate)."""
    with av.open(str(source)) as src:
        stream = _video_stream(src, source)
        rate = stream.average_rate or Fraction(25)
        with av.open(str(out), "w") as dst:
            encoder = dst.add_stream("libx264", rate=rate)
            encoder.width, encoder.height = stream.codec_context.width, stream.codec_context.height
            encoder.pix_fmt = "yuv420p"
            encoder.options = {"crf": str(SHORT_CLIP_CRF), "preset": "veryfast"}
            wanted = int(round(seconds * rate))
            for index, frame in enumerate(src.decode(stream)):
                if index >= wanted:
                    break
                frame = frame.reformat(format="yuv420p")
                frame.pts, frame.time_base = index, 1 / Fraction(rate)
                for packet in encoder.encode(frame):
                    dst.mux(packet)
            for packet in encoder.encode(None):
                dst.mux(packet)
    return out


def clip_of_length(source: Path, seconds: float, folder: Path) -> tuple[Path, str]:
    """(a clip of about `seconds`, how it was made) in `folder`, reusing one made before."""
    folder.mkdir(parents=True, exist_ok=True)
    length = source_seconds(source)
    if abs(seconds - length) < 0.5:
        return source, "the real clip"
    if seconds > length:
        copies = math.ceil(seconds / length - 1e-6)
        out = folder / f"{source.stem}_x{copies}.mp4"
        if not out.exists():
            looped_clip(source, copies, out.with_suffix(".tmp.mp4")).rename(out)
        return out, f"the real clip looped {copies}x (packets copied, no re-encode)"
    out = folder / f"{source.stem}_first{seconds:g}s.mp4"
    if not out.exists():
        cut_clip(source, seconds, out.with_suffix(".tmp.mp4")).rename(out)
    return out, f"first {seconds:g} s of the real clip re-encoded with libx264 (crf {SHORT_CLIP_CRF})"


# (codec, container, options) of the kinds of clip phones and browsers record; keyframe interval in frames
PHONE_CODECS = {
    "h264": ("libx264", "mp4", {"crf": "23", "preset": "veryfast"}),
    "hevc": ("libx265", "mp4", {"crf": "28", "preset": "ultrafast", "x265-params": "log-level=error"}),
    "vp9": ("libvpx-vp9", "webm", {"crf": "35", "b": "0", "deadline": "realtime", "cpu-used": "8"}),
}


def reencoded_clip(source: Path, out: Path, *, codec: str = "h264", size: tuple[int, int] | None = None,
                   rate: int = 30, keyframe_seconds: float = 1.0, seconds: float | None = None,
                   bframes: int | None = None) -> Path:
    """The source's video (its first `seconds`, default all) re-encoded as a phone would record it: `codec`
    (PHONE_CODECS), frame `size` (width, height; portrait when height > width, scaled without keeping the
    aspect), `rate` fps, a keyframe every `keyframe_seconds` (Android's MediaRecorder default is 1 s).
    Source frames are repeated or dropped to reach `rate`; loop the result with looped_clip for long clips."""
    encoder_name, _, options = PHONE_CODECS[codec]
    with av.open(str(source)) as src:
        stream = _video_stream(src, source)
        width, height = size or (stream.codec_context.width, stream.codec_context.height)
        source_rate = float(stream.average_rate or 25)
        total = min(source_seconds(source), seconds or math.inf)
        gop = max(1, int(round(keyframe_seconds * rate)))
        params = f"keyint={gop}:min-keyint={gop}:scenecut=0" + (f":bframes={bframes}" if bframes is not None else "")
        with av.open(str(out), "w") as dst:
            encoder = dst.add_stream(encoder_name, rate=rate)
            encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
            encoder.options = {**options, "g": str(gop), "keyint_min": str(gop),
                               **({"x264-params": params} if codec == "h264" else {}),
                               **({"x265-params": "log-level=error:" + params} if codec == "hevc" else {})}
            wanted = int(round(total * rate))
            frames = src.decode(stream)
            frame, frame_index, index = None, -1, 0
            while index < wanted:
                needed = int(index * source_rate / rate)  # the source frame showing at this output time
                while frame_index < needed:
                    frame = next(frames, None)
                    if frame is None:
                        break
                    frame_index += 1
                if frame is None:
                    break
                picture = frame.reformat(width=width, height=height, format="yuv420p")
                picture.pts, picture.time_base = index, Fraction(1, rate)
                for packet in encoder.encode(picture):
                    dst.mux(packet)
                index += 1
            for packet in encoder.encode(None):
                dst.mux(packet)
    return out
