"""Training configurations: the paper's seven as packaged JSON files (train/configs/), or your own, checked
key by key before anything is built.

    from tivm.train.config import CONFIG_NAMES, load_config, packaged_configs

    config = load_config("TIVM")     # a name in packaged_configs(), or a path to a JSON config file;
                                     # ConfigError (a ValueError) names the file, the key, the problem
    config["model"], config["loss"], config["train"]   # blocks; the model block completed with MODEL_DEFAULTS

A config has a "model" block (the heads: tivm.train.heads), and optionally "loss" (tivm.train.losses) and
"train" (tivm.train.trainer) blocks, plus free "name", "description" and "doc" keys. Every other key is an
error naming the nearest known one, so a typo never trains a silently different model.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from tivm.runtime.errors import TivmError
from tivm.runtime.files import read_json_object

CONFIG_NAMES = ("VM-M", "VM-R", "VM-MS", "IVM-M", "IVM-MS", "LIVM", "TIVM")
EMBED_DIM = 512
POOLINGS = ("mean", "mean_std", "max_after", "sequence")
ENCODERS = ("none", "lstm", "transformer")
LOSS_KINDS = ("infonce", "triplet_structure")  # tivm.train.losses.compute_loss
BATCHINGS = ("random", "clustered")  # tivm.train.trainer: batch order

MODEL_DEFAULTS: dict[str, Any] = {
    "pooling": "mean",
    "encoder": "none",
    "hidden": [2048, 1024],
    "embed_dim": EMBED_DIM,
    "dropout": 0.2,
    "input_dropout": 0.0,
    "lstm_hidden": 256,
    "lstm_layers": 2,
    "encoder_dim": 512,
    "transformer_layers": 2,
    "transformer_heads": 8,
    "transformer_ff": 1024,
    "temperature": 0.07,
    "learn_temperature": True,
}


class ConfigError(TivmError, ValueError):
    """A config that cannot be used: an unknown key, a value of the wrong type or out of range. Its text is
    "<where>: <problem>" (where: the config file, or the command-line option), the one line the CLIs print
    after "error: ". A ValueError too, so callers that caught ValueError before still do."""

    def __init__(self, where: str | Path, problem: str):
        self.where, self.problem = str(where), problem
        super().__init__(f"{self.where}: {problem}")


# A rule is (test, what the value must be); the text completes "model.dropout must be ...".
Rule = tuple[Callable[[Any], bool], str]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not a size


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _integer(minimum: int) -> Rule:
    return (lambda v: _is_int(v) and v >= minimum), f"an integer >= {minimum}"


def _number(text: str, test: Callable[[float], bool]) -> Rule:
    return (lambda v: _is_number(v) and test(v)), f"a number {text}"


def _choice(options: tuple[str, ...]) -> Rule:
    return (lambda v: v in options), "one of " + ", ".join(options)


POSITIVE: Rule = _number("> 0", lambda v: v > 0)
NON_NEGATIVE: Rule = _number(">= 0", lambda v: v >= 0)
RATE: Rule = _number("in [0, 1)", lambda v: 0 <= v < 1)  # dropout: 1 would drop everything
SHARE: Rule = _number("in [0, 1]", lambda v: 0 <= v <= 1)
STRICT_SHARE: Rule = _number("in (0, 1)", lambda v: 0 < v < 1)  # a split must leave both sides some clips
BOOLEAN: Rule = (lambda v: isinstance(v, bool)), "true or false"
TEXT: Rule = (lambda v: isinstance(v, str)), "a string"
OBJECT: Rule = (lambda v: isinstance(v, dict)), "a JSON object"
WIDTHS: Rule = (lambda v: isinstance(v, list) and all(_is_int(w) and w >= 1 for w in v)), \
    "a list of integers >= 1"
LABELS: Rule = (lambda v: isinstance(v, list) and all(_is_int(x) and x >= 0 for x in v)), \
    "a list of integers >= 0"
FREE: Rule = (lambda v: True), "anything"

# Every key a config may hold, per block, and what its value must be. A key missing here is a typo or a
# setting no code reads, so it is an error rather than silently ignored.
MODEL_RULES: dict[str, Rule] = {
    "pooling": _choice(POOLINGS), "encoder": _choice(ENCODERS), "hidden": WIDTHS, "embed_dim": _integer(1),
    "dropout": RATE, "input_dropout": RATE, "lstm_hidden": _integer(1), "lstm_layers": _integer(1),
    "encoder_dim": _integer(1), "transformer_layers": _integer(1), "transformer_heads": _integer(1),
    "transformer_ff": _integer(1), "temperature": POSITIVE, "learn_temperature": BOOLEAN,
}
LOSS_RULES: dict[str, Rule] = {  # read by tivm.train.losses.compute_loss
    "kind": _choice(LOSS_KINDS), "margin": NON_NEGATIVE, "top_q": _integer(1), "structure_k": _integer(1),
    "structure_weight": NON_NEGATIVE, "structure_scale": POSITIVE, "distill_weight": NON_NEGATIVE,
    "distill_temperature": POSITIVE,
    "label_weight": NON_NEGATIVE, "label_count": _integer(1),
}
# tivm.train.trainer.TrainArgs, plus val_fraction and domain_val_fraction (read by tivm-train's split)
TRAIN_RULES: dict[str, Rule] = {
    "epochs": _integer(1), "batch_size": _integer(2), "lr": POSITIVE, "weight_decay": NON_NEGATIVE,
    "warmup_epochs": NON_NEGATIVE, "patience": _integer(1), "seed": _integer(0), "amp": BOOLEAN,
    "eval_batch_size": _integer(1), "batching": _choice(BATCHINGS), "clusters": _integer(1),
    "clustered_fraction": SHARE, "val_fraction": STRICT_SHARE,
    "domain_fraction": RATE, "domain_labels": LABELS, "domain_batchnorm": BOOLEAN,
    "domain_val_fraction": STRICT_SHARE, "ema_decay": RATE,
}
BLOCK_RULES: dict[str, dict[str, Rule]] = {"model": MODEL_RULES, "loss": LOSS_RULES, "train": TRAIN_RULES}
TOP_RULES: dict[str, Rule] = {"name": TEXT, "description": TEXT, "doc": FREE,  # doc: prose, never read
                              **{block: OBJECT for block in BLOCK_RULES}}
# TrainArgs fields that describe the machine, not the recipe: tivm-train always sets them from its options
COMMAND_LINE_ONLY = {"device": "--device", "progress": "--progress/--no-progress", "domain_label": "--label",
                     "init": "--init", "teachers": "--teacher"}


def _unknown_key(block: str, key: str, rules: dict[str, Rule]) -> str:
    """The problem text for an unknown key: where it belongs if another block knows it exactly, else the
    nearest known key, else the list of known keys."""
    path = f"{block}.{key}" if block else key
    if block == "train" and key in COMMAND_LINE_ONLY:
        return f"unknown key {path} (a command-line option, {COMMAND_LINE_ONLY[key]}, not a config key)"
    home = next((name for name, known in BLOCK_RULES.items() if key in known and name != block), None)
    if home:
        return f"unknown key {path} (it belongs in the \"{home}\" block)"
    close = difflib.get_close_matches(key, list(rules), n=1)
    if close:
        return f"unknown key {path} (did you mean {close[0]}?)"
    return f"unknown key {path} (known keys: {', '.join(rules)})"


def check_values(values: Any, rules: dict[str, Rule], where: str | Path, block: str = "") -> None:
    """Raise ConfigError for the first key of values that rules do not know or whose value breaks its rule."""
    if not isinstance(values, dict):
        raise ConfigError(where, f"{block or 'a config'} must be a JSON object, got {type(values).__name__}")
    for key, value in values.items():
        if key not in rules:
            raise ConfigError(where, _unknown_key(block, str(key), rules))
        test, text = rules[key]
        if not test(value):
            raise ConfigError(where, f"{block + '.' if block else ''}{key} must be {text}, got {value!r}")


def check_option(key: str, value: Any) -> None:
    """A command-line value by the rule of its train key (keys without a rule, e.g. device, pass); the
    ConfigError names the option, e.g. "--batch-size: must be an integer >= 2, got 1"."""
    if key in TRAIN_RULES:
        test, text = TRAIN_RULES[key]
        if not test(value):
            raise ConfigError("--" + key.replace("_", "-"), f"must be {text}, got {value!r}")


def check_config(config: Any, where: str | Path = "config") -> None:
    """Every key of every block known and every value of the right type and range (ConfigError otherwise)."""
    check_values(config, TOP_RULES, where)
    if "model" not in config:
        raise ConfigError(where, "a config needs a \"model\" block")
    for block, rules in BLOCK_RULES.items():
        if block in config:
            check_values(config[block], rules, where, block)


def known_keys_only(config: dict) -> tuple[dict, list[str]]:
    """(config without the keys no code reads, their dotted names). Runs saved before configs were checked
    may hold such keys (a typo, kept silently then); they had no effect on the trained model, so rebuilding
    without them gives the same model."""
    if not isinstance(config, dict):
        return config, []
    kept, dropped = {}, []
    for key, value in config.items():
        if key not in TOP_RULES:
            dropped.append(str(key))
        elif key in BLOCK_RULES and isinstance(value, dict):
            kept[key] = {k: v for k, v in value.items() if k in BLOCK_RULES[key]}
            dropped += [f"{key}.{k}" for k in value if k not in BLOCK_RULES[key]]
        else:
            kept[key] = value
    return kept, dropped


def _check_model_combination(model: dict, where: str | Path) -> None:
    """Rules between keys of the completed model block, so they fail at loading, not deep inside a build."""
    if (model["encoder"] != "none") != (model["pooling"] == "sequence"):
        raise ConfigError(where, "a temporal encoder goes with pooling \"sequence\" and only with it")
    if model["encoder"] == "transformer":
        width, heads = model["encoder_dim"], model["transformer_heads"]
        if width % heads or width % 2:  # heads split the width; sine/cosine positions come in pairs
            raise ConfigError(where, f"model.encoder_dim ({width}) must be even and divisible by "
                                     f"model.transformer_heads ({heads})")


def packaged_configs() -> list[str]:
    """Names of every packaged config: the paper's seven first, then variants (e.g. "IVM-M-CLUSTERED")."""
    folder = resources.files("tivm.train").joinpath("configs")
    extra = sorted(p.name[:-5].upper() for p in folder.iterdir() if p.name.endswith(".json")
                   and p.name[:-5].upper() not in CONFIG_NAMES)
    return list(CONFIG_NAMES) + extra


def config_path(name: str) -> Path:
    """The packaged JSON file of a named configuration (e.g. "TIVM")."""
    names = packaged_configs()
    if name.upper() not in names:
        close = difflib.get_close_matches(name.upper(), names, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(name, f"unknown configuration; {hint}choose one of {', '.join(names)} "
                                "or give a path to a JSON config file")
    return Path(str(resources.files("tivm.train").joinpath("configs", f"{name.lower()}.json")))


def load_config(name_or_path: str | Path) -> dict:
    """A checked, completed configuration dict from a packaged name (CONFIG_NAMES or a variant) or a JSON
    file path; ConfigError (naming the file) for anything it cannot use."""
    text = str(name_or_path)
    is_name = not text.endswith(".json") and "/" not in text and "\\" not in text
    path = config_path(text) if is_name else Path(text)
    if not path.is_file():
        raise ConfigError(path, f"no such config file (names: {', '.join(CONFIG_NAMES)})")
    config = read_json_object(path, lambda problem: ConfigError(path, f"config {problem}"))
    return complete_config(config, where=str(path))


def complete_config(config: dict, where: str | Path = "config") -> dict:
    """config checked (check_config) with the model defaults filled in. Filling in is what a run's
    checkpoint.json stores, so every filled-in key is a known one and a saved config loads again."""
    check_config(config, where)
    model = {**MODEL_DEFAULTS, **config["model"]}
    _check_model_combination(model, where)
    return {**config, "model": model}
