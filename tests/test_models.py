"""Models, losses, metrics and the synthetic generator against shapes and small numpy references."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tivm.train import losses, metrics, synthetic
from tivm.train.config import CONFIG_NAMES, EMBED_DIM, config_path, load_config, packaged_configs
from tivm.train.heads import build_model, count_parameters

AUDIO_DIM, VIDEO_DIM = 128, 1000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------- models

@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_configuration_embeds_any_length_to_unit_vectors(name):
    torch.manual_seed(0)
    model = build_model(name, AUDIO_DIM, VIDEO_DIM).eval()
    for t in (1, 7, 15):
        a = model.audio_head(torch.randn(3, t, AUDIO_DIM))
        v = model.video_head(torch.randn(3, t, VIDEO_DIM))
        assert a.shape == v.shape == (3, EMBED_DIM)
        np.testing.assert_allclose(a.norm(dim=-1).detach().numpy(), 1.0, atol=1e-5)
        np.testing.assert_allclose(v.norm(dim=-1).detach().numpy(), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", ["LIVM", "TIVM"])
def test_temporal_models_have_the_papers_size(name):
    n = count_parameters(build_model(name, AUDIO_DIM, VIDEO_DIM))
    assert 10_000_000 <= n <= 20_000_000, n


def test_mean_models_ignore_order_and_temporal_models_do_not():
    torch.manual_seed(0)
    x = torch.randn(2, 15, AUDIO_DIM)
    shuffled = x[:, torch.randperm(15)]
    for name, invariant in (("VM-M", True), ("VM-MS", True), ("VM-R", True), ("LIVM", False), ("TIVM", False)):
        head = build_model(name, AUDIO_DIM, VIDEO_DIM).eval().audio_head
        same = torch.allclose(head(x), head(shuffled), atol=1e-5)
        assert same == invariant, name


def test_input_statistics_are_buffers_that_standardise():
    model = build_model("IVM-M", 4, 3).eval()
    mean, std = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0, 0.5, 1e-9])
    x = torch.randn(5, 2, 4)
    before = model.audio_head(x)
    model.audio_head.set_input_stats(mean, std)
    state = model.state_dict()
    assert torch.equal(state["audio_head.input_mean"], torch.tensor(mean, dtype=torch.float32))
    assert state["audio_head.input_std"][3] == pytest.approx(1e-3)  # constant features floored, not divided by 0
    shifted = x * torch.tensor(std, dtype=torch.float32).clamp_min(1e-3) + torch.tensor(mean, dtype=torch.float32)
    torch.testing.assert_close(model.audio_head(shifted), before, atol=1e-5, rtol=1e-4)


def test_configs_are_documented_files_that_a_user_can_copy(tmp_path):
    for name in CONFIG_NAMES:
        raw = json.loads(config_path(name).read_text())
        assert raw["name"] == name and raw["description"] and raw["doc"]["model"]
    raw = json.loads(config_path("TIVM").read_text())
    raw["model"]["transformer_layers"] = 1
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps(raw))
    smaller = build_model(load_config(mine), AUDIO_DIM, VIDEO_DIM)
    assert count_parameters(smaller) < count_parameters(build_model("TIVM", AUDIO_DIM, VIDEO_DIM))
    for name in packaged_configs():  # the variants too: every packaged file builds
        assert load_config(name)["name"].upper() == name and build_model(name, 4, 6)
    with pytest.raises(ValueError, match="unknown configuration|no such config"):
        load_config("XVM")


# ---------------------------------------------------------------------------------------------- losses

def _unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def test_info_nce_matches_numpy():
    rng = np.random.default_rng(0)
    a, v = _unit(rng, 5, 8), _unit(rng, 5, 8)
    scale = 1 / 0.07
    logits = scale * v @ a.T
    expected = -0.5 * (np.mean(np.diag(_log_softmax(logits))) + np.mean(np.diag(_log_softmax(logits.T))))
    got = losses.info_nce(torch.tensor(a), torch.tensor(v), scale)
    assert float(got) == pytest.approx(expected, rel=1e-9)


def test_info_nce_hand_computed_2x2():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # perfect pairs at temperature 1: each row is softmax([1, 0]) -> loss log(1 + e^-1)
    assert float(losses.info_nce(a, a.clone(), 1.0)) == pytest.approx(math.log(1 + math.exp(-1)))


def _triplet_reference(a, v, margin, q):
    n = len(a)
    d = np.linalg.norm(v[:, None, :] - a[None, :, :], axis=-1)  # d[i, j] = |v_i - a_j|
    hinges = []
    for i in range(n):
        for j in range(n):
            if i != j:
                hinges.append(max(0.0, margin + d[i, i] - d[i, j]))  # video anchor i, audio negative j
    for j in range(n):
        for i in range(n):
            if i != j:
                hinges.append(max(0.0, margin + d[j, j] - d[i, j]))  # audio anchor j, video negative i
    return float(np.mean(sorted(hinges, reverse=True)[:q]))


@pytest.mark.parametrize("q", [1, 7, 200])
def test_triplet_top_q_matches_brute_force(q):
    rng = np.random.default_rng(1)
    a, v = _unit(rng, 6, 4), _unit(rng, 6, 4)
    got = losses.triplet_top_q(torch.tensor(a), torch.tensor(v), margin=0.3, top_q=q)
    assert float(got) == pytest.approx(_triplet_reference(a, v, 0.3, q), rel=1e-7)


def _structure_reference(x, e, k, scale):
    n = len(x)
    dx = np.linalg.norm(x[:, None] - x[None], axis=-1)
    de = np.linalg.norm(e[:, None] - e[None], axis=-1)
    terms = []
    for i in range(n):
        order = [j for j in np.argsort(dx[i]) if j != i][:k]
        for p in range(k):
            for r in range(p + 1, k):
                j, m = order[p], order[r]
                terms.append(abs(np.sign(dx[i, j] - dx[i, m]) - np.tanh((de[i, j] - de[i, m]) / scale)) / 2)
    return float(np.mean(terms))


def test_soft_structure_matches_loops():
    rng = np.random.default_rng(2)
    x, e = rng.standard_normal((9, 5)), _unit(rng, 9, 4)
    got = losses.soft_structure(torch.tensor(x), torch.tensor(e), k=4, scale=0.2)
    assert float(got) == pytest.approx(_structure_reference(x, e, 4, 0.2), rel=1e-6)


def test_soft_structure_is_low_when_the_embedding_keeps_the_order():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20, 3))
    kept = x / 10.0  # distances shrink but keep their order (unit_distances needs unit vectors: use a sphere cap)
    sphere = np.concatenate([kept, np.ones((20, 1))], axis=1)
    sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)
    shuffled = sphere[rng.permutation(20)]
    good = float(losses.soft_structure(torch.tensor(x), torch.tensor(sphere), k=5, scale=0.01))
    bad = float(losses.soft_structure(torch.tensor(x), torch.tensor(shuffled), k=5, scale=0.01))
    assert good < 0.2 < bad


def test_vmnet_loss_is_triplet_plus_weighted_structure():
    rng = np.random.default_rng(4)
    a, v = torch.tensor(_unit(rng, 12, 6)), torch.tensor(_unit(rng, 12, 6))
    xa, xv = torch.tensor(rng.standard_normal((12, 3))), torch.tensor(rng.standard_normal((12, 5)))
    total = losses.vmnet_loss(a, v, xa, xv, margin=0.2, top_q=10, structure_k=4, structure_weight=1.0)
    parts = (losses.triplet_top_q(a, v, 0.2, 10)
             + 0.5 * (losses.soft_structure(xa, a, 4) + losses.soft_structure(xv, v, 4)))
    assert float(total) == pytest.approx(float(parts))


# ---------------------------------------------------------------------------------------------- metrics

def _brute_force_recall(q, g, k):
    hits = 0
    for i in range(len(q)):
        sims = g @ q[i]
        rank = 1 + sum(1 for j in range(len(g)) if j != i and sims[j] >= sims[i])
        hits += rank <= k
    return 100.0 * hits / len(q)


def test_recall_matches_brute_force():
    rng = np.random.default_rng(5)
    a = _unit(rng, 60, 8).astype(np.float32)
    v = (a + 0.8 * rng.standard_normal(a.shape)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    m = metrics.retrieval_metrics(a, v)
    for k in metrics.RECALL_KS:
        assert m["recall"][str(k)] == pytest.approx(_brute_force_recall(v, a, k))
        assert m["audio_to_video"]["recall"][str(k)] == pytest.approx(_brute_force_recall(a, v, k))
        assert m["random"][str(k)] == pytest.approx(100.0 * min(k, 60) / 60)
    assert 0 < m["recall"]["1"] < m["recall"]["10"] < 100


def test_collapsed_embeddings_score_worst_not_best():
    same = np.ones((10, 4), np.float32) / 2
    m = metrics.retrieval_metrics(same, same)
    assert m["recall"]["1"] == 0.0 and m["median_rank"] == 10


# ---------------------------------------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic_and_split_by_source():
    one, two = synthetic.generate(n=50, seed=3), synthetic.generate(n=50, seed=3)
    np.testing.assert_array_equal(one.audio, two.audio)
    np.testing.assert_array_equal(one.video, two.video)
    assert not np.array_equal(one.audio, synthetic.generate(n=50, seed=4).audio)
    assert one.audio.shape == (50, 15, 128) and one.video.shape == (50, 15, 1000)
    assert set(np.unique(one.split)) <= {0, 1, 2}


def test_synthetic_pairing_lives_in_order_not_in_means():
    clean = synthetic.generate(n=40, seed=0, noise=0.0, style=0.0, audio_dim=16, video_dim=24)
    means = clean.audio.mean(axis=1)
    np.testing.assert_allclose(means, np.broadcast_to(means[0], means.shape), atol=1e-5)  # means say nothing
    assert not np.allclose(clean.audio[0], clean.audio[1])  # but the sequences differ
    # the same event order drives both modalities: second-to-second similarity patterns agree
    sa = np.corrcoef(clean.audio[0])
    sv = np.corrcoef(clean.video[0])
    assert np.corrcoef(sa.ravel(), sv.ravel())[0, 1] > 0.5


def test_synthetic_spec_parsing():
    assert synthetic.parse_spec("synthetic") == {}
    assert synthetic.parse_spec("synthetic:n=10,seed=2,noise=0.1") == {"n": 10, "seed": 2, "noise": 0.1}
    with pytest.raises(ValueError, match="bad item"):
        synthetic.parse_spec("synthetic:colour=red")


@pytest.mark.parametrize("name", ["TIVM", "LIVM", "VM-R", "IVM-MS"])
def test_heads_export_to_onnx_with_dynamic_batch_and_time(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    cfg = load_config(name)
    cfg["model"].update(hidden=[32], embed_dim=16, encoder_dim=16, lstm_hidden=8, transformer_heads=2,
                        transformer_ff=32)
    head = build_model(cfg, 12, 20).eval().video_head
    path = tmp_path / "video.onnx"
    torch.onnx.export(head, (torch.randn(2, 15, 20),), str(path), input_names=["features"],
                      output_names=["embedding"], dynamic_axes={"features": {0: "batch", 1: "time"}},
                      dynamo=False, opset_version=17)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, t in ((1, 1), (3, 7), (2, 30)):
        x = torch.randn(batch, t, 20)
        got = session.run(None, {"features": x.numpy()})[0]
        np.testing.assert_allclose(got, head(x).detach().numpy(), atol=1e-5)
