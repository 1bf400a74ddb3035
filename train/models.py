"""The paper's seven configurations as PyTorch modules: two branches into one 512-d, L2-normalised space.

Public API (stable; `tivm.export` builds on it)::

    from tivm.train.models import CONFIG_NAMES, load_config, build_model

    config = load_config("TIVM")               # a name in CONFIG_NAMES, or a path to a JSON config file;
                                               # ConfigError (a ValueError) names the file, the key, the problem
    model = build_model(config, audio_dim=128, video_dim=1000)
    model.set_input_stats(audio_mean, audio_std, video_mean, video_std)   # training-split statistics
    a = model.audio_branch(audio)              # (B, T, Da) float32 -> (B, 512), unit L2 norm
    v = model.video_branch(video)              # (B, T, Dv) float32 -> (B, 512), unit L2 norm
    a, v = model(audio, video)                 # both at once
    model.logit_scale                          # InfoNCE 1/temperature = exp(log_logit_scale)
    model.audio_branch.reference_features(x)   # pooled standardised inputs (VM-NET's structure loss)
    model.config, model.audio_dim, model.video_dim, model.name
    count_parameters(model)                    # trainable parameters

Every branch takes per-second sequences (B, T, D) and pools inside itself, so each exports to ONNX the same
way with dynamic batch and time axes. The per-feature standardisation (training-split mean/std) lives in each
branch as buffers `input_mean` / `input_std`; export and runtime need nothing else.

Branch layouts (`pooling` / `encoder` in the config's "model" block):
* "mean" (VM-M, IVM-M): standardise -> mean over T -> head.
* "mean_std" (VM-MS, IVM-MS): standardise -> [mean, std] over T (2D inputs; std is the population std,
  sqrt(var + 1e-6), so T = 1 gives a constant 1e-3) -> head.
* "max_after" (VM-R): standardise -> head applied to every second -> max over T -> L2 normalise.
* encoder "lstm" (LIVM): standardise -> 2-layer bidirectional LSTM -> [last forward state, last backward
  state] -> linear 512 + ReLU + dropout -> head.
* encoder "transformer" (TIVM): standardise -> linear D -> d_model -> + sinusoidal positional encoding
  computed on the fly for any T -> Transformer encoder (post-norm layers as in Vaswani et al., written out
  so that ONNX export keeps T dynamic; no fast path, no nested tensors) -> mean over T -> head.
The head is VM-NET's: Linear(in, 2048) -> BN -> ReLU -> dropout -> Linear(2048, 1024) -> BN -> ReLU ->
dropout -> Linear(1024, 512). VM-NET's video branch stops at 1024; here both branches end with the same final
Linear(1024, 512) so that audio and video meet in one 512-d space. The output is L2-normalised.
Optional `input_dropout` (default 0) drops standardised input features while training (an augmentation).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from tivm.runtime.errors import TivmError

CONFIG_NAMES = ("VM-M", "VM-R", "VM-MS", "IVM-M", "IVM-MS", "LIVM", "TIVM")
EMBED_DIM = 512
POOLINGS = ("mean", "mean_std", "max_after", "sequence")
ENCODERS = ("none", "lstm", "transformer")
LOSS_KINDS = ("infonce", "triplet_structure")  # tivm.train.losses.compute_loss
BATCHINGS = ("random", "clustered")  # tivm.train.trainer: batch order
STD_EPS = 1e-6  # keeps sqrt differentiable when a clip's features do not vary (T = 1)
NORM_EPS = 1e-12
MAX_LOGIT_SCALE = 100.0  # CLIP's cap on 1/temperature, so a learned temperature cannot collapse

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


# ---------------------------------------------------------------------------------------------- configs

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
    "structure_weight": NON_NEGATIVE, "structure_scale": POSITIVE,
}
TRAIN_RULES: dict[str, Rule] = {  # tivm.train.trainer.TrainArgs, plus val_fraction (read by tivm-train's split)
    "epochs": _integer(1), "batch_size": _integer(2), "lr": POSITIVE, "weight_decay": NON_NEGATIVE,
    "warmup_epochs": NON_NEGATIVE, "patience": _integer(1), "seed": _integer(0), "amp": BOOLEAN,
    "eval_batch_size": _integer(1), "batching": _choice(BATCHINGS), "clusters": _integer(1),
    "clustered_fraction": SHARE, "val_fraction": STRICT_SHARE,
}
BLOCK_RULES: dict[str, dict[str, Rule]] = {"model": MODEL_RULES, "loss": LOSS_RULES, "train": TRAIN_RULES}
TOP_RULES: dict[str, Rule] = {"name": TEXT, "description": TEXT, "doc": FREE,  # doc: prose, never read
                              **{block: OBJECT for block in BLOCK_RULES}}
# TrainArgs fields that describe the machine, not the recipe: tivm-train always sets them from its options
COMMAND_LINE_ONLY = {"device": "--device", "progress": "--progress/--no-progress"}


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
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(path, f"not a readable JSON config ({e})") from None
    return complete_config(config, where=str(path))


def complete_config(config: dict, where: str | Path = "config") -> dict:
    """config checked (check_config) with the model defaults filled in. Filling in is what a run's
    checkpoint.json stores, so every filled-in key is a known one and a saved config loads again."""
    check_config(config, where)
    model = {**MODEL_DEFAULTS, **config["model"]}
    _check_model_combination(model, where)
    return {**config, "model": model}


# ------------------------------------------------------------------------------------------ building blocks

class LastDimBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over the last axis for (B, C) and (B, T, C) inputs (statistics over B, or B and T)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return super().forward(x.transpose(1, 2)).transpose(1, 2)
        return super().forward(x)


def vmnet_head(in_dim: int, hidden: list[int], out_dim: int, dropout: float) -> nn.Sequential:
    """VM-NET's fully connected stack: (Linear, BN, ReLU, dropout) per hidden layer, then Linear to out_dim."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), LastDimBatchNorm(width), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class SinusoidalPositions(nn.Module):
    """Adds Vaswani et al.'s sine/cosine position code, computed for the input's own T (no maximum)."""

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"positional encoding needs an even width, got {dim}")
        frequencies = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        self.register_buffer("frequencies", frequencies, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device, dtype=x.dtype).unsqueeze(1)
        angles = positions * self.frequencies.to(x.dtype)
        code = torch.stack((torch.sin(angles), torch.cos(angles)), dim=-1).flatten(1)  # (T, dim) interleaved
        return x + code


class LstmEncoder(nn.Module):
    """(B, T, D) -> (B, out): 2-layer BiLSTM, last states of both directions, Linear + ReLU + dropout."""

    def __init__(self, in_dim: int, hidden: int, layers: int, out_dim: int, dropout: float):
        super().__init__()
        self.lstm = nn.LSTM(in_dim, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.project = nn.Sequential(nn.Linear(2 * hidden, out_dim), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h_n, _) = self.lstm(x)
        last = torch.cat((h_n[-2], h_n[-1]), dim=-1)  # top layer: forward after t = T, backward after t = 1
        return self.project(last)


class SelfAttention(nn.Module):
    """Multi-head self-attention written out with reshapes that keep T symbolic (-1), so both ONNX exporters
    (TorchScript tracing and dynamo) give a graph that runs for any T; nn.MultiheadAttention's traced graph
    bakes the example's T into a Reshape."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"encoder width {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, dim = x.shape[0], x.shape[2]
        q, k, v = self.qkv(x).reshape(b, -1, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        weights = torch.softmax((q @ k.transpose(-2, -1)) * (self.head_dim ** -0.5), dim=-1)
        mixed = (self.dropout(weights) @ v).transpose(1, 2).reshape(b, -1, dim)  # (B, T, dim)
        return self.out(mixed)


class EncoderLayer(nn.Module):
    """Vaswani et al.'s post-norm encoder layer: x + attention, LayerNorm; x + feed-forward (ReLU), LayerNorm."""

    def __init__(self, dim: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.attention = SelfAttention(dim, heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(nn.Linear(dim, ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.attention(x)))
        return self.norm2(x + self.dropout(self.feed_forward(x)))


class TransformerEncoder(nn.Module):
    """(B, T, D) -> (B, dim): linear projection, positional code, Transformer encoder, mean over time."""

    def __init__(self, in_dim: int, dim: int, layers: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.project = nn.Linear(in_dim, dim)
        self.positions = SinusoidalPositions(dim)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, ff, dropout) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.positions(self.project(x)))
        for layer in self.layers:
            h = layer(h)
        return h.mean(dim=1)


# --------------------------------------------------------------------------------------------- branches

class Branch(nn.Module):
    """One modality: per-second features (B, T, D) -> (B, 512) with unit L2 norm."""

    def __init__(self, in_dim: int, model: dict):
        super().__init__()
        self.in_dim = int(in_dim)
        self.pooling = model["pooling"]
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))
        dropout = float(model["dropout"])
        # dropout on the standardised input features: an augmentation, a no-op at inference and in export
        rate = float(model["input_dropout"])
        self.input_dropout = nn.Dropout(rate) if rate > 0 else nn.Identity()
        head_in = self._make_encoder(in_dim, model, dropout)
        self.head = vmnet_head(head_in, list(model["hidden"]), int(model["embed_dim"]), dropout)

    def _make_encoder(self, in_dim: int, model: dict, dropout: float) -> int:
        """Builds self.encoder (or None); returns the width the head receives."""
        self.encoder: nn.Module | None = None
        if model["encoder"] == "lstm":
            self.encoder = LstmEncoder(in_dim, int(model["lstm_hidden"]), int(model["lstm_layers"]),
                                       int(model["encoder_dim"]), dropout)
            return int(model["encoder_dim"])
        if model["encoder"] == "transformer":
            self.encoder = TransformerEncoder(in_dim, int(model["encoder_dim"]), int(model["transformer_layers"]),
                                              int(model["transformer_heads"]), int(model["transformer_ff"]),
                                              dropout)
            return int(model["encoder_dim"])
        return 2 * in_dim if self.pooling == "mean_std" else in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_dropout((x - self.input_mean) / self.input_std)
        if self.pooling == "mean":
            z = self.head(x.mean(dim=1))
        elif self.pooling == "mean_std":
            std = torch.sqrt(x.var(dim=1, unbiased=False) + STD_EPS)
            z = self.head(torch.cat((x.mean(dim=1), std), dim=-1))
        elif self.pooling == "max_after":
            z = self.head(x).amax(dim=1)
        else:
            z = self.head(self.encoder(x))
        return F.normalize(z, dim=-1, eps=NORM_EPS)

    @torch.no_grad()
    def reference_features(self, x: torch.Tensor) -> torch.Tensor:
        """The input-space vector of each clip that VM-NET's structure loss compares: the standardised
        pooled input ([mean, std] for "mean_std", the mean over T otherwise)."""
        x = (x - self.input_mean) / self.input_std
        if self.pooling == "mean_std":
            return torch.cat((x.mean(dim=1), x.std(dim=1, unbiased=False)), dim=-1)
        return x.mean(dim=1)

    @torch.no_grad()
    def set_input_stats(self, mean: Any, std: Any, min_std: float = 1e-3) -> None:
        """Per-feature standardisation from training statistics; tiny stds are floored (constant features)."""
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(self.in_dim)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(self.in_dim).clamp_min(min_std)
        self.input_mean.copy_(mean_t)
        self.input_std.copy_(std_t)


class TivmModel(nn.Module):
    """Both branches plus the InfoNCE temperature (a learned or fixed log 1/tau)."""

    def __init__(self, config: dict, audio_dim: int, video_dim: int):
        super().__init__()
        self.config = complete_config(config)
        self.name = str(self.config.get("name", "custom"))
        self.audio_dim, self.video_dim = int(audio_dim), int(video_dim)
        model = self.config["model"]
        self.audio_branch = Branch(audio_dim, model)
        self.video_branch = Branch(video_dim, model)
        initial = torch.tensor(math.log(1.0 / float(model["temperature"])))
        # only InfoNCE uses the temperature; a parameter no loss touches would upset DDP's gradient reducer
        if model["learn_temperature"] and self.config.get("loss", {}).get("kind", "infonce") == "infonce":
            self.log_logit_scale = nn.Parameter(initial)
        else:
            self.register_buffer("log_logit_scale", initial)

    @property
    def logit_scale(self) -> torch.Tensor:
        """1 / temperature, capped at MAX_LOGIT_SCALE."""
        return self.log_logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()

    def forward(self, audio: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.audio_branch(audio), self.video_branch(video)

    def set_input_stats(self, audio_mean: Any, audio_std: Any, video_mean: Any, video_std: Any) -> None:
        self.audio_branch.set_input_stats(audio_mean, audio_std)
        self.video_branch.set_input_stats(video_mean, video_std)


def build_model(config: dict | str | Path, audio_dim: int, video_dim: int) -> TivmModel:
    """A fresh model for a config (dict, name or JSON path) and the data's input dims."""
    if not isinstance(config, dict):
        config = load_config(config)
    return TivmModel(config, audio_dim, video_dim)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
