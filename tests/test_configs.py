"""Configs say no to what they do not know: unknown keys and bad values are one-line errors naming the file,
the key and the nearest known key; saved runs still load; IVM-M by name is the run docs/results.md reports."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import fields

import pytest
import torch
from conftest import REPO
from typer.main import get_command
from typer.testing import CliRunner

from tivm.runtime.errors import ModelError, TivmError
from tivm.train import checkpoint
from tivm.train.cli.train import app as train_app
from tivm.train.cli.train import check_teachers, resolve, resolve_domain_val_fraction
from tivm.train.config import (
    BLOCK_RULES,
    COMMAND_LINE_ONLY,
    LOSS_RULES,
    MODEL_DEFAULTS,
    MODEL_RULES,
    TRAIN_RULES,
    ConfigError,
    config_path,
    load_config,
    packaged_configs,
)
from tivm.train.data_spec import split_data
from tivm.train.heads import build_model
from tivm.train.synthetic import generate
from tivm.train.trainer import TrainArgs, fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# the documented IVM-M row on YouTube-8M (docs/results.md, section 1 and the command that made it in section 4)
RESULTS = REPO / "docs" / "results.md"
ROW_RUN_DIR = "runs/yt8m-ivm-m"
ROW_ARGS = dict(epochs=10, batch_size=256, lr=1e-3, weight_decay=1e-4, warmup_epochs=1, patience=6, seed=0,
                batching="random")
# a tiny model and data set: the code paths of a real run in a second
SMALL_MODEL = dict(hidden=[16], embed_dim=8, dropout=0.0)
SMALL_DATA = dict(n=120, seed=0, t=2, audio_dim=6, video_dim=5, latent_dim=4)


def _write(tmp_path, config: dict, name: str = "myconfig.json"):
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def _packaged(name: str = "TIVM") -> dict:
    return json.loads(config_path(name).read_text())


# ---------------------------------------------------------------------------------------------- unknown keys

@pytest.mark.parametrize("block, key, hint", [
    ("model", "transformer_layer", "did you mean transformer_layers?"),
    ("train", "batchsize", "did you mean batch_size?"),
    ("loss", "marginn", "did you mean margin?"),
    ("", "trian", "did you mean train?"),
    ("train", "dropout", 'it belongs in the "model" block'),
    ("", "epochs", 'it belongs in the "train" block'),
    ("train", "device", "a command-line option, --device, not a config key"),
    ("model", "colour", "known keys: pooling, encoder"),
])
def test_an_unknown_key_at_any_level_names_file_key_and_nearest_known_key(tmp_path, block, key, hint):
    raw = _packaged("TIVM")
    (raw[block] if block else raw)[key] = 6
    path = _write(tmp_path, raw)
    dotted = f"{block}.{key}" if block else key
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: unknown key {dotted} ({hint}") and message.endswith(")"), message
    assert isinstance(caught.value, TivmError) and isinstance(caught.value, ValueError)


def test_a_dict_config_is_checked_too():
    raw = _packaged("TIVM")
    raw["model"]["transformer_layer"] = 6
    with pytest.raises(ConfigError, match="unknown key model.transformer_layer"):
        build_model(raw, 4, 6)
    raw = _packaged("TIVM")
    raw["train"]["batchsize"] = 8
    with pytest.raises(ConfigError, match=r"config: unknown key train.batchsize \(did you mean batch_size\?\)"):
        TrainArgs.from_config(raw)


# ---------------------------------------------------------------------------------------------- values

@pytest.mark.parametrize("block, key, value, problem", [
    ("model", "transformer_layers", "6", "model.transformer_layers must be an integer >= 1, got '6'"),
    ("model", "transformer_layers", 2.0, "model.transformer_layers must be an integer >= 1, got 2.0"),
    ("model", "embed_dim", True, "model.embed_dim must be an integer >= 1, got True"),
    ("model", "hidden", [2048, 0], "model.hidden must be a list of integers >= 1, got [2048, 0]"),
    ("model", "pooling", "avg", "model.pooling must be one of mean, mean_std, max_after, sequence, got 'avg'"),
    ("model", "encoder", "gru", "model.encoder must be one of none, lstm, transformer, got 'gru'"),
    ("model", "dropout", 1.0, "model.dropout must be a number in [0, 1), got 1.0"),
    ("model", "learn_temperature", "yes", "model.learn_temperature must be true or false, got 'yes'"),
    ("loss", "kind", "triplet", "loss.kind must be one of infonce, triplet_structure, got 'triplet'"),
    ("train", "batch_size", 0, "train.batch_size must be an integer >= 2, got 0"),
    ("train", "epochs", -1, "train.epochs must be an integer >= 1, got -1"),
    ("train", "lr", 0, "train.lr must be a number > 0, got 0"),
    ("train", "batching", "hard", "train.batching must be one of random, clustered, got 'hard'"),
    ("train", "val_fraction", 1.0, "train.val_fraction must be a number in (0, 1), got 1.0"),
    ("train", "domain_fraction", 1.0, "train.domain_fraction must be a number in [0, 1), got 1.0"),
    ("train", "domain_val_fraction", 0, "train.domain_val_fraction must be a number in (0, 1), got 0"),
    ("train", "ema_decay", 1.0, "train.ema_decay must be a number in [0, 1), got 1.0"),
    ("loss", "distill_weight", -0.5, "loss.distill_weight must be a number >= 0, got -0.5"),
    ("", "model", [], "model must be a JSON object, got []"),
    ("", "name", 7, "name must be a string, got 7"),
])
def test_a_value_of_the_wrong_type_or_range_is_a_clear_error(tmp_path, block, key, value, problem):
    raw = _packaged("TIVM")
    (raw[block] if block else raw)[key] = value
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: {problem}"


def test_keys_that_only_make_sense_together_are_checked_at_loading(tmp_path):
    raw = _packaged("TIVM")
    raw["model"]["transformer_heads"] = 7
    with pytest.raises(ConfigError, match=r"encoder_dim \(512\) must be even and divisible by .*heads \(7\)"):
        load_config(_write(tmp_path, raw))
    raw = _packaged("IVM-M")
    raw["model"]["encoder"] = "lstm"
    with pytest.raises(ConfigError, match="temporal encoder goes with pooling \"sequence\""):
        load_config(_write(tmp_path, raw))


def test_a_bad_name_file_or_json_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^IVM_M: unknown configuration; did you mean IVM-M\?"):
        load_config("IVM_M")
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="broken.json: config not readable JSON"):
        load_config(tmp_path / "broken.json")
    with pytest.raises(ConfigError, match=r"config not a JSON object"):
        load_config(_write(tmp_path, [1]))
    with pytest.raises(ConfigError, match='needs a "model" block'):
        load_config(_write(tmp_path, {"name": "x"}))


def test_command_line_values_follow_the_same_rules():
    cfg = load_config("IVM-M")
    with pytest.raises(ConfigError, match=r"^--batch-size: must be an integer >= 2, got 1$"):
        TrainArgs.from_config(cfg, batch_size=1)
    with pytest.raises(ConfigError, match=r"^--val-fraction: must be a number in \(0, 1\), got 0\.0$"):
        resolve("IVM-M", 0.0)
    with pytest.raises(TypeError, match="TrainArgs has no field batchsize"):
        TrainArgs.from_config(cfg, batchsize=8)  # a caller's typo, not a user's
    assert TrainArgs.from_config(cfg, epochs=3, lr=None).epochs == 3  # None: the option was not given


# ---------------------------------------------------------------------------------------------- coverage

def test_the_rules_know_exactly_the_keys_the_code_reads():
    assert set(MODEL_RULES) == set(MODEL_DEFAULTS)
    train_fields = {f.name for f in fields(TrainArgs)}
    assert set(TRAIN_RULES) == train_fields - set(COMMAND_LINE_ONLY) | {"val_fraction", "domain_val_fraction"}
    assert set(COMMAND_LINE_ONLY) <= train_fields
    read_by_losses = set(re.findall(r'loss_config\.get\("(\w+)"', (REPO / "train" / "losses.py").read_text()))
    assert read_by_losses == set(LOSS_RULES)


@pytest.mark.parametrize("name", packaged_configs())
def test_every_packaged_config_passes_and_documents_only_known_keys(name):
    raw = _packaged(name)
    assert load_config(name)["name"] == raw["name"]
    for block, documented in raw["doc"].items():
        if block in BLOCK_RULES:
            assert set(documented) <= set(BLOCK_RULES[block]), (name, block)
    assert "unknown key" in raw["doc"]["usage"] and "error" in raw["doc"]["usage"]


def test_a_config_seed_is_honoured_when_the_command_line_gives_none(tmp_path):
    raw = _packaged("IVM-M")
    raw["train"]["seed"] = 7
    path = _write(tmp_path, raw)
    assert resolve(str(path), seed=None)[2].seed == 7
    assert resolve(str(path), seed=3)[2].seed == 3
    assert resolve("IVM-M", seed=None)[2].seed == 0


# ---------------------------------------------------------------------------------------------- the CLI

def test_tivm_train_reports_a_config_error_in_one_line_before_reading_data(tmp_path):
    raw = _packaged("TIVM")
    raw["model"]["transformer_layer"] = 6
    path = _write(tmp_path, raw)
    runner = CliRunner()
    # the data does not exist: the config error must come first
    result = runner.invoke(train_app, ["--config", str(path), "--data", str(tmp_path / "nothing"),
                                       "-o", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 2
    assert result.output == (f"error: {path}: unknown key model.transformer_layer "
                             "(did you mean transformer_layers?)\n")
    assert not (tmp_path / "run").exists()
    result = runner.invoke(train_app, ["--config", "IVM-M", "--data", "synthetic", "-o", str(tmp_path / "run"),
                                       "--epochs", "0", "--no-progress"])
    assert result.exit_code == 2
    assert result.output == "error: --epochs: must be an integer >= 1, got 0\n"
    # distillation: a distilling config without teachers, or teachers without one, fails before the data
    raw = _packaged("IVM-M")
    raw["loss"] = {"kind": "infonce", "distill_weight": 1.0}
    path = _write(tmp_path, raw)
    result = runner.invoke(train_app, ["--config", str(path), "--data", str(tmp_path / "nothing"),
                                       "-o", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 2 and result.output.startswith("error: --teacher: the config distils")
    result = runner.invoke(train_app, ["--config", "IVM-M", "--data", str(tmp_path / "nothing"), "--teacher",
                                       str(tmp_path), "-o", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 2
    assert result.output == "error: --teacher: teachers need a config with loss.distill_weight > 0\n"
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------- saved runs

def _small(name: str) -> dict:
    cfg = load_config(name)
    cfg["model"].update(SMALL_MODEL)
    cfg["train"].update(epochs=1, batch_size=32, warmup_epochs=0)
    return cfg


def test_a_run_saved_by_this_code_loads_with_every_key_it_wrote(tmp_path):
    cfg = _small("IVM-M")
    fit(cfg, split_data(generate(**SMALL_DATA)), tmp_path, TrainArgs.from_config(cfg, progress=False))
    saved = json.loads((tmp_path / "checkpoint.json").read_text())["config"]
    # what complete_config filled in (keys IVM-M's file does not set) and the doc block are in the record
    filled_in = set(saved["model"]) - set(_packaged("IVM-M")["model"])
    assert {"lstm_hidden", "transformer_layers", "input_dropout"} <= filled_in
    assert saved["doc"] and saved["train"]["val_fraction"] == 0.1
    model, record = checkpoint.load_checkpoint(tmp_path)
    assert record["config"] == saved and model.config["model"] == saved["model"]
    # and the record's config, written out as a file, is a valid config to train from again
    assert load_config(_write(tmp_path, saved, "again.json"))["model"] == saved["model"]


# checkpoint.json's "config" as the code before these checks wrote it (IVM-M, trained through the DDP test's
# helper): the model block completed with every default, the doc block with its old usage line
SAVED_BEFORE = {
    "name": "IVM-M", "description": "VM-NET trained with InfoNCE on feature means (paper IV-C-4).",
    "model": {"dropout": 0.0, "embed_dim": 16, "encoder": "none", "encoder_dim": 512, "hidden": [],
              "input_dropout": 0.0, "learn_temperature": True, "lstm_hidden": 256, "lstm_layers": 2,
              "pooling": "mean", "temperature": 0.07, "transformer_ff": 1024, "transformer_heads": 8,
              "transformer_layers": 2},
    "loss": {"kind": "infonce"},
    "train": {"batch_size": 32, "epochs": 2, "lr": 0.01, "patience": 10, "val_fraction": 0.1,
              "warmup_epochs": 0, "weight_decay": 0.0001},
    "doc": {"model": {"pooling": "how a branch turns (B, T, D) into one vector"},
            "usage": "copy this file, change values, and pass it as tivm-train --config my.json; unknown keys "
                     "are kept, the doc block is ignored"},
}


def test_a_run_saved_before_the_checks_still_loads(tmp_path):
    torch.manual_seed(0)
    weights = build_model(SAVED_BEFORE, 8, 12)
    checkpoint.save_checkpoint(tmp_path, weights, config=SAVED_BEFORE)
    model, _ = checkpoint.load_checkpoint(tmp_path)
    x = torch.randn(3, 1, 8)
    assert torch.equal(model.audio_head(x), weights.eval().audio_head(x))


def test_a_saved_run_whose_config_had_a_typo_loads_the_same_model_with_a_warning(tmp_path):
    # a run trained from a config with a typo: the typo had no effect then, so the same model loads now
    config = json.loads(json.dumps(SAVED_BEFORE))
    torch.manual_seed(0)
    weights = build_model(config, 8, 12)
    checkpoint.save_checkpoint(tmp_path, weights, config=config)
    record = json.loads((tmp_path / "checkpoint.json").read_text())
    record["config"]["model"]["transformer_layer"] = 6
    record["config"]["batchsize"] = 8
    (tmp_path / "checkpoint.json").write_text(json.dumps(record))
    with pytest.warns(RuntimeWarning, match=r"model.transformer_layer.*ignored") as caught:
        model, _ = checkpoint.load_checkpoint(tmp_path)
    assert "batchsize" in str(caught[0].message)
    x = torch.randn(3, 1, 8)
    assert torch.equal(model.audio_head(x), weights.eval().audio_head(x))


def test_a_saved_config_with_a_bad_value_is_a_model_error_naming_it(tmp_path):
    config = json.loads(json.dumps(SAVED_BEFORE))
    checkpoint.save_checkpoint(tmp_path, build_model(config, 8, 12), config=config)
    record = json.loads((tmp_path / "checkpoint.json").read_text())
    record["config"]["model"]["dropout"] = 1.5
    (tmp_path / "checkpoint.json").write_text(json.dumps(record))
    with pytest.raises(ModelError, match=r"checkpoint.json: cannot rebuild the model .*model.dropout"):
        checkpoint.load_checkpoint(tmp_path)


# ---------------------------------------------------------------------------------------------- IVM-M by name

def _documented_row_command() -> list[str]:
    """argv of the tivm-train command that made the IVM-M row (docs/results.md, "Reproducing the rows")."""
    lines = [ln for ln in RESULTS.read_text().splitlines()
             if ln.startswith("tivm-train ") and f"-o {ROW_RUN_DIR} " in ln + " "]
    assert len(lines) == 1, lines
    return shlex.split(lines[0], comments=True)[1:]


def _resolved(argv: list[str]):
    """What tivm-train would train with for argv: the CLI's own option parsing, then its resolve()."""
    params = get_command(train_app).make_context("tivm-train", list(argv)).params
    options = {k: params[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "patience", "device",
                                      "seed", "progress")}
    return resolve(params["config"], params["val_fraction"], **options)


def test_ivm_m_by_name_trains_exactly_the_documented_row():
    documented = _documented_row_command()
    assert documented[:2] == ["--config", "IVM-M"]
    row = RESULTS.read_text()
    assert "| nothing: batch 256, AdamW lr 1e-3, wd 1e-4, dropout 0.2" in row and "| 10 (10) | 29.60 |" in row
    by_name = ["--config", "IVM-M", "--data", "$Y", "--label", "14", "-o", ROW_RUN_DIR]
    cfg_doc, share_doc, args_doc = _resolved(documented)
    cfg_name, share_name, args_name = _resolved(by_name)
    assert args_name == args_doc and share_name == share_doc == 0.1 and cfg_name == cfg_doc
    assert {k: getattr(args_name, k) for k in ROW_ARGS} == ROW_ARGS
    assert cfg_name["model"]["dropout"] == 0.2 and cfg_name["model"]["temperature"] == 0.07


def test_ivm_m_indomain_by_name_trains_what_the_chosen_variant_trained():
    """IVM-M-INDOMAIN is the variant chosen on in-domain validation (docs/results.md, 1b), which was run as
    IVM-M with --domain-fraction 0.25 --epochs 4: the name must give exactly those settings."""
    def settings(argv: list[str]):
        params = get_command(train_app).make_context("tivm-train", list(argv)).params
        options = {k: params[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "patience", "device",
                                          "seed", "progress", "domain_fraction")}
        cfg, share, args = resolve(params["config"], params["val_fraction"], domain_label=params["label"],
                                   **options)
        return cfg, share, args, resolve_domain_val_fraction(cfg, params["domain_val_fraction"])

    common = ["--data", "$Y", "--label", "14", "--extra-data", "$X", "-o", "runs/x"]
    cfg_run, share_run, args_run, domain_run = settings(
        ["--config", "IVM-M", "--domain-fraction", "0.25", "--epochs", "4", *common])
    cfg_name, share_name, args_name, domain_name = settings(["--config", "IVM-M-INDOMAIN", *common])
    assert args_name == args_run and (share_name, domain_name) == (share_run, domain_run) == (0.1, 0.5)
    assert cfg_name["model"] == cfg_run["model"] and cfg_name["loss"] == cfg_run["loss"]
    assert (args_name.domain_fraction, args_name.epochs, args_name.domain_label) == (0.25, 4, 14)


def test_ivm_m_indomain_distil_is_ivm_m_indomain_plus_the_chosen_distillation():
    """IVM-M-INDOMAIN-DISTIL, chosen in docs/results.md 1c, is IVM-M-INDOMAIN (same heads but 64-d
    embeddings, same data split and schedule) with a distillation term of weight 1 at temperature 8, and
    needs teacher runs."""
    base, distil = load_config("IVM-M-INDOMAIN"), load_config("IVM-M-INDOMAIN-DISTIL")
    assert distil["model"] == {**base["model"], "embed_dim": 64} and distil["train"] == base["train"]
    assert distil["loss"] == {**base["loss"], "distill_weight": 1.0, "distill_temperature": 8.0}
    assert "IVM-M-INDOMAIN-DISTIL" in RESULTS.read_text()
    with pytest.raises(ConfigError, match="--teacher"):
        check_teachers(distil, None)
    check_teachers(distil, ["runs/a", "runs/b"])
    with pytest.raises(ConfigError, match="teachers need"):
        check_teachers(base, ["runs/a"])
