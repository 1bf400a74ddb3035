"""The paper's seven configurations as PyTorch modules: two heads into one 512-d, L2-normalised space.

A *head* is the trained part of one modality: standardisation, pooling or a temporal encoder, and VM-NET's
MLP. A backbone (tivm.train.backbones) computes the per-second features a head takes; backbone + head is a
*branch*, what tivm.export writes as one ONNX file (docs/architecture.md, "Vocabulary").

Public API (stable; `tivm.export` builds on it)::

    from tivm.train.config import load_config
    from tivm.train.heads import build_model

    config = load_config("TIVM")               # tivm.train.config: a packaged name or a JSON config file
    model = build_model(config, audio_dim=128, video_dim=1000)
    model.set_input_stats(audio_mean, audio_std, video_mean, video_std)   # training-split statistics
    a = model.audio_head(audio)                # (B, T, Da) float32 -> (B, 512), unit L2 norm
    v = model.video_head(video)                # (B, T, Dv) float32 -> (B, 512), unit L2 norm
    a, v = model(audio, video)                 # both at once
    model.logit_scale                          # InfoNCE 1/temperature = exp(log_logit_scale)
    model.audio_head.reference_features(x)     # pooled standardised inputs (VM-NET's structure loss)
    model.config, model.audio_dim, model.video_dim, model.name
    count_parameters(model)                    # trainable parameters

Every head takes per-second sequences (B, T, D) and pools inside itself, so each exports to ONNX the same
way with dynamic batch and time axes. The per-feature standardisation (training-split mean/std) lives in each
head as buffers `input_mean` / `input_std`; export and runtime need nothing else.

Head layouts (`pooling` / `encoder` in the config's "model" block):
* "mean" (VM-M, IVM-M): standardise -> mean over T -> MLP.
* "mean_std" (VM-MS, IVM-MS): standardise -> [mean, std] over T (2D inputs; std is the population std,
  sqrt(var + 1e-6), so T = 1 gives a constant 1e-3) -> MLP.
* "max_after" (VM-R): standardise -> MLP applied to every second -> max over T -> L2 normalise.
* encoder "lstm" (LIVM): standardise -> 2-layer bidirectional LSTM -> [last forward state, last backward
  state] -> linear 512 + ReLU + dropout -> MLP.
* encoder "transformer" (TIVM): standardise -> linear D -> d_model -> + sinusoidal positional encoding
  computed on the fly for any T -> Transformer encoder (post-norm layers as in Vaswani et al., written out
  so that ONNX export keeps T dynamic; no fast path, no nested tensors) -> mean over T -> MLP.
The MLP is VM-NET's: Linear(in, 2048) -> BN -> ReLU -> dropout -> Linear(2048, 1024) -> BN -> ReLU ->
dropout -> Linear(1024, 512). VM-NET's video MLP stops at 1024; here both heads end with the same final
Linear(1024, 512) so that audio and video meet in one 512-d space. The output is L2-normalised.
Optional `input_dropout` (default 0) drops standardised input features while training (an augmentation).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from tivm.train.config import complete_config, load_config

STD_EPS = 1e-6  # keeps sqrt differentiable when a clip's features do not vary (T = 1)
NORM_EPS = 1e-12
MAX_LOGIT_SCALE = 100.0  # CLIP's cap on 1/temperature, so a learned temperature cannot collapse

# ------------------------------------------------------------------------------------------ building blocks

class LastDimBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over the last axis for (B, C) and (B, T, C) inputs (statistics over B, or B and T)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return super().forward(x.transpose(1, 2)).transpose(1, 2)
        return super().forward(x)


def vmnet_mlp(in_dim: int, hidden: list[int], out_dim: int, dropout: float) -> nn.Sequential:
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


# ------------------------------------------------------------------------------------------------ heads

class Head(nn.Module):
    """One modality's trained part: per-second features (B, T, D) -> (B, 512) with unit L2 norm."""

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
        mlp_in = self._make_encoder(in_dim, model, dropout)
        # registered last: a resume point's optimizer state refers to parameters by their order in parameters()
        self.mlp = vmnet_mlp(mlp_in, list(model["hidden"]), int(model["embed_dim"]), dropout)

    def _make_encoder(self, in_dim: int, model: dict, dropout: float) -> int:
        """Builds self.encoder (or None); returns the width the MLP receives."""
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
            z = self.mlp(x.mean(dim=1))
        elif self.pooling == "mean_std":
            std = torch.sqrt(x.var(dim=1, unbiased=False) + STD_EPS)
            z = self.mlp(torch.cat((x.mean(dim=1), std), dim=-1))
        elif self.pooling == "max_after":
            z = self.mlp(x).amax(dim=1)
        else:
            z = self.mlp(self.encoder(x))
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
    """Both heads plus the InfoNCE temperature (a learned or fixed log 1/tau)."""

    def __init__(self, config: dict, audio_dim: int, video_dim: int):
        super().__init__()
        self.config = complete_config(config)
        self.name = str(self.config.get("name", "custom"))
        self.audio_dim, self.video_dim = int(audio_dim), int(video_dim)
        model = self.config["model"]
        self.audio_head = Head(audio_dim, model)
        self.video_head = Head(video_dim, model)
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
        return self.audio_head(audio), self.video_head(video)

    def set_input_stats(self, audio_mean: Any, audio_std: Any, video_mean: Any, video_std: Any) -> None:
        self.audio_head.set_input_stats(audio_mean, audio_std)
        self.video_head.set_input_stats(video_mean, video_std)


def build_model(config: dict | str | Path, audio_dim: int, video_dim: int) -> TivmModel:
    """A fresh model for a config (dict, name or JSON path) and the data's input dims."""
    if not isinstance(config, dict):
        config = load_config(config)
    return TivmModel(config, audio_dim, video_dim)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
