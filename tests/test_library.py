"""Song libraries: build on real songs, update by content hash, plain npz + memory map, refusals, CLI."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_runtime_model import EMBED_DIM, make_model_dir
from typer.testing import CliRunner

from tivm.runtime.errors import LibraryError
from tivm.runtime.library import SongLibrary, build_library
from tivm.runtime.model import Model

SONGS = ["bbb_soundtrack_0-30s.ogg", "kevin_macleod_vibe_ace_10-40s.ogg", "pygame_house_lo.ogg",
         "singularity_Nebula_60-90s.ogg"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return make_model_dir(root / "model A", seed=0), make_model_dir(root / "model B", seed=10)


@pytest.fixture(scope="module")
def model(model_dirs) -> Model:
    return Model.load(model_dirs[0], intra_op_threads=1)


@pytest.fixture(scope="module")
def songs_dir(tmp_path_factory) -> Path:
    """A few real songs (one in a sub-folder with a space), a non-media .ogg and a text file."""
    from conftest import shared_path

    media_dir = shared_path("media")
    folder = tmp_path_factory.mktemp("songs") / "my songs"
    (folder / "sub dir").mkdir(parents=True)
    for name in SONGS[:-1]:
        shutil.copy(media_dir / "songs" / name, folder / name)
    shutil.copy(media_dir / "songs" / SONGS[-1], folder / "sub dir" / SONGS[-1])
    (folder / "not audio.ogg").write_text("this is not an ogg file\n")
    (folder / "notes.txt").write_text("liner notes\n")
    return folder


@pytest.fixture(scope="module")
def built(songs_dir, model, tmp_path_factory):
    """Built once for the module; tests that change files work on copies."""
    out = tmp_path_factory.mktemp("lib") / "songs lib.npz"
    return build_library(songs_dir, model, out, hop_seconds=5, progress=False), out


def test_build_embeds_real_songs_and_reports_failures(built, songs_dir):
    report, out = built
    lib = report.library
    assert sorted(report.embedded) == sorted(SONGS[:-1] + ["sub dir/" + SONGS[-1]])
    assert [f for f, _ in report.failed] == ["not audio.ogg"]
    assert str(songs_dir / "not audio.ogg") in report.failed[0][1]  # the TivmError message names the file
    assert report.ignored == ["notes.txt"]
    assert lib.n_songs == 4 and lib.dim == EMBED_DIM
    index = {Path(p).name: i for i, p in enumerate(lib.paths)}
    # 30 s song = 31 patches of 0.96 s, hop 5 s = 5 patches: windows at patches 0, 5, 10, 15, 16
    bbb = index["bbb_soundtrack_0-30s.ogg"]
    starts = lib.window_start[lib.song_offsets[bbb]:lib.song_offsets[bbb + 1]]
    np.testing.assert_allclose(starts, np.array([0, 5, 10, 15, 16]) * 0.96, rtol=1e-6)
    assert abs(lib.durations[bbb] - 30.0) < 0.1
    # the 7 s 11 kHz mono loop: one window at 0
    short = index["pygame_house_lo.ogg"]
    assert lib.song_offsets[short + 1] - lib.song_offsets[short] == 1
    assert 6.5 < lib.durations[short] < 7.5
    # titles: the Vorbis TITLE tag where there is one, else the stem
    assert lib.titles[index["singularity_Nebula_60-90s.ogg"]] == "Nebula"
    assert lib.titles[bbb] == "bbb_soundtrack_0-30s"
    assert lib.embeddings.dtype == np.float16 and isinstance(lib.embeddings, np.memmap)
    np.testing.assert_allclose(np.linalg.norm(lib.song_embeddings.astype(np.float32), axis=1), 1, atol=2e-3)


def test_library_is_plain_uncompressed_npz(built, model):
    _, out = built
    with zipfile.ZipFile(out) as archive:
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
    with np.load(out, allow_pickle=False) as npz:
        assert all(npz[name].dtype != object for name in npz.files)
        meta = json.loads(str(npz["meta"]))
        in_memory = npz["embeddings"]
    assert meta["model_fingerprint"] == model.fingerprint
    np.testing.assert_array_equal(SongLibrary.load(out).embeddings, in_memory)
    # window embeddings match embedding the song directly (float16 storage)
    lib = SongLibrary.load(out)
    i = int(np.flatnonzero(np.char.endswith(lib.paths, "vibe_ace_10-40s.ogg"))[0])
    direct = model.embed_audio(lib.song_path(i), hop_seconds=5).vectors
    np.testing.assert_allclose(lib.embeddings[lib.song_offsets[i]:lib.song_offsets[i + 1]], direct, atol=2e-3)


def test_update_embeds_only_new_or_changed_files(built, songs_dir, model, media_dir, tmp_path):
    report, built_out = built
    songs_dir = shutil.copytree(songs_dir, tmp_path / "my songs")
    out = tmp_path / "songs lib.npz"
    shutil.copy(built_out, out)
    (songs_dir / "bbb_soundtrack_0-30s.ogg").unlink()
    shutil.copy(media_dir / "songs" / "singularity_Aberrations_60-90s.ogg", songs_dir / "new one.ogg")
    shutil.copy(media_dir / "songs" / "singularity_Through_Space_60-90s.ogg", songs_dir / "pygame_house_lo.ogg")
    updated = build_library(songs_dir, model, out, hop_seconds=5, update=True, progress=False)
    assert sorted(updated.embedded) == ["new one.ogg", "pygame_house_lo.ogg"]
    assert sorted(updated.reused) == ["kevin_macleod_vibe_ace_10-40s.ogg", "sub dir/singularity_Nebula_60-90s.ogg"]
    assert updated.removed == ["bbb_soundtrack_0-30s.ogg", "pygame_house_lo.ogg"]
    lib = updated.library
    assert lib.n_songs == 4 and "bbb_soundtrack_0-30s.ogg" not in lib.paths.tolist()
    # reused windows are the very same numbers
    old, new = report.library, lib
    i_old = old.paths.tolist().index("kevin_macleod_vibe_ace_10-40s.ogg")
    i_new = new.paths.tolist().index("kevin_macleod_vibe_ace_10-40s.ogg")
    np.testing.assert_array_equal(old.embeddings[old.song_offsets[i_old]:old.song_offsets[i_old + 1]],
                                  new.embeddings[new.song_offsets[i_new]:new.song_offsets[i_new + 1]])
    # another hop re-embeds everything
    rehop = build_library(songs_dir, model, out, hop_seconds=3, update=True, progress=False)
    assert rehop.reused == [] and "hop" in rehop.note


def test_library_of_model_a_refuses_model_b(built, model_dirs):
    _, out = built
    other = Model.load(model_dirs[1])
    with pytest.raises(LibraryError, match="built with model"):
        SongLibrary.load(out).check_model(other.fingerprint, other.model_dir)


def test_corrupt_and_missing_libraries(tmp_path, built):
    _, out = built
    with pytest.raises(LibraryError, match="no such library file"):
        SongLibrary.load(tmp_path / "nope.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(LibraryError, match=r"garbage\.npz: corrupt"):
        SongLibrary.load(garbage)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(out.read_bytes()[:-5000])
    with pytest.raises(LibraryError, match=r"truncated\.npz"):
        SongLibrary.load(truncated)
    other = tmp_path / "other.npz"
    np.savez(other, embeddings=np.zeros((2, 3)))
    with pytest.raises(LibraryError, match="not a tivm library"):
        SongLibrary.load(other)
    pickled = tmp_path / "pickled.npz"
    lib = SongLibrary.load(out, mmap=False)
    arrays = {n: getattr(lib, n) for n in ("embeddings", "window_start", "song_offsets", "song_embeddings",
                                            "titles", "paths", "durations", "sha256")}
    arrays["titles"] = arrays["titles"].astype(object)
    np.savez(pickled, meta=np.array(json.dumps(lib.meta)), **arrays)
    with pytest.raises(LibraryError, match="pickled.npz"):
        SongLibrary.load(pickled)


def test_build_of_a_folder_without_songs_fails_clearly(tmp_path, model):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "broken.mp3").write_bytes(b"\x00" * 100)
    with pytest.raises(LibraryError, match="no song could be embedded"):
        build_library(tmp_path / "empty", model, tmp_path / "x.npz", progress=False)
    assert not (tmp_path / "x.npz").exists()


def test_cli_build_and_info(songs_dir, model_dirs, tmp_path):
    from tivm.runtime.cli.library import app

    out = tmp_path / "cli lib.npz"
    runner = CliRunner()
    result = runner.invoke(app, ["build", str(songs_dir), "-o", str(out), "--model", str(model_dirs[0]),
                                 "--hop", "5", "-q"])
    assert result.exit_code == 0, result.output
    assert "4 songs" in result.output and "failed 1" in result.output
    assert "not audio.ogg" in result.output  # the skipped file is reported
    again = runner.invoke(app, ["build", str(songs_dir), "-o", str(out), "--model", str(model_dirs[0]),
                                "--hop", "5", "--update", "-q"])
    assert "embedded 0, reused 4" in again.output
    info = runner.invoke(app, ["info", str(out)])
    assert info.exit_code == 0
    fingerprint = Model.load(model_dirs[0]).fingerprint
    assert fingerprint in info.output and "songs: 4" in info.output and f"embedding dim: {EMBED_DIM}" in info.output
    missing = runner.invoke(app, ["info", str(tmp_path / "missing.npz")])
    assert missing.exit_code == 2 and "no such library file" in missing.output


def test_cli_build_needs_a_model(songs_dir, tmp_path, monkeypatch):
    from tivm.runtime.cli.library import app

    monkeypatch.delenv("TIVM_MODEL", raising=False)
    result = CliRunner().invoke(app, ["build", str(songs_dir), "-o", str(tmp_path / "x.npz")])
    assert result.exit_code == 2 and "TIVM_MODEL" in result.output
    monkeypatch.setenv("TIVM_MODEL", str(tmp_path / "no model here"))
    result = CliRunner().invoke(app, ["build", str(songs_dir), "-o", str(tmp_path / "x.npz")])
    assert result.exit_code == 2 and "no model here" in result.output and "not a model directory" in result.output
    assert not (tmp_path / "x.npz").exists()
