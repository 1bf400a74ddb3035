"""The distributed build on a local Ray instance (2 CPUs, 2 actors): the same shards as the in-process
engine, failures as rows, a re-run that starts no Ray at all; and the runtime never imports Ray at import
time (that part runs without Ray installed)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from test_library_shards import COUNT, model_dirs, sharded, songs_dir  # noqa: F401  (module fixtures)
from test_repo import IMPORT_EVERY_MODULE

from tivm.runtime.distributed import build_distributed
from tivm.runtime.library import SongLibrary
from tivm.runtime.shards import merge_shards


def test_the_runtime_never_imports_ray_at_import_time():
    out = subprocess.run([sys.executable, "-c", IMPORT_EVERY_MODULE, "tivm.runtime", "ray"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok", out.stdout


def test_without_ray_the_build_says_how_to_install_it(songs_dir, model_dirs, tmp_path, monkeypatch):  # noqa: F811
    from tivm.runtime.errors import TivmError

    monkeypatch.setitem(sys.modules, "ray", None)  # what an install without the extra gives: ImportError
    with pytest.raises(TivmError, match=r"pip install 'tivm\[distributed\]'"):
        build_distributed(songs_dir, model_dirs[0], tmp_path, shard_count=2, engine="ray")
    assert not list(tmp_path.glob("shard-*"))


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray Data is an optional extra: pip install 'tivm[distributed]'")
    pytest.importorskip("ray.data", reason="Ray Data is an optional extra: pip install 'tivm[distributed]'")
    import logging

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
             object_store_memory=128 << 20)
    yield ray
    ray.shutdown()


def test_ray_build_gives_the_in_process_shards(local_ray, sharded, songs_dir, model_dirs, tmp_path):  # noqa: F811
    local_report, local_shards = sharded
    failures = []
    report = build_distributed(songs_dir, model_dirs[0], tmp_path, shard_count=COUNT, workers=2, engine="ray",
                               on_failure=lambda path, message: failures.append(path))
    assert sorted(report.embedded) == sorted(local_report.embedded)
    assert failures == ["not audio.ogg"] and "not audio.ogg" in report.failed[0][1]
    assert [p.name for p in report.shard_files] == [p.name for p in local_report.shard_files]
    # every song went through one of the pool's actors (other processes than this one)
    assert sum(report.songs_per_worker.values()) == 5 and 1 <= len(report.songs_per_worker) <= 2
    assert all(not w.endswith(f":{os.getpid()}") for w in report.songs_per_worker)
    for ray_file, local_file in zip(report.shard_files, local_report.shard_files):
        ray_shard, local_shard = SongLibrary.load(ray_file), SongLibrary.load(local_file)
        assert list(ray_shard.paths) == list(local_shard.paths)
        assert ray_shard.meta["shard"] == local_shard.meta["shard"]
        np.testing.assert_array_equal(ray_shard.song_offsets, local_shard.song_offsets)
        np.testing.assert_allclose(np.asarray(ray_shard.embeddings, np.float32),
                                   np.asarray(local_shard.embeddings, np.float32), atol=1e-3)
    merged = merge_shards(report.shard_files, tmp_path / "songs.npz").library
    assert merged.n_songs == 4
    # the only unfinished work is the shard whose song failed: retried, the other songs reused by hash
    again = build_distributed(songs_dir, model_dirs[0], tmp_path, workers=2, engine="ray")
    assert len(again.shards_skipped) == COUNT - 1 and not again.embedded and len(again.failed) == 1
    assert local_ray.is_initialized()  # a Ray the caller started is left running
