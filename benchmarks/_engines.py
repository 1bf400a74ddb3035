"""The things timed: the PyTorch fp32 eager reference and onnxruntime model dirs, one branch at a time.

PyTorch reference = the backbone loaded by tivm.train.backbones (the same weights file the export used) and
the checkpoint's head, run eagerly under torch.inference_mode. onnxruntime = the exported "full"
graph (backbone + head in one file) through tivm.runtime.model, and the "head" export of the same
checkpoint for the head alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VIDEO_BACKBONES = ("resnet50", "efficientnet-lite0")
AUDIO_BACKBONE = "vggish"
BRANCHES = VIDEO_BACKBONES + (AUDIO_BACKBONE,)
PRECISIONS = ("fp32", "int8", "int8-amx", "fp16")
# precision -> (tivm-export --quantize, --int8-target); int8-amx: the same int8 arithmetic, deep convolutions
# laid out for onnxruntime's AMX-capable GEMM (tivm.export.quantize)
EXPORT_FLAGS = {"fp32": ("none", None), "int8": ("int8", None), "int8-amx": ("int8", "amx"), "fp16": ("fp16", None)}
HEAD_PRECISION = {"int8-amx": "int8"}  # heads have no convolutions: the amx target writes the int8 head file
SPEED_PRECISIONS = ("fp32", "int8", "int8-amx")  # the ones the scaling sections compare
REFERENCE = "pytorch-fp32"


def modality(backbone: str) -> str:
    return "audio" if backbone == AUDIO_BACKBONE else "video"


def engine_name(precision: str) -> str:
    return f"onnxruntime-{precision}"


@dataclass
class TorchBranch:
    """Backbone + head as PyTorch modules, eval mode."""

    backbone: object
    head: object

    @classmethod
    def load(cls, backbone_name: str, weights: Path, checkpoint: Path) -> "TorchBranch":
        from tivm.train.backbones import load_backbone
        from tivm.train.checkpoint import load_checkpoint

        backbone, _ = load_backbone(backbone_name, weights)
        model, _ = load_checkpoint(checkpoint)
        head = model.audio_head if modality(backbone_name) == "audio" else model.video_head
        return cls(backbone.eval(), head.eval())

    def features(self, steps: np.ndarray):
        import torch

        with torch.inference_mode():
            return self.backbone(torch.from_numpy(np.ascontiguousarray(steps, np.float32)))

    def embed_features(self, features):
        import torch

        with torch.inference_mode():
            return self.head(torch.as_tensor(features)[None])

    def embed(self, steps: np.ndarray):
        return self.embed_features(self.features(steps))


def set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def ort_branch(model_dir: Path, backbone_name: str, threads: int):
    """The tivm.runtime.model Branch of `model_dir` for this backbone's modality: that session only (the
    other branch is not opened), kept for the rest of the run so each section does not build it again.
    The runtime's own load checks (sha256, front end) are exercised by the tests and the end-to-end section."""
    from tivm.runtime.manifest import read_manifest
    from tivm.runtime.model import AudioBranch, VideoBranch

    name = modality(backbone_name)
    spec = read_manifest(Path(model_dir)).branch(name)
    branch_cls = AudioBranch if name == "audio" else VideoBranch
    return branch_cls(name, Path(model_dir) / spec.file, spec, intra_op_threads=threads)


def preprocess_args(backbone_name: str) -> dict:
    from tivm.train.backbones import get_backbone

    return dict(get_backbone(backbone_name).image_preprocessing)
