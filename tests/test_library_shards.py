"""Sharded libraries without Ray: shards built by the distributed build's own worker code in this process
(engine="local"), merged into the library a one-machine build gives; resumption; damaged, missing, foreign
and duplicate shards; two writers at once; the CLI. The Ray plumbing itself is tests/test_distributed.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_runtime_model import make_model_dir
from typer.testing import CliRunner

from tivm.runtime.cli.library import app
from tivm.runtime.distributed import build_distributed
from tivm.runtime.errors import LibraryError, OutputError
from tivm.runtime.library import SongLibrary, build_library, output_lock
from tivm.runtime.model import Model
from tivm.runtime.shards import (
    EMPTY_FORMAT,
    assign_shards,
    empty_file_name,
    merge_shards,
    shard_file_name,
    shard_index,
)

SONGS = ["bbb_soundtrack_0-30s.ogg", "kevin_macleod_vibe_ace_10-40s.ogg", "pygame_house_lo.ogg",
         "singularity_Nebula_60-90s.ogg"]
COUNT = 3


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return make_model_dir(root / "model A", seed=0), make_model_dir(root / "model B", seed=10)


@pytest.fixture(scope="module")
def songs_dir(tmp_path_factory) -> Path:
    """Real songs (one in a sub-folder), a file that is not audio, a text file."""
    from conftest import shared_path

    media = shared_path("media", "songs")
    folder = tmp_path_factory.mktemp("songs") / "my songs"
    (folder / "sub dir").mkdir(parents=True)
    for name in SONGS[:-1]:
        shutil.copy(media / name, folder / name)
    shutil.copy(media / SONGS[-1], folder / "sub dir" / SONGS[-1])
    (folder / "not audio.ogg").write_text("this is not an ogg file\n")
    (folder / "notes.txt").write_text("liner notes\n")
    return folder


@pytest.fixture(scope="module")
def single(songs_dir, model_dirs, tmp_path_factory) -> SongLibrary:
    """The reference: the same folder built on one machine by build_library."""
    model = Model.load(model_dirs[0], intra_op_threads=1)
    out = tmp_path_factory.mktemp("single") / "songs.npz"
    return build_library(songs_dir, model, out, hop_seconds=5, progress=False).library


@pytest.fixture(scope="module")
def sharded(songs_dir, model_dirs, tmp_path_factory):
    shards = tmp_path_factory.mktemp("shards")
    report = build_distributed(songs_dir, model_dirs[0], shards, shard_count=COUNT, engine="local")
    return report, shards


def _copy(folder: Path, into: Path) -> Path:
    shutil.copytree(folder, into)
    return into


def _relatives() -> list[str]:
    return SONGS[:-1] + ["sub dir/" + SONGS[-1], "not audio.ogg"]


def test_shard_assignment_is_a_stable_partition():
    relatives = [f"artist {i}/song {i}.ogg" for i in range(200)]
    parts = assign_shards(relatives, 7)
    assert sorted(sum(parts, [])) == sorted(relatives)
    assert all(shard_index(r, 7) == i for i, part in enumerate(parts) for r in part)
    assert min(len(p) for p in parts) > 10  # a hash spreads 200 songs over 7 shards, none near-empty
    # adding songs moves no existing song to another shard
    more = assign_shards(relatives + [f"new/{i}.ogg" for i in range(20)], 7)
    assert all(set(old) <= set(new) for old, new in zip(parts, more))
    assert shard_index("a/b.ogg", 7) == shard_index("a/b.ogg", 7) and shard_index("a/b.ogg", 1) == 0


def test_shards_merge_into_the_one_machine_library(sharded, single, songs_dir, tmp_path):
    report, shards = sharded
    assert report.shard_count == COUNT and len(report.shards_written) == COUNT and not report.shards_skipped
    assert sorted(report.embedded) == sorted(_relatives()[:-1])
    assert [p for p, _ in report.failed] == ["not audio.ogg"]
    assert str(songs_dir / "not audio.ogg") in report.failed[0][1]
    assert report.ignored == ["notes.txt"]
    for path in report.shard_files:  # each shard holds exactly the songs hashed to it
        shard = SongLibrary.load(path)
        record = shard.meta["shard"]
        assert all(shard_index(str(p), COUNT) == record["index"] for p in shard.paths)
    merged = merge_shards(report.shard_files, tmp_path / "merged.npz")
    assert [p for p, _ in merged.failed] == ["not audio.ogg"]  # failures recorded in the shards reach the merge
    lib = merged.library
    assert list(lib.paths) == list(single.paths) and list(lib.titles) == list(single.titles)
    assert list(lib.sha256) == list(single.sha256)
    np.testing.assert_array_equal(lib.song_offsets, single.song_offsets)
    np.testing.assert_array_equal(lib.window_start, single.window_start)
    np.testing.assert_allclose(lib.durations, single.durations)
    # the same per-song code path and model: the same vectors (float16 storage, one onnxruntime thread)
    np.testing.assert_allclose(np.asarray(lib.embeddings, np.float32), np.asarray(single.embeddings, np.float32),
                               atol=1e-3)
    np.testing.assert_allclose(lib.song_embeddings.astype(np.float32), single.song_embeddings.astype(np.float32),
                               atol=1e-3)
    assert lib.meta["root"] == single.meta["root"] and lib.model_fingerprint == single.model_fingerprint
    assert "shard" not in lib.meta and lib.meta["merged_from"] == len(report.shard_files)


def test_rerun_skips_finished_shards_and_redoes_only_changed_ones(sharded, songs_dir, model_dirs, tmp_path):
    _, shards = sharded
    folder = _copy(shards, tmp_path / "shards")
    songs = _copy(songs_dir, tmp_path / "songs")
    (songs / "not audio.ogg").unlink()  # the only failure: its shard is then complete as it stands
    first = build_distributed(songs, model_dirs[0], folder, engine="local")  # count taken from the folder
    assert first.shard_count == COUNT
    # shards were built from another folder, so all are redone: every song re-embedded
    assert len(first.shards_written) == COUNT and not first.reused
    again = build_distributed(songs, model_dirs[0], folder, engine="local")
    assert len(again.shards_skipped) == COUNT and not again.embedded and not again.shards_written
    # a new song: only its shard is redone, and that shard's other songs are reused by content hash
    new = "added/late song.ogg"
    (songs / "added").mkdir()
    shutil.copy(songs / SONGS[0], songs / new)
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*")}
    third = build_distributed(songs, model_dirs[0], folder, engine="local")
    index = shard_index(new, COUNT)
    assert third.embedded == [new]
    assert sorted(third.reused) == sorted(r for r in _relatives()[:-1] if shard_index(r, COUNT) == index)
    assert [p.name for p in third.shards_written] == [shard_file_name(index, COUNT)]
    assert all(p.stat().st_mtime_ns == before[p.name] for p in folder.glob("shard-*")
               if p.name != shard_file_name(index, COUNT))
    lib = merge_shards(third.shard_files, tmp_path / "lib.npz").library
    assert new in list(lib.paths) and lib.n_songs == 5
    # a song edited in place: a plain re-run reads no song so cannot see it; --rehash re-embeds just that one
    shutil.copy(songs / SONGS[2], songs / SONGS[1])
    assert not build_distributed(songs, model_dirs[0], folder, engine="local").embedded
    rehashed = build_distributed(songs, model_dirs[0], folder, engine="local", rehash=True)
    assert rehashed.embedded == [SONGS[1]] and len(rehashed.reused) == 4


def test_merge_refuses_damaged_missing_foreign_and_duplicate_shards(sharded, single, songs_dir, model_dirs,
                                                                    tmp_path):
    report, shards = sharded
    files = report.shard_files
    out = tmp_path / "songs.npz"
    good = merge_shards(files, out).library
    good_bytes = out.read_bytes()

    def refused(parts, match):
        with pytest.raises(LibraryError, match=match):
            merge_shards(parts, out)
        assert out.read_bytes() == good_bytes  # the last good library is never lost

    # a shard truncated mid-copy
    truncated = tmp_path / "cut" / files[0].name
    truncated.parent.mkdir()
    truncated.write_bytes(files[0].read_bytes()[: files[0].stat().st_size // 2])
    refused([truncated] + files[1:], "corrupt|truncated|not a readable")
    # a shard missing (and no empty marker for it)
    refused(files[1:], f"shard {SongLibrary.load(files[0]).meta['shard']['index']} of {COUNT} is missing")
    # the same shard twice, under another name
    twin = tmp_path / "twin.npz"
    shutil.copy(files[0], twin)
    refused(files + [twin], "given twice|also in")
    refused(files + [files[0]], "given twice")
    # a shard built by another model (fingerprint)
    other = tmp_path / "other"
    other.mkdir()
    foreign = build_distributed(songs_dir, model_dirs[1], other, shard_count=COUNT, engine="local").shard_files
    refused([foreign[0]] + files[1:], "embedded by model")
    # a plain library of the same songs: every song would be there twice
    refused(files + [single.source], "is also in")
    # shards of builds with different shard counts
    two = tmp_path / "two"
    two.mkdir()
    halves = build_distributed(songs_dir, model_dirs[0], two, shard_count=2, engine="local").shard_files
    refused(files + halves, "shards of different builds")
    # the merge may not write over one of its shards
    with pytest.raises(OutputError, match="is an input"):
        merge_shards(files, files[0])
    assert SongLibrary.load(out).n_songs == good.n_songs


def test_empty_shards_are_marked_and_merge_knows_them(songs_dir, model_dirs, tmp_path):
    count = 16  # 5 songs over 16 shards: most shards get none
    report = build_distributed(songs_dir, model_dirs[0], tmp_path, shard_count=count, engine="local")
    markers = sorted(tmp_path.glob("*.empty.json"))
    assigned = {shard_index(r, count) for r in _relatives()}
    failed_only = {shard_index("not audio.ogg", count)} - {shard_index(r, count) for r in _relatives()[:-1]}
    assert len(markers) == count - len(assigned) + len(failed_only)
    marker = json.loads(markers[0].read_text())
    assert marker["format"] == EMPTY_FORMAT and marker["shard"]["count"] == count
    lib = merge_shards(report.shard_files, tmp_path / "songs.npz").library
    assert lib.n_songs == 4
    # a missing marker is a missing shard
    markers[0].unlink()
    with pytest.raises(LibraryError, match="is missing"):
        merge_shards(report.shard_files, tmp_path / "songs.npz")
    # and a re-run writes it again, touching nothing else
    again = build_distributed(songs_dir, model_dirs[0], tmp_path, engine="local")
    assert [p.name for p in again.shards_written] == [markers[0].name] and not again.embedded
    assert empty_file_name(0, 2) == "shard-00000-of-00002.empty.json"


def test_a_truncated_shard_is_redone_on_the_next_run(sharded, songs_dir, model_dirs, tmp_path):
    _, shards = sharded
    folder = _copy(shards, tmp_path / "shards")
    victim = sorted(folder.glob("shard-*.npz"))[0]
    victim.write_bytes(victim.read_bytes()[:1000])
    report = build_distributed(songs_dir, model_dirs[0], folder, engine="local")
    # redone: the damaged shard, and the one whose song failed last time (failures are retried)
    expected = {victim.name, shard_file_name(shard_index("not audio.ogg", COUNT), COUNT)}
    assert {p.name for p in report.shards_written} == expected
    assert any(victim.name in note for note in report.notes)
    assert SongLibrary.load(victim).n_songs > 0


def test_two_writers_of_one_output_are_refused(sharded, songs_dir, model_dirs, tmp_path):
    report, shards = sharded
    out = tmp_path / "songs.npz"
    with output_lock(out):  # what build_library holds while it writes a library
        with pytest.raises(LibraryError, match="another build is writing"):
            merge_shards(report.shard_files, out)
    assert not out.exists()
    with output_lock(shards / "shards"):  # the shards folder's lock: a second build stops before any work
        with pytest.raises(OutputError, match="another build is writing shards into this folder"):
            build_distributed(songs_dir, model_dirs[0], shards, engine="local")
        with pytest.raises(LibraryError, match="a build is writing shards into this folder now"):
            merge_shards(report.shard_files, out)  # its shards may be half done
    # a lock file left by a process that died holds nothing (the OS lock went with the process)
    (tmp_path / ".songs.npz.lock").write_text("")
    assert merge_shards(report.shard_files, out).library.n_songs == 4
    assert not (tmp_path / ".songs.npz.lock").exists()


def test_merge_rebases_libraries_of_sibling_folders(songs_dir, model_dirs, tmp_path):
    model = Model.load(model_dirs[0], intra_op_threads=1)
    parent = tmp_path / "catalogue"
    for name, song in (("rock", SONGS[0]), ("jazz", SONGS[2])):
        (parent / name).mkdir(parents=True)
        shutil.copy(songs_dir / song, parent / name / song)
        build_library(parent / name, model, tmp_path / f"{name}.npz", progress=False)
    report = merge_shards([tmp_path / "rock.npz", tmp_path / "jazz.npz"], tmp_path / "all.npz")
    lib = report.library
    assert list(lib.paths) == [f"jazz/{SONGS[2]}", f"rock/{SONGS[0]}"] and lib.meta["root"] == str(parent.resolve())
    assert "different folders" in report.note
    assert lib.song_file(1) == (parent / "rock" / SONGS[0]).resolve()


def test_cli_merge_and_local_build(sharded, songs_dir, model_dirs, tmp_path):
    report, shards = sharded
    runner = CliRunner()
    out = tmp_path / "songs.npz"
    result = runner.invoke(app, ["merge", *map(str, report.shard_files), "-o", str(out), "--model",
                                 str(model_dirs[0])])
    assert result.exit_code == 0, result.output
    assert "4 songs" in result.output and "not audio.ogg" in result.output
    wrong = runner.invoke(app, ["merge", *map(str, report.shard_files), "-o", str(out), "--model",
                                str(model_dirs[1])])
    assert wrong.exit_code == 2 and wrong.output.startswith("error: ") and "not by the given model" in wrong.output
    missing = runner.invoke(app, ["merge", *map(str, report.shard_files[1:]), "-o", str(out)])
    assert missing.exit_code == 2 and "is missing" in missing.output and "Traceback" not in missing.output
    folder = tmp_path / "local shards"
    folder.mkdir()
    built = runner.invoke(app, ["build-distributed", str(songs_dir), "--shards", str(folder), "--engine", "local",
                                "--shard-count", "2", "-o", str(tmp_path / "local.npz"), "--model",
                                str(model_dirs[0]), "-q"])
    assert built.exit_code == 0, built.output
    assert "2 shards (2 written, 0 already done)" in built.output and "failed 1" in built.output
    assert SongLibrary.load(tmp_path / "local.npz").n_songs == 4


def test_a_worker_with_another_model_stops_the_build(songs_dir, model_dirs):
    from tivm.runtime.distributed import SongEmbedder

    other = Model.load(model_dirs[1], branches=()).fingerprint
    embedder = SongEmbedder(str(model_dirs[0]), 5.0, other)
    out = embedder({"path": np.array([str(songs_dir / SONGS[2])], dtype=object),
                    "relative": np.array([SONGS[2]], dtype=object), "shard": np.array([0]),
                    "previous_sha256": np.array([""], dtype=object)})
    assert out["status"][0] == "fatal" and "give every node the same model" in out["error"][0]
    broken = SongEmbedder(str(songs_dir), 5.0, other)  # not a model directory on this worker
    assert "manifest.json" in broken.problem and "on worker" in broken.problem


def test_a_shard_with_a_garbled_shard_record_is_refused(sharded, tmp_path):
    import dataclasses

    report, _ = sharded
    files = report.shard_files
    shard = SongLibrary.load(files[0], mmap=False)
    for record, problem in (({**shard.meta["shard"], "index": 7}, "index 7 of count 3"),
                            ({**shard.meta["shard"], "failed": "everything"}, "failed is not a list"),
                            ("shard zero", "not an object")):
        bad = tmp_path / files[0].name
        dataclasses.replace(shard, meta={**shard.meta, "shard": record}).save(bad)
        with pytest.raises(LibraryError, match=problem):
            merge_shards([bad] + files[1:], tmp_path / "songs.npz")
