"""A small, randomly initialised TIVM checkpoint exported by the real exporter as full branches.

VGGish carries random weights in its official file format (the real ones cannot be downloaded here),
drawn so that its embedding depends on the sound (see `save_responsive_vggish`); EfficientNet-Lite0
carries its real ImageNet weights. The same checkpoint is exported twice, float32
(`--quantize none`) and int8, so end-to-end tests can compare the runtime with PyTorch and int8 with float.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from tivm.export.pipeline import ExportOptions, export_model
from tivm.train import backbones
from tivm.train.checkpoint import save_checkpoint
from tivm.train.config import load_config
from tivm.train.heads import build_model

CONFIGURATION = "TIVM"
# small widths: the paper's layers and ops (Transformer encoder, MLP) at a size that exports in seconds
SMALL_HEAD = {"hidden": [64, 48], "lstm_hidden": 16, "encoder_dim": 32, "transformer_heads": 4,
              "transformer_ff": 64}
AUDIO_DIM, VIDEO_DIM = 128, 1000  # VGGish embeddings, EfficientNet-Lite0 logits
AUDIO_BACKBONE, VIDEO_BACKBONE = "vggish", "efficientnet-lite0"
VGGISH_FILE = "vggish-10086976.pth"  # the official conversion's file name
NUM_CALIBRATION, NUM_VALIDATION = 2, 1  # 15 s windows: enough to calibrate, few enough to stay quick
EXPORT_THREADS = 2


@dataclass(frozen=True)
class ExportedModels:
    """One checkpoint and its two exports (model directories)."""

    run: Path
    vggish_weights: Path
    fp32: Path
    int8: Path
    reports: dict  # quantize -> export_model's report


def make_checkpoint(run_dir: Path, seed: int = 0) -> Path:
    """A TIVM run directory with random heads over 128-d audio / 1000-d video features."""
    config = load_config(CONFIGURATION)
    config["model"].update(SMALL_HEAD)
    torch.manual_seed(seed)
    model = build_model(config, AUDIO_DIM, VIDEO_DIM).eval()
    save_checkpoint(run_dir, model, data={"fingerprint": f"{seed:064x}", "spec": "synthetic:n=80",
                                          "manifest": {"source": "synthetic"}})
    return run_dir


def save_responsive_vggish(path: Path, seed: int = 0) -> Path:
    """Random VGGish weights in the official file's keys, shapes and (legacy) format, He-initialised.

    `backbones.save_random_weights` keeps PyTorch's default initialisation, under which VGGish's activations
    shrink layer by layer until its biases dominate: on real songs its 128-d output varies by 4e-4 around a
    mean of 8e-3, and every song embeds to the same vector (pairwise cosine >= 0.99997), so no test could
    tell right audio from wrong. He initialisation (normal, std sqrt(2 / fan_in), zero biases) keeps the
    activations' scale through the ReLUs, so different sounds give different embeddings.
    """
    generator = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, value in backbones.random_state_dict(AUDIO_BACKBONE, seed).items():
        if value.ndim >= 2:
            fan_in = value[0].numel()
            value = torch.randn(value.shape, generator=generator) * math.sqrt(2.0 / fan_in)
        elif key.endswith("bias"):
            value = torch.zeros_like(value)
        state[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path, _use_new_zipfile_serialization=False)  # as the official conversion was saved
    return path


def export_full(run_dir: Path, out_dir: Path, vggish_weights: Path, calibration: Path, quantize: str,
                branch_kind: str = "full") -> dict:
    """Both branches as backbone + head (or, branch_kind="raw", front end + backbone + head), through the same
    call `tivm-export` makes."""
    options = ExportOptions(quantize=quantize, branch_kind=branch_kind, audio_backbone=AUDIO_BACKBONE,
                            video_backbone=VIDEO_BACKBONE, audio_weights=str(vggish_weights),
                            calibration=str(calibration), num_calibration=NUM_CALIBRATION,
                            num_validation=NUM_VALIDATION, threads=EXPORT_THREADS, progress=False,
                            download=False)
    return export_model(run_dir, out_dir, options)


def build_models(root: Path, calibration: Path) -> ExportedModels:
    """Checkpoint + random official-format VGGish weights + float32 and int8 exports under `root`.

    `calibration`: a media folder whose files have both audio and video (the clips), for int8 calibration
    and held-out validation.
    """
    run = make_checkpoint(root / "run")
    weights = save_responsive_vggish(root / "weights" / VGGISH_FILE)
    reports = {q: export_full(run, root / f"model {q}", weights, calibration, q) for q in ("none", "int8")}
    return ExportedModels(run=run, vggish_weights=weights, fp32=root / "model none", int8=root / "model int8",
                          reports=reports)
