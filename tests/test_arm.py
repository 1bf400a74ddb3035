"""The int8 bundle on aarch64: onnxruntime's ARM kernels (under qemu-user-static) against x86.

Targets: embeddings cosine >= 0.999 against x86 and the same top-10 songs. Emulated timings mean nothing and
are not taken. Needs the sysroot tools/test-deps.sh prepares in .cache/arm (the README's test command runs it;
it needs root and Debian's packages); skips with the reason otherwise.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from conftest import REPO
from edge_fixtures import cosines

from tivm.runtime.flat_library import read_flat
from tivm.runtime.model import Model
from tivm.runtime.search import ExactSearch

ARM_ROOT = REPO / ".cache" / "arm"
QEMU_CPU = "cortex-a72"  # matches the /proc/cpuinfo test-deps.sh writes into the sysroot
ARM_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def arm_python():
    qemu = shutil.which("qemu-aarch64-static")
    python = ARM_ROOT / "sysroot" / "usr" / "bin" / "python3.11"
    if qemu is None or not python.exists() or not (ARM_ROOT / "site").is_dir():
        pytest.skip("needs qemu-aarch64-static and the aarch64 sysroot in .cache/arm (tools/test-deps.sh)")
    return [qemu, "-cpu", QEMU_CPU, "-L", str(ARM_ROOT / "sysroot"), str(python)]


@pytest.fixture(scope="module")
def on_arm(arm_python, edge_world):
    t, h, w, _ = edge_world.frames.shape
    done = subprocess.run([*arm_python, str(REPO / "tests" / "arm_embed.py"), str(edge_world.bundles["int8"]),
                           str(edge_world.frames_file), str(t), str(h), str(w)],
                          capture_output=True, text=True, timeout=ARM_TIMEOUT_S,
                          env={"PYTHONPATH": str(ARM_ROOT / "site"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["machine"] == "aarch64"
    return out


def test_golden_vectors_hold_on_arm(on_arm, edge_world):
    golden = json.loads((edge_world.bundles["int8"] / "golden" / "golden.json").read_text())
    expected = [run["embedding"] for case in golden["cases"] for run in case["runs"]]
    got = [run["embedding"] for run in on_arm["golden"]]
    assert len(got) == len(expected) >= 4
    assert cosines(got, expected).min() >= 0.999


def test_clip_embeddings_and_top_10_match_x86(on_arm, edge_world):
    x86 = Model.load(edge_world.bundles["int8"], intra_op_threads=2).embed_video(edge_world.frames)
    arm = np.array(on_arm["video"], np.float32)
    assert arm.shape == x86.vectors.shape and cosines(arm, x86.vectors).min() >= 0.999
    library = read_flat(edge_world.flat["float32"])
    search = ExactSearch(library.vectors, library.song_offsets)
    arm_query = arm.mean(0) / np.linalg.norm(arm.mean(0))
    assert search.top_songs(arm_query, 10).songs.tolist() == search.top_songs(x86.pooled(), 10).songs.tolist()
