"""A song library is untrusted input: every way of damaging one is a LibraryError naming the file.

The valid library here is synthetic (random unit vectors, no media needed); each case damages one member or
field and saves it as a real npz. A Hypothesis test then damages libraries at random: loading either
refuses with a LibraryError or gives a library whose rankings are finite, sorted and point inside songs.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tivm.runtime.errors import LibraryError
from tivm.runtime.library import FORMAT, VERSION, SongLibrary, is_library
from tivm.runtime.search import ExactSearch

DIM = 16
FINGERPRINT = "ab" * 32
WINDOWS_PER_SONG = (3, 1, 5)


def valid_arrays(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    counts = np.array(WINDOWS_PER_SONG)
    vectors = rng.standard_normal((counts.sum(), DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    songs = np.stack([vectors[a:b].mean(0) for a, b in zip(offsets[:-1], offsets[1:])])
    songs /= np.linalg.norm(songs, axis=1, keepdims=True)
    return {
        "embeddings": vectors.astype(np.float16),
        "window_start": np.concatenate([np.arange(c) * 5.0 for c in counts]).astype(np.float32),
        "song_offsets": offsets,
        "song_embeddings": songs.astype(np.float16),
        "titles": np.array(["one", "two", "three"]),
        "paths": np.array(["one.ogg", "sub/two.flac", "three.wav"]),
        "durations": np.array([25.0, 7.0, 40.0], dtype=np.float32),
        "sha256": np.array(["0" * 64, "1" * 64, "2" * 64]),
        "meta": {"format": FORMAT, "version": VERSION, "model_fingerprint": FINGERPRINT, "model_dir": "/m",
                 "root": "/songs", "hop_seconds": 5.0, "window_seconds": 15.0},
    }


def save(path: Path, arrays: dict, meta_text: str | None = None) -> Path:
    members = {k: v for k, v in arrays.items() if k != "meta"}
    members["meta"] = np.array(json.dumps(arrays["meta"]) if meta_text is None else meta_text)
    np.savez(path, **members)
    return path


def test_the_valid_library_loads(tmp_path):
    library = SongLibrary.load(save(tmp_path / "ok.npz", valid_arrays()))
    assert library.n_songs == 3 and library.n_windows == 9 and is_library(library.source)


def _set(name, index, value):
    def damage(arrays):
        arrays[name] = arrays[name].astype(np.float32) if arrays[name].dtype == np.float16 else arrays[name].copy()
        arrays[name][index] = value
    return damage


def _replace(name, value):
    def damage(arrays):
        arrays[name] = value(arrays[name]) if callable(value) else value
    return damage


def _meta(key, value):
    def damage(arrays):
        arrays["meta"] = dict(arrays["meta"], **{key: value})
    return damage


DAMAGES = {
    "NaN in one window": (_set("embeddings", (4, 2), np.nan), "embeddings: row 4 not finite"),
    "inf in a song vector": (_set("song_embeddings", (1, 0), np.inf), "song_embeddings: row 1 not finite"),
    "all-NaN matrix": (_replace("embeddings", lambda a: np.full(a.shape, np.nan, np.float16)), "row 0 not finite"),
    "window not unit length": (_replace("embeddings", lambda a: a * 3), "norm 3"),
    "NaN window_start": (_set("window_start", 2, np.nan), "window_start is not all finite"),
    "negative window_start": (_set("window_start", 0, -5.0), "window_start is not all finite"),
    "window after the song's end": (_set("window_start", 3, 60.0), "starts after the end"),
    "float64 song_offsets": (_replace("song_offsets", lambda a: a.astype(np.float64)), "expected 1-d integer"),
    "offsets out of order": (_replace("song_offsets", np.array([0, 5, 4, 9])), "a song has no window"),
    "offsets past the windows": (_replace("song_offsets", np.array([0, 3, 4, 99])), "do not span"),
    "offsets too short": (_replace("song_offsets", np.array([0, 9])), "songs + 1"),
    "NaN duration": (_set("durations", 1, np.nan), "durations"),
    "zero duration": (_set("durations", 0, 0.0), "durations"),
    "1-d embeddings": (_replace("embeddings", lambda a: a.reshape(-1)), "embeddings is float16"),
    "int8 embeddings": (_replace("embeddings", lambda a: (a * 100).astype(np.int8)), "embeddings is int8"),
    "integer titles": (_replace("titles", np.array([1, 2, 3])), "titles is int64"),
    "one title too few": (_replace("titles", np.array(["a", "b"])), "songs + 1"),
    "dimension mismatch": (_replace("song_embeddings", lambda a: a[:, :8]), "differ in dimension"),
    "path climbing out": (_set("paths", 0, "../../etc/passwd"), "stay inside the songs folder"),
    "absolute path": (_set("paths", 1, "/etc/passwd"), "stay inside the songs folder"),
    "URL as a path": (_set("paths", 2, "http://127.0.0.1:8765/song.wav"), "stay inside the songs folder"),
    "empty path": (_set("paths", 2, ""), "stay inside the songs folder"),
    "integer fingerprint": (_meta("model_fingerprint", 12345), "model_fingerprint is not a sha256"),
    "short fingerprint": (_meta("model_fingerprint", "abc"), "model_fingerprint is not a sha256"),
    "root not text": (_meta("root", ["/songs"]), "meta.root is not a string"),
    "hop as text": (_meta("hop_seconds", "5"), "meta.hop_seconds"),
    "infinite window": (_meta("window_seconds", 1e300), "meta.window_seconds"),
    "other format": (_meta("format", "something-else"), "not a tivm library"),
    "future version": (_meta("version", VERSION + 1), "not supported"),
}


@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_damaged_library_is_refused_naming_the_file(case, tmp_path):
    damage, expected = DAMAGES[case]
    arrays = valid_arrays()
    damage(arrays)
    path = save(tmp_path / "lib.npz", arrays)
    with pytest.raises(LibraryError) as info:
        SongLibrary.load(path)
    assert str(info.value).startswith(f"{path}: ") and expected in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("meta_text, expected", [
    ('{"format": "tivm-library", "version": 1, "hop_seconds": NaN}', "not valid JSON"),
    ("not json at all", "not valid JSON"),
    ("[1, 2, 3]", "not a tivm library"),
])
def test_meta_must_be_a_strict_json_object(meta_text, expected, tmp_path):
    path = save(tmp_path / "lib.npz", valid_arrays(), meta_text=meta_text)
    with pytest.raises(LibraryError, match=expected):
        SongLibrary.load(path)


def test_member_that_is_not_npy_and_pickled_member(tmp_path):
    path = save(tmp_path / "lib.npz", valid_arrays())
    with zipfile.ZipFile(path) as source:
        members = {name: source.read(name) for name in source.namelist()}
    for name, payload in (("titles.npy", b"just text, not an npy header"),
                          ("paths.npy", _npy_bytes(np.array([object(), "x", "y"], dtype=object)))):
        bad = tmp_path / f"bad-{name}.npz"
        with zipfile.ZipFile(bad, "w") as target:
            for member, data in members.items():
                target.writestr(member, payload if member == name else data)
        with pytest.raises(LibraryError, match=f"^{bad}: corrupt or not a tivm library"):
            SongLibrary.load(bad)


def _npy_bytes(array) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def test_compressed_library_still_loads(tmp_path):
    arrays = valid_arrays()
    members = {k: v for k, v in arrays.items() if k != "meta"}
    np.savez_compressed(tmp_path / "c.npz", meta=np.array(json.dumps(arrays["meta"])), **members)
    assert SongLibrary.load(tmp_path / "c.npz").n_windows == 9


# ---------------------------------------------------------------------------------------- song files

def _library_with_root(tmp_path: Path, root: str, paths=("one.ogg", "sub/two.flac", "three.wav")) -> SongLibrary:
    arrays = valid_arrays()
    arrays["meta"] = dict(arrays["meta"], root=root)
    arrays["paths"] = np.array(list(paths))
    return SongLibrary.load(save(tmp_path / "lib.npz", arrays))


def test_song_file_stays_inside_the_songs_folder(tmp_path):
    songs = tmp_path / "songs"
    (songs / "sub").mkdir(parents=True)
    (songs / "one.ogg").write_bytes(b"x")
    outside = tmp_path / "secret.wav"
    outside.write_bytes(b"secret")
    (songs / "sub" / "two.flac").symlink_to(outside)  # a link that leads out of the folder
    os.mkfifo(songs / "three.wav")
    library = _library_with_root(tmp_path, str(songs))
    assert library.song_file(0) == (songs / "one.ogg").resolve()
    with pytest.raises(LibraryError, match="leads outside the songs folder"):
        library.song_file(1)
    with pytest.raises(LibraryError, match="is not a regular file"):
        library.song_file(2)
    (songs / "one.ogg").unlink()
    with pytest.raises(LibraryError, match="is missing"):
        library.song_file(0)


def test_relative_or_empty_root_is_refused_when_a_song_is_opened(tmp_path):
    library = _library_with_root(tmp_path, "")
    with pytest.raises(LibraryError, match="is not an absolute path"):
        library.song_file(0)


# ---------------------------------------------------------------------------------------- property-based

MUTATIONS = ("nan", "inf", "negative", "huge", "zero", "swap_dtype", "truncate", "transpose")


def _mutate(arrays: dict, name: str, mutation: str, position: float) -> None:
    array = np.array(arrays[name])
    if array.dtype.kind in "U":
        array = array.astype(object)
    flat = array.reshape(-1)
    index = min(int(position * flat.size), flat.size - 1) if flat.size else 0
    if mutation in ("nan", "inf", "negative", "huge", "zero") and flat.size and array.dtype.kind in "fiu":
        value = {"nan": np.nan, "inf": np.inf, "negative": -7, "huge": 1e30, "zero": 0}[mutation]
        array = array.astype(np.float64 if mutation in ("nan", "inf", "huge") else array.dtype)
        array.reshape(-1)[index] = value
    elif mutation == "swap_dtype" and array.dtype.kind in "fiu":
        array = array.astype(np.float64 if array.dtype.kind in "iu" else np.int32)
    elif mutation == "truncate" and array.ndim and len(array):
        array = array[:-1]
    elif mutation == "transpose" and array.ndim == 2:
        array = array.T
    if array.dtype == object:
        array = array.astype(str)
    arrays[name] = array


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["embeddings", "window_start", "song_offsets", "song_embeddings", "durations",
                             "titles"]),
       mutation=st.sampled_from(MUTATIONS), position=st.floats(0, 1), seed=st.integers(0, 3))
def test_random_damage_is_refused_or_harmless(tmp_path, name, mutation, position, seed):
    arrays = valid_arrays(seed)
    _mutate(arrays, name, mutation, position)
    path = save(tmp_path / "fuzz.npz", arrays)
    try:
        library = SongLibrary.load(path)
    except LibraryError as exc:
        assert str(exc).startswith(f"{path}: ")
        return
    query = np.ones(DIM, np.float32) / np.sqrt(DIM)
    hits = ExactSearch(library.embeddings, library.song_offsets).top_songs(query, 5)
    assert np.all(np.isfinite(hits.scores)) and np.all(np.diff(hits.scores) <= 0)
    for song, row in zip(hits.songs, hits.windows):
        assert library.song_offsets[song] <= row < library.song_offsets[song + 1]
        assert 0 <= library.window_start[row] <= library.durations[song] + 0.5
