"""Opening media never reaches past one local file: no network, no playlists, no pipes.

A local HTTP server on 127.0.0.1 (bounded: it stops with the test) counts requests, so "nothing was
fetched" is checked, not assumed. Every entry point that decodes a file (load_audio, the video front end,
song titles, the preview) opens it through tivm.runtime.media.open_media.
"""

from __future__ import annotations

import http.server
import os
import threading
import time
from pathlib import Path

import pytest

from tivm.runtime.audio import load_audio
from tivm.runtime.errors import MediaError
from tivm.runtime.library import read_title
from tivm.runtime.media import REFUSED_DEMUXERS, allowed_demuxers, open_media
from tivm.runtime.preview import song_segment
from tivm.runtime.video import sample_frames
from tivm.train.demo_media import write_song


@pytest.fixture
def server():
    """A one-file HTTP server on loopback that records every request it gets."""
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the standard library's name
            requests.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    httpd.timeout = 0.2
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", requests
    httpd.shutdown()
    httpd.server_close()


OPENERS = {
    "open_media": lambda p: open_media(p).close(),
    "load_audio": load_audio,
    "sample_frames": sample_frames,
    "song_segment": lambda p: song_segment(Path(p), 0.0, 1.0),
}


@pytest.mark.parametrize("opener", sorted(OPENERS))
def test_a_url_is_not_a_file(opener, server):
    base, requests = server
    with pytest.raises(MediaError, match="no such file"):
        OPENERS[opener](f"{base}/song.wav")
    assert requests == []


@pytest.mark.parametrize("opener", sorted(OPENERS))
def test_a_playlist_named_like_a_song_opens_nothing(opener, server, tmp_path):
    base, requests = server
    write_song(tmp_path / "real.flac", 220.0, seconds=3.0)
    (tmp_path / "remote.ogg").write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:3,\n{base}/seg.ts\n"
                                         "#EXT-X-ENDLIST\n")
    (tmp_path / "local.mp4").write_text("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:3,\nreal.flac\n#EXT-X-ENDLIST\n")
    (tmp_path / "list.mp3").write_text("ffconcat version 1.0\nfile real.flac\n")
    for name in ("remote.ogg", "local.mp4", "list.mp3"):
        with pytest.raises(MediaError, match="not a readable media file"):
            OPENERS[opener](tmp_path / name)
    assert requests == []


def test_the_title_of_a_playlist_is_its_file_name(server, tmp_path):
    base, requests = server
    (tmp_path / "x.ogg").write_text(f"#EXTM3U\n#EXTINF:3,\n{base}/seg.ts\n#EXT-X-ENDLIST\n")
    assert read_title(tmp_path / "x.ogg") == "x" and requests == []


@pytest.mark.parametrize("opener", sorted(OPENERS))
def test_a_pipe_is_refused_without_blocking(opener, tmp_path):
    fifo = tmp_path / "song.ogg"
    os.mkfifo(fifo)
    outcome = []

    def attempt():
        try:
            OPENERS[opener](fifo)
        except MediaError as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=attempt, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(timeout=10)
    if thread.is_alive():  # unblock the reader so the test process can end
        with open(fifo, "wb"):
            pass
        pytest.fail("opening a FIFO blocked")
    assert outcome and "not a regular file" in outcome[0] and time.monotonic() - started < 10


def test_protocol_prefixes_in_names_stay_file_names(tmp_path, monkeypatch):
    """A local file whose name starts like a protocol ("concat:", "subfile,") is just that file."""
    monkeypatch.chdir(tmp_path)
    write_song(tmp_path / "song.flac", 220.0, seconds=3.0)
    os.link(tmp_path / "song.flac", tmp_path / "concat:song.flac")
    assert load_audio("concat:song.flac").size == load_audio("song.flac").size
    with pytest.raises(MediaError, match="no such file"):
        load_audio("subfile,,start,0,end,100,,:song.flac")


def test_the_demuxer_whitelist_leaves_out_exactly_the_refused_ones():
    allowed = set(allowed_demuxers().split(","))
    assert not allowed & REFUSED_DEMUXERS
    assert {"mov", "mp4", "matroska", "webm", "ogg", "flac", "wav", "mp3", "aac", "mpeg", "mpegts", "avi"} <= allowed
