"""The optimized-graph cache (tivm.runtime.session_cache): used only for files whose sha256 was checked, the
same embeddings as without it, and a damaged or unwritable cache never stops a model from opening."""

from __future__ import annotations

import numpy as np
import pytest

from tivm.runtime import session_cache
from tivm.runtime.manifest import read_manifest
from tivm.runtime.model import Branch, Model

FRAMES = np.random.default_rng(0).integers(0, 256, (6, 90, 160, 3), dtype=np.uint8)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TIVM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(session_cache.CACHE_ENV, raising=False)
    return tmp_path / "home"


def _cached_files(home):
    return sorted((home / "ort").glob("*.onnx")) if (home / "ort").is_dir() else []


def test_a_second_load_uses_the_cached_graph_and_embeds_the_same(e2e_models, home, monkeypatch):
    first = Model.load(e2e_models.int8, branches=("video",))
    cached = _cached_files(home)
    assert len(cached) == 2  # the video branch and its window head
    assert not list((home / "ort").glob(".*partial*"))
    loads = []
    original = session_cache.open_cached

    def spy(path, sha256, providers, make_options, open_session):
        def opening(file, options):
            loads.append(file)
            return open_session(file, options)
        return original(path, sha256, providers, make_options, opening)

    monkeypatch.setattr(session_cache, "open_cached", spy)
    second = Model.load(e2e_models.int8, branches=("video",))
    assert sorted(loads) == cached  # opened from the cache, not from the model folder
    monkeypatch.setenv(session_cache.CACHE_ENV, "0")
    uncached = Model.load(e2e_models.int8, branches=("video",))
    reference = uncached.embed_video(FRAMES).vectors
    np.testing.assert_allclose(first.embed_video(FRAMES).vectors, reference, rtol=0, atol=1e-6)
    np.testing.assert_allclose(second.embed_video(FRAMES).vectors, reference, rtol=0, atol=1e-6)


def test_a_damaged_cache_file_is_replaced(e2e_models, home):
    Model.load(e2e_models.int8, branches=("video",))
    for file in _cached_files(home):
        file.write_bytes(b"not an onnx file")
    model = Model.load(e2e_models.int8, branches=("video",))
    assert model.embed_video(FRAMES).vectors.shape == (1, model.embedding_dim)
    assert all(file.stat().st_size > 1000 for file in _cached_files(home))


def test_an_unwritable_cache_is_skipped(e2e_models, tmp_path, monkeypatch):
    blocker = tmp_path / "a file"
    blocker.write_text("x")
    monkeypatch.setenv("TIVM_HOME", str(blocker))  # its "ort" folder cannot be made
    model = Model.load(e2e_models.int8, branches=("video",))
    assert model.embed_video(FRAMES).vectors.shape == (1, model.embedding_dim)


def test_files_whose_sha256_was_not_checked_are_not_cached(e2e_models, home):
    spec = read_manifest(e2e_models.int8).video
    Branch("video", e2e_models.int8 / spec.file, spec)
    assert _cached_files(home) == []


def test_the_key_covers_the_file_the_providers_and_the_switch(monkeypatch, home):
    a = session_cache.cached_model_path("a" * 64, ["CPUExecutionProvider"])
    assert a.parent == home / "ort"
    assert a != session_cache.cached_model_path("b" * 64, ["CPUExecutionProvider"])
    assert session_cache.cached_model_path("a" * 64, ["CUDAExecutionProvider", "CPUExecutionProvider"]) is None
    monkeypatch.setenv(session_cache.CACHE_ENV, "0")
    assert session_cache.cached_model_path("a" * 64, ["CPUExecutionProvider"]) is None
