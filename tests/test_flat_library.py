"""Flat libraries (`tivm-library export`): what an app without numpy reads, equal to the npz it came from."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_library_robustness import save, valid_arrays
from typer.testing import CliRunner

from tivm.runtime.errors import LibraryError, OutputError
from tivm.runtime.flat_library import export_flat, quantize_rows, read_flat
from tivm.runtime.library import FORMAT, VERSION, SongLibrary
from tivm.runtime.search import ExactSearch

DIM = 64


def random_library(tmp_path, songs: int = 300, seed: int = 0) -> SongLibrary:
    """Songs of 1-12 windows whose vectors cluster by song, as real songs' windows do."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 13, songs)
    centres = rng.standard_normal((songs, DIM))
    vectors = np.repeat(centres, counts, axis=0) + 0.7 * rng.standard_normal((counts.sum(), DIM))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    song_vectors = np.stack([vectors[a:b].astype(np.float32).mean(0) for a, b in zip(offsets[:-1], offsets[1:])])
    song_vectors /= np.linalg.norm(song_vectors, axis=1, keepdims=True)
    meta = {"format": FORMAT, "version": VERSION, "model_fingerprint": "cd" * 32, "model_dir": "/m", "root": "/s",
            "hop_seconds": 5.0, "window_seconds": 15.0}
    library = SongLibrary(
        embeddings=vectors, window_start=np.concatenate([np.arange(c) * 5.0 for c in counts]).astype(np.float32),
        song_offsets=offsets.astype(np.int64), song_embeddings=song_vectors.astype(np.float16),
        titles=np.array([f"song {i}" for i in range(songs)]), paths=np.array([f"{i}.ogg" for i in range(songs)]),
        durations=(counts * 5.0 + 15).astype(np.float32), sha256=np.array(["0" * 64] * songs), meta=meta)
    library.save(tmp_path / "lib.npz")
    return SongLibrary.load(tmp_path / "lib.npz")


def test_int8_rows_round_trip_within_half_a_step():
    rows = np.random.default_rng(1).standard_normal((100, DIM)).astype(np.float32)
    quantized, scales = quantize_rows(rows)
    assert quantized.dtype == np.int8 and np.abs(quantized).max() == 127
    assert np.all(np.abs(quantized * scales[:, None] - rows) <= scales[:, None] / 2 + 1e-7)


@pytest.mark.parametrize("dtype", ["int8", "float16", "float32"])
def test_flat_library_ranks_like_the_npz(dtype, tmp_path):
    library = random_library(tmp_path)
    flat = read_flat(export_flat(library, tmp_path / "flat", dtype=dtype))
    assert flat.index["songs"]["title"] == [str(t) for t in library.titles]
    np.testing.assert_array_equal(flat.window_start, library.window_start)
    np.testing.assert_array_equal(flat.song_offsets, library.song_offsets)
    exact = ExactSearch(library.embeddings, library.song_offsets)
    flat_search = ExactSearch(flat.vectors, flat.song_offsets)
    queries = np.random.default_rng(2).standard_normal((100, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    tolerance = 0.01 if dtype == "int8" else 1e-6  # int8: at most D x scale / 254 per score
    if dtype != "int8":  # float16 holds the npz's own values: the same ranking, not only up to near-ties
        np.testing.assert_array_equal(flat.vectors, np.asarray(library.embeddings, np.float32))
    for query in queries:
        a, b = exact.top_songs(query, 10), flat_search.top_songs(query, 10)
        assert np.abs(a.scores - b.scores).max() < tolerance
        # rounding may only swap near-ties: every song in one top 10 but not the other scores within the
        # tolerance of the exact 10th score
        all_scores = exact.top_songs(query, library.n_songs)
        score_of = dict(zip(all_scores.songs.tolist(), all_scores.scores.tolist()))
        for song in set(a.songs) ^ set(b.songs):
            assert abs(score_of[song] - a.scores[-1]) < 2 * tolerance


def test_export_refuses_a_folder_of_other_files_and_replaces_an_earlier_export(tmp_path):
    library = random_library(tmp_path, songs=5)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "embeddings.bin").write_bytes(b"someone else's")
    with pytest.raises(OutputError, match="not empty and not a flat library"):
        export_flat(library, tmp_path / "busy")
    assert (tmp_path / "busy" / "embeddings.bin").read_bytes() == b"someone else's"
    export_flat(library, tmp_path / "flat", dtype="int8")
    export_flat(library, tmp_path / "flat", dtype="float32")  # an earlier export may be replaced
    assert not (tmp_path / "flat" / "scales.bin").exists() and read_flat(tmp_path / "flat").index["dtype"] == "float32"


@pytest.mark.parametrize("damage, expected", [
    (lambda d: (d / "embeddings.bin").write_bytes(b"\0" * 10), "bytes, the index says"),
    (lambda d: (d / "library.json").write_text("{"), "not a readable flat library index"),
    (lambda d: (d / "scales.bin").unlink(), "cannot read"),
    (lambda d: _edit_index(d, song_offsets=[0, 1]), "do not partition"),
    (lambda d: _edit_index(d, dtype="float64"), "bad dtype"),
])
def test_damaged_flat_library_is_refused(damage, expected, tmp_path):
    folder = export_flat(random_library(tmp_path, songs=5), tmp_path / "flat")
    damage(folder)
    with pytest.raises(LibraryError, match=expected):
        read_flat(folder)


def test_a_float16_flat_library_with_an_infinite_value_is_refused(tmp_path):
    folder = export_flat(random_library(tmp_path, songs=5), tmp_path / "flat", dtype="float16")
    raw = bytearray((folder / "embeddings.bin").read_bytes())
    raw[6:8] = np.array([np.inf], "<f2").tobytes()
    (folder / "embeddings.bin").write_bytes(bytes(raw))
    with pytest.raises(LibraryError, match="not finite"):
        read_flat(folder)


def _edit_index(folder, **fields):
    index = json.loads((folder / "library.json").read_text())
    index.update(fields)
    (folder / "library.json").write_text(json.dumps(index))


def test_cli_export(tmp_path):
    from tivm.runtime.cli.library import app

    source = save(tmp_path / "lib.npz", valid_arrays())
    result = CliRunner().invoke(app, ["export", str(source), "-o", str(tmp_path / "flat")])
    assert result.exit_code == 0, result.output
    assert read_flat(tmp_path / "flat").vectors.shape == (9, 16)
    half = CliRunner().invoke(app, ["export", str(source), "-o", str(tmp_path / "half"), "--dtype", "float16"])
    assert half.exit_code == 0, half.output
    assert (tmp_path / "half" / "embeddings.bin").stat().st_size == 9 * 16 * 2
    assert not (tmp_path / "half" / "scales.bin").exists()
    bad = CliRunner().invoke(app, ["export", str(source), "-o", str(tmp_path / "x"), "--dtype", "bfloat16"])
    assert bad.exit_code == 2 and "--dtype" in bad.stderr
