"""ImageNet-style frame preprocessing, torch-free: what torchvision's ResNet-50 (IMAGENET1K_V1) transform does.

torchvision's transform on a PIL image is ``Resize(256)`` (shorter side to 256, longer side truncated with
``int()``), ``CenterCrop(224)`` (offsets ``int(round((size - crop) / 2))``), ``ToTensor()`` (scale to [0, 1],
channels first) and ``Normalize(mean, std)``. Its ``Resize`` on a PIL image is Pillow's BILINEAR resampling,
which is *antialiased*: when shrinking, the triangle filter is stretched to the reduction ratio (support =
ratio input pixels each side), unlike ``cv2.INTER_LINEAR`` (2 taps) or ``cv2.INTER_AREA`` (box filter).

Here Pillow's resampling is reproduced exactly: the same per-output-pixel triangle weights, the same 22-bit
fixed-point weights, the same horizontal-then-vertical order with a uint8 result after each pass and the
same round-half-up. The integer arithmetic is done in float64 matrix products (exact: the sums stay far
below 2**53), as band-limited blocks so each output pixel only touches the few input pixels under its
filter. Only the pixels inside the centre crop are computed, and only their weights exist, which is exact
because every output pixel of a separable resize depends only on its own row/column weights. So memory
beyond the frame is O(crop x shorter side) whatever the aspect ratio: the long side's resized length (512,000
for a 2 x 4000 frame) never sizes an array. Frames of any size are accepted here; video.py refuses to decode
absurdly large ones.

Pass order: Pillow 13 (python-pillow/Pillow#9549) runs the vertical pass first for some size pairs where the
height shrinks more than the width; every earlier Pillow, and this module, go horizontal first. Against the
installed Pillow 13.0 the output is bit-identical on every frame of the project's clips and on common frame
sizes (360p to 4K, portrait too: tests/test_video.py); on arbitrary odd size pairs the two orders can differ
by one uint8 level on some pixels.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import lru_cache

import numpy as np

try:  # small pure-Python helper; without it BLAS keeps its default thread count
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - depends on the install
    threadpool_limits = None

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE = 256  # shorter side after Resize
CROP = 224  # side of the square CenterCrop

PIL_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit images (Resample.c)
PIL_BILINEAR_SUPPORT = 1.0  # triangle filter half-width, in output pixels
OUTPUT_BLOCK = 32  # output pixels per banded matrix product: small enough to skip most zero weights
# float64 input converted at a time by the horizontal pass: bounds memory for any frame size, while
# ordinary frames (up to 1080p) still go in one or two chunks
CHUNK_BYTES = 8 << 20
# The banded products are small: on a busy machine OpenBLAS's threads spin against other processes (several
# times slower, docs/architecture.md), and on an idle one a single thread loses little.
BLAS_THREADS = 1


def preprocess_params(resize: int = RESIZE, crop: int = CROP, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> dict:
    """What preprocess_frames does with these arguments, as plain JSON for manifests."""
    return {
        "resize_shorter_side": int(resize),
        "resize_longer_side_rounding": "int (truncate), as torchvision",
        "interpolation": "bilinear, antialiased as PIL (Pillow Image.resize BILINEAR)",
        "center_crop": int(crop),
        "crop_offset_rounding": "int(round((size - crop) / 2)), as torchvision",
        "scale": "1/255",
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "channel_order": "RGB",
        "layout": "NCHW float32",
    }


def resized_size(height: int, width: int, shorter: int = RESIZE) -> tuple[int, int]:
    """torchvision's Resize(int) output (height, width): shorter side to `shorter`, longer side truncated."""
    short, long = (width, height) if width <= height else (height, width)
    if short == shorter:
        return height, width
    new_long = int(shorter * long / short)
    return (new_long, shorter) if width <= height else (shorter, new_long)


def center_crop_offsets(height: int, width: int, crop: int = CROP) -> tuple[int, int]:
    """torchvision's CenterCrop (top, left) for an image at least `crop` on both sides."""
    return int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))


def _triangle(x: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - np.abs(x), 0.0, None)


@lru_cache(maxsize=64)
def pil_bilinear_taps(in_size: int, out_size: int, out_start: int, out_stop: int) -> tuple[tuple[int, np.ndarray], ...]:
    """Pillow's BILINEAR weights of output pixels [out_start, out_stop) only: per output pixel (first, taps).

    `taps` (float64, already Pillow's 22-bit fixed-point integers) weigh input pixels first, first + 1, ...
    Follows Resample.c precompute_coeffs: centre (o + 0.5) * scale, taps from int(centre - support + 0.5)
    to int(centre + support + 0.5), weight triangle((i - centre + 0.5) / filterscale), normalised to sum 1,
    then rounded to integers of 2**22. Same float64 operations as Pillow, so the same integers. Memory is
    O((out_stop - out_start) x taps): never the whole (in_size, out_size) matrix, whose size a thin frame
    (2 x 4000 px: longer side resized to 512,000) would blow up.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = PIL_BILINEAR_SUPPORT * filterscale
    pixels = []
    for out_index in range(out_start, out_stop):
        center = (out_index + 0.5) * scale
        first = max(int(center - support + 0.5), 0)
        stop = min(int(center + support + 0.5), in_size)
        taps = _triangle((np.arange(first, stop) - center + 0.5) * (1.0 / filterscale))
        total = taps.sum()
        if total != 0.0:
            taps = taps / total
        # Pillow rounds half away from zero; the weights are never negative here
        taps = np.floor(taps * (1 << PIL_PRECISION_BITS) + 0.5)
        taps.flags.writeable = False
        pixels.append((first, taps))
    return tuple(pixels)


@lru_cache(maxsize=32)
def _band_plan(in_size: int, out_size: int, out_start: int, out_stop: int):
    """How to compute output pixels [out_start, out_stop) of one resize pass.

    Returns (in_start, in_stop, blocks): the input pixels read, and per OUTPUT_BLOCK outputs
    (output slice, input slice relative to in_start, (n_out, n_in) weights). blocks is None when the sizes
    are equal: Pillow skips that pass, so the output pixels are the input pixels.
    """
    if in_size == out_size:
        return out_start, out_stop, None
    taps = pil_bilinear_taps(in_size, out_size, out_start, out_stop)
    spans = []
    for block_start in range(out_start, out_stop, OUTPUT_BLOCK):
        block = taps[block_start - out_start : min(block_start + OUTPUT_BLOCK, out_stop) - out_start]
        # input pixels with a non-zero weight: edge taps that round to 0 are never read
        used = [(first + int(nonzero[0]), first + int(nonzero[-1]) + 1)
                for first, weights in block for nonzero in [np.flatnonzero(weights)]]
        spans.append((block_start, block_start + len(block), min(u[0] for u in used), max(u[1] for u in used)))
    in_start = min(span[2] for span in spans)
    in_stop = max(span[3] for span in spans)
    blocks = []
    for b0, b1, lo, hi in spans:
        weights = np.zeros((b1 - b0, hi - lo), dtype=np.float64)
        for row, (first, pixel_taps) in enumerate(taps[b0 - out_start : b1 - out_start]):
            # taps outside [lo, hi) are zero weights (trimmed above)
            keep = slice(max(lo - first, 0), min(hi - first, len(pixel_taps)))
            weights[row, first + keep.start - lo : first + keep.stop - lo] = pixel_taps[keep]
        weights.flags.writeable = False
        blocks.append((slice(b0 - out_start, b1 - out_start), slice(lo - in_start, hi - in_start), weights))
    return in_start, in_stop, tuple(blocks)


def _clip8(sums: np.ndarray) -> np.ndarray:
    """Pillow's clip8 in place: (sum + 2**21) >> 22, clamped to 0..255 (a uint8 image after each pass)."""
    sums += 1 << (PIL_PRECISION_BITS - 1)
    sums *= 1.0 / (1 << PIL_PRECISION_BITS)
    np.floor(sums, out=sums)
    return np.clip(sums, 0.0, 255.0, out=sums)


def _horizontal_pass(frame: np.ndarray, row_lo: int, row_hi: int, col_plan, crop: int) -> np.ndarray:
    """Rows [row_lo, row_hi) of an (H, W, 3) uint8 frame, resampled along the width to the crop's columns.

    Returns (n_rows, 3 * crop) float64 uint8 values, each row channel-major ((3, crop)), so the vertical
    pass reads contiguous rows and the result is already channels-first. The input is converted to float64
    CHUNK_BYTES at a time, so memory never holds a float64 copy of the frame, however large.
    """
    col_lo, col_hi, blocks = col_plan
    n_rows, n_cols = row_hi - row_lo, col_hi - col_lo
    out = np.empty((n_rows, 3, crop), dtype=np.float64)
    chunk = max(1, CHUNK_BYTES // (n_cols * 3 * 8))
    for r0 in range(0, n_rows, chunk):
        r1 = min(r0 + chunk, n_rows)
        # (rows, cols, 3) uint8 -> (rows * 3, cols) float64 in one copy
        values = np.ascontiguousarray(frame[row_lo + r0 : row_lo + r1, col_lo:col_hi].transpose(0, 2, 1),
                                      dtype=np.float64).reshape((r1 - r0) * 3, n_cols)
        if blocks is None:
            out[r0:r1] = values.reshape(r1 - r0, 3, crop)
            continue
        target = out[r0:r1].reshape((r1 - r0) * 3, crop)
        for out_slice, in_slice, weights in blocks:
            np.matmul(values[:, in_slice], weights.T, out=target[:, out_slice])
    if blocks is not None:
        _clip8(out)
    return out.reshape(n_rows, 3 * crop)


def _resize_crop_one(frame: np.ndarray, size: tuple[int, int], crop: int) -> np.ndarray:
    """One (H, W, 3) uint8 frame → the (crop, 3, crop) float64 (uint8-valued) centre crop of its PIL resize.

    Only the input pixels under the crop's filters are read, and only the crop's weights exist, so memory
    is O(crop x shorter side), whatever the frame's aspect ratio (both passes scale by about shorter / 256).
    """
    in_h, in_w, _ = frame.shape
    out_h, out_w = size
    top, left = center_crop_offsets(out_h, out_w, crop)
    row_lo, row_hi, row_blocks = _band_plan(in_h, out_h, top, top + crop)
    # Horizontal pass first, as Pillow, and only on the input rows the vertical pass will read
    rows = _horizontal_pass(frame, row_lo, row_hi, _band_plan(in_w, out_w, left, left + crop), crop)
    if row_blocks is None:
        return rows.reshape(crop, 3, crop)
    sums = np.empty((crop, 3 * crop), dtype=np.float64)
    for out_slice, in_slice, weights in row_blocks:
        np.matmul(weights, rows[in_slice], out=sums[out_slice])
    return _clip8(sums).reshape(crop, 3, crop)


def check_frames(frames) -> np.ndarray:
    """`frames` itself if it is a (T, H, W, 3) uint8 numpy array with H, W >= 1, else a ValueError saying why."""
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"frames must be a numpy array (T, H, W, 3) uint8, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB (T, H, W, 3), got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (T, H, W, 3), got {frames.shape}")
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"frames must have a non-empty height and width, got {frames.shape}")
    return frames


def preprocess_frames(
    frames: np.ndarray,
    resize: int = RESIZE,
    crop: int = CROP,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB → (T, 3, crop, crop) float32: Resize(resize), CenterCrop(crop), ToTensor, Normalize."""
    frames = check_frames(frames)
    if crop > resize:
        raise ValueError(f"crop ({crop}) must not exceed resize ({resize}): torchvision would pad with zeros")
    n, height, width, _ = frames.shape
    size = resized_size(height, width, resize)
    scale = 1.0 / (255.0 * np.asarray(std, dtype=np.float64))
    offset = -np.asarray(mean, dtype=np.float64) / np.asarray(std, dtype=np.float64)
    out = np.empty((n, 3, crop, crop), dtype=np.float32)
    limit = nullcontext() if threadpool_limits is None else threadpool_limits(BLAS_THREADS, user_api="blas")
    with limit:
        for index in range(n):
            pixels = _resize_crop_one(frames[index], size, crop)  # (crop, 3, crop) values 0..255
            normalised = pixels * scale[:, None] + offset[:, None]
            out[index] = normalised.transpose(1, 0, 2)
    return out
