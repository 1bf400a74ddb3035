"""Video front end: one RGB frame per second (or per 1/fps s), decoded with PyAV, torch-free.

Which frame stands for second k: the first decoded frame whose presentation time t satisfies
``t >= start + k / fps - 1e-6`` (1 µs tolerance for rounded timestamps), for k = 0, 1, 2, ... as long as
such a frame exists (and ``start + k / fps < start + duration`` when a duration is given). A 15 s clip at
24 fps gives 15 frames (t = 0, 1, ..., 14 s); a 5.3 s clip gives 6. Times are measured from the first
decoded frame, so the first frame is always second 0: a clock that starts at e.g. 1.4 s (MPEG-TS), or an
AVI whose B-frame delay stamps the first frame one frame late, still starts at second 0. A frame without a
timestamp gets the previous frame's time plus one frame period (the stream's average rate), and a clock
that jumps back by more than 0.5 s (concatenated MPEG-TS) continues from the previous frame, so broken
timestamps degrade to frame counting rather than failing.
When one frame spans several targets (a variable-rate stream with a gap), it stands for each of them.

Why PyAV and not OpenCV: both decode with FFmpeg and give bit-identical RGB frames on the project's clips,
and speed does not separate them (docs/architecture.md, "Design measurements"; benchmarks/frontend_video.py
prints both). PyAV wins on what the front end needs: it is already the runtime's audio decoder, gives the
real presentation timestamps (OpenCV's CAP_PROP_POS_MSEC is derived), decodes without converting to RGB
(only chosen frames go through ``to_ndarray(format="rgb24")``), seeks to a keyframe for a late ``start``,
and raises typed errors we translate into MediaError.

Speed: packets that present before the next target are decoded with skip_frame=NONREF, so frames that no
other frame refers to (most B-frames) are not decoded at all, with identical chosen frames. Decode mode
"fast" also skips the in-loop deblocking filter (FFmpeg's skip_loop_filter=all; H.264 and HEVC honour it):
the chosen frames then differ from the exact ones by slightly blockier edges, and the error carries from
reference to reference until the next keyframe. docs/benchmarks.md measures what that saves and what it
does to embeddings; "exact" is the default.

Orientation: frames come out as players show them. Phones record a portrait clip as landscape pixels plus a
display matrix (rotation, sometimes a mirror) in the container; each chosen frame is turned upright the way
FFmpeg's autorotate does it (fftools and ffplay: ``theta = -round(av_display_rotation_get(m))`` clockwise
degrees, then ``transpose=clock`` / ``cclock`` / ``cclock_flip`` / ``clock_flip``, ``hflip``, ``vflip`` chosen by
the matrix's signs), so all eight EXIF-style orientations are covered. A matrix at an angle that is not a
quarter turn (never written by phones) is ignored: the frame is used as decoded.

Size: a frame over MAX_FRAME_PIXELS is refused with a MediaError before it is converted (and, when the
stream declares its size, before anything is decoded): such a stream is a decode bomb, not a clip.

Memory: frames are decoded one at a time; ``iter_frames`` yields each chosen frame as soon as it is
found, so a caller can process a long video in chunks; ``sample_frames`` keeps only the chosen frames.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterator
from fractions import Fraction
from types import SimpleNamespace

import av
import numpy as np

from .errors import MediaError
from .media import open_media

DEFAULT_FPS = 1.0
# decoder options per decode mode (AVCodecContext options; a codec without the option ignores it)
DECODE_MODES = {"exact": {}, "fast": {"skip_loop_filter": "all"}}
TIME_TOLERANCE_S = 1e-6  # timestamps are rounded to the stream time base; never miss a frame by that
FALLBACK_FRAME_RATE = 25.0  # frame period to assume when a stream states no rate and lacks timestamps
BACKWARD_JUMP_S = 0.5  # a timestamp this far behind the previous frame's is a clock reset, not reordering
TRUNCATION_TOLERANCE_S = 0.5  # frames may stop this much before the declared duration (edit lists, rounding)
SKIP_MARGIN_S = 0.01  # skip non-reference frames only when they present clearly before the next target
SEEK_MIN_START_S = 2.0  # seek (to the keyframe before `start`) only when that skips real decoding work
# Largest frame decoded: 8192 x 8192 covers 8K UHD (7680 x 4320) and 8K 360-degree video in either orientation;
# one such RGB frame is 201 MB, and the decoder holds several YUV frames besides, so anything larger would
# exhaust a small device before the first second is embedded.
MAX_FRAME_PIXELS = 8192 * 8192
FIXED_ONE = 1 << 16  # the display matrix's a, b, c, d are 16.16 fixed point
MATRIX_UNREAD = object()  # the stream's display matrix before the first chosen frame is read
QUARTER_TURN_TOLERANCE = 1.0  # degrees: FFmpeg treats angles within 1 degree of a quarter turn as that turn


def _check_arguments(fps: float, start: float, duration: float | None, max_frames: int | None,
                     decode: str = "exact") -> None:
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, got {decode!r}")
    if not (isinstance(fps, numbers.Real) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if not (isinstance(start, numbers.Real) and math.isfinite(start) and start >= 0):
        raise ValueError(f"start must be a number of seconds >= 0, got {start!r}")
    if duration is not None and not (isinstance(duration, numbers.Real) and duration > 0):
        raise ValueError(f"duration must be None or a positive number of seconds, got {duration!r}")
    if max_frames is not None and not (isinstance(max_frames, numbers.Integral) and max_frames >= 1):
        raise ValueError(f"max_frames must be None or an integer >= 1, got {max_frames!r}")


def _open_container(path: str) -> av.container.InputContainer:
    """Open `path` for reading (a local regular file only: see tivm.runtime.media) or raise one MediaError."""
    return open_media(path)


def _reason(error: Exception) -> str:
    """FFmpeg's message without the file name PyAV appends (the MediaError names the file already)."""
    return getattr(error, "strerror", None) or str(error)


def _video_stream(container, path: str, decode: str = "exact", threads: int | None = None):
    if not container.streams.video:
        kinds = sorted({stream.type for stream in container.streams})
        found = f"it has {', '.join(kinds)} streams only" if kinds else "it has no streams"
        raise MediaError(path, f"no video stream ({found})")
    stream = container.streams.video[0]
    _check_frame_size(path, stream.codec_context.width, stream.codec_context.height)
    # frame + slice threads: 1.02 vs 1.68 s median on the 15 s clip in a loaded run. Frame threading
    # turns a damaged packet into "no more frames" instead of an error: see _check_not_truncated.
    stream.thread_type = "AUTO"
    if threads:  # else FFmpeg's choice (one per core, plus one)
        stream.thread_count = int(threads)
    if DECODE_MODES[decode]:
        stream.codec_context.options = dict(DECODE_MODES[decode])  # read when the decoder opens, on first use
    return stream


def _frame_period(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return 1.0 / float(rate) if rate else 1.0 / FALLBACK_FRAME_RATE


def _first_frame_time(path: str) -> float | None:
    """Presentation time (s) of the first decoded frame: what counts as second 0 (None without timestamps)."""
    container = _open_container(path)
    try:
        stream = _video_stream(container, path)
        for _, frame in _timed_frames(path, container, stream, None):
            if frame.pts is None or frame.time_base is None:
                return None
            return float(frame.pts * frame.time_base)
        return None
    finally:
        container.close()


def _seek_near(container, stream, seconds: float) -> bool:
    """Seek to the keyframe at or before `seconds` (absolute stream time). False when that is impossible."""
    if stream.time_base is None:
        return False
    try:
        container.seek(int(Fraction(seconds) / stream.time_base), stream=stream, backward=True, any_frame=False)
    except (av.FFmpegError, OSError, ValueError):
        return False
    return True


class _KeyframeHops:
    """When to jump ahead to the keyframe before the next target instead of decoding up to it.

    Phones record with a keyframe every second or two; sampling one frame per second then needs only the
    frames from the keyframe before each target, not the 30 in between. The keyframe interval is learnt from
    the keyframe packets seen while decoding in order (the largest interval so far, so an irregular stream
    seeks only where a keyframe is certain to be ahead); a seek is made when the next keyframe is expected
    after the packet being read and at or before the target. Only containers with an index (MP4/MOV,
    Matroska/WebM) are sought; a seek that lands past the target goes back to the last keyframe known
    before it and seeking stops, so the chosen frames are always the ones sequential decoding chooses. A seek
    that lands behind what was already decoded wasted work; after MAX_MISSES of those seeking stops too.
    """

    MAX_MISSES = 2

    INDEXED_FORMATS = ("mov", "mp4", "matroska", "webm")

    def __init__(self, container, stream):
        names = set((getattr(container.format, "name", "") or "").split(","))
        self.enabled = bool(names & set(self.INDEXED_FORMATS)) and stream.time_base is not None
        self.interval = None  # largest keyframe interval seen in order (s)
        self.last = None  # time of the last keyframe packet seen
        self.seeks = 0
        self.misses = 0
        self.sought_from = None  # the packet time at which the last seek was made

    def saw_keyframe(self, time: float) -> None:
        if self.last is not None and time > self.last:
            self.interval = max(self.interval or 0.0, time - self.last)
        self.last = time

    def worth_seeking(self, position: float, target: float) -> bool:
        if not (self.enabled and self.interval and self.last is not None):
            return False
        expected = self.last + self.interval
        # a keyframe at the target itself is the usual case (a keyframe every second, targets every second)
        return position < expected - SKIP_MARGIN_S and expected <= target + TIME_TOLERANCE_S

    def seek(self, container, stream, seconds: float, position: float | None = None) -> bool:
        self.seeks += 1
        self.sought_from = position
        self.last = None  # the next keyframe seen is where the seek landed: no interval across a jump
        return _seek_near(container, stream, seconds)

    def landed(self, time: float) -> None:
        """The first frame after a seek presents at `time` (relative seconds)."""
        if self.sought_from is not None and time <= self.sought_from + TIME_TOLERANCE_S:
            self.misses += 1
            self.enabled = self.misses < self.MAX_MISSES


def _timed_frames(
    path: str, container, stream, origin: float | None, wanted: SimpleNamespace | None = None,
    hops: _KeyframeHops | None = None,
) -> Iterator[tuple[float, av.VideoFrame]]:
    """(seconds since the stream's start, frame) for every decoded frame, decoder errors → MediaError.

    With `wanted` (an object whose `.seconds` is the next target time), packets that present before that
    time are decoded with skip_frame=NONREF: frames no other frame refers to are then not decoded at all,
    which is safe because a frame presented before the target can never be the one chosen for it. With
    `hops` too, decoding jumps to the keyframe before the target when one is expected there (_KeyframeHops);
    frames are then not yielded for the stretch jumped over, which presents before the target.
    """
    codec = stream.codec_context
    period = _frame_period(stream)
    previous_time = None
    shift = 0.0  # added after a timestamp reset, so time keeps running forward
    landed_before = None  # after a seek: the keyframe known to precede the target, to go back to if it overshot
    try:
        while True:
            sought = False
            for packet in container.demux(stream):
                early = _packet_time(packet, origin) if shift == 0.0 else None
                if hops is not None and early is not None and wanted is not None:
                    if packet.is_keyframe:
                        hops.saw_keyframe(early)
                    if landed_before is None and hops.worth_seeking(early, wanted.seconds):
                        known = hops.last
                        # 1 us past the target: a keyframe at the target is found despite float rounding
                        if hops.seek(container, stream, origin + wanted.seconds + TIME_TOLERANCE_S, early):
                            landed_before, sought = known, True
                            break
                if wanted is not None:
                    skippable = early is not None and early < wanted.seconds - SKIP_MARGIN_S
                    codec.skip_frame = "NONREF" if skippable else "DEFAULT"
                for frame in packet.decode():
                    if frame.pts is not None and frame.time_base is not None:
                        absolute = float(frame.pts * frame.time_base)
                        if origin is None:
                            origin = absolute
                        time = absolute - origin + shift
                        if landed_before is not None:
                            if time > wanted.seconds + TIME_TOLERANCE_S:  # overshot: go back, stop seeking
                                hops.enabled = False
                                if not hops.seek(container, stream, origin + landed_before):
                                    raise MediaError(path, "a seek landed past its target and seeking back failed")
                                landed_before, sought, previous_time = None, True, None
                                break
                            hops.landed(time)
                            landed_before = None
                            previous_time = None  # a jump ahead is not a clock reset
                        if previous_time is not None and time < previous_time - BACKWARD_JUMP_S:
                            # clock reset (e.g. concatenated MPEG-TS): continue one frame after the previous one
                            shift += previous_time + period - time
                            time = previous_time + period
                    else:
                        time = 0.0 if previous_time is None else previous_time + period
                    previous_time = time
                    yield time, frame
                if sought:
                    break
            if not sought:
                return
    except av.FFmpegError as error:
        raise MediaError(path, f"video decoding failed, file corrupt or truncated ({_reason(error)})") from None


def _packet_time(packet, origin: float | None) -> float | None:
    if packet.pts is None or packet.time_base is None or origin is None:
        return None
    return float(packet.pts * packet.time_base) - origin


def _check_frame_size(path: str, width: int | None, height: int | None) -> None:
    if width and height and width * height > MAX_FRAME_PIXELS:
        raise MediaError(path, f"frames of {width}x{height} pixels ({width * height / 1e6:.0f} Mpx) exceed the "
                               f"{MAX_FRAME_PIXELS / 1e6:.0f} Mpx this runtime decodes")


def _frame_to_rgb(path: str, frame, matrix: np.ndarray | None) -> np.ndarray:
    """The frame as (H, W, 3) uint8 RGB, turned by its display `matrix` the way players show it (see the
    module docstring)."""
    _check_frame_size(path, frame.width, frame.height)
    try:
        rgb = frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, ValueError) as error:
        raise MediaError(path, f"cannot convert a {frame.format.name} frame to RGB ({_reason(error)})") from None
    return upright(rgb, matrix)


def display_matrix(frame) -> np.ndarray | None:
    """The frame's display matrix (9 int32, FFmpeg's layout), None when it has none.

    Decoders attach the container's matrix (MP4/MOV tkhd, Matroska projection) to every frame, so it is
    read once per stream: PyAV's side-data objects and their frame refer to each other, and each frame read
    this way keeps its decoded picture (3 MB at 1080p) until Python's cycle collector runs, which grew a
    300 s clip's memory by 600 MB.
    """
    for data in frame.side_data:
        if getattr(data.type, "name", None) == "DISPLAYMATRIX":
            values = np.frombuffer(bytes(data), dtype=np.int32)
            return values[:9] if len(values) >= 9 else None
    return None


def _clockwise_degrees(matrix: np.ndarray) -> float:
    """fftools' get_rotation(): the clockwise angle a player turns the frame by, in [-0.9, 359.1); nan if singular.

    av_display_rotation_get() returns counter-clockwise degrees; players negate and round it (C round(),
    halves away from zero).
    """
    a, b, c, d = (float(v) / FIXED_ONE for v in matrix[[0, 1, 3, 4]])
    scale_x, scale_y = math.hypot(a, c), math.hypot(b, d)
    if scale_x == 0.0 or scale_y == 0.0:
        return math.nan
    counter_clockwise = -math.degrees(math.atan2(b / scale_y, a / scale_x))
    theta = -math.copysign(math.floor(abs(counter_clockwise) + 0.5), counter_clockwise)
    return theta - 360.0 * math.floor(theta / 360.0 + 0.9 / 360.0)


def display_orientation(matrix) -> tuple[bool, bool, bool]:
    """(transpose, flip rows, flip columns) that turn a decoded frame the way FFmpeg's autorotate shows it.

    Applied in that order to an (H, W, 3) array. The transpose filter's modes in these terms: clock =
    transpose + flip columns, cclock = transpose + flip rows, cclock_flip = transpose, clock_flip = all three.
    """
    if matrix is None:
        return False, False, False
    theta = _clockwise_degrees(matrix)
    if abs(theta - 90.0) < QUARTER_TURN_TOLERANCE:
        return (True, False, False) if matrix[3] > 0 else (True, False, True)  # cclock_flip or clock
    if abs(theta - 180.0) < QUARTER_TURN_TOLERANCE:
        return False, bool(matrix[4] < 0), bool(matrix[0] < 0)  # vflip and/or hflip
    if abs(theta - 270.0) < QUARTER_TURN_TOLERANCE:
        return (True, True, True) if matrix[3] < 0 else (True, True, False)  # clock_flip or cclock
    if abs(theta) > QUARTER_TURN_TOLERANCE:
        return False, False, False  # an arbitrary angle: FFmpeg rotates with black corners, we leave it be
    return False, bool(matrix[4] < 0), False  # no rotation, maybe a vertical mirror (nan lands here too)


def upright(rgb: np.ndarray, matrix) -> np.ndarray:
    """An (H, W, 3) decoded frame as players show it, given its display matrix (None: unchanged, no copy)."""
    transpose, flip_rows, flip_columns = display_orientation(matrix)
    if not (transpose or flip_rows or flip_columns):
        return rgb
    view = rgb.transpose(1, 0, 2) if transpose else rgb
    if flip_rows:
        view = view[::-1]
    if flip_columns:
        view = view[:, ::-1]
    return np.ascontiguousarray(view)  # one copy, of a chosen frame only


def iter_frames(
    path: str | os.PathLike,
    fps: float = DEFAULT_FPS,
    start: float = 0.0,
    duration: float | None = None,
    max_frames: int | None = None,
    decode: str = "exact",
    threads: int | None = None,
) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (second, frame) for each target second start + k/fps, frame (H, W, 3) uint8 RGB, upright.

    Decodes sequentially, converting only the chosen frames, so memory stays at one frame (plus the
    decoder's own buffers) whatever the video's length. Raises MediaError for unusable files.
    `decode`: a key of DECODE_MODES (see the module docstring). `threads`: decoder threads (None: FFmpeg's
    choice); a caller that computes on the frames while they decode leaves the other cores to itself.
    """
    _check_arguments(fps, start, duration, max_frames, decode)
    path = os.fspath(path)
    end = math.inf if duration is None else start + duration
    container = _open_container(path)
    try:
        stream = _video_stream(container, path, decode, threads)
        wanted = SimpleNamespace(seconds=start)  # the next target; frames before it may be skipped
        hops = _KeyframeHops(container, stream)
        origin = _first_frame_time(path) if start >= SEEK_MIN_START_S else None
        if origin is not None and _seek_near(container, stream, origin + start):
            frames = _timed_frames(path, container, stream, origin, wanted, hops)
            first = next(frames, None)
            if first is None or first[0] > start + TIME_TOLERANCE_S:
                # landed past the target (or nowhere): unreliable index, decode from the beginning instead
                container.close()
                container = _open_container(path)
                stream = _video_stream(container, path, decode, threads)
                hops = _KeyframeHops(container, stream)
                frames = _timed_frames(path, container, stream, origin, wanted, hops)
            else:
                frames = _chain_first(first, frames)
        else:
            frames = _timed_frames(path, container, stream, None, wanted, hops)

        index = 0
        last_time = None
        matrix = MATRIX_UNREAD
        for time, frame in frames:
            last_time = time
            target = start + index / fps
            if target >= end:
                return
            if time < target - TIME_TOLERANCE_S:
                continue
            if matrix is MATRIX_UNREAD:
                matrix = display_matrix(frame)
            rgb = _frame_to_rgb(path, frame, matrix)
            # one frame may stand for several targets when the stream has a gap
            while time >= target - TIME_TOLERANCE_S and target < end:
                yield target, rgb
                index += 1
                if max_frames is not None and index >= max_frames:
                    return
                target = start + index / fps
                wanted.seconds = target
        # the decoder ran dry before `end`: make sure that is the real end of the video
        if last_time is None:
            raise MediaError(path, "no decodable video frames")
        _check_not_truncated(path, stream, last_time + _frame_period(stream))
        if index == 0:
            raise MediaError(path, f"video ends before start={start:g}s")
    finally:
        container.close()


def _declared_duration(stream) -> float | None:
    """The video stream's length from the container's index; None when only a bitrate estimate exists."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return None


def _check_not_truncated(path: str, stream, decoded_end: float) -> None:
    """Raise when the frames stop well before the length the container declares.

    With frame threading FFmpeg reports a truncated or damaged packet by simply producing no more frames,
    so comparing against the container's index is the one reliable signal.
    """
    declared = _declared_duration(stream)
    if declared is None:
        return
    tolerance = max(TRUNCATION_TOLERANCE_S, 2 * _frame_period(stream))
    if declared - decoded_end > tolerance:
        raise MediaError(
            path,
            f"video data ends at {decoded_end:.2f}s but the file declares {declared:.2f}s: corrupt or truncated",
        )


def _chain_first(first, rest):
    yield first
    yield from rest


def sample_frames(
    path: str | os.PathLike,
    fps: float = DEFAULT_FPS,
    start: float = 0.0,
    duration: float | None = None,
    max_frames: int | None = None,
    decode: str = "exact",
) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB, upright: the frame standing for each second (see the module docstring for which)."""
    chosen = [frame for _, frame in iter_frames(path, fps=fps, start=start, duration=duration, max_frames=max_frames,
                                                decode=decode)]
    shapes = {frame.shape for frame in chosen}
    if len(shapes) > 1:
        raise MediaError(os.fspath(path), f"frame size changes within the video ({sorted(shapes)})")
    out = np.empty((len(chosen),) + chosen[0].shape, dtype=np.uint8)
    for index in range(len(chosen)):
        out[index] = chosen[index]
        chosen[index] = None  # release as we copy: peak memory stays near one copy of the result
    return out
