"""Training end to end on small synthetic data: learning, checkpoints without pickle, resume, the CLIs."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tivm.train import checkpoint
from tivm.train.config import load_config
from tivm.train.data_spec import label_splits, split_data
from tivm.train.dataset import FeatureSet
from tivm.train.heads import build_model
from tivm.train.synthetic import generate
from tivm.train.trainer import TrainArgs, fit, make_optimizer

SMALL = dict(t=8, audio_dim=16, video_dim=24, latent_dim=8, noise=0.3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_config(name: str = "TIVM", **train) -> dict:
    """The named configuration shrunk to test size (same code paths, fewer units)."""
    cfg = load_config(name)
    cfg["model"].update(hidden=[64], embed_dim=32, dropout=0.0, encoder_dim=32, lstm_hidden=16,
                        transformer_layers=1, transformer_heads=2, transformer_ff=64)
    cfg["train"].update({"epochs": 2, "batch_size": 64, "lr": 3e-3, "warmup_epochs": 0, "patience": 50, **train})
    return cfg


@pytest.fixture(scope="module")
def small_parts():
    return split_data(generate(n=600, seed=0, **SMALL))


def _args(cfg, **kw):
    return TrainArgs.from_config(cfg, progress=False, **kw)


class _Interrupted(Exception):
    pass


def _fit_interrupted_then_resumed(cfg, parts, run_dir, stop_after: int):
    """Train run_dir, stopping when epoch `stop_after` ends, then resume it to the end: what resume tests
    compare with an uninterrupted run."""
    def stop(epoch, model):
        if epoch == stop_after:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        fit(cfg, parts, run_dir, _args(cfg), on_epoch_end=stop)
    return fit(cfg, parts, run_dir, _args(cfg), resume=True)


def test_tivm_learns_order_and_beats_chance_clearly(tmp_path, small_parts):
    cfg = small_config("TIVM", epochs=25)
    summary = fit(cfg, small_parts, tmp_path / "run", _args(cfg))
    test = summary["test"]
    assert test["recall"]["5"] > 4 * test["random"]["5"], test
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == summary["epochs_run"] and log[-1]["train_loss"] < log[0]["train_loss"]


def test_checkpoint_round_trip_identical_and_pickle_free(tmp_path, small_parts, monkeypatch):
    cfg = small_config("LIVM")
    fit(cfg, small_parts, tmp_path, _args(cfg))
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "checkpoint.json", "metrics.jsonl", "model.safetensors", "results.json"]

    def refuse(*args, **kwargs):
        raise AssertionError("checkpoint loading must not unpickle")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    model, record = checkpoint.load_checkpoint(tmp_path)
    again, _ = checkpoint.load_checkpoint(tmp_path / "model.safetensors")
    x = torch.randn(4, 5, 16)
    assert torch.equal(model.audio_head(x), again.audio_head(x))
    assert record["audio_dim"] == 16 and record["video_dim"] == 24 and record["name"] == "LIVM"
    monkeypatch.undo()
    # the same weights a fresh save of the loaded model writes
    checkpoint.save_checkpoint(tmp_path / "copy", model)
    copy, _ = checkpoint.load_checkpoint(tmp_path / "copy")
    assert torch.equal(copy.video_head(torch.randn(3, 8, 24).clamp(-1, 1) * 0 + 1), model.video_head(
        torch.ones(3, 8, 24)))


def test_broken_checkpoint_is_a_clear_error(tmp_path):
    from tivm.runtime.errors import ModelError
    with pytest.raises(ModelError, match="checkpoint.json"):
        checkpoint.load_checkpoint(tmp_path)
    (tmp_path / "checkpoint.json").write_text("{not json")
    with pytest.raises(ModelError, match="not readable JSON"):
        checkpoint.load_checkpoint(tmp_path)


# The state-dict keys of a small IVM-M run (hidden [4]) as the code before the head/branch rename saved them,
# in its state_dict order (TivmModel.audio_branch / video_branch, each holding VM-NET's MLP as .head), each with
# the key of the same tensor now. Written out rather than derived from checkpoint.RENAMED_PREFIXES, so this
# checks the shim.
OLD_TO_NEW_KEYS = {
    "log_logit_scale": "log_logit_scale",
    "audio_branch.input_mean": "audio_head.input_mean", "audio_branch.input_std": "audio_head.input_std",
    "audio_branch.head.0.weight": "audio_head.mlp.0.weight", "audio_branch.head.0.bias": "audio_head.mlp.0.bias",
    "audio_branch.head.1.weight": "audio_head.mlp.1.weight", "audio_branch.head.1.bias": "audio_head.mlp.1.bias",
    "audio_branch.head.1.running_mean": "audio_head.mlp.1.running_mean",
    "audio_branch.head.1.running_var": "audio_head.mlp.1.running_var",
    "audio_branch.head.1.num_batches_tracked": "audio_head.mlp.1.num_batches_tracked",
    "audio_branch.head.4.weight": "audio_head.mlp.4.weight", "audio_branch.head.4.bias": "audio_head.mlp.4.bias",
    "video_branch.input_mean": "video_head.input_mean", "video_branch.input_std": "video_head.input_std",
    "video_branch.head.0.weight": "video_head.mlp.0.weight", "video_branch.head.0.bias": "video_head.mlp.0.bias",
    "video_branch.head.1.weight": "video_head.mlp.1.weight", "video_branch.head.1.bias": "video_head.mlp.1.bias",
    "video_branch.head.1.running_mean": "video_head.mlp.1.running_mean",
    "video_branch.head.1.running_var": "video_head.mlp.1.running_var",
    "video_branch.head.1.num_batches_tracked": "video_head.mlp.1.num_batches_tracked",
    "video_branch.head.4.weight": "video_head.mlp.4.weight", "video_branch.head.4.bias": "video_head.mlp.4.bias",
}


def _small_ivm_m():
    """A trained-looking IVM-M (hidden [4], 3-d embeddings; 5-d audio, 7-d video): every tensor random,
    running variances positive, so a tensor loaded under the wrong name would show."""
    cfg = load_config("IVM-M")
    cfg["model"].update(hidden=[4], embed_dim=3, dropout=0.0)
    model = build_model(cfg, 5, 7)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
            else:
                value.fill_(3)
    return model.eval()


def _assert_same_state(got: torch.nn.Module, want: torch.nn.Module) -> None:
    a, b = got.state_dict(), want.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_a_checkpoint_saved_with_the_old_module_names_loads_the_same_model(tmp_path):
    from safetensors.torch import save_file

    reference = _small_ivm_m()
    new_state = reference.state_dict()
    # every tensor, in the old order: parameters() keeps its order, which a resume point's optimizer state needs
    assert list(new_state) == list(OLD_TO_NEW_KEYS.values())
    checkpoint.save_checkpoint(tmp_path, reference)
    save_file({old: new_state[new].contiguous() for old, new in OLD_TO_NEW_KEYS.items()},
              str(tmp_path / "model.safetensors"))  # overwrite the weights with the old-format file
    for path in (tmp_path, tmp_path / "model.safetensors"):
        model, _ = checkpoint.load_checkpoint(path)
        _assert_same_state(model, reference)
        audio, video = torch.randn(4, 6, 5), torch.randn(4, 6, 7)
        for got, want in zip(model(audio, video), reference(audio, video)):
            assert torch.equal(got, want)


def test_a_resume_point_saved_with_the_old_module_names_resumes_the_same_state(tmp_path):
    from safetensors.torch import save_file

    model = _small_ivm_m().train()
    optimizer = make_optimizer(model, lr=1e-2, weight_decay=1e-4)
    audio, video = model(torch.randn(8, 6, 5), torch.randn(8, 6, 7))
    (audio * video).sum().backward()
    optimizer.step()
    checkpoint.save_resume_state(tmp_path, model, optimizer, {"epoch": 1})
    weights = tmp_path / "resume" / "model.safetensors"
    saved = checkpoint._read_tensors(weights)
    save_file({old: saved[new] for old, new in OLD_TO_NEW_KEYS.items()}, str(weights))

    fresh = build_model(model.config, 5, 7)
    fresh_optimizer = make_optimizer(fresh, lr=1e-2, weight_decay=1e-4)
    assert checkpoint.load_resume_state(tmp_path, fresh, fresh_optimizer) == {"epoch": 1}
    _assert_same_state(fresh, model)
    # the optimizer state indexes parameters by position (kept by the rename): same moments at every index
    before, after = optimizer.state_dict()["state"], fresh_optimizer.state_dict()["state"]
    assert before.keys() == after.keys()
    for index in before:
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(after[index][moment], before[index][moment], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["IVM-MS", "VM-M"])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, small_parts, name):
    cfg = small_config(name, epochs=3)
    cfg["model"]["dropout"] = 0.3  # dropout makes the RNG state part of what resume must restore
    straight = fit(cfg, small_parts, tmp_path / "straight", _args(cfg))
    resumed = _fit_interrupted_then_resumed(cfg, small_parts, tmp_path / "split", stop_after=2)
    a = checkpoint._read_tensors(tmp_path / "straight" / "resume" / "model.safetensors")
    b = checkpoint._read_tensors(tmp_path / "split" / "resume" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert resumed["epochs_run"] == straight["epochs_run"] == 3


def test_label_rule_makes_the_labelled_clips_the_test_gallery():
    fs = generate(n=200, seed=1, **SMALL)
    labels = [[14] if i % 10 == 0 else [3] for i in range(len(fs))]
    from tivm.train.dataset import labels_to_csr
    indptr, flat = labels_to_csr(labels)
    fs = FeatureSet(fs.audio, fs.video, fs.clip_id, fs.source_id, fs.start, fs.split, indptr, flat, fs.manifest)
    split = label_splits(fs, 14, val_fraction=0.2)
    assert np.array_equal(split == 2, np.arange(200) % 10 == 0)
    rest = split[split != 2]
    assert 0.08 < np.mean(rest == 1) < 0.35 and np.all(np.isin(rest, [0, 1]))
    assert np.array_equal(split, label_splits(fs, 14, val_fraction=0.2))  # deterministic


def test_cli_train_then_eval(tmp_path):
    from tivm.train.cli.evaluate import app as eval_app
    from tivm.train.cli.train import app as train_app
    cfg = small_config("IVM-M", epochs=2)
    config_file = tmp_path / "cfg.json"
    config_file.write_text(json.dumps(cfg))
    spec = "synthetic:n=300,seed=2,t=4,audio_dim=16,video_dim=24"
    runner = CliRunner()
    result = runner.invoke(train_app, ["--config", str(config_file), "--data", spec, "-o", str(tmp_path / "run"),
                                       "--epochs", "2", "--batch-size", "32", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "video -> audio" in result.output
    out = tmp_path / "eval.json"
    result = runner.invoke(eval_app, [str(tmp_path / "run"), "--data", spec, "--json", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    m = json.loads(out.read_text())
    assert set(m["recall"]) == {"1", "5", "10", "25", "50"} and m["n"] > 10
    assert m["random"]["10"] == pytest.approx(1000 / m["n"]) and "audio_to_video" in m
    assert m["same_features_as_training"] is True
    # an ensemble of a model with itself ranks exactly like the model
    out2 = tmp_path / "ensemble.json"
    result = runner.invoke(eval_app, [str(tmp_path / "run"), str(tmp_path / "run"), "--data", spec, "--json",
                                      str(out2), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads(out2.read_text())["recall"] == m["recall"]
    bad = runner.invoke(eval_app, [str(tmp_path / "run"), "--data", "synthetic:n=30,audio_dim=7", "--no-progress"])
    assert bad.exit_code == 2 and "7/1000-d" in bad.output


def test_clustered_batches_use_every_clip_once_and_group_neighbours():
    from tivm.train.trainer import clustered_order, kmeans
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 6)) * 10
    x = np.concatenate([c + rng.standard_normal((100, 6)) for c in centres])
    ids = torch.from_numpy(kmeans(x, 4))
    assert len(set(ids[:100].tolist())) == 1 and len(set(ids.tolist())) == 4  # well-separated blobs found
    generator = torch.Generator().manual_seed(1)
    order = clustered_order(torch.randperm(400, generator=generator), ids, 40, 0.5, generator)
    assert sorted(order.tolist()) == list(range(400))
    for b in range(10):
        grouped = ids[order[b * 40:b * 40 + 20]]
        assert torch.bincount(grouped).max() >= 10  # the clustered half is mostly one cluster


# ------------------------------------------------------------------------- extra sources, in-domain training

def _labelled(part: int, n: int, every: int) -> FeatureSet:
    """Synthetic clips where every `every`-th carries label 14 (the rest label 3). Part 1 is the first 300
    clips of one generated set, part 2 the next n: distinct sources, one feature spec (as two YouTube-8M
    shard sets are)."""
    from tivm.train.dataset import labels_to_csr
    assert (part, n) in ((1, 300), (2, 400))
    fs = generate(n=700, seed=1, **SMALL)
    fs = fs.subset(np.arange(300, 700) if part == 2 else np.arange(300))
    indptr, flat = labels_to_csr([[14] if i % every == 0 else [3] for i in range(n)])
    return FeatureSet(fs.audio, fs.video, fs.clip_id, fs.source_id, fs.start, fs.split, indptr, flat, fs.manifest)


def test_extra_data_trains_and_validates_in_domain_but_never_enters_the_test_gallery():
    from tivm.train.data_spec import domain_splits
    from tivm.train.dataset import DatasetError, concatenate
    main, extra = _labelled(1, 300, 10), _labelled(2, 400, 4)
    fs = domain_splits(main, [extra], 14, domain_val_fraction=0.5)
    main_part, extra_part = fs.split[:300], fs.split[300:]
    assert np.array_equal(main_part == 2, main.has_label(14)) and np.all(main_part[~main.has_label(14)] == 0)
    assert not np.any(extra_part == 2)
    in_domain = extra.has_label(14)
    assert np.all(extra_part[~in_domain] == 0)  # validation holds only in-domain clips
    assert 0.3 < np.mean(extra_part[in_domain] == 1) < 0.7 and np.any(extra_part[in_domain] == 0)
    assert np.array_equal(fs.split, domain_splits(main, [extra], 14, 0.5).split)  # deterministic
    assert np.array_equal(np.asarray(fs.audio[300:]), np.asarray(extra.audio))
    # a source in both the main and the extra data could sit in test and training at once: refused
    with pytest.raises(DatasetError, match="shares 300 source ids"):
        domain_splits(main, [concatenate([extra, main])], 14)
    with pytest.raises(DatasetError, match="no clip with label 15"):
        domain_splits(_relabelled(main, 15), [extra], 15)  # the main data has label 15, the extra none


def _relabelled(fs: FeatureSet, label: int) -> FeatureSet:
    """fs with every 10th clip carrying `label` too (so main has a test gallery for that label)."""
    from tivm.train.dataset import labels_to_csr
    lists = [list(fs.labels_of(i)) + ([label] if i % 10 == 0 else []) for i in range(len(fs))]
    indptr, flat = labels_to_csr(lists)
    return FeatureSet(fs.audio, fs.video, fs.clip_id, fs.source_id, fs.start, fs.split, indptr, flat, fs.manifest)


def test_in_domain_clips_carry_the_label_or_a_related_one():
    from tivm.train.trainer import domain_mask
    fs = _relabelled(_labelled(2, 400, 4), 15)  # 14 on every 4th clip, 15 on every 10th
    i = np.arange(400)
    assert np.array_equal(domain_mask(fs, [14]), i % 4 == 0)
    assert np.array_equal(domain_mask(fs, [14, 15]), (i % 4 == 0) | (i % 10 == 0))
    assert not domain_mask(fs, []).any() and not domain_mask(generate(n=20, seed=0, **SMALL), [14]).any()


def test_domain_batches_hold_the_in_domain_share_without_repeats():
    from tivm.train.trainer import domain_order
    generator = torch.Generator().manual_seed(0)
    domain, general = torch.arange(0, 20), torch.arange(20, 420)
    order = domain_order(general, domain, batch=40, domain_count=10, steps=13, generator=generator)
    assert order.numel() == 13 * 40
    seen_general = []
    for b in range(13):
        batch = order[b * 40:(b + 1) * 40]
        assert batch.unique().numel() == 40  # no clip twice in a batch (it would be its own negative)
        assert int((batch < 20).sum()) == 10
        seen_general += batch[batch >= 20].tolist()
    assert len(set(seen_general)) == len(seen_general) == 390  # a general clip at most once an epoch
    # fewer general clips than the epoch needs: they wrap round instead of failing
    short = domain_order(torch.arange(20, 50), domain, 40, 10, 2, torch.Generator().manual_seed(0))
    assert short.numel() == 80 and all(short[b * 40:(b + 1) * 40].unique().numel() == 40 for b in range(2))


def test_fit_oversamples_in_domain_pairs_and_fine_tunes_from_a_run(tmp_path):
    from tivm.train.data_spec import domain_splits
    from tivm.train.trainer import recalibrate_batchnorm, start_from
    fs = domain_splits(_labelled(1, 300, 10), [_labelled(2, 400, 4)], 14)
    parts = {name: fs.split_view(name) for name in ("train", "val", "test")}
    cfg = small_config("IVM-M", epochs=1, domain_fraction=0.25)
    summary = fit(cfg, parts, tmp_path / "a", _args(cfg, domain_label=14))
    # an epoch is one pass over the 570 general training clips in batches of 64 - 16 of them
    assert json.loads((tmp_path / "a" / "checkpoint.json").read_text())["train_args"]["steps_per_epoch"] == 570 // 48
    assert summary["sizes"]["val"] == int((fs.split == 1).sum()) and summary["sizes"]["test"] == 30
    with pytest.raises(ValueError, match="in-domain training clips"):
        fit(cfg, parts, tmp_path / "b", _args(cfg))  # no domain label: nothing to oversample
    trained, _ = checkpoint.load_checkpoint(tmp_path / "a")
    fresh = build_model(cfg, 16, 24)
    start_from(fresh, str(tmp_path / "a"))
    _assert_same_state(fresh, trained)
    with pytest.raises(ValueError, match="same model block"):
        start_from(build_model(small_config("IVM-MS"), 16, 24), str(tmp_path / "a"))
    # domain_batchnorm: the saved model carries the BatchNorm statistics of the in-domain training clips
    cfg = small_config("IVM-M", epochs=1, domain_batchnorm=True)
    fit(cfg, parts, tmp_path / "c", _args(cfg, domain_label=14))
    saved, _ = checkpoint.load_checkpoint(tmp_path / "c")
    expected, _ = checkpoint.load_checkpoint(tmp_path / "c")
    expected.video_head.mlp[1].reset_running_stats()
    recalibrate_batchnorm(expected, parts["train"].subset(parts["train"].has_label(14)))
    _assert_same_state(saved, expected)
    with pytest.raises(ValueError, match="domain_batchnorm needs in-domain"):
        fit(cfg, parts, tmp_path / "d", _args(cfg))


def test_cli_trains_with_extra_data_and_evaluates_its_in_domain_validation(tmp_path):
    from tivm.train.cli.evaluate import app as eval_app
    from tivm.train.cli.train import app as train_app
    main_dir = _labelled(1, 300, 10).save(tmp_path / "main")
    extra_dir = _labelled(2, 400, 4).save(tmp_path / "extra")
    config_file = tmp_path / "cfg.json"
    config_file.write_text(json.dumps(small_config("IVM-M", epochs=1, domain_fraction=0.25)))
    runner = CliRunner()
    common = ["--data", str(main_dir), "--label", "14", "--no-progress"]
    result = runner.invoke(train_app, ["--config", str(config_file), *common, "--extra-data", str(extra_dir),
                                       "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert record["data"]["extra_specs"] == [str(extra_dir)] and record["data"]["domain_val_fraction"] == 0.5
    out = tmp_path / "val.json"
    result = runner.invoke(eval_app, [str(tmp_path / "run"), *common, "--extra-data", str(extra_dir),
                                      "--split", "val", "--json", str(out)])
    assert result.exit_code == 0, result.output
    val = json.loads(out.read_text())
    assert val["n"] == record["data"]["sizes"]["val"]
    assert val["recall"] == record["metrics"]["val"]["recall"]  # the same clips the run selected on
    # the test gallery is the same with or without the extra data
    plain = runner.invoke(eval_app, [str(tmp_path / "run"), *common, "--json", str(tmp_path / "t.json")])
    assert plain.exit_code == 0 and json.loads((tmp_path / "t.json").read_text())["n"] == 30
    bad = runner.invoke(train_app, ["--config", str(config_file), "--data", str(main_dir), "--no-progress",
                                    "--extra-data", str(extra_dir), "-o", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "needs --label" in bad.output


def test_batchnorm_recalibration_takes_the_statistics_of_the_given_clips_and_nothing_else():
    from tivm.train.trainer import recalibrate_batchnorm
    model = build_model(small_config("IVM-M"), 16, 24)
    fs = _labelled(2, 400, 4)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    recalibrate_batchnorm(model, fs)
    assert model.training  # the mode it had is restored
    norm, linear = model.video_head.mlp[1], model.video_head.mlp[0]  # the first (Linear, BN) pair
    with torch.no_grad():
        x = (torch.from_numpy(fs.video) - model.video_head.input_mean) / model.video_head.input_std
        pre = linear(x.mean(dim=1))
    torch.testing.assert_close(norm.running_mean, pre.mean(dim=0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm.running_var, pre.var(dim=0), rtol=1e-4, atol=1e-5)
    assert norm.momentum == 0.1  # the training momentum is back
    for key, value in model.state_dict().items():
        if key in weights:
            torch.testing.assert_close(value, weights[key], rtol=0, atol=0)  # weights untouched


# ---------------------------------------------------------------------------------------------- weight average

def test_the_weight_average_follows_its_formula_and_copies_counters():
    from tivm.train.trainer import WeightAverage
    model = _small_ivm_m()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ema = WeightAverage(model, decay=0.9)
    decays = []
    for step in range(100):
        with torch.no_grad():
            for value in model.state_dict().values():
                value.fill_(float(step)) if value.is_floating_point() else value.fill_(step)
        decays.append(ema.current_decay())
        ema.update(model)
    # the warm-up ramp (1 + n) / (10 + n) reaches the configured decay and stays there
    assert decays[0] == pytest.approx(0.1) and decays[-1] == 0.9 and max(decays) == 0.9
    key = "video_head.mlp.0.weight"
    want = start[key].clone()
    for step, decay in enumerate(decays):
        want = decay * want + (1 - decay) * step
    torch.testing.assert_close(ema.model.state_dict()[key], want)
    assert int(ema.model.state_dict()["video_head.mlp.1.num_batches_tracked"]) == 99  # copied, not averaged
    assert not torch.equal(ema.model.state_dict()[key], model.state_dict()[key])  # a copy, not the model
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(model, decay=1.0)


def test_fit_with_ema_validates_and_saves_the_average_and_resumes_it(tmp_path, small_parts):
    # one epoch: the checkpoint (its only, so its best epoch) is the average, not the last weights
    one = small_config("IVM-M", epochs=1, ema_decay=0.9)
    summary = fit(one, small_parts, tmp_path / "one", _args(one))
    saved = checkpoint._read_tensors(tmp_path / "one" / "model.safetensors")
    raw = checkpoint._read_tensors(tmp_path / "one" / "resume" / "model.safetensors")
    average = checkpoint._read_tensors(tmp_path / "one" / "resume" / "ema.safetensors")
    for key in saved:
        torch.testing.assert_close(saved[key], average[key], rtol=0, atol=0, msg=key)
    key = "video_head.mlp.0.weight"
    assert not torch.equal(saved[key], raw[key])
    model, record = checkpoint.load_checkpoint(tmp_path / "one")
    assert record["parameters"] == summary["parameters"] > 0
    # resuming continues the average: the same as an uninterrupted run
    cfg = small_config("IVM-M", epochs=2, ema_decay=0.9)
    cfg["model"]["dropout"] = 0.3
    fit(cfg, small_parts, tmp_path / "straight", _args(cfg))
    average = checkpoint._read_tensors(tmp_path / "straight" / "resume" / "ema.safetensors")

    _fit_interrupted_then_resumed(cfg, small_parts, tmp_path / "split", stop_after=1)
    resumed = checkpoint._read_tensors(tmp_path / "split" / "resume" / "ema.safetensors")
    for name in average:
        torch.testing.assert_close(resumed[name], average[name], rtol=0, atol=0, msg=name)
    plain = small_config("IVM-M", epochs=1)
    fit(plain, small_parts, tmp_path / "plain", _args(plain))
    with pytest.raises(ValueError, match="not trained with train.ema_decay"):
        fit(cfg, small_parts, tmp_path / "plain", _args(cfg), resume=True)


# ---------------------------------------------------------------------------------------------- distillation

def test_distill_kl_is_zero_at_the_teacher_and_pulls_the_student_towards_the_ensemble():
    from torch.nn import functional as F

    from tivm.train.losses import compute_loss, distill_kl, info_nce
    generator = torch.Generator().manual_seed(0)
    teachers = [torch.randn(6, 6, generator=generator) * 3 for _ in range(2)]
    assert float(distill_kl(teachers[0].clone(), teachers[:1])) == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(6, 6, generator=generator, requires_grad=True)
    # the definition, written out: KL(mean of teacher softmaxes || student softmax), rows and columns
    rows = (F.softmax(teachers[0], 1) + F.softmax(teachers[1], 1)) / 2
    cols = (F.softmax(teachers[0], 0) + F.softmax(teachers[1], 0)) / 2
    want = float(0.5 * (F.kl_div(F.log_softmax(student.detach(), 1), rows, reduction="batchmean")
                        + F.kl_div(F.log_softmax(student.detach().T, 1), cols.T, reduction="batchmean")))
    assert float(distill_kl(student.detach(), teachers)) == pytest.approx(want, rel=1e-5) and want > 0.1

    def descend(target: list[torch.Tensor]) -> tuple[float, float]:
        """(KL before, KL after) 1000 gradient steps on a copy of the student's logits."""
        logits = student.detach().clone().requires_grad_(True)
        before = float(distill_kl(logits.detach(), target))
        optimizer = torch.optim.SGD([logits], lr=1.0)
        for _ in range(1000):
            optimizer.zero_grad()
            distill_kl(logits, target).backward()
            optimizer.step()
        return before, float(distill_kl(logits.detach(), target))

    # one teacher: the student can match it exactly, rows and columns; the gradient gets it there
    before, after = descend(teachers[:1])
    assert after < 0.01 * before
    # two: no single logit matrix has the averaged rows and the averaged columns, but it gets close
    before, after = descend(teachers)
    assert after < 0.2 * before
    # compute_loss adds weight x KL on the student's scaled similarities, and refuses to run without teachers
    audio = F.normalize(torch.randn(6, 4, generator=generator), dim=1)
    video = F.normalize(torch.randn(6, 4, generator=generator), dim=1)
    scale = torch.tensor(5.0)
    base = info_nce(audio, video, scale)
    total = compute_loss({"kind": "infonce", "distill_weight": 2.0}, scale, audio, video, teacher_logits=teachers)
    assert float(total - base) == pytest.approx(2 * float(distill_kl(scale * video @ audio.T, teachers)), rel=1e-5)
    # softened: logits of both sides divided by T, the term times T^2
    soft = compute_loss({"kind": "infonce", "distill_weight": 2.0, "distill_temperature": 4.0}, scale, audio, video,
                        teacher_logits=teachers)
    want = 2 * 16 * float(distill_kl(scale * video @ audio.T / 4, [t / 4 for t in teachers]))
    assert float(soft - base) == pytest.approx(want, rel=1e-5) and abs(want - float(total - base)) > 1e-3
    with pytest.raises(ValueError, match="--teacher"):
        compute_loss({"kind": "infonce", "distill_weight": 2.0}, scale, audio, video)


def _batch_kl(student_dir, teacher_dir, fs) -> float:
    """distill_kl of the student's last weights (its resume point: early stopping may have kept an earlier
    epoch) towards the teacher over fs in one batch, eval mode."""
    from tivm.train.losses import distill_kl
    from tivm.train.trainer import embed
    student, _ = checkpoint.load_checkpoint(student_dir)
    student.load_state_dict(checkpoint._read_tensors(student_dir / "resume" / "model.safetensors"))
    teacher, _ = checkpoint.load_checkpoint(teacher_dir)
    sa, sv = (torch.from_numpy(x) for x in embed(student, fs.audio, fs.video))
    ta, tv = (torch.from_numpy(x) for x in embed(teacher, fs.audio, fs.video))
    with torch.no_grad():
        return float(distill_kl(student.logit_scale * sv @ sa.T, [teacher.logit_scale * tv @ ta.T]))


def test_fit_distils_from_teachers_of_the_same_split_only(tmp_path, small_parts):
    teacher_cfg = small_config("IVM-M", epochs=3)
    teacher_data = {"fingerprint": "f", "label": None, "sizes": {"train": 1}, "domain_val_fraction": None}
    fit(teacher_cfg, small_parts, tmp_path / "teacher", _args(teacher_cfg), data=teacher_data)
    student_cfg = small_config("IVM-M", epochs=8, seed=5)
    fit(student_cfg, small_parts, tmp_path / "plain", _args(student_cfg), data=teacher_data)
    student_cfg["loss"] = {"kind": "infonce", "distill_weight": 20.0}
    args = _args(student_cfg, teachers=[str(tmp_path / "teacher")])
    fit(student_cfg, small_parts, tmp_path / "student", args, data=teacher_data)
    # the distilled student's in-batch distributions are much closer to the teacher's than a plain run's,
    # on the clips it learnt from and on held-out ones
    for split in ("train", "val"):
        clips = small_parts[split].subset(np.arange(64))
        kl_plain = _batch_kl(tmp_path / "plain", tmp_path / "teacher", clips)
        kl_student = _batch_kl(tmp_path / "student", tmp_path / "teacher", clips)
        assert kl_student < 0.5 * kl_plain, (split, kl_student, kl_plain)
    other_split = {**teacher_data, "sizes": {"train": 2}}
    with pytest.raises(ValueError, match="its data sizes differs"):
        fit(student_cfg, small_parts, tmp_path / "x", args, data=other_split)
    with pytest.raises(ValueError, match="needs teacher runs"):
        fit(student_cfg, small_parts, tmp_path / "y", _args(student_cfg))
    with pytest.raises(ValueError, match="teachers need loss.distill_weight"):
        fit(teacher_cfg, small_parts, tmp_path / "z", _args(teacher_cfg, teachers=[str(tmp_path / "teacher")]))


# ---------------------------------------------------------------------------------------------- label objective

def test_label_targets_take_the_most_frequent_labels_as_multi_hot_columns():
    from tivm.train.dataset import labels_to_csr
    from tivm.train.trainer import label_targets
    fs = generate(n=5, seed=0, **SMALL)
    indptr, flat = labels_to_csr([[7, 2], [2], [9, 7, 2], [], [9]])
    fs = FeatureSet(fs.audio, fs.video, fs.clip_id, fs.source_id, fs.start, fs.split, indptr, flat, fs.manifest)
    labels, targets = label_targets(fs, 2)
    assert labels.tolist() == [2, 7]  # 2 three times; 7 and 9 twice each, the tie to the lower id
    assert targets.tolist() == [[1, 1], [1, 0], [1, 1], [0, 0], [0, 0]]
    labels, targets = label_targets(fs, 10)
    assert labels.tolist() == [2, 7, 9] and targets[:, 2].tolist() == [0, 0, 1, 0, 1]
    with pytest.raises(ValueError, match="labelled training clips"):
        label_targets(generate(n=5, seed=0, **SMALL), 2)


def _content_labelled(n: int = 600) -> FeatureSet:
    """Synthetic clips labelled by their content: label 5 when the video's first feature (mean over time)
    is above its median, else label 6; every fourth clip also label 8. A classifier on good embeddings can
    learn labels 5 and 6."""
    from tivm.train.dataset import labels_to_csr
    fs = generate(n=n, seed=2, **SMALL)
    first = np.asarray(fs.video)[:, :, 0].mean(axis=1)
    lists = [[5 if x > np.median(first) else 6] + ([8] if i % 4 == 0 else []) for i, x in enumerate(first)]
    indptr, flat = labels_to_csr(lists)
    return FeatureSet(fs.audio, fs.video, fs.clip_id, fs.source_id, fs.start, fs.split, indptr, flat, fs.manifest)


def test_fit_trains_label_classifiers_beside_a_model_whose_checkpoint_is_unchanged(tmp_path):
    from tivm.train.losses import label_loss
    from tivm.train.trainer import LabelClassifiers, embed, label_targets
    parts = split_data(_content_labelled())
    cfg = small_config("IVM-M", epochs=10, lr=1e-2)
    cfg["loss"] = {"kind": "infonce", "label_weight": 1.0, "label_count": 2}
    fit(cfg, parts, tmp_path / "a", _args(cfg))
    plain_cfg = small_config("IVM-M", epochs=1)
    fit(plain_cfg, parts, tmp_path / "plain", _args(plain_cfg))
    # the checkpoint holds exactly the tensors of a model trained without the objective
    with_labels = checkpoint._read_tensors(tmp_path / "a" / "model.safetensors")
    without = checkpoint._read_tensors(tmp_path / "plain" / "model.safetensors")
    assert with_labels.keys() == without.keys()
    # the trained classifiers predict the two most frequent labels (5, 6) far better than untrained ones
    model, _ = checkpoint.load_checkpoint(tmp_path / "a")
    model.load_state_dict(checkpoint._read_tensors(tmp_path / "a" / "resume" / "model.safetensors"))
    labels, targets = label_targets(parts["train"], 2)
    trained = LabelClassifiers(32, labels)
    trained.load(tmp_path / "a")
    assert sorted(trained.labels.tolist()) == [5, 6]
    audio, video = (torch.from_numpy(x) for x in embed(model, parts["train"].audio, parts["train"].video))
    with torch.no_grad():
        after = float(label_loss(*trained(audio, video), torch.from_numpy(targets)))
        before = float(label_loss(*LabelClassifiers(32, labels)(audio, video), torch.from_numpy(targets)))
        video_logits = trained(audio, video)[1]
        right = (video_logits.argmax(dim=1) == torch.from_numpy(targets).argmax(dim=1)).float().mean()
    assert after < 0.7 * before and float(right) > 0.8, (after, before, float(right))
    # resuming restores the classifiers too: the same final weights as the uninterrupted run
    _fit_interrupted_then_resumed(cfg, parts, tmp_path / "split", stop_after=1)
    for name in ("model.safetensors", LabelClassifiers.FILE):
        a = checkpoint._read_tensors(tmp_path / "a" / "resume" / name)
        b = checkpoint._read_tensors(tmp_path / "split" / "resume" / name)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    with pytest.raises(ValueError, match="labelled training clips"):
        fit(cfg, split_data(generate(n=300, seed=0, **SMALL)), tmp_path / "b", _args(cfg))
