"""The compact window store: window embeddings reduced by a PCA fitted at build time, then int8 per row.

A window x (D,) is stored as int8 codes c (d,) and one float32 row scale r:

    y = (components.T @ (x - mean)) / component_scales      # d principal coordinates, each of unit spread
    c, r = quantize_rows(y)                                  # the flat library's int8 quantizer (max|y| -> 127)

and scored against a unit query q (D,) without ever rebuilding x:

    score(x) ~= q . mean + r * (c . q_code),   q_code = component_scales * (components.T @ q)

`q . mean` is the same for every window, so the ranking is that of `r * (c . q_code)`; it is added back so
the scores stay cosines. Dividing by `component_scales` before quantizing gives every kept component the
same int8 resolution (without it the first components' range would set the step for all of them); the
division is undone in `q_code`, so it costs nothing at search time. What the PCA drops (the components past
d) is the error that remains; docs/benchmarks/library_compact.md measures it on real embeddings.

The scan (tivm.runtime.window_scan) converts int8 codes to float32 a cache-sized block at a time and
multiplies there: no float32 copy of the library is ever made, and int8 rows are a quarter of the float32
traffic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tivm.runtime.window_scan import SHARED_SCANNER, WindowScanner

FORM = "int8-pca"
DEFAULT_DIMS = 128
MIN_DIMS = 8
FIT_MAX_ROWS = 200_000  # rows the PCA is fitted on (evenly spaced): the covariance settles long before this
ENCODE_CHUNK_ROWS = 1 << 14  # rows projected at once while encoding: bounds the float32 temporaries


@dataclass(frozen=True, eq=False)  # holds arrays: compare by identity
class CompactWindows:
    """Window codes of a compact library and the PCA that turns queries into their space."""

    codes: np.ndarray  # (W, d) int8, may be a read-only memory map
    row_scales: np.ndarray  # (W,) float32
    mean: np.ndarray  # (D,) float32
    components: np.ndarray  # (D, d) float32, orthonormal columns
    component_scales: np.ndarray  # (d,) float32, spread of each principal coordinate

    @property
    def dims(self) -> int:
        return int(self.codes.shape[1])

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def nbytes(self) -> int:
        """Bytes one search scans (codes and row scales)."""
        return int(self.codes.size + self.row_scales.size * 4)

    @classmethod
    def fit(cls, embeddings: np.ndarray, dims: int = DEFAULT_DIMS) -> "CompactWindows":
        """PCA of `embeddings` (W, D) kept to `dims` components, and every row encoded with it."""
        mean, components, component_scales = fit_pca(embeddings, dims)
        codes, row_scales = encode(embeddings, mean, components, component_scales)
        return cls(codes, row_scales, mean, components, component_scales)

    def query_code(self, query: np.ndarray) -> tuple[np.ndarray, float]:
        """(q_code (d,) float32, q . mean): what a unit query (D,) becomes in code space."""
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        q_code = (self.components.T @ query) * self.component_scales
        return q_code.astype(np.float32), float(query @ self.mean)

    def window_scores(self, query: np.ndarray, scanner: WindowScanner | None = None) -> np.ndarray:
        """Approximate cosine of every window with the unit query: (W,) float32, scanned in blocks."""
        q_code, offset = self.query_code(query)
        scores = (scanner or SHARED_SCANNER).scores(self.codes, q_code)
        scores *= self.row_scales
        scores += offset
        return scores

    def decode(self, start: int, stop: int) -> np.ndarray:
        """Rows start:stop rebuilt as float32 (D,) vectors (approximate: what the PCA and int8 kept)."""
        coordinates = np.asarray(self.codes[start:stop], dtype=np.float32)
        coordinates *= self.row_scales[start:stop, None]
        coordinates *= self.component_scales
        return coordinates @ self.components.T + self.mean

    def problems(self) -> list[str]:
        """What is wrong with these arrays as read from an untrusted file (empty when they are usable)."""
        codes, scales = self.codes, self.row_scales
        mean, components, spread = self.mean, self.components, self.component_scales
        types = [
            (codes.ndim == 2 and codes.dtype == np.int8 and codes.shape[0] > 0 and codes.shape[1] > 0,
             f"codes is {codes.dtype} {codes.shape}, expected 2-d int8 with rows"),
            (scales.ndim == 1 and scales.dtype == np.float32, f"row_scales is {scales.dtype} {scales.shape}, "
             "expected 1-d float32"),
            (mean.ndim == 1 and mean.dtype == np.float32, f"pca_mean is {mean.dtype} {mean.shape}, expected "
             "1-d float32"),
            (components.ndim == 2 and components.dtype == np.float32, f"pca_components is {components.dtype} "
             f"{components.shape}, expected 2-d float32"),
            (spread.ndim == 1 and spread.dtype == np.float32, f"component_scales is {spread.dtype} "
             f"{spread.shape}, expected 1-d float32"),
        ]
        problems = [message for ok, message in types if not ok]
        if problems:
            return problems
        shapes = [
            (len(scales) == len(codes), "row_scales length differs from codes"),
            (components.shape == (len(mean), codes.shape[1]), f"pca_components is {components.shape}, expected "
             f"({len(mean)}, {codes.shape[1]}) (embedding dim, code dims)"),
            (len(spread) == codes.shape[1], "component_scales length differs from the code dims"),
            (codes.shape[1] <= len(mean), "more code dims than embedding dims"),
        ]
        problems = [message for ok, message in shapes if not ok]
        if problems:
            return problems
        # a NaN or infinite parameter would make every score NaN and the ranking arbitrary
        if not (np.isfinite(scales).all() and np.all(scales >= 0)):
            problems.append("row_scales are not all finite and >= 0")
        if not (np.isfinite(spread).all() and np.all(spread > 0)):
            problems.append("component_scales are not all finite and > 0")
        if not (np.isfinite(mean).all() and np.isfinite(components).all()):
            problems.append("pca_mean or pca_components is not finite")
        elif not np.allclose(components.T @ components, np.eye(components.shape[1]), atol=1e-3):
            problems.append("pca_components are not orthonormal columns")
        return problems


def fit_pca(embeddings: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean (D,), components (D, d), spread (d,)) of the rows, from at most FIT_MAX_ROWS evenly spaced ones."""
    n, dim = embeddings.shape
    if not MIN_DIMS <= dims <= dim:
        raise ValueError(f"compact dims must be in [{MIN_DIMS}, {dim}], got {dims}")
    step = max(1, -(-n // FIT_MAX_ROWS))
    picked = np.arange(0, n, step)
    total = np.zeros(dim, dtype=np.float64)
    second = np.zeros((dim, dim), dtype=np.float64)
    for first in range(0, len(picked), ENCODE_CHUNK_ROWS):
        rows = np.asarray(embeddings[picked[first:first + ENCODE_CHUNK_ROWS]], dtype=np.float32)
        total += rows.sum(axis=0, dtype=np.float64)
        second += (rows.T @ rows).astype(np.float64)
    mean = total / len(picked)
    covariance = second / len(picked) - np.outer(mean, mean)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    order = np.argsort(eigenvalues)[::-1][:dims]
    components = eigenvectors[:, order]
    # a fixed sign per component: the same library always gives the same file
    components *= np.where(components[np.abs(components).argmax(axis=0), np.arange(dims)] < 0, -1.0, 1.0)
    spread = np.sqrt(np.maximum(eigenvalues[order], 0.0))
    # a component without spread (fewer distinct windows than dims) gets the largest one's scale: any
    # positive value decodes the same zeros and keeps the division defined
    spread = np.where(spread > 1e-12 * max(float(spread.max()), 1e-30), spread, max(float(spread.max()), 1.0))
    return mean.astype(np.float32), components.astype(np.float32), spread.astype(np.float32)


def encode(embeddings: np.ndarray, mean: np.ndarray, components: np.ndarray,
           component_scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes (W, d), float32 row scales (W,)) of every row, in chunks."""
    from tivm.runtime.flat_library import quantize_rows  # the flat library's quantizer; it imports the library

    codes = np.empty((len(embeddings), components.shape[1]), dtype=np.int8)
    row_scales = np.empty(len(embeddings), dtype=np.float32)
    for first in range(0, len(embeddings), ENCODE_CHUNK_ROWS):
        rows = np.asarray(embeddings[first:first + ENCODE_CHUNK_ROWS], dtype=np.float32)
        coordinates = ((rows - mean) @ components) / component_scales
        codes[first:first + len(rows)], row_scales[first:first + len(rows)] = quantize_rows(coordinates)
    return codes, row_scales


__all__ = ["CompactWindows", "DEFAULT_DIMS", "FORM", "encode", "fit_pca"]
