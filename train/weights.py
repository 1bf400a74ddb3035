"""Pretrained weight files: where they come from, where they are cached, and loading them safely.

A file is resolved from an explicit path, or from the cache (`$TIVM_HOME/weights`, default the user cache
folder + `tivm/weights`: `tivm.runtime.files.cache_root`), which is filled from the official URL on first use
with sha256 verification. Files are only ever read with `torch.load(weights_only=True)` or
`np.load(allow_pickle=False)`: nothing is unpickled beyond tensors and plain arrays.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tivm.runtime.errors import ModelError
from tivm.runtime.files import atomic_write
from tivm.runtime.manifest import file_sha256  # one hashing routine for weights, models and songs

HOME_ENV = "TIVM_HOME"  # tivm.runtime.files.HOME_ENV, named here for the messages
WEIGHTS_SUBDIR = "weights"
DOWNLOAD_CHUNK = 1 << 20
DOWNLOAD_TIMEOUT_S = 30
# what a state-dict check lists before it summarises ("... and N more")
MAX_LISTED_KEYS = 8
# BatchNorm's step counter is not needed for inference and old checkpoints omit it
OPTIONAL_KEY_SUFFIXES = ("num_batches_tracked",)


class WeightsError(ModelError):
    """A weight file that is missing, cannot be downloaded, fails its checksum or does not fit the model."""


@dataclass(frozen=True)
class WeightSpec:
    """One official weight file. `sha256` is the full digest or, as torch.hub names files, its prefix."""

    filename: str
    url: str
    sha256: str
    description: str

    def matches(self, digest: str) -> bool:
        return digest.startswith(self.sha256.lower())


VGGISH = WeightSpec(
    filename="vggish-10086976.pth",
    url="https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth",
    sha256="10086976",
    description="VGGish network weights (harritaylor/torchvggish conversion of the TensorFlow AudioSet model)",
)
VGGISH_PCA_NPZ = WeightSpec(
    filename="vggish_pca_params.npz",
    url="https://storage.googleapis.com/audioset/vggish_pca_params.npz",
    sha256="4d878af3e306defbfb37095365aa7e5a6cecb86bad13e859e626151c4e6a8b9d",
    description="VGGish/AudioSet PCA parameters (Google's official npz)",
)
VGGISH_PCA_PTH = WeightSpec(
    filename="vggish_pca_params-970ea276.pth",
    url="https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish_pca_params-970ea276.pth",
    sha256="970ea276",
    description="VGGish/AudioSet PCA parameters (torchvggish conversion)",
)
RESNET50_V1 = WeightSpec(
    filename="resnet50-0676ba61.pth",
    url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
    sha256="0676ba61",
    description="ResNet-50 ImageNet weights (torchvision IMAGENET1K_V1)",
)
RESNET50_V2 = WeightSpec(
    filename="resnet50-11ad3fa6.pth",
    url="https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    sha256="11ad3fa6",
    description="ResNet-50 ImageNet weights (torchvision IMAGENET1K_V2)",
)

# numpy objects a PCA .pth may hold; allowed to the weights-only unpickler, nothing else is
_NUMPY_SAFE_GLOBALS = [
    np._core.multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    type(np.dtype(np.float64)),
    type(np.dtype(np.float32)),
]


def weights_home() -> Path:
    """The cache folder for weight files."""
    from tivm.runtime.files import cache_root  # one cache root for weights, graphs and indexes

    return cache_root() / WEIGHTS_SUBDIR


def resolve_weights(spec: WeightSpec, path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The local file for `spec`: `path` if given (used as is), else the verified cached copy.

    A cache miss downloads the official file (when `download`); every failure says which file to put where.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"{path}: weight file not found ({spec.description})")
        return path
    cached = weights_home() / spec.filename
    if cached.is_file():
        digest = file_sha256(cached)
        if spec.matches(digest):
            return cached
        raise WeightsError(
            f"{cached}: sha256 {digest} does not match the official {spec.sha256}; "
            f"delete it and download {spec.url} again"
        )
    if not download:
        raise WeightsError(_missing_message(spec, cached, reason="not in the cache"))
    download_file(spec, cached)
    return cached


def _missing_message(spec: WeightSpec, cached: Path, reason: str) -> str:
    return (
        f"{cached}: {spec.description} {reason}. Download {spec.url} and save it as {cached} "
        f"(or set {HOME_ENV} to the folder holding weights/{spec.filename}, or pass the file's path explicitly)"
    )


def download_file(spec: WeightSpec, destination: Path) -> None:
    """Download to a temporary file beside `destination`, verify sha256, then rename atomically."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_write(destination) as out:
            digest = _stream_url(spec, out)
            if not spec.matches(digest):
                raise WeightsError(
                    f"{spec.url}: downloaded file has sha256 {digest}, expected {spec.sha256}; "
                    "the download was deleted (corrupt or changed upstream)"
                )
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        raise WeightsError(_missing_message(spec, destination, reason=f"could not be downloaded ({error})")) from None


def _stream_url(spec: WeightSpec, out) -> str:
    digest = hashlib.sha256()
    with urllib.request.urlopen(spec.url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=spec.filename) as bar:
            for chunk in iter(lambda: response.read(DOWNLOAD_CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    return digest.hexdigest()


def load_torch_file(path: str | os.PathLike, allow_numpy: bool = False):
    """`torch.load` on CPU, weights only; a file that is not a checkpoint gives a WeightsError."""
    try:
        if allow_numpy:
            with torch.serialization.safe_globals(_NUMPY_SAFE_GLOBALS):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file; all mean "not usable"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsError(f"{path}: not a readable PyTorch weights file ({first_line})") from None


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    state = load_torch_file(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    return dict(state)


def check_state_dict(
    state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str, path=None
) -> None:
    """Raise WeightsError unless `state_dict` has exactly the expected keys and shapes."""
    optional = {k for k in expected if k.endswith(OPTIONAL_KEY_SUFFIXES)}
    missing = sorted(set(expected) - set(state_dict) - optional)
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [
        f"{k} {tuple(state_dict[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong_shape)):
        if items:
            shown = ", ".join(items[:MAX_LISTED_KEYS])
            more = f" and {len(items) - MAX_LISTED_KEYS} more" if len(items) > MAX_LISTED_KEYS else ""
            problems.append(f"{label}: {shown}{more}")
    if problems:
        where = f"{path}: " if path is not None else ""
        raise WeightsError(f"{where}these are not {what} weights: " + "; ".join(problems))


def load_into(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str, path=None) -> None:
    """Strictly load a checkpoint into `module` (keys and shapes checked first, with a clear message)."""
    check_state_dict(state_dict, module.state_dict(), what, path)
    # optional keys (BatchNorm counters) may be absent; all others are guaranteed present by the check
    result = module.load_state_dict(state_dict, strict=False)
    leftover = [k for k in result.missing_keys if not k.endswith(OPTIONAL_KEY_SUFFIXES)]
    if leftover or result.unexpected_keys:
        raise WeightsError(f"{path}: {what} weights did not load: {leftover + list(result.unexpected_keys)}")


def load_pca_params(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(pca_eigen_vectors (128, 128), pca_means (128,)) float64 from the official .npz or the .pth conversion."""
    path = Path(path)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                params = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as error:
            raise WeightsError(f"{path}: not a readable npz file ({error})") from None
    else:
        params = load_torch_file(path, allow_numpy=True)
        if not isinstance(params, dict):
            raise WeightsError(f"{path}: expected a mapping with pca_eigen_vectors and pca_means")
    for key in ("pca_eigen_vectors", "pca_means"):
        if key not in params:
            raise WeightsError(f"{path}: no {key!r} in the PCA parameters (found {sorted(params)})")
    vectors = _as_float64(params["pca_eigen_vectors"])
    means = _as_float64(params["pca_means"]).reshape(-1)  # some ports store a (128, 1) column
    if vectors.shape != (128, 128) or means.shape != (128,):
        raise WeightsError(f"{path}: PCA shapes {vectors.shape} and {means.shape}, expected (128, 128) and (128,)")
    return vectors, means


def _as_float64(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)
