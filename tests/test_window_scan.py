"""The block scan behind exact and compact search: right scores for every stored type, no float32 copy."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tivm.runtime.window_scan import GRAPH_FILES, GRAPHS_DIR, WindowScanner, block_rows


@pytest.mark.parametrize("dtype", [np.float16, np.int8, np.float32])
@pytest.mark.parametrize("dim", [3, 64, 512])
def test_scores_are_the_float32_products_across_blocks(dtype, dim):
    rng = np.random.default_rng(dim)
    n = 2 * block_rows(dim) + 77  # two whole blocks and a ragged one
    values = rng.standard_normal((n, dim), dtype=np.float32)
    matrix = (values * 40).clip(-127, 127).astype(dtype) if dtype == np.int8 else (values * 0.1).astype(dtype)
    query = rng.standard_normal(dim, dtype=np.float32)
    want = matrix.astype(np.float64) @ query.astype(np.float64)
    got = WindowScanner().scores(matrix, query)
    assert got.dtype == np.float32 and got.shape == (n,)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_a_read_only_memory_map_is_scanned_in_place(tmp_path):
    rng = np.random.default_rng(1)
    matrix = (rng.standard_normal((5000, 64), dtype=np.float32) * 0.1).astype(np.float16)
    np.save(tmp_path / "m.npy", matrix)
    mapped = np.load(tmp_path / "m.npy", mmap_mode="r")
    query = rng.standard_normal(64, dtype=np.float32)
    np.testing.assert_allclose(WindowScanner(threads=2).scores(mapped, query), matrix.astype(np.float32) @ query,
                               rtol=1e-4, atol=1e-4)


def test_a_query_of_the_wrong_size_or_an_unknown_type_is_refused():
    scanner = WindowScanner()
    with pytest.raises(ValueError, match="query has 8 values"):
        scanner.scores(np.zeros((4, 16), np.float16), np.zeros(8, np.float32))
    with pytest.raises(TypeError, match="int16"):
        scanner.scores(np.zeros((4, 16), np.int16), np.zeros(16, np.float32))


def test_an_empty_library_scores_nothing():
    assert WindowScanner().scores(np.zeros((0, 16), np.float16), np.ones(16, np.float32)).shape == (0,)


def test_the_shipped_graphs_are_what_the_exporter_makes():
    pytest.importorskip("onnx")
    from tivm.export.scan_graphs import STORED_TYPES, file_name, scan_graph

    assert {file_name(stored) for stored in STORED_TYPES} == set(GRAPH_FILES.values())
    for stored in STORED_TYPES:
        shipped = (GRAPHS_DIR / file_name(stored)).read_bytes()
        assert shipped == scan_graph(stored).SerializeToString(), f"run python -m tivm.export.scan_graphs ({stored})"


# Runs in a fresh interpreter: resets the kernel's peak-RSS mark after the matrix exists and the session is
# warm, scans, and reports how far the peak rose. A float32 copy would raise it by 4 bytes per stored value.
PEAK_PROBE = textwrap.dedent("""
    import sys, numpy as np
    from tivm.runtime.window_scan import WindowScanner
    dtype, n, dim = np.dtype(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    matrix = np.ones((n, dim), dtype)
    scanner = WindowScanner()
    scanner.scores(matrix[:5000], np.ones(dim, np.float32))
    def status(key):
        return int([l for l in open("/proc/self/status") if l.startswith(key)][0].split()[1]) * 1024
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = status("VmHWM")
    scores = scanner.scores(matrix, np.ones(dim, np.float32))
    assert scores[0] == dim and scores[-1] == dim
    print(status("VmHWM") - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads and resets /proc/self peak RSS")
@pytest.mark.parametrize("dtype,dim", [("float16", 64), ("int8", 128), ("float16", 512)])
def test_the_scan_makes_no_float32_copy_of_the_library(dtype, dim):
    n = 400_000 if dim < 512 else 100_000
    done = subprocess.run([sys.executable, "-c", PEAK_PROBE, dtype, str(n), str(dim)], capture_output=True, text=True)
    if done.returncode != 0 and "clear_refs" in done.stderr:
        pytest.skip("this kernel does not let a process reset its peak RSS")
    assert done.returncode == 0, done.stderr
    rise = int(done.stdout.strip())
    float32_copy = n * dim * 4
    # the scores (4 bytes a window) and a few blocks of working memory, never a copy
    assert rise < n * 4 + 4 * (4 << 20) < float32_copy / 2, (rise, float32_copy)
