"""What the commands write and print: outputs never destroy user files, errors are one line, text is escaped.

Media are generated (tones and colour bars through PyAV) and the model is the tiny stand-in of
test_runtime_model, so none of this needs ../shared.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from test_runtime_model import make_model_dir
from typer.testing import CliRunner

from tivm.runtime.files import OutputError, atomic_write, check_output
from tivm.runtime.library import build_library
from tivm.runtime.model import Model
from tivm.train.demo_media import write_clip, write_song

FORGED_TITLE = "Nice song\x1b[31m\n   1   9.9999     0:00.0  forged row\u202e"


def write_tagged_song(path: Path, title: str, hz: float = 330.0, seconds: float = 20.0) -> Path:
    with av.open(str(path), "w", format="flac") as container:
        container.metadata["title"] = title
        stream = container.add_stream("flac", rate=44100, layout="mono")
        t = np.arange(int(seconds * 44100)) / 44100
        samples = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
        for start in range(0, len(samples), 4096):
            frame = av.AudioFrame.from_ndarray(samples[None, start:start + 4096], format="flt", layout="mono")
            frame.sample_rate = 44100
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_mpeg1_clip(path: Path, seconds: int = 6, fps: int = 25) -> Path:
    """An MPEG-1 program stream: a container that declares no duration."""
    with av.open(str(path), "w", format="mpeg") as container:
        stream = container.add_stream("mpeg1video", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for index in range(seconds * fps):
            image = np.full((240, 320, 3), (index * 7) % 255, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    songs = root / "songs"
    songs.mkdir()
    write_song(songs / "low_drone.flac", 110.0, seconds=30.0)
    write_song(songs / "middle_a.flac", 440.0, seconds=30.0)
    write_tagged_song(songs / "tagged.flac", FORGED_TITLE)
    model_dir = make_model_dir(root / "model")
    library = root / "songs.npz"
    build_library(songs, Model.load(model_dir), library, progress=False)
    clip = root / "clip.mp4"
    write_clip(clip, seconds=6)
    return {"root": root, "songs": songs, "model": model_dir, "library": library, "clip": clip}


def _library_cli(*args):
    from tivm.runtime.cli.library import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _recommend_cli(*args):
    from tivm.runtime.cli.recommend import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _one_error_line(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


# ----------------------------------------------------------------------------------------- outputs

def test_library_never_replaces_a_song(world):
    song = world["songs"] / "low_drone.flac"
    before = song.read_bytes()
    result = _library_cli("build", world["songs"], "-o", song, "--model", world["model"], "-q")
    _one_error_line(result, str(song), "not a tivm library")
    assert song.read_bytes() == before


@pytest.mark.parametrize("where, expected", [
    ("missing folder/songs.npz", "does not exist"),
    (".", "is a folder"),
    ("/proc/songs.npz", "cannot write"),  # a read-only place even for root
])
def test_library_output_problems_are_found_before_any_work(where, expected, world, monkeypatch):
    import tivm.runtime.model as model_module

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(model_module.Model, "load", no_model)
    output = world["root"] / where if not where.startswith("/") else Path(where)
    result = _library_cli("build", world["songs"], "-o", output, "--model", world["model"], "-q")
    _one_error_line(result, expected)


def test_library_may_replace_a_library(world, tmp_path):
    target = tmp_path / "again.npz"
    target.write_bytes(world["library"].read_bytes())
    os.chmod(target, 0o640)
    result = _library_cli("build", world["songs"], "-o", target, "--model", world["model"], "-q")
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # the replaced file's mode, not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["again.npz"]  # no temporary file left behind


def test_new_files_follow_the_umask(world, tmp_path):
    old = os.umask(0o027)
    try:
        build_library(world["songs"], Model.load(world["model"]), tmp_path / "new.npz", progress=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.npz").stat().st_mode) == 0o640


def test_a_failed_write_leaves_the_target_and_no_temporary_file(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("original")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"half")
            raise RuntimeError("killed mid-save")
    assert target.read_text() == "original" and [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_output_may_not_be_an_input(tmp_path):
    data = tmp_path / "in.bin"
    data.write_bytes(b"x")
    with pytest.raises(OutputError, match="is an input"):
        check_output(data, what="thing", inputs=[data], replaceable=lambda p: True)
    link = tmp_path / "link.bin"
    link.symlink_to(data)
    with pytest.raises(OutputError, match="is an input"):
        check_output(link, what="thing", inputs=[data], replaceable=lambda p: True)


def test_preview_never_replaces_the_clip_or_other_files(world, tmp_path):
    clip_bytes = world["clip"].read_bytes()
    result = _recommend_cli(world["clip"], "--library", world["library"], "--preview", world["clip"])
    _one_error_line(result, "is an input")
    assert world["clip"].read_bytes() == clip_bytes
    unrelated = tmp_path / "holiday.mp4"
    unrelated.write_bytes(clip_bytes)
    result = _recommend_cli(world["clip"], "--library", world["library"], "--preview", unrelated)
    _one_error_line(result, "not a tivm preview")
    assert unrelated.read_bytes() == clip_bytes


def test_preview_replaces_an_earlier_preview(world, tmp_path):
    out = tmp_path / "preview.mp4"
    for _ in range(2):
        result = _recommend_cli(world["clip"], "--library", world["library"], "--preview", out, "--top", "2")
        assert result.exit_code == 0, result.output
        assert f"preview: {out}" in result.stdout


def test_preview_of_a_clip_without_declared_duration(world, tmp_path):
    clip = write_mpeg1_clip(tmp_path / "old camera.mpg")
    out = tmp_path / "p.mp4"
    result = _recommend_cli(clip, "--library", world["library"], "--preview", out, "--top", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].split() == ["rank", "score", "start", "title"]
    with av.open(str(out)) as written:
        seconds = float(written.streams.audio[0].duration * written.streams.audio[0].time_base)
    assert abs(seconds - 6.0) < 0.2


def test_ranking_is_printed_even_when_the_preview_fails(world, tmp_path):
    moved = tmp_path / "lib.npz"  # a copy whose songs folder has gone away
    meta_library = __import__("tivm.runtime.library", fromlist=["SongLibrary"]).SongLibrary.load(world["library"])
    from dataclasses import replace

    replace(meta_library, meta=dict(meta_library.meta, root=str(tmp_path / "gone"))).save(moved)
    result = _recommend_cli(world["clip"], "--library", moved, "--preview", tmp_path / "p.mp4", "--top", "3")
    assert result.exit_code == 2
    assert len(result.stdout.splitlines()) == 4  # header + 3 songs, printed before the preview was tried
    _one_error_line(result, "no preview", "is missing")


# ----------------------------------------------------------------------------------------- what users see

def test_titles_with_control_characters_are_escaped_in_tables_and_exact_in_json(world):
    table = _recommend_cli(world["clip"], "--library", world["library"], "--top", "3")
    assert table.exit_code == 0, table.output
    rows = table.stdout.splitlines()
    assert len(rows) == 4 and not any("forged row" in r and r.lstrip().startswith("1 ") for r in rows[1:]
                                      if "Nice song" not in r)
    assert "\x1b" not in table.stdout and "\u202e" not in table.stdout and "\\x1b[31m\\n" in table.stdout
    as_json = _recommend_cli(world["clip"], "--library", world["library"], "--top", "3", "--json")
    titles = [r["title"] for r in json.loads(as_json.stdout)["results"]]
    assert FORGED_TITLE in titles


@pytest.mark.parametrize("args, fragment", [
    (["--threads", "1000"], "--threads"),
    (["--threads", "0"], "--threads"),
    (["--top", "0"], "--top"),
    (["--top", "100000"], "--top"),
    (["--search", "fast"], "search method"),
])
def test_recommend_options_are_bounded(args, fragment, world):
    result = _recommend_cli(world["clip"], "--library", world["library"], *args)
    assert result.exit_code == 2 and fragment in result.output, result.output


@pytest.mark.parametrize("hop", ["inf", "nan", "0.5", "1e9", "-3"])
def test_library_hop_is_bounded(hop, world, tmp_path):
    result = _library_cli("build", world["songs"], "-o", tmp_path / "x.npz", "--model", world["model"], "--hop", hop)
    assert result.exit_code == 2 and "--hop" in result.output, result.output
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize("command, args", [
    ("tivm-recommend", []),
    ("tivm-recommend", ["clip.mp4", "--library", "x.npz", "--top", "zero"]),
    ("tivm-recommend", ["no such clip.mp4", "--library", "no such library.npz"]),
    ("tivm-library", ["build", "songs", "--hop", "inf", "-o", "x.npz"]),
    ("tivm-library", ["info"]),
    ("tivm-library", ["info", "missing.npz"]),
])
def test_every_error_is_one_line_from_the_real_program(command, args, tmp_path):
    module = {"tivm-recommend": "tivm.runtime.cli.recommend", "tivm-library": "tivm.runtime.cli.library"}[command]
    out = subprocess.run([sys.executable, "-c", f"import sys; sys.argv[0] = {command!r}; "
                          f"from {module} import main; main()", *args],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr


def test_broken_links_and_pipes_named_like_songs_are_reported(world, tmp_path):
    songs = tmp_path / "songs"
    songs.mkdir()
    write_song(songs / "fine.flac", 220.0, seconds=20.0)
    (songs / "gone.mp3").symlink_to(tmp_path / "deleted.mp3")
    os.mkfifo(songs / "pipe.ogg")
    result = _library_cli("build", songs, "-o", tmp_path / "l.npz", "--model", world["model"], "-q")
    assert result.exit_code == 0, result.output
    assert "failed 2" in result.stdout
    assert "gone.mp3: broken symbolic link" in result.stderr and "pipe.ogg: not a regular file" in result.stderr
