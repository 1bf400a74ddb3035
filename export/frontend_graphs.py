"""Front ends as ONNX graphs: raw PCM or RGB frames in, exactly what a full branch graph takes out.

A phone or browser app then needs nothing but onnxruntime: its platform decoder gives 16 kHz mono PCM or
RGB frames at 1 fps, these graphs turn them into the branch's input windows, and the branch embeds them.
They are standalone models built with ``onnx.helper`` (no torch), meant to be joined in front of a branch
later with ``onnx.compose.merge_models(front, branch, io_map=[(AUDIO_OUTPUT, "patches")])`` (video:
``[(VIDEO_OUTPUT, "frames")]``). merge_models needs both models at the same IR version and opset: the
exporter writes opset 18 (``tivm.export.onnx_export.OPSET``) at IR 10 (dynamo; its TorchScript fallback
writes IR 8), so pass the branch's ``ir_version`` to the builder (nothing here needs more than IR 8).
Every tensor and node name inside starts with ``frontend_audio/`` or ``frontend_video/``, so no name
collides with a branch's.

Audio, `build_audio_frontend`: inputs ``pcm`` float32 (N,) mono 16 kHz samples in [-1, 1] and
``hop_patches`` int64 scalar (window hop in 0.96 s patches; values below 1 count as 1, as the Python
runtime's ``max(1, ...)``) -> ``patches`` float32 (W, 15, 96, 64). The log-mel patches are
`tivm.runtime.audio.log_mel_patches`: frames every 160 samples taken with ``Gather``, the periodic-Hann
windowed 512-point DFT as one float64 ``MatMul`` (the window folded into the cos/sin matrix, only the
FFT bins VGGish's mel matrix weighs), then in float32 |X|, the stored 257x64 VGGish mel matrix (those
rows), log(mel + 0.01), 96-frame patches with the incomplete last one dropped, computed one patch at a
time by a ``Scan`` so working memory does not grow with the input's length. The DFT must be float64:
quiet bands sit ~1e-7 below loud ones in the same frame, and a float32 DFT (or ONNX ``STFT`` in float32)
misses 1e-4 on log-mels; after it, |X| and the mel sums are positive sums whose float32 rounding is
relative, ~1e-7 on a log-mel.

Too-short audio: fewer than 15,600 samples make no patch; the graph then returns zero windows, W = 0
(shape (0, 15, 96, 64)), deterministically and without an onnxruntime error (an ``If`` skips the
``Scan``, which fails on an empty sequence). The app must check ``pcm.length >= MIN_SAMPLES`` first
(or W > 0 after): the Python runtime raises AudioTooShortError there.

Video, `build_video_frontend`: inputs ``frames`` uint8 (T, H, W, 3) RGB, any H, W >= 1, and
``hop_frames`` int64 scalar -> ``frames_nchw`` float32 (W, 15, 3, crop, crop): torchvision's
Resize(resize) on a PIL image, CenterCrop(crop), ToTensor, Normalize(mean, std), exactly as
`tivm.runtime.image.preprocess_frames` (bit-identical float32). Pillow's antialiased BILINEAR weights
(22-bit fixed point, Resample.c precompute_coeffs) are built in the graph from the input shape, for the
output pixels inside the centre crop only; both passes (horizontal first, each rounded to uint8 by
Pillow's clip8) are banded float64 ``MatMul``s over blocks of 32 output pixels, so the weights are
O(crop x taps) whatever the aspect ratio and the integer sums (< 2**53) are exact. Frames go through a
``Scan`` one at a time, so working memory is one frame's (about 8 bytes x the input pixels under the
crop: peak RSS grew ~27 MB for 15 frames of 720p, ~51 MB for 1080p); zero frames give W = 0, as for
audio. Normalisation is a lookup in a float32 (3 x 256) table computed like the runtime's float64
``v * (1 / (255 std)) + (-mean / std)``. `build_video_frontend(**backbone.image_preprocessing)` takes a
backbone's preprocessing as it is. Each output pixel's taps are summed sequentially (CumSum), as
Pillow's loop; the runtime uses numpy's sum (pairwise from 8 taps on), which rounds differently in the
last bit, yet no integer weight differed on 429,408 downscaled crop pixels checked (inputs 900-20,000 px).

Windowing (both): `tivm.runtime.model.window_starts` + ``loop_pad``: windows of 15 steps starting every
hop, plus one window flush with the end when the tail is not covered; 1 to 14 steps make one window
tiled from them; 0 steps make W = 0.

float64: an app on a runtime or execution provider without float64 kernels needs these on CPU
(`FLOAT64_OPS`). Audio: Cast (float32 -> float64 -> float32) and MatMul (the DFT). Video: Cast
(uint8 -> float64 -> uint8), MatMul, and Add, Mul, Floor, Clip for Pillow's rounding after each pass (the
bulk of the work), plus, on the small per-axis weight tensors (crop x taps, built once per call from the
input shape), Sub, Div, Abs, Max, Equal, Where, CumSum, Gather, Reshape and Unsqueeze. Everything else
is int64 index arithmetic (Shape, Squeeze, Unsqueeze, Range, Add, Sub, Mul, Div, Mod, Min, Max,
ReduceMin, ReduceMax, Equal, Less, LessOrEqual, GreaterOrEqual, And, Where, Concat),
Gather/Slice/Reshape/Transpose on uint8, float32 or int64 tensors, float32 Mul/Add/Sqrt/Log/MatMul,
and Scan, If, Constant. onnxruntime 1.32's CPU execution provider has every one of them
(onnxruntime-web's wasm backend runs the same CPU kernels).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tivm.runtime import audio as _audio
from tivm.runtime import image as _image

OPSET = 18  # = tivm.export.onnx_export.OPSET; merge_models needs the same opset on both sides
IR_VERSION = 10  # what the dynamo exporter writes at opset 18; pass 8 for a TorchScript-exported branch
WINDOW_STEPS = 15  # steps per window: 15 patches of 0.96 s / 15 frames at 1 fps

AUDIO_INPUT, AUDIO_HOP, AUDIO_OUTPUT = "pcm", "hop_patches", "patches"
VIDEO_INPUT, VIDEO_HOP, VIDEO_OUTPUT = "frames", "hop_frames", "frames_nchw"
AUDIO_STEPS, VIDEO_STEPS = "patches_steps", "frames_steps"  # outputs of windowed=False graphs
MIN_SAMPLES = _audio.PATCH_SAMPLES  # 15,600: fewer samples give W = 0 windows

FLOAT64_OPS = {
    "audio": ("Cast", "MatMul"),
    "video": ("Cast", "MatMul", "Add", "Mul", "Floor", "Clip", "Sub", "Div", "Abs", "Max", "Equal", "Where",
              "CumSum", "Gather", "Reshape", "Unsqueeze"),
}

RESAMPLE_BLOCK = 32  # output pixels per banded MatMul block (as tivm.runtime.image.OUTPUT_BLOCK)
_PRECISION = _image.PIL_PRECISION_BITS  # 22


class _Builder:
    """Nodes and initializers of one graph, every name under `prefix`."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, value, dtype=None, hint: str = "const") -> str:
        array = np.asarray(value, dtype=dtype)
        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def i64(self, value) -> str:
        return self.const(value, np.int64, "i64")

    def f64(self, value) -> str:
        return self.const(value, np.float64, "f64")

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attributes) -> str:
        out = output or self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=self._name(op_type), **attributes))
        return out

    def cast(self, x: str, to: int) -> str:
        return self.op("Cast", x, to=to)

    def model(self, name: str, inputs, outputs, doc: str, opset: int, ir_version: int) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.initializers, doc_string=doc)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version,
                                  producer_name="tivm.export.frontend_graphs", doc_string=doc)
        onnx.checker.check_model(model, full_check=True)
        return model


def _dim(b: _Builder, x: str, axis: int) -> str:
    """Size of axis `axis` of `x` as an int64 scalar."""
    return b.op("Squeeze", b.op("Shape", x, start=axis, end=axis + 1), b.i64([0]))


def _scan_or_empty(b: _Builder, body: onnx.GraphProto, sequence: str, count: str, step_shape: tuple[int, ...],
                   output: str | None) -> str:
    """Scan `body` over axis 0 of `sequence` (float32 steps of `step_shape` out), or (0, *step_shape) when
    `count` is 0: onnxruntime's Scan fails on an empty sequence, so that case takes an If branch."""
    scan_out, empty_out = b.prefix + "scanned", b.prefix + "none"
    scan = helper.make_node("Scan", [sequence], [scan_out], name=b.prefix + "Scan", body=body, num_scan_inputs=1)
    empty = helper.make_node("Constant", [], [empty_out], name=b.prefix + "None",
                             value=numpy_helper.from_array(np.zeros((0, *step_shape), np.float32)))

    def step_type(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)

    return b.op("If", b.op("Equal", count, b.i64(0)), output=output,
                then_branch=helper.make_graph([empty], "none", [], [step_type(empty_out)]),
                else_branch=helper.make_graph([scan], "steps", [], [step_type(scan_out)]))


def _add_windows(b: _Builder, steps: str, hop: str, window: int, output: str) -> str:
    """(P, ...) steps -> (W, window, ...) windows, as window_starts + loop_pad (W = 0 when P = 0)."""
    count = _dim(b, steps, 0)
    last_start = b.op("Max", b.op("Sub", count, b.i64(window)), b.i64(0))  # L = max(P - window, 0)
    # any hop > L gives the same windows; clamping keeps L + hop - 1 from overflowing
    hop = b.op("Min", b.op("Max", b.op("Reshape", hop, b.i64([])), b.i64(1)), b.op("Add", last_start, b.i64(1)))
    # windows: every hop from 0 to L, plus one at L when (L % hop) != 0: ceil(L / hop) + 1; none when P = 0
    regular = b.op("Div", b.op("Sub", b.op("Add", last_start, hop), b.i64(1)), hop)
    n_windows = b.op("Mul", b.op("Add", regular, b.i64(1)), b.op("Min", count, b.i64(1)))
    starts = b.op("Min", b.op("Mul", b.op("Range", b.i64(0), n_windows, b.i64(1)), hop), last_start)
    index = b.op("Add", b.op("Unsqueeze", starts, b.i64([1])), b.i64(np.arange(window)[None, :]))
    # loop padding: step i of a short input is step i mod P (a no-op when P >= window)
    index = b.op("Mod", index, b.op("Max", count, b.i64(1)))
    return b.op("Gather", steps, index, axis=0, output=output)


# ----------------------------------------------------------------------------------------------------------
# Audio


def _dft_bins() -> np.ndarray:
    """FFT bins with a non-zero weight in VGGish's mel matrix (the others never reach a log-mel)."""
    used = np.flatnonzero(np.any(_audio.mel_matrix() != 0.0, axis=1))
    return np.arange(used[0], used[-1] + 1)


def _dft_matrix(bins: np.ndarray) -> np.ndarray:
    """(400, 2 * len(bins)) float64: periodic Hann x cos | periodic Hann x -sin of the 512-point DFT."""
    n = np.arange(_audio.WINDOW_SAMPLES)
    phase = (n[:, None] * bins[None, :]) % _audio.FFT_LENGTH  # exact reduction before the angle
    angle = 2.0 * np.pi * phase / _audio.FFT_LENGTH
    window = _audio.periodic_hann(_audio.WINDOW_SAMPLES)[:, None]
    return np.concatenate([window * np.cos(angle), -window * np.sin(angle)], axis=1)


def build_audio_frontend(*, window_patches: int = WINDOW_STEPS, windowed: bool = True, opset: int = OPSET,
                         ir_version: int = IR_VERSION) -> onnx.ModelProto:
    """ONNX model: ``pcm`` float32 (N,) 16 kHz mono + ``hop_patches`` int64 () -> ``patches`` (W, 15, 96, 64).

    The windows `tivm.runtime.audio.log_mel_patches` + `tivm.runtime.model.window_starts`/``loop_pad``
    make of the same samples (float32 log-mels within ~1e-6 of them; see the module docstring). Fewer
    than MIN_SAMPLES samples give W = 0. windowed=False: no ``hop_patches`` input, output
    ``patches_steps`` (P, 96, 64), the log-mel patches themselves (P = 0 when too short).
    """
    b = _Builder("frontend_audio/")
    window, hop_samples, frames_per_patch = _audio.WINDOW_SAMPLES, _audio.HOP_SAMPLES, _audio.PATCH_FRAMES
    n = _dim(b, AUDIO_INPUT, 0)
    # frames = 1 + (n - 400) // 160 = (n - 240) // 160 for n >= 400; operands kept >= 0 so Div is floor
    offset = window - hop_samples
    n_frames = b.op("Div", b.op("Sub", b.op("Max", n, b.i64(offset)), b.i64(offset)), b.i64(hop_samples))
    n_patches = b.op("Div", n_frames, b.i64(frames_per_patch))
    # one patch at a time (Scan over each patch's first sample), so memory stays one patch's at any length
    patch_starts = b.op("Mul", b.op("Range", b.i64(0), n_patches, b.i64(1)), b.i64(frames_per_patch * hop_samples))
    body = _Builder("frontend_audio/patch/")
    start_in, patch_out = body.prefix + "first_sample", body.prefix + "log_mel"
    offsets = np.arange(frames_per_patch)[:, None] * hop_samples + np.arange(window)[None, :]  # (96, 400)
    frames = body.cast(body.op("Gather", AUDIO_INPUT, body.op("Add", start_in, body.i64(offsets)), axis=0),
                       TensorProto.DOUBLE)
    bins = _dft_bins()
    spectrum = body.cast(body.op("MatMul", frames, body.f64(_dft_matrix(bins))), TensorProto.FLOAT)  # (96, 2 bins)
    power = body.op("Mul", spectrum, spectrum)
    half = len(bins)
    real2 = body.op("Slice", power, body.i64([0]), body.i64([half]), body.i64([1]))
    imag2 = body.op("Slice", power, body.i64([half]), body.i64([2 * half]), body.i64([1]))
    magnitude = body.op("Sqrt", body.op("Add", real2, imag2))
    mel = body.op("MatMul", magnitude, body.const(_audio.mel_matrix()[bins], np.float32))
    body.op("Log", body.op("Add", mel, body.const(np.float32(_audio.LOG_OFFSET))), output=patch_out)
    body_graph = helper.make_graph(
        body.nodes, "tivm_audio_patch", [helper.make_tensor_value_info(start_in, TensorProto.INT64, [])],
        [helper.make_tensor_value_info(patch_out, TensorProto.FLOAT, [frames_per_patch, _audio.NUM_BANDS])],
        initializer=body.initializers)
    patches = _scan_or_empty(b, body_graph, patch_starts, n_patches, (frames_per_patch, _audio.NUM_BANDS),
                             None if windowed else AUDIO_STEPS)  # (P, 96, 64)
    inputs = [helper.make_tensor_value_info(AUDIO_INPUT, TensorProto.FLOAT, ["samples"])]
    if windowed:
        _add_windows(b, patches, AUDIO_HOP, window_patches, AUDIO_OUTPUT)
        inputs.append(helper.make_tensor_value_info(AUDIO_HOP, TensorProto.INT64, []))
        outputs = [helper.make_tensor_value_info(AUDIO_OUTPUT, TensorProto.FLOAT,
                                                 ["windows", window_patches, frames_per_patch, _audio.NUM_BANDS])]
    else:
        outputs = [helper.make_tensor_value_info(AUDIO_STEPS, TensorProto.FLOAT,
                                                 ["patches", frames_per_patch, _audio.NUM_BANDS])]
    doc = ("tivm audio front end: 16 kHz PCM -> VGGish log-mel patches (tivm.runtime.audio.log_mel_patches)"
           + (f", windows of {window_patches}" if windowed else ""))
    return b.model("tivm_audio_frontend", inputs, outputs, doc, opset, ir_version)


# ----------------------------------------------------------------------------------------------------------
# Video


def _resized_sizes(b: _Builder, height: str, width: str, resize: int) -> tuple[str, str]:
    """torchvision's Resize(resize) (out_h, out_w) as int64 scalars: shorter side to resize, longer truncated."""
    portrait = b.op("LessOrEqual", width, height)
    short = b.op("Min", height, width)
    long = b.op("Max", height, width)
    # int(resize * long / short): a correctly rounded float64 division, truncated (positive, so Floor)
    ratio = b.op("Div", b.cast(b.op("Mul", long, b.i64(resize)), TensorProto.DOUBLE), b.cast(short, TensorProto.DOUBLE))
    new_long = b.cast(b.op("Floor", ratio), TensorProto.INT64)  # = long when short == resize
    out_h = b.op("Where", portrait, new_long, b.i64(resize))
    out_w = b.op("Where", portrait, b.i64(resize), new_long)
    return out_h, out_w


def _crop_offset(b: _Builder, size: str, crop: int) -> str:
    """int(round((size - crop) / 2)) with Python's half-to-even round, in int64 (size >= crop)."""
    excess = b.op("Sub", size, b.i64(crop))
    half = b.op("Div", excess, b.i64(2))
    odd = b.op("Mod", excess, b.i64(2))
    return b.op("Add", half, b.op("Mul", odd, b.op("Mod", half, b.i64(2))))  # x.5 goes to the even neighbour


def _axis_plan(b: _Builder, in_size: str, out_size: str, out_start: str, crop: int, block: int,
               transposed: bool = False):
    """Pillow's BILINEAR weights of output pixels [out_start, out_start + crop) of one axis, banded.

    Returns (index (nb, S) int64 input pixels per block, clamped into the image; weights (nb, block, S),
    or (nb, S, block) if `transposed`, float64 Pillow fixed-point integers, zero outside each output pixel's
    taps; first read pixel; last read pixel). Follows tivm.runtime.image.pil_bilinear_taps (Resample.c
    precompute_coeffs) operation by operation in float64, so the integers are the same; the taps' sum is
    sequential (CumSum), as Pillow's loop.
    """
    f64, i64 = TensorProto.DOUBLE, TensorProto.INT64
    n_blocks = -(-crop // block)
    padded = n_blocks * block
    # output pixels; a padded tail repeats the last one (its rows/columns are sliced off afterwards)
    offsets = np.minimum(np.arange(padded), crop - 1)
    out_index = b.op("Add", out_start, b.i64(offsets))
    scale = b.op("Div", b.cast(in_size, f64), b.cast(out_size, f64))
    filterscale = b.op("Max", scale, b.f64(1.0))
    support = b.op("Mul", filterscale, b.f64(_image.PIL_BILINEAR_SUPPORT))
    inverse = b.op("Div", b.f64(1.0), filterscale)
    center = b.op("Mul", b.op("Add", b.cast(out_index, f64), b.f64(0.5)), scale)
    half = b.f64(0.5)
    # int(center -/+ support + 0.5): truncation and floor agree once clamped at 0 (first) / positive (stop)
    first = b.op("Max", b.cast(b.op("Floor", b.op("Add", b.op("Sub", center, support), half)), i64), b.i64(0))
    stop = b.op("Min", b.cast(b.op("Floor", b.op("Add", b.op("Add", center, support), half)), i64), in_size)
    taps = b.op("Sub", stop, first)

    def triangle(pixel: str, centre: str) -> str:  # Pillow's bilinear filter at ((x - center) + 0.5) * (1 / fs)
        x = b.op("Mul", b.op("Add", b.op("Sub", b.cast(pixel, f64), centre), half), inverse)
        return b.op("Max", b.op("Sub", b.f64(1.0), b.op("Abs", x)), b.f64(0.0))

    zero = b.f64(0.0)
    # the sum of each output pixel's taps, in Pillow's order: (padded, K), zeros after its last tap
    k = b.op("Range", b.i64(0), b.op("ReduceMax", taps, keepdims=0), b.i64(1))
    column = b.op("Unsqueeze", first, b.i64([1]))
    k_pixels = b.op("Add", column, b.op("Unsqueeze", k, b.i64([0])))
    k_valid = b.op("Less", b.op("Unsqueeze", k, b.i64([0])), b.op("Unsqueeze", taps, b.i64([1])))
    k_weights = b.op("Where", k_valid, triangle(k_pixels, b.op("Unsqueeze", center, b.i64([1]))), zero)
    total = b.op("Gather", b.op("CumSum", k_weights, b.i64(1)),
                 b.op("Sub", b.op("ReduceMax", taps, keepdims=0), b.i64(1)), axis=1)
    total = b.op("Where", b.op("Equal", total, zero), b.f64(1.0), total)  # Pillow: no division by a zero sum

    # band of each block: its first output pixel's first tap to its last output pixel's stop (both monotone)
    block_first = b.op("Gather", first, b.i64(np.arange(n_blocks) * block))
    block_stop = b.op("Gather", stop, b.i64(np.arange(n_blocks) * block + block - 1))
    span = b.op("ReduceMax", b.op("Sub", block_stop, block_first), keepdims=0)
    pixels = b.op("Add", b.op("Unsqueeze", block_first, b.i64([1])),
                  b.op("Unsqueeze", b.op("Range", b.i64(0), span, b.i64(1)), b.i64([0])))  # (nb, S)
    index = b.op("Min", pixels, b.op("Sub", in_size, b.i64(1)))

    pixel_shape = [n_blocks, 1, block] if transposed else [n_blocks, block, 1]

    def per_pixel(x: str) -> str:  # (padded,) -> (nb, block, 1), or (nb, 1, block)
        return b.op("Reshape", x, b.i64(pixel_shape))

    grid = b.op("Unsqueeze", pixels, b.i64([2 if transposed else 1]))  # (nb, 1, S), or (nb, S, 1)
    relative = b.op("Sub", grid, per_pixel(first))
    valid = b.op("And", b.op("GreaterOrEqual", relative, b.i64(0)), b.op("Less", relative, per_pixel(taps)))
    normalised = b.op("Div", triangle(grid, per_pixel(center)), per_pixel(total))
    fixed = b.op("Floor", b.op("Add", b.op("Mul", normalised, b.f64(float(1 << _PRECISION))), half))
    weights = b.op("Where", valid, fixed, zero)  # (nb, block, S), or (nb, S, block)
    low = b.op("ReduceMin", block_first, keepdims=0)
    high = b.op("ReduceMax", index, keepdims=0)
    return index, weights, low, high


def _clip8(b: _Builder, sums: str) -> str:
    """Pillow's clip8 of exact float64 integer sums: (sum + 2**21) >> 22, clamped to 0..255, as uint8.

    Exact in float64: sum + 2**21 is an integer below 2**53 and the scaling is by a power of two; Floor
    first, so the Cast never has a fraction to round (float64 ops: int64 division is several times slower).
    """
    shifted = b.op("Floor", b.op("Mul", b.op("Add", sums, b.f64(float(1 << (_PRECISION - 1)))),
                                 b.f64(1.0 / (1 << _PRECISION))))
    return b.cast(b.op("Clip", shifted, b.f64(0.0), b.f64(255.0)), TensorProto.UINT8)


def _resize_crop_normalise(b: _Builder, frame: str, output: str, rows, columns, crop: int, block: int,
                           table: np.ndarray) -> None:
    """One (H, W, 3) uint8 frame -> (3, crop, crop) float32 in `output`, with the plans of `_axis_plan`."""
    row_index, row_weights, row_low, row_high = rows
    col_index, col_weights, _, _ = columns
    n_blocks = -(-crop // block)
    padded = n_blocks * block

    def unsqueeze0(x: str) -> str:  # scalar -> (1,)
        return b.op("Unsqueeze", x, b.i64([0]))

    # (Transposes below all move one axis past contiguous blocks: onnxruntime copies those fast, unlike
    # a general permutation of uint8 pixels, which cost more than the matrix products.)
    # horizontal pass, on the input rows the vertical pass reads: (nb, 3 * R, S_w) @ (nb, S_w, block)
    band = b.op("Slice", frame, unsqueeze0(row_low), unsqueeze0(b.op("Add", row_high, b.i64(1))), b.i64([0]))
    gathered = b.op("Gather", band, col_index, axis=1)  # (R, nb, S_w, 3) uint8
    n_rows = b.op("Add", b.op("Sub", row_high, row_low), b.i64(1))
    span_w = unsqueeze0(_dim(b, col_index, 1))
    # two transposes with a Reshape between, which keeps onnxruntime from merging them into a slow one
    planar = b.op("Transpose", b.op("Reshape", gathered, b.i64([-1, 3])), perm=[1, 0])  # (3, R * nb * S_w)
    planar = b.op("Reshape", planar, b.op("Concat", b.i64([3]), unsqueeze0(n_rows), b.i64([n_blocks]), span_w,
                                          axis=0))  # (3, R, nb, S_w)
    by_block = b.op("Transpose", planar, perm=[2, 0, 1, 3])  # (nb, 3, R, S_w)
    flat = b.op("Reshape", by_block, b.op("Concat", b.i64([n_blocks, -1]), span_w, axis=0))  # (nb, 3 * R, S_w)
    horizontal = _clip8(b, b.op("MatMul", b.cast(flat, TensorProto.DOUBLE), col_weights))  # (nb, 3 * R, block)
    shape = b.op("Concat", b.i64([n_blocks, 3]), unsqueeze0(n_rows), b.i64([block]), axis=0)
    horizontal = b.op("Transpose", b.op("Reshape", horizontal, shape), perm=[1, 2, 0, 3])  # (3, R, nb, block)
    horizontal = b.op("Reshape", horizontal, b.op("Concat", b.i64([3]), unsqueeze0(n_rows), b.i64([padded]),
                                                  axis=0))  # (3, R, padded)
    # vertical pass: (nb, block, S_h) @ (3, nb, S_h, padded), the weights broadcast over the channels
    picked = b.op("Gather", horizontal, b.op("Sub", row_index, row_low), axis=1)  # (3, nb, S_h, padded) uint8
    vertical = _clip8(b, b.op("MatMul", row_weights, b.cast(picked, TensorProto.DOUBLE)))  # (3, nb, block, pad)
    pixels = b.op("Reshape", vertical, b.i64([3, padded, padded]))
    if padded != crop:
        pixels = b.op("Slice", pixels, b.i64([0, 0]), b.i64([crop, crop]), b.i64([1, 2]))
    # ToTensor + Normalize as a lookup: index = level + 256 * channel
    level = b.op("Add", b.cast(pixels, TensorProto.INT64), b.i64(256 * np.arange(3).reshape(3, 1, 1)))
    b.op("Gather", b.const(table, np.float32), level, axis=0, output=output)


def _normalise_table(mean, std) -> np.ndarray:
    """(3 * 256,) float32: channel c, level v -> float32(v * (1 / (255 std_c)) + (-mean_c / std_c)), float64 inside."""
    std = np.asarray(std, dtype=np.float64)
    scale = 1.0 / (255.0 * std)
    offset = -np.asarray(mean, dtype=np.float64) / std
    levels = np.arange(256, dtype=np.float64)
    return (levels[None, :] * scale[:, None] + offset[:, None]).astype(np.float32).reshape(-1)


def build_video_frontend(resize: int = _image.RESIZE, crop: int = _image.CROP, mean=_image.IMAGENET_MEAN,
                         std=_image.IMAGENET_STD, *, window_frames: int = WINDOW_STEPS, windowed: bool = True,
                         opset: int = OPSET, ir_version: int = IR_VERSION) -> onnx.ModelProto:
    """ONNX model: ``frames`` uint8 (T, H, W, 3) + ``hop_frames`` int64 () -> ``frames_nchw`` (W, 15, 3, crop, crop).

    Bit-identical to `tivm.runtime.image.preprocess_frames(frames, resize, crop, mean, std)` then
    `window_starts`/``loop_pad`` windows (see the module docstring). H and W must be >= 1. windowed=False:
    no ``hop_frames`` input, output ``frames_steps`` (T, 3, crop, crop), for apps that window themselves.
    """
    if not 0 < crop <= resize:
        raise ValueError(f"need 0 < crop <= resize, got crop={crop}, resize={resize}")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std must be 3 values, std > 0; got {mean}, {std}")
    b = _Builder("frontend_video/")
    block = min(RESAMPLE_BLOCK, crop)
    height, width = _dim(b, VIDEO_INPUT, 1), _dim(b, VIDEO_INPUT, 2)
    out_h, out_w = _resized_sizes(b, height, width, resize)
    top, left = _crop_offset(b, out_h, crop), _crop_offset(b, out_w, crop)
    rows = _axis_plan(b, height, out_h, top, crop, block)
    columns = _axis_plan(b, width, out_w, left, crop, block, transposed=True)
    # one frame at a time (Scan), so working memory is one frame's, however many frames come in
    body = _Builder("frontend_video/frame/")
    frame_in, frame_out = body.prefix + "rgb", body.prefix + "normalised"
    _resize_crop_normalise(body, frame_in, frame_out, rows, columns, crop, block, _normalise_table(mean, std))
    body_graph = helper.make_graph(
        body.nodes, "tivm_video_frame", [helper.make_tensor_value_info(frame_in, TensorProto.UINT8, None)],
        [helper.make_tensor_value_info(frame_out, TensorProto.FLOAT, None)], initializer=body.initializers)
    steps = _scan_or_empty(b, body_graph, VIDEO_INPUT, _dim(b, VIDEO_INPUT, 0), (3, crop, crop),
                           None if windowed else VIDEO_STEPS)  # (T, 3, crop, crop)
    if windowed:
        _add_windows(b, steps, VIDEO_HOP, window_frames, VIDEO_OUTPUT)

    inputs = [helper.make_tensor_value_info(VIDEO_INPUT, TensorProto.UINT8, ["time", "height", "width", 3])]
    if windowed:
        inputs.append(helper.make_tensor_value_info(VIDEO_HOP, TensorProto.INT64, []))
        outputs = [helper.make_tensor_value_info(VIDEO_OUTPUT, TensorProto.FLOAT,
                                                 ["windows", window_frames, 3, crop, crop])]
    else:
        outputs = [helper.make_tensor_value_info(VIDEO_STEPS, TensorProto.FLOAT, ["time", 3, crop, crop])]
    doc = (f"tivm video front end: Resize({resize}) (PIL bilinear), CenterCrop({crop}), ToTensor, "
           f"Normalize(mean={list(map(float, mean))}, std={list(map(float, std))})"
           + (f", windows of {window_frames}" if windowed else ""))
    return b.model("tivm_video_frontend", inputs, outputs, doc, opset, ir_version)
