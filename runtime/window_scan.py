"""Every stored window's dot product with a query, streamed in blocks: no float32 copy of the library.

Libraries store windows as float16 rows (full form) or int8 codes (compact form). numpy converts float16 to
float32 an element at a time, several times slower than the product itself, so exact search used to keep a
float32 copy of the whole matrix: twice the file's size in memory. onnxruntime's Cast is vectorised, so a
two-node graph (Cast to float32, MatMul with the query) run over one block of rows at a time scores the stored
matrix about as fast as numpy scores a float32 copy, while only one block is ever float32
(docs/benchmarks/library_compact.md, "Scanning without a copy").

The graphs ship in runtime/graphs/ (made by tivm.export.scan_graphs: the runtime does not need the onnx
package). float32 matrices need no conversion and go straight to numpy.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

GRAPHS_DIR = Path(__file__).resolve().parent / "graphs"
GRAPH_FILES = {np.dtype(np.float16): "window_scan_float16.onnx", np.dtype(np.int8): "window_scan_int8.onnx"}
# float32 bytes of one block inside the graph: small enough to stay in cache between Cast and MatMul (larger
# blocks measured slower, not faster), large enough that the per-run overhead (tens of microseconds) is noise
BLOCK_FLOAT32_BYTES = 1 << 22
MIN_BLOCK_ROWS = 1024


def block_rows(dim: int) -> int:
    """Rows scanned per graph run for windows of `dim` values."""
    return max(MIN_BLOCK_ROWS, BLOCK_FLOAT32_BYTES // (4 * max(1, dim)))


class WindowScanner:
    """Scores (W,) float32 = matrix (W, d) @ query (d,), the matrix float16, int8 or float32, possibly a
    read-only memory map. Thread-safe: onnxruntime sessions may run concurrently; they are made on first use."""

    def __init__(self, threads: int | None = 1):
        self.threads = threads
        self._sessions: dict[np.dtype, object] = {}
        self._lock = threading.Lock()

    def _session(self, dtype: np.dtype):
        with self._lock:
            if dtype not in self._sessions:
                import onnxruntime as ort

                options = ort.SessionOptions()
                if self.threads:
                    options.intra_op_num_threads = int(self.threads)
                options.inter_op_num_threads = 1
                self._sessions[dtype] = ort.InferenceSession(str(GRAPHS_DIR / GRAPH_FILES[dtype]), options,
                                                             providers=["CPUExecutionProvider"])
            return self._sessions[dtype]

    def scores(self, matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        if matrix.ndim != 2 or matrix.shape[1] != len(query):
            raise ValueError(f"windows are {matrix.shape}, the query has {len(query)} values")
        out = np.empty(len(matrix), dtype=np.float32)
        rows = block_rows(matrix.shape[1])
        if matrix.dtype == np.float32:
            for start in range(0, len(matrix), rows):
                np.matmul(matrix[start:start + rows], query, out=out[start:start + rows])
            return out
        if matrix.dtype not in GRAPH_FILES:
            raise TypeError(f"windows stored as {matrix.dtype}: expected float16, int8 or float32")
        session, column = self._session(matrix.dtype), query.reshape(-1, 1)
        for start in range(0, len(matrix), rows):
            block = np.ascontiguousarray(matrix[start:start + rows])
            out[start:start + len(block)] = session.run(None, {"rows": block, "query": column})[0][:, 0]
        return out


# for callers without a scanner of their own (one-off scores, tests): sessions open on first use, so this
# costs nothing at import, and every such call shares them instead of opening a session per call
SHARED_SCANNER = WindowScanner()
