"""The bundle works without Python: js/recommend.mjs (onnxruntime-node) against the Python runtime.

Targets: float32 graphs within 1e-5 of Python, int8 embeddings cosine >= 0.9999, the same top-10 songs, and
the bundle's golden vectors reproduced in Node. Needs Node.js and `js/node_modules` (tools/test-deps.sh,
run by the README's test command); skips with the reason otherwise.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from conftest import REPO, shared_path
from edge_fixtures import cosines

from tivm.runtime.flat_library import read_flat
from tivm.runtime.model import Model
from tivm.runtime.search import ExactSearch

CLIENT = REPO / "js" / "recommend.mjs"
NODE_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def node():
    path = shutil.which("node")
    if path is None:
        pytest.skip("needs Node.js (`node`) on PATH")
    if not (REPO / "js" / "node_modules" / "onnxruntime-node").is_dir():
        pytest.skip("needs js/node_modules: run tools/test-deps.sh (the README's test command does)")
    return path


def run_client(node, *args) -> dict:
    done = subprocess.run([node, str(CLIENT), *map(str, args)], capture_output=True, text=True,
                          timeout=NODE_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def client_frames(node, world, bundle: str, flat: str | None = None) -> dict:
    t, h, w, _ = world.frames.shape
    extra = ["--library", world.flat[flat], "--top", "10"] if flat else []
    return run_client(node, "--model", world.bundles[bundle], "--frames", world.frames_file,
                      "--shape", f"{t},{h},{w}", *extra)


@pytest.mark.parametrize("bundle, check", [("fp32", "max_abs"), ("int8", "cosine")])
def test_node_embeds_the_clip_as_python_does(node, edge_world, bundle, check):
    python = Model.load(edge_world.bundles[bundle], intra_op_threads=2).embed_video(edge_world.frames).vectors
    js = np.array(client_frames(node, edge_world, bundle)["vectors"])
    assert js.shape == python.shape
    if check == "max_abs":
        assert np.abs(js - python).max() <= 1e-5
    else:
        assert cosines(js, python).min() >= 0.9999


@pytest.mark.parametrize("flat", ["float32", "float16", "int8"])
def test_node_ranks_the_flat_library_as_python_ranks_it(node, edge_world, flat):
    out = client_frames(node, edge_world, "int8", flat=flat)
    library = read_flat(edge_world.flat[flat])
    hits = ExactSearch(library.vectors, library.song_offsets).top_songs(np.array(out["query"], np.float32), 10)
    assert [r["song_index"] for r in out["results"]] == hits.songs.tolist()
    np.testing.assert_allclose([r["score"] for r in out["results"]], hits.scores, atol=1e-5)
    python_query = Model.load(edge_world.bundles["int8"]).embed_video(edge_world.frames).pooled()
    python_hits = ExactSearch(library.vectors, library.song_offsets).top_songs(python_query, 10)
    assert [r["song_index"] for r in out["results"]] == python_hits.songs.tolist()
    titles = library.index["songs"]["title"]
    assert out["results"][0]["title"] == titles[python_hits.songs[0]]


def test_node_reproduces_the_golden_vectors(node, edge_world):
    out = run_client(node, "--model", edge_world.bundles["int8"], "--golden")
    assert out["ok"] and len(out["golden"]) >= 4, out
    assert min(r["cosine"] for r in out["golden"]) >= 0.9995


def test_node_embeds_pcm_as_python_does(node, edge_world, tmp_path):
    from tivm.runtime.audio import load_audio

    pcm = load_audio(shared_path("media", "songs", "kevin_macleod_vibe_ace_10-40s.ogg"))
    (tmp_path / "song.f32").write_bytes(pcm.astype("<f4").tobytes())
    js = np.array(run_client(node, "--model", edge_world.bundles["fp32"], "--pcm", tmp_path / "song.f32")["vectors"])
    python = Model.load(edge_world.bundles["fp32"]).embed_audio(pcm).vectors
    assert js.shape == python.shape and np.abs(js - python).max() <= 1e-5


RANK_MODULE = REPO / "js" / "rank.mjs"
FLOAT16_CHECK = """
import { float16Table, flatLibrary } from %s;
const table = float16Table();
const index = { format: 'tivm-flat-library', version: 1, dtype: 'float16', dim: 2, windows: 1, song_offsets: [0, 1] };
let refused = '';
try { flatLibrary(index, new Uint16Array([0x3c00, 0x7c00]).buffer, null, new Float32Array([0]).buffer); }
catch (e) { refused = e.message; }
process.stdout.write(JSON.stringify({ table: Array.from(table), refused }));
"""


def test_rank_reads_float16_as_numpy_does_and_refuses_infinity():
    node = shutil.which("node")
    if node is None:
        pytest.skip("needs Node.js (`node`) on PATH")
    done = subprocess.run([node, "--input-type=module", "-e", FLOAT16_CHECK % json.dumps(RANK_MODULE.as_uri())],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    want = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float64)
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.array(out["table"], np.float64)[finite], want[finite])
    assert "not all finite" in out["refused"]
