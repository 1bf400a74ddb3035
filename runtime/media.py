"""Opening media for decoding: local regular files only, and nothing a file names inside itself.

A path handed to FFmpeg is a URL: ``http://…``, ``concat:a|b``, ``subfile,,start,…`` and dozens of other
protocols open the network or other files, and some never return. Some demuxers also open resources
named *inside* a file (an HLS playlist's segments, an ffconcat list, an image sequence pattern, an SDP
description of a network stream). Song libraries and manifests are data a user may have been handed, so every
file tivm decodes is opened the same way:

* the path must name an existing local regular file (not a folder, FIFO or device, which can block forever);
* FFmpeg gets it as ``file:<absolute path>`` with ``protocol_whitelist=file``, so no other protocol can be
  reached, whatever the name looks like;
* ``format_whitelist`` lists every demuxer except those that open other resources (REFUSED_DEMUXERS), so a
  playlist disguised as a song is refused before it opens anything.
"""

from __future__ import annotations

import functools
import os
import stat

from tivm.runtime.errors import MediaError

# Demuxers that read other files or network streams named inside the file they are given.
REFUSED_DEMUXERS = frozenset({
    "concat", "hls", "applehttp", "dash", "imf", "image2", "sdp", "rtp", "rtsp", "sap", "webm_dash_manifest",
    "lavfi", "avisynth", "vapoursynth",
})
ONLY_LOCAL_FILES = "file"


def check_local_file(path: str | os.PathLike) -> str:
    """`path` as a string when it names a non-empty local regular file; MediaError saying why not."""
    path = os.fspath(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise MediaError(path, "broken symbolic link (its target does not exist)") from None
        raise MediaError(path, "no such file") from None
    except OSError as exc:
        raise MediaError(path, f"cannot open: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise MediaError(path, "is a folder, not a media file")
    if not stat.S_ISREG(info.st_mode):
        raise MediaError(path, "not a regular file (a pipe, socket or device): refusing to read it")
    if info.st_size == 0:
        raise MediaError(path, "file is empty (0 bytes)")
    return path


@functools.lru_cache(maxsize=1)
def allowed_demuxers() -> str:
    """FFmpeg's format_whitelist: every demuxer this PyAV build has, less REFUSED_DEMUXERS."""
    import av
    import av.format

    names = sorted(name for name in av.formats_available
                   if name not in REFUSED_DEMUXERS and av.format.ContainerFormat(name).is_input)
    return ",".join(names)


def safe_open_options() -> dict[str, str]:
    return {"protocol_whitelist": ONLY_LOCAL_FILES, "format_whitelist": allowed_demuxers()}


def open_media(path: str | os.PathLike, **kwargs):
    """`av.open` for reading one local media file (see the module docstring); MediaError naming the file.

    Extra keyword arguments go to `av.open` (e.g. metadata_errors); `options` are merged with the
    restrictions, which always win.
    """
    import av

    path = check_local_file(path)
    options = {**kwargs.pop("options", {}), **safe_open_options()}
    try:
        return av.open("file:" + os.path.abspath(path), mode="r", options=options, **kwargs)
    except av.FFmpegError as exc:
        raise MediaError(path, f"not a readable media file ({_reason(exc)})") from None
    except (OSError, UnicodeError) as exc:
        raise MediaError(path, f"cannot open: {getattr(exc, 'strerror', None) or exc}") from None


def _reason(error: Exception) -> str:
    """FFmpeg's message without the URL PyAV appends (the MediaError names the file already); a demuxer
    refused by the whitelist surfaces as FFmpeg's bare "Invalid argument", so say what that can mean."""
    reason = getattr(error, "strerror", None) or str(error)
    if reason == "Invalid argument":
        reason += "; or a playlist/reference format that opens other files, which tivm refuses"
    return reason
