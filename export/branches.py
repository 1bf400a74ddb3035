"""What each exported branch is: a head over backbone features ("head"), or backbone + head as one module
("full"). The head is the trained part (tivm.train.heads.Head); a branch is what becomes one ONNX file.

A checkpoint trained on `tivm-features` data (its data-set manifest names the backbones) exports "full"
branches by default; one trained on YouTube-8M or synthetic features exports "head" branches over (B, T, D)
features. A full branch can also be asked for explicitly whenever the head's input width matches a backbone's
output (128 for VGGish, 1000 for ResNet-50 / EfficientNet-Lite0 logits).

    plans = plan_branches(model, record, kind="auto")        # {"audio": BranchPlan, "video": BranchPlan}
    plan.module(x)                                            # (B, T, *plan.step_shape) -> (B, 512)
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tivm.runtime import manifest as runtime_manifest
from tivm.runtime.errors import ModelError
from tivm.train import backbones
from tivm.train import weights as weight_files
from tivm.train.vggish import MEL_BANDS, PATCH_FRAMES

BRANCH_NAMES = ("audio", "video")
KINDS = ("auto", "full", "head")
FEATURES_SOURCE = "tivm-features"  # data sets computed from media by tivm's own front ends and backbones
DEFAULT_BACKBONE = {"audio": "vggish", "video": "resnet50"}
INPUT_NAMES = {("audio", "full"): "patches", ("video", "full"): "frames", ("audio", "head"): "features",
               ("video", "head"): "features"}
OUTPUT_NAME = "embedding"
IMAGE_CHANNELS = 3
DEFAULT_CLIP_SECONDS = 15.0


class Branch(nn.Module):
    """A full branch: the backbone on every step, then the trained head: (B, T, *step) -> (B, 512). Its
    attribute names are the ONNX graph's scopes: tivm.export.quantize finds the head by "head"."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time = x.shape[0], x.shape[1]
        features = self.backbone(x.flatten(0, 1))  # (B*T, D): the backbone sees one step at a time
        return self.head(features.reshape(batch, time, -1))


@dataclass
class BranchPlan:
    """One branch to export: the float module, its input layout, and where its parts came from."""

    name: str  # "audio" | "video"
    kind: str  # "full" | "head"
    module: nn.Module
    step_shape: tuple[int, ...]  # one time step of the input: (96, 64), (3, 224, 224) or (D,)
    feature_dim: int  # D of the head's (B, T, D) input
    frontend: dict[str, Any]
    backbone: str | None = None
    backbone_weights: str | None = None  # file used
    backbone_weights_sha256: str | None = None
    backbone_options: dict[str, Any] = field(default_factory=dict)

    @property
    def input_name(self) -> str:
        return INPUT_NAMES[(self.name, self.kind)]

    @property
    def input_shape(self) -> tuple[int | str, ...]:
        return ("batch", "time", *self.step_shape)


# ------------------------------------------------------------------------------------------ data manifest

def data_manifest(record: dict) -> dict:
    """The training data set's manifest stored in a checkpoint record ({} when absent)."""
    data = record.get("data") or {}
    manifest = data.get("manifest") if isinstance(data, dict) else None
    return manifest if isinstance(manifest, dict) else {}


def trained_backbone(record: dict, branch: str) -> str | None:
    """The backbone a tivm-features data set names for `branch`, or None (other data, or not named)."""
    manifest = data_manifest(record)
    if manifest.get("source") != FEATURES_SOURCE:
        return None
    block = manifest.get(branch) or {}
    name = block.get("backbone") if isinstance(block, dict) else None
    return str(name) if name else None


def resolve_kind(kind: str, record: dict) -> str:
    """"full" or "head" for the whole model; "auto" follows the training data (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"--branch-kind must be one of {KINDS}, got {kind!r}")
    if kind != "auto":
        return kind
    named = [trained_backbone(record, b) for b in BRANCH_NAMES]
    return "full" if all(named) else "head"


# ------------------------------------------------------------------------------------------ planning

def plan_branches(model: nn.Module, record: dict, kind: str = "auto", *,
                  audio_backbone: str | None = None, video_backbone: str | None = None,
                  audio_weights: str | os.PathLike | None = None, video_weights: str | os.PathLike | None = None,
                  vggish_postprocess: str | None = None, pca_params: str | os.PathLike | None = None,
                  weights_dir: str | os.PathLike | None = None, download: bool = True) -> dict[str, BranchPlan]:
    """A BranchPlan per branch of a loaded checkpoint (model in eval mode, record from load_checkpoint).

    `weights_dir`: a folder holding official weight files under their official names, looked up before the
    cache (as `tivm-features --weights`).
    """
    resolved = resolve_kind(kind, record)
    heads = {"audio": model.audio_head.eval(), "video": model.video_head.eval()}
    if resolved == "head":
        return {name: head_plan(name, heads[name], record) for name in BRANCH_NAMES}
    chosen = {name: (audio_backbone, video_backbone)[i] or trained_backbone(record, name) or DEFAULT_BACKBONE[name]
              for i, name in enumerate(BRANCH_NAMES)}
    weights = {"audio": audio_weights or official_file_in(weights_dir, chosen["audio"]),
               "video": video_weights or official_file_in(weights_dir, chosen["video"])}
    pca_params = pca_params or pca_file_in(weights_dir)
    return {name: full_plan(name, heads[name], record, chosen[name], weights[name],
                            vggish_postprocess=vggish_postprocess, pca_params=pca_params, download=download)
            for name in BRANCH_NAMES}


def official_file_in(weights_dir: str | os.PathLike | None, backbone_name: str) -> Path | None:
    """`weights_dir/<official file name>` of a backbone, when that file is there."""
    spec = backbones.get_backbone(backbone_name).weights
    if weights_dir is None or spec is None:
        return None
    candidate = Path(weights_dir) / spec.filename
    return candidate if candidate.is_file() else None


def pca_file_in(weights_dir: str | os.PathLike | None) -> Path | None:
    if weights_dir is None:
        return None
    for spec in (weight_files.VGGISH_PCA_NPZ, weight_files.VGGISH_PCA_PTH):
        if (Path(weights_dir) / spec.filename).is_file():
            return Path(weights_dir) / spec.filename
    return None


def head_plan(name: str, head: nn.Module, record: dict) -> BranchPlan:
    """A head over per-second features; its "front end" records what computed the training features."""
    dim = int(head.in_dim)
    manifest = data_manifest(record)
    frontend = {"features": manifest.get(name, {}), "source": manifest.get("source", "unknown")}
    return BranchPlan(name=name, kind="head", module=head, step_shape=(dim,), feature_dim=dim, frontend=frontend)


def full_plan(name: str, head: nn.Module, record: dict, backbone_name: str,
              weights: str | os.PathLike | None, *, vggish_postprocess: str | None = None,
              pca_params: str | os.PathLike | None = None, download: bool = True) -> BranchPlan:
    """Backbone (official weights, loaded strictly) + head, checked to fit each other."""
    spec = backbones.get_backbone(backbone_name)
    if spec.modality != name:
        raise ValueError(f"{backbone_name} is a {spec.modality} backbone; it cannot feed the {name} branch")
    if spec.feature_dim != int(head.in_dim):
        raise ModelError(f"the {name} head takes {head.in_dim}-d features but {backbone_name} gives "
                         f"{spec.feature_dim}-d ones: export this checkpoint with --branch-kind head")
    options: dict[str, Any] = {}
    if name == "audio":
        options["postprocess"] = vggish_postprocess or _trained_postprocess(record)
        module, used = backbones.load_backbone(backbone_name, weights, download=download,
                                               postprocess=options["postprocess"], pca_params=pca_params)
        step_shape = (PATCH_FRAMES, MEL_BANDS)
        frontend = runtime_manifest.audio_frontend()
    else:
        module, used = backbones.load_backbone(backbone_name, weights, download=download)
        crop = int(spec.image_preprocessing.get("crop", 224))
        step_shape = (IMAGE_CHANNELS, crop, crop)
        frontend = runtime_manifest.video_frontend(fps=_trained_fps(record), **spec.image_preprocessing)
    _warn_if_frontend_differs(name, frontend, record)
    plan = BranchPlan(name=name, kind="full", module=Branch(module.eval(), head).eval(), step_shape=step_shape,
                      feature_dim=spec.feature_dim, frontend=frontend, backbone=backbone_name,
                      backbone_weights=str(used), backbone_weights_sha256=runtime_manifest.file_sha256(used),
                      backbone_options=options)
    return plan


def _trained_postprocess(record: dict) -> str:
    """VGGish post-processing of the training features ("none" when the data set does not say)."""
    block = data_manifest(record).get("audio") or {}
    value = block.get("postprocess") if isinstance(block, dict) else None
    return str(value) if value else "none"


def _trained_fps(record: dict) -> float:
    block = data_manifest(record).get("video") or {}
    frontend = block.get("frontend") if isinstance(block, dict) else None
    if isinstance(frontend, dict) and "fps" in frontend:
        return float(frontend["fps"])
    return 1.0


def _warn_if_frontend_differs(name: str, frontend: dict, record: dict) -> None:
    """Full export of a model whose training features were computed with another front end: say so."""
    block = data_manifest(record).get(name) or {}
    trained = block.get("frontend") if isinstance(block, dict) else None
    if isinstance(trained, dict) and trained and trained != frontend:
        differing = sorted(k for k in set(trained) | set(frontend) if trained.get(k) != frontend.get(k))
        warnings.warn(f"{name}: the training features' front end differs from the one exported in {differing}",
                      stacklevel=2)
