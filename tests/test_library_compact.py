"""The compact library form: PCA + int8 codes that score like the full vectors, searched without a float32
copy, saved and loaded like any library, refused clearly when damaged, truncated or written twice at once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tivm.runtime.compact import CompactWindows
from tivm.runtime.errors import LibraryError
from tivm.runtime.flat_library import export_flat, read_flat
from tivm.runtime.library import COMPACT_VERSION, FORMAT, VERSION, SongLibrary, output_lock
from tivm.runtime.search import CompactSearch, ExactSearch, make_search

DIM = 64
RANK = 12  # the synthetic windows live in a 12-d subspace: a PCA to >= 12 dims loses nothing
FINGERPRINT = "cd" * 32


def low_rank_library(n_songs: int = 60, windows_per_song: int = 8, seed: int = 0) -> SongLibrary:
    """A full library whose unit windows span RANK dims, songs as clusters in that subspace."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((DIM, RANK)))[0]
    centres = rng.standard_normal((n_songs, RANK))
    coords = np.repeat(centres, windows_per_song, axis=0) + 0.3 * rng.standard_normal((n_songs * windows_per_song,
                                                                                         RANK))
    vectors = coords @ basis.T
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    offsets = np.arange(0, n_songs * windows_per_song + 1, windows_per_song, dtype=np.int64)
    songs = np.add.reduceat(vectors, offsets[:-1], axis=0)
    songs /= np.linalg.norm(songs, axis=1, keepdims=True)
    meta = {"format": FORMAT, "version": VERSION, "model_fingerprint": FINGERPRINT, "model_dir": "/m",
            "root": "/songs", "hop_seconds": 5.0, "window_seconds": 15.0}
    return SongLibrary(
        embeddings=vectors.astype(np.float16),
        window_start=np.tile(np.arange(windows_per_song, dtype=np.float32) * 5.0, n_songs),
        song_offsets=offsets, song_embeddings=songs.astype(np.float16),
        titles=np.array([f"song {i}" for i in range(n_songs)]), paths=np.array([f"s{i}.ogg" for i in range(n_songs)]),
        durations=np.full(n_songs, windows_per_song * 5.0 + 10.0, dtype=np.float32),
        sha256=np.array([f"{i:064x}" for i in range(n_songs)]), meta=meta)


def queries(library: SongLibrary, n: int = 40, seed: int = 1) -> np.ndarray:
    """Library windows moved off the library (a clip near, not on, a song)."""
    rng = np.random.default_rng(seed)
    picked = np.asarray(library.embeddings[rng.integers(0, library.n_windows, n)], dtype=np.float32)
    moved = picked + 0.05 * rng.standard_normal(picked.shape)
    return (moved / np.linalg.norm(moved, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def full() -> SongLibrary:
    return low_rank_library()


@pytest.fixture(scope="module")
def saved(full, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("compact")
    full_path, compact_path = folder / "full.npz", folder / "compact.npz"
    full.save(full_path)
    full.compacted(16).save(compact_path)
    return full_path, compact_path


def test_compact_scores_are_the_exact_cosines_up_to_int8_rounding(full):
    compact = full.compacted(16)  # 16 >= RANK: only int8 rounding is lost
    assert compact.form == "compact" and compact.embeddings is None and compact.compact.dims == 16
    exact, approx = ExactSearch(full.embeddings, full.song_offsets), CompactSearch(compact.compact, full.song_offsets)
    for query in queries(full):
        want = np.asarray(full.embeddings, np.float32) @ query
        got = compact.compact.window_scores(query)
        assert np.abs(got - want).max() < 0.02, np.abs(got - want).max()
        e, a = exact.top_songs(query, 5), approx.top_songs(query, 5)
        assert a.songs[0] == e.songs[0] and a.windows[0] == e.windows[0]
        np.testing.assert_allclose(a.scores, exact.top_songs(query, 5).scores, atol=0.02)


def test_fewer_dims_than_the_data_spans_lose_accuracy(full):
    """The PCA is what limits accuracy once dims < the embeddings' rank: the error must grow, not vanish."""
    query = queries(full, 1)[0]
    want = np.asarray(full.embeddings, np.float32) @ query
    errors = {d: np.abs(CompactWindows.fit(full.embeddings, d).window_scores(query) - want).max() for d in (8, 16)}
    assert errors[8] > 2 * errors[16]


def test_rescoring_from_the_full_vectors_gives_exact_search_results():
    """An 8-d scan of 12-d data misranks songs; re-scoring its best songs exactly must give exact's answer."""
    from tivm.runtime.search import RESCORE_MIN_SONGS

    full = low_rank_library(n_songs=3 * RESCORE_MIN_SONGS, windows_per_song=4)  # not every song is re-scored
    coarse = CompactWindows.fit(full.embeddings, 8)
    exact = ExactSearch(full.embeddings, full.song_offsets)
    scan_only = CompactSearch(coarse, full.song_offsets)
    rescored = CompactSearch(coarse, full.song_offsets, exact_windows=full.embeddings)
    scan_differs = 0
    for query in queries(full, 30):
        want = exact.top_songs(query, 5)
        got = rescored.top_songs(query, 5)
        np.testing.assert_array_equal(got.songs, want.songs)
        np.testing.assert_array_equal(got.windows, want.windows)
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)
        scan_differs += not np.array_equal(scan_only.top_songs(query, 5).songs, want.songs)
    assert scan_differs > 0  # otherwise this test would not show the re-score doing anything


def test_decode_rebuilds_the_windows(full):
    compact = full.compacted(16)
    rebuilt = compact.window_vectors(0, full.n_windows)
    np.testing.assert_allclose(rebuilt, np.asarray(full.embeddings, np.float32), atol=0.03)
    np.testing.assert_allclose(compact.song_vectors(), full.song_vectors(), atol=0.02)


def test_the_scan_scores_every_row_from_its_codes():
    # that it makes no float32 copy on the way is tests/test_window_scan.py's (peak RSS of a fresh process)
    rng = np.random.default_rng(0)
    n, dims = 200_000, 32
    windows = CompactWindows(codes=rng.integers(-127, 128, (n, dims), dtype=np.int8),
                             row_scales=np.full(n, 0.01, np.float32), mean=np.zeros(DIM, np.float32),
                             components=np.eye(DIM, dims, dtype=np.float32),
                             component_scales=np.ones(dims, np.float32))
    scores = windows.window_scores(np.ones(DIM, np.float32) / np.sqrt(DIM))
    want = (windows.codes.astype(np.float32) @ (np.ones(dims, np.float32) / np.sqrt(DIM))) * 0.01
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-6)


def test_saved_compact_library_loads_memory_mapped_and_searches_the_same(full, saved):
    full_path, compact_path = saved
    loaded = SongLibrary.load(compact_path)
    assert loaded.meta["version"] == COMPACT_VERSION and loaded.meta["form"] == "int8-pca"
    assert isinstance(loaded.compact.codes, np.memmap) and loaded.n_windows == full.n_windows
    with zipfile.ZipFile(compact_path) as archive:
        kinds = {i.filename: i.compress_type for i in archive.infolist()}
    assert kinds["codes.npy"] == zipfile.ZIP_STORED and kinds["titles.npy"] == zipfile.ZIP_DEFLATED
    assert compact_path.stat().st_size < full_path.stat().st_size / 2
    in_memory = full.compacted(16)
    for query in queries(full, 5):
        a = make_search(loaded.windows, loaded.song_offsets).top_songs(query, 5)
        b = CompactSearch(in_memory.compact, full.song_offsets).top_songs(query, 5)
        np.testing.assert_array_equal(a.songs, b.songs)
        np.testing.assert_array_equal(a.windows, b.windows)


def test_search_methods_on_a_compact_library(saved):
    loaded = SongLibrary.load(saved[1])
    assert isinstance(make_search(loaded.windows, loaded.song_offsets, "auto"), CompactSearch)
    assert isinstance(make_search(loaded.windows, loaded.song_offsets, "compact"), CompactSearch)
    for method in ("exact", "hnsw"):
        with pytest.raises(ValueError, match="compact library"):
            make_search(loaded.windows, loaded.song_offsets, method)
    full = SongLibrary.load(saved[0])
    assert isinstance(make_search(full.windows, full.song_offsets, "auto"), ExactSearch)  # old behaviour kept
    assert isinstance(make_search(full.windows, full.song_offsets, "compact"), CompactSearch)
    with pytest.raises(ValueError, match="search method"):
        make_search(full.windows, full.song_offsets, "fastest")


def test_a_compact_library_cannot_be_compacted_again(saved):
    with pytest.raises(LibraryError, match="already compact"):
        SongLibrary.load(saved[1]).compacted(8)


@pytest.mark.parametrize("cut", [0.5, 0.99, 100, -10])
def test_truncated_compact_library_is_refused_naming_the_file(saved, tmp_path, cut):
    data = saved[1].read_bytes()
    size = int(len(data) * cut) if isinstance(cut, float) else (cut if cut > 0 else len(data) + cut)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(data[:size])
    with pytest.raises(LibraryError) as info:
        SongLibrary.load(broken)
    assert str(info.value).startswith(f"{broken}: ") and "corrupt" in str(info.value), str(info.value)


def _damaged(saved: Path, tmp_path: Path, change) -> Path:
    with np.load(saved, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    change(arrays)
    path = tmp_path / "damaged.npz"
    np.savez(path, **arrays)
    return path


def _meta(key, value):
    def change(arrays):
        meta = json.loads(str(arrays["meta"]))
        meta[key] = value
        arrays["meta"] = np.array(json.dumps(meta))
    return change


def _array(name, value):
    def change(arrays):
        arrays[name] = value(arrays[name])
    return change


def _nan_at(index):
    def damage(a):
        a = a.copy()
        a[index] = np.nan
        return a
    return damage


DAMAGE = {
    "NaN row scale": (_array("row_scales", _nan_at(3)), "row_scales are not all finite"),
    "codes as float": (_array("codes", lambda a: a.astype(np.float32)), "codes is float32"),
    "codes one row short": (_array("codes", lambda a: a[:-1]), "row_scales length differs"),
    "components not orthonormal": (_array("pca_components", lambda a: a * 2), "orthonormal"),
    "NaN in the PCA mean": (_array("pca_mean", _nan_at(0)), "not finite"),
    "zero component scale": (_array("component_scales", lambda a: np.zeros_like(a)), "component_scales"),
    "wrong compact_dims": (_meta("compact_dims", 99), "compact_dims"),
    "unknown compact form": (_meta("form", "int4-opq"), "not supported"),
    "song vector not unit": (_array("song_scales", lambda a: a * 3), "song_embeddings: row 0 has norm"),
    "song vectors float": (_array("song_embeddings", lambda a: a.astype(np.float16)), "expected 2-d int8"),
}


@pytest.mark.parametrize("case", DAMAGE, ids=list(DAMAGE))
def test_damaged_compact_library_is_refused(saved, tmp_path, case):
    change, expected = DAMAGE[case]
    path = _damaged(saved[1], tmp_path, change)
    with pytest.raises(LibraryError) as info:
        SongLibrary.load(path)
    assert str(info.value).startswith(f"{path}: ") and expected in str(info.value), str(info.value)


def test_a_missing_member_is_named(saved, tmp_path):
    path = _damaged(saved[1], tmp_path, lambda arrays: arrays.pop("pca_components"))
    with pytest.raises(LibraryError, match="missing pca_components"):
        SongLibrary.load(path)


def test_a_second_writer_of_the_same_output_fails_and_the_first_finishes(tmp_path, full):
    output = tmp_path / "songs.npz"
    with output_lock(output):
        with pytest.raises(LibraryError, match="another build is writing"):
            with output_lock(output):
                pass
        full.compacted(16).save(output)
    with output_lock(output):  # released: the next build goes ahead
        pass
    assert SongLibrary.load(output).form == "compact"
    assert not (tmp_path / ".songs.npz.lock").exists()


def test_cli_compact_refuses_while_another_process_builds_and_keeps_the_last_good_library(saved, tmp_path):
    from tivm.runtime.cli.library import app

    output = tmp_path / "phone.npz"
    shutil.copy(saved[1], output)
    before = output.read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from tivm.runtime.library import output_lock
        with output_lock({str(output)!r}):
            print("locked", flush=True)
            sys.stdin.readline()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = CliRunner().invoke(app, ["compact", str(saved[0]), "-o", str(output), "--dims", "12"])
        assert result.exit_code == 2 and "another build is writing" in result.output, result.output
        assert output.read_bytes() == before
    finally:
        holder.communicate("\n", timeout=30)
    result = CliRunner().invoke(app, ["compact", str(saved[0]), "-o", str(output), "--dims", "12"])
    assert result.exit_code == 0, result.output
    assert SongLibrary.load(output).compact.dims == 12


def test_a_write_that_fails_midway_leaves_the_last_good_library(saved, tmp_path, full, monkeypatch):
    output = tmp_path / "phone.npz"
    shutil.copy(saved[1], output)
    before = output.read_bytes()
    real_write = np.lib.format.write_array
    calls = []

    def failing_write(fp, array, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_write(fp, array, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", failing_write)
    with pytest.raises(OSError):
        full.compacted(12).save(output)
    monkeypatch.undo()
    assert output.read_bytes() == before and SongLibrary.load(output).compact.dims == 16
    assert [p.name for p in tmp_path.iterdir()] == ["phone.npz"]  # no temporary file left behind


def test_cli_compact_and_info(saved, tmp_path):
    from tivm.runtime.cli.library import app

    runner = CliRunner()
    output = tmp_path / "phone.npz"
    result = runner.invoke(app, ["compact", str(saved[0]), "-o", str(output), "--dims", "16"])
    assert result.exit_code == 0, result.output
    assert "compact library, 60 songs, 480 windows, 16 of 64 dims" in result.output
    info = runner.invoke(app, ["info", str(output)])
    assert info.exit_code == 0, info.output
    assert "compact (int8 PCA, 16 of 64 dims; library version 2)" in info.output
    assert "no float32 copy" in info.output and "size on disk" in info.output
    old = runner.invoke(app, ["info", str(saved[0])])
    assert old.exit_code == 0 and "full (float16 windows; library version 1)" in old.output, old.output
    # a 64-d library is already phone-sized with exact search: no advice to compact it
    assert "exact: " in old.output and "no float32 copy" in old.output and "tivm-library compact" not in old.output
    # refused: the input as output, an already compact input, dims out of range
    same = runner.invoke(app, ["compact", str(saved[0]), "-o", str(saved[0])])
    assert same.exit_code == 2 and same.output.startswith("error: "), same.output
    again = runner.invoke(app, ["compact", str(output), "-o", str(tmp_path / "again.npz")])
    assert again.exit_code == 2 and "already compact" in again.output, again.output
    wide = runner.invoke(app, ["compact", str(saved[0]), "-o", str(tmp_path / "wide.npz"), "--dims", "65"])
    assert wide.exit_code == 2 and "--dims" in wide.output, wide.output
    assert not (tmp_path / "again.npz").exists() and not (tmp_path / "wide.npz").exists()


def test_info_points_a_wide_library_to_the_phone_sized_forms():
    from types import SimpleNamespace

    from tivm.runtime.cli.library import search_cost

    wide = SimpleNamespace(n_windows=405_000, dim=512, compact=None, embeddings=np.zeros((1, 512), np.float16))
    cost = search_cost(wide)
    assert "395.5 MiB of float16 windows" in cost and "207.4 M multiply-adds" in cost
    assert "64-d embeddings makes an exact library 8x smaller" in cost and "tivm-library compact" in cost


def test_flat_export_of_a_compact_library(saved, tmp_path):
    compact = SongLibrary.load(saved[1])
    flat = read_flat(export_flat(compact, tmp_path / "flat"))
    np.testing.assert_allclose(flat.vectors, compact.window_vectors(0, compact.n_windows), atol=0.02)
    np.testing.assert_array_equal(flat.song_offsets, compact.song_offsets)


def test_an_old_tivm_reading_a_compact_library_is_told_to_rebuild(saved):
    """Version 1 readers refuse other versions with "rebuild it": the compact form must not look like v1."""
    with zipfile.ZipFile(saved[1]) as archive:
        meta = json.loads(str(np.lib.format.read_array(archive.open("meta.npy"))))
    assert meta["version"] != VERSION and "embeddings.npy" not in zipfile.ZipFile(saved[1]).namelist()


def test_build_writes_and_updates_a_compact_library(tmp_path):
    from conftest import shared_path
    from test_runtime_model import make_model_dir

    from tivm.runtime.library import build_library
    from tivm.runtime.model import Model

    songs = tmp_path / "songs"
    songs.mkdir()
    for name in ("singularity_Nebula_60-90s.ogg", "kevin_macleod_vibe_ace_10-40s.ogg"):
        shutil.copy(shared_path("media", "songs", name), songs / name)
    model = Model.load(make_model_dir(tmp_path / "model"), intra_op_threads=1)
    output = tmp_path / "phone.npz"
    first = build_library(songs, model, output, progress=False, form="compact", compact_dims=8)
    assert first.library.form == "compact" and first.library.compact.dims == 8 and len(first.embedded) == 2
    full = build_library(songs, model, tmp_path / "full.npz", progress=False)
    query = np.asarray(full.library.embeddings[0], np.float32)
    want = full.library.window_vectors(0, full.library.n_windows) @ query
    got = first.library.compact.window_scores(query)
    assert np.abs(got - want).max() < 0.1  # 8 of the model's dims over a dozen windows: close, not exact
    os.remove(songs / "kevin_macleod_vibe_ace_10-40s.ogg")
    again = build_library(songs, model, output, progress=False, update=True, form="compact", compact_dims=8)
    assert again.reused == ["singularity_Nebula_60-90s.ogg"] and again.removed == ["kevin_macleod_vibe_ace_10-40s.ogg"]
    assert again.library.form == "compact" and again.library.n_songs == 1
    # a full build over a compact library re-embeds: approximations must not pass for full vectors
    upgraded = build_library(songs, model, output, progress=False, update=True)
    assert upgraded.reused == [] and "compact" in upgraded.note and upgraded.library.form == "full"


def test_cli_build_refuses_an_unknown_form(tmp_path):
    from tivm.runtime.cli.library import app

    result = CliRunner().invoke(app, ["build", str(tmp_path), "-o", str(tmp_path / "x.npz"), "--form", "tiny"])
    assert result.exit_code == 2 and "--form" in result.output and "compact" in result.output, result.output
    assert not (tmp_path / "x.npz").exists()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.floats(0.0, 1.0, exclude_max=True), value=st.integers(0, 255))
def test_a_damaged_byte_anywhere_is_refused_or_searches_sanely(saved, tmp_path, position, value):
    """Codes are memory-mapped (no zip CRC check): any int8 is valid, so damage there must still rank sanely."""
    data = bytearray(saved[1].read_bytes())
    data[int(position * len(data))] = value
    path = tmp_path / "flipped.npz"
    path.write_bytes(bytes(data))
    try:
        library = SongLibrary.load(path)
    except LibraryError as exc:
        assert str(exc).startswith(f"{path}: ")
        return
    hits = make_search(library.windows, library.song_offsets).top_songs(queries(low_rank_library(), 1)[0], 5)
    assert np.all(np.isfinite(hits.scores)) and np.all(np.diff(hits.scores) <= 0)
    for song, row in zip(hits.songs, hits.windows):
        assert library.song_offsets[song] <= row < library.song_offsets[song + 1]


def test_a_full_librarys_compact_codes_are_cached_and_a_bad_cache_is_rebuilt(full, tmp_path, monkeypatch):
    from tivm.runtime import search

    index_path, key = tmp_path / "cache" / "lib.hnsw", {"library": "/x/songs.npz", "size": 1}
    first = make_search(full.embeddings, full.song_offsets, "compact", index_path=index_path, index_key=key)
    cache = tmp_path / "cache" / "lib.compact.npz"
    assert cache.is_file() and (tmp_path / "cache" / "lib.compact.npz.json").is_file()
    query = queries(full, 1)[0]
    want = first.top_songs(query, 5)

    def no_fit(*args, **kwargs):
        raise AssertionError("fitted again although the cache matches")

    with monkeypatch.context() as patched:
        patched.setattr(search.CompactWindows, "fit", no_fit)
        again = make_search(full.embeddings, full.song_offsets, "compact", index_path=index_path, index_key=key)
    got = again.top_songs(query, 5)
    np.testing.assert_array_equal(got.songs, want.songs)
    np.testing.assert_array_equal(got.windows, want.windows)
    # another library (key), a cut file, NaN parameters: fitted anew (the first leaves a sound cache behind)
    def nan_scales():
        with np.load(cache) as npz:
            arrays = dict(npz)
        np.savez(cache, **{**arrays, "row_scales": np.full(full.n_windows, np.nan, np.float32)})

    other = {**key, "size": 2}  # the first case writes the cache under this key; the next two damage that cache
    for damage in (lambda: None, lambda: cache.write_bytes(cache.read_bytes()[:200]), nan_scales):
        damage()
        rebuilt = make_search(full.embeddings, full.song_offsets, "compact", index_path=index_path, index_key=other)
        np.testing.assert_array_equal(rebuilt.top_songs(query, 5).songs, want.songs)
        assert np.all(np.isfinite(rebuilt.windows.row_scales))
