"""A model directory is untrusted input: edited settings change the fingerprint or are refused at load.

Everything that changes an embedding is either hashed into the model fingerprint (manifest version 2), so a
library built before the edit is refused, or bounded when the manifest is read. Version-1 manifests keep
loading with their old fingerprint, so libraries built with them still match.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_runtime_model import make_model_dir

from tivm.runtime.errors import LibraryError, ModelError
from tivm.runtime.manifest import model_fingerprint, read_manifest
from tivm.runtime.model import Model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("robust") / "model")


def _edited(model_dir: Path, tmp_path: Path, edit, refingerprint: bool = False) -> Path:
    copy = tmp_path / "edited"
    shutil.copytree(model_dir, copy)
    path = copy / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    if refingerprint:  # as a careful forger would: make the stored fingerprint agree with the edit
        from tivm.runtime.manifest import ModelManifest

        data["model_fingerprint"] = "0" * 64
        try:
            ModelManifest.from_json(data, "x")
        except ModelError:
            pass
        manifest = _manifest_ignoring_fingerprint(data)
        data["model_fingerprint"] = manifest.model_fingerprint
    path.write_text(json.dumps(data))
    return copy


def _manifest_ignoring_fingerprint(data):
    from tivm.runtime.manifest import BranchManifest, ModelManifest

    return ModelManifest(audio=BranchManifest.from_json(data["audio"], "a"),
                         video=BranchManifest.from_json(data["video"], "v"),
                         data_fingerprint=data["data_fingerprint"], tivm_version=data["tivm_version"],
                         version=data["version"])


SETTING_EDITS = {
    "fps": lambda d: d["video"]["frontend"].update(fps=2.0),
    "mean": lambda d: d["video"]["frontend"].update(mean=[0.3, 0.3, 0.3]),
    "std": lambda d: d["video"]["frontend"].update(std=[0.5, 0.5, 0.5]),
    "clip_seconds": lambda d: d["audio"].update(clip_seconds=10.0),
    "crop": lambda d: d["video"]["frontend"].update(center_crop=200),
}


@pytest.mark.parametrize("setting", sorted(SETTING_EDITS))
def test_editing_a_setting_breaks_the_recorded_fingerprint(setting, model_dir, tmp_path):
    edited = _edited(model_dir, tmp_path, SETTING_EDITS[setting])
    with pytest.raises(ModelError, match="model_fingerprint does not match"):
        read_manifest(edited)


@pytest.mark.parametrize("setting", sorted(SETTING_EDITS))
def test_a_consistently_forged_setting_is_another_model(setting, model_dir, tmp_path):
    edited = _edited(model_dir, tmp_path, SETTING_EDITS[setting], refingerprint=True)
    assert read_manifest(edited).model_fingerprint != read_manifest(model_dir).model_fingerprint


BAD_VALUES = {
    "fps zero": (lambda d: d["video"]["frontend"].update(fps=0), "fps"),
    "fps negative": (lambda d: d["video"]["frontend"].update(fps=-5), "fps"),
    "fps huge": (lambda d: d["video"]["frontend"].update(fps=1000), "fps must be at most"),
    "fps text": (lambda d: d["video"]["frontend"].update(fps="1"), "fps"),
    "clip_seconds zero": (lambda d: d["video"].update(clip_seconds=0), "clip_seconds"),
    "clip_seconds negative": (lambda d: d["audio"].update(clip_seconds=-5), "clip_seconds"),
    "clip_seconds text nan": (lambda d: d["audio"].update(clip_seconds="nan"), "clip_seconds"),
    "mean out of range": (lambda d: d["video"]["frontend"].update(mean=[5, 0, 0]), "mean"),
    "std zero": (lambda d: d["video"]["frontend"].update(std=[0, 0.2, 0.2]), "std"),
    "std wrong length": (lambda d: d["video"]["frontend"].update(std=[0.2]), "std"),
    "crop beyond resize": (lambda d: d["video"]["frontend"].update(center_crop=300), "center_crop"),
    "file outside": (lambda d: d["audio"].update(file="../audio.onnx"), "plain name"),
    "embedding_dim negative": (lambda d: d["audio"].update(embedding_dim=-1), "embedding_dim"),
    "kind unknown": (lambda d: d["audio"].update(kind="other"), "kind"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_out_of_range_settings_are_refused(case, model_dir, tmp_path):
    edit, expected = BAD_VALUES[case]
    edited = _edited(model_dir, tmp_path, edit)
    with pytest.raises(ModelError, match=expected) as info:
        read_manifest(edited)
    assert str(info.value).startswith(str(edited / "manifest.json"))


@pytest.mark.parametrize("text, expected", [
    ('{"format": "tivm-model", "version": 2, "x": NaN}', "not readable JSON"),
    ("[1, 2]", "not a JSON object"),
    ("\xff\xfe", "not readable JSON"),
])
def test_manifest_text_that_is_not_a_manifest(text, expected, model_dir, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    (copy / "manifest.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(ModelError, match=expected):
        read_manifest(copy)


def test_huge_manifest_is_refused_unread(model_dir, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    (copy / "manifest.json").write_bytes(b" " * (2 << 20))
    with pytest.raises(ModelError, match="too large"):
        read_manifest(copy)


def test_version_1_manifest_keeps_its_fingerprint_and_libraries(model_dir, tmp_path):
    """A bundle exported before fingerprints covered settings: same files, old fingerprint, still loads."""
    from tivm.runtime.library import FORMAT, VERSION, SongLibrary
    from tivm.runtime.recommend import Recommender

    def to_v1(data):
        data["version"] = 1
        data["model_fingerprint"] = model_fingerprint(data["audio"]["sha256"], data["video"]["sha256"])

    old = _edited(model_dir, tmp_path, to_v1)
    model = Model.load(old)
    assert model.fingerprint == model_fingerprint(model.manifest.audio.sha256, model.manifest.video.sha256)
    vector = (np.ones(model.embedding_dim) / np.sqrt(model.embedding_dim)).astype(np.float16)
    meta = {"format": FORMAT, "version": VERSION, "model_fingerprint": model.fingerprint, "model_dir": str(old),
            "root": str(tmp_path), "hop_seconds": 5.0, "window_seconds": 15.0}
    library = SongLibrary(embeddings=vector[None], window_start=np.zeros(1, np.float32),
                          song_offsets=np.array([0, 1]), song_embeddings=vector[None], titles=np.array(["t"]),
                          paths=np.array(["t.ogg"]), durations=np.array([20.0], np.float32),
                          sha256=np.array(["0" * 64]), meta=meta)
    library.save(tmp_path / "old.npz")
    assert Recommender(model, tmp_path / "old.npz").recommend_for_query(vector.astype(np.float32), 1)[0].title == "t"
    new_model = Model.load(model_dir)
    with pytest.raises(LibraryError, match="built with model"):
        Recommender(new_model, tmp_path / "old.npz")


def test_query_vectors_are_checked(model_dir, tmp_path):
    from tivm.runtime.library import FORMAT, VERSION, SongLibrary
    from tivm.runtime.recommend import Recommender

    model = Model.load(model_dir)
    dim = model.embedding_dim
    vector = (np.ones(dim) / np.sqrt(dim)).astype(np.float16)
    meta = {"format": FORMAT, "version": VERSION, "model_fingerprint": model.fingerprint, "model_dir": "",
            "root": str(tmp_path), "hop_seconds": 5.0, "window_seconds": 15.0}
    SongLibrary(embeddings=vector[None], window_start=np.zeros(1, np.float32), song_offsets=np.array([0, 1]),
                song_embeddings=vector[None], titles=np.array(["t"]), paths=np.array(["t.ogg"]),
                durations=np.array([20.0], np.float32), sha256=np.array(["0" * 64]), meta=meta).save(tmp_path / "l.npz")
    rec = Recommender(model, tmp_path / "l.npz")
    for query, expected in ((np.full(dim, np.nan), "NaN"), (np.zeros(dim), "zero vector"),
                            (np.ones(dim + 1), "float vector"), (np.array(["a"] * dim), "float vector")):
        with pytest.raises(ValueError, match=expected):
            rec.recommend_for_query(query, 1)
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be"):
            rec.recommend_for_query(np.ones(dim), k)
    assert rec.recommend_for_query(np.ones(dim) * 7, 1)[0].score == pytest.approx(1.0, abs=2e-3)


def test_integer_pcm_is_scaled_and_other_dtypes_refused(model_dir):
    model = Model.load(model_dir)
    t = np.arange(16000 * 2) / 16000
    wave = 0.5 * np.sin(2 * np.pi * 440 * t)
    from_float = model.embed_audio(wave.astype(np.float32)).vectors
    from_int16 = model.embed_audio(np.round(wave * 32767).astype(np.int16)).vectors
    unscaled = model.embed_audio((wave * 32767).astype(np.float32)).vectors  # clipped to a square wave
    assert np.abs(from_int16 - from_float).max() < 0.01 < np.abs(unscaled - from_float).max()
    for bad, expected in ((wave.astype(complex), "dtype complex"), (np.array([np.nan] * 32000), "NaN"),
                          (wave.reshape(2, -1), "mono")):
        with pytest.raises(ValueError, match=expected):
            model.embed_audio(bad)
