"""The training loop: AdamW, warm-up + cosine schedule, early stopping on validation Recall@10 (ties broken by
Recall@1), resumable.

    args = TrainArgs.from_config(config, epochs=20, device="cpu")
    summary = fit(config, parts, run_dir, args, data=data_record(...))   # parts: {"train", "val", "test"}

Distributed (torchrun): when torch.distributed is initialised, every process takes its slice of each global
batch; embeddings (and VM-NET's reference vectors) are all-gathered with gradients, so each process computes
the same loss over the whole global batch and DDP's averaged gradients equal the single-process gradients.
BatchNorm statistics stay per process (SyncBatchNorm only runs on GPUs, and per-process statistics are DDP's
default). Process 0 writes the checkpoints and the log; every process evaluates the validation set so that
all of them take the same early-stopping decision.

Reproducible: the batch order of epoch e comes from a generator seeded with (seed, e), the torch RNG state
(dropout) is saved with every resume point, so a run stopped and resumed gives the same weights as one that
was not stopped.

Options that still train one model of the usual shape (docs/training.md): train.ema_decay (WeightAverage:
validate and save a moving average of the weights), loss.distill_weight with TrainArgs.teachers
(teacher_embeddings: the teachers' averaged in-batch distributions as a second target) and loss.label_weight
(LabelClassifiers: an auxiliary multi-label objective whose classifiers stay out of the checkpoint). The
average and the classifiers are saved with the resume point, so --resume continues them.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from tivm.train.checkpoint import (
    RESUME_DIR,
    has_resume_state,
    load_checkpoint,
    load_resume_state,
    save_checkpoint,
    save_resume_state,
)
from tivm.train.config import TRAIN_RULES, check_option, check_values
from tivm.train.data_spec import input_stats
from tivm.train.dataset import FeatureSet
from tivm.train.heads import TivmModel, build_model, count_parameters
from tivm.train.losses import compute_loss, label_loss, label_settings
from tivm.train.metrics import retrieval_metrics

LOG_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
SELECTION_METRIC = "10"  # validation Recall@10, video -> audio


def selection_score(metrics: dict) -> list[float]:
    """What early stopping and model selection maximise: validation Recall@10, ties (e.g. 100 % on easy
    data) broken by Recall@1 and then by a lower mean rank. Compared as a list, lexicographically."""
    return [metrics["recall"][SELECTION_METRIC], metrics["recall"]["1"], -metrics["mean_rank"]]
SEED_STRIDE = 1_000_003  # separates the per-epoch shuffle seeds of different run seeds


@dataclass
class TrainArgs:
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    patience: int = 6
    seed: int = 0
    device: str = "cpu"
    amp: bool = True            # autocast (bfloat16) on CUDA; ignored on CPU
    eval_batch_size: int = 1024
    progress: bool = True
    # "random", or "clustered": part of every batch comes from one k-means cluster of the clips' pooled
    # features, so in-batch negatives include near neighbours (harder negatives than random ones)
    batching: str = "random"
    clusters: int = 16
    clustered_fraction: float = 0.5
    # in-domain oversampling: this share of every batch is drawn from the training clips carrying
    # domain_label (tivm-train sets it to --label; with --extra-data those are the extra sources' in-domain
    # pairs) or any of domain_labels (related classes), the rest from the other clips; an epoch is one pass
    # over the other clips. 0: plain random order
    domain_fraction: float = 0.0
    domain_labels: list[int] | None = None
    domain_label: int | None = None
    # validate and save each epoch's model with its BatchNorm statistics taken from the in-domain training
    # clips (recalibrate_batchnorm); training itself is unchanged
    domain_batchnorm: bool = False
    # a run directory whose weights (and input statistics) start the training: fine-tuning a general model
    init: str | None = None
    # exponential moving average of the weights (and BatchNorm statistics): 0 off; else every step
    # ema <- d * ema + (1 - d) * weights with d = min(ema_decay, (1 + step) / (10 + step)) (the short warm-up
    # keeps the random initialisation from lingering), and validation, selection and the saved checkpoint use
    # the average: one model of the same shape, so it exports as before
    ema_decay: float = 0.0
    # ensemble distillation (loss.distill_weight): trained runs whose averaged in-batch similarity
    # distributions the student also matches; command line only (--teacher), like init
    teachers: list[str] | None = None

    @classmethod
    def from_config(cls, config: dict, **overrides: Any) -> "TrainArgs":
        """The config's "train" block, then the non-None overrides (CLI options). Both are checked by the
        config rules (ConfigError: an unknown train key, a bad value); an override that is no TrainArgs field
        is a TypeError, a programming error rather than a user's."""
        known = {f.name for f in fields(cls)}
        block = config.get("train", {})
        check_values(block, TRAIN_RULES, "config", "train")
        strangers = sorted(set(overrides) - known)
        if strangers:
            raise TypeError(f"TrainArgs has no field {', '.join(strangers)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        for key, value in given.items():
            check_option(key, value)
        values = {k: v for k, v in block.items() if k in known}  # val_fraction belongs to the data split
        return cls(**{**values, **given})


# ---------------------------------------------------------------------------------------------- distributed

def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient for the whole batch and hands each process
    the rows it contributed (every process holds the same number of rows)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, size = world()
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = (rank * x.shape[0], (rank + 1) * x.shape[0])
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rows[0]:ctx.rows[1]]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All processes' x concatenated in rank order; gradients flow back to each process's own part."""
    if world()[1] == 1:
        return x
    return _GatherWithGrad.apply(x)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    if world()[1] == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world()[1])]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


# ---------------------------------------------------------------------------------------------- pieces

def as_tensor(features: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; biases, norm weights and the temperature (all 0-/1-d) get no weight decay."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    plain = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": plain, "weight_decay": 0.0}], lr=lr)


def warmup_cosine(warmup_steps: int, total_steps: int):
    """LR multiplier per step: linear warm-up to 1, then cosine decay to 0 at total_steps."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def autocast(device: torch.device, enabled: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


@torch.no_grad()
def embed(model: TivmModel, audio: np.ndarray, video: np.ndarray, device: str | torch.device = "cpu",
          batch_size: int = 1024, amp: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (N, 512) of every clip, model in eval mode (restored afterwards)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out_a, out_v = [], []
    for start in range(0, audio.shape[0], batch_size):
        a = as_tensor(audio[start:start + batch_size]).to(device)
        v = as_tensor(video[start:start + batch_size]).to(device)
        with autocast(device, amp):
            ea, ev = model(a, v)
        out_a.append(ea.float().cpu().numpy())
        out_v.append(ev.float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out_a), np.concatenate(out_v)


def evaluate(model: TivmModel, fs: FeatureSet, device: str | torch.device = "cpu", batch_size: int = 1024,
             amp: bool = True) -> dict:
    """retrieval_metrics over the whole of fs (the gallery is every clip of fs)."""
    audio, video = embed(model, fs.audio, fs.video, device, batch_size, amp)
    return retrieval_metrics(audio, video)


@torch.no_grad()
def recalibrate_batchnorm(model: TivmModel, fs: FeatureSet, device: str | torch.device = "cpu") -> TivmModel:
    """Replace every BatchNorm's running mean and variance by the statistics of fs (e.g. the in-domain
    training clips) in one pass, dropout off: AdaBN (Li et al. 2016), a domain adaptation that changes
    buffers only, so the model exports as before. fs must fit in one batch (a few thousand clips)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if len(fs) < 2:
        raise ValueError("BatchNorm recalibration needs at least 2 clips")
    was_training = model.training
    model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
        m.train()
    model(as_tensor(fs.audio).to(device), as_tensor(fs.video).to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return model


def new_model(config: dict, train: FeatureSet) -> TivmModel:
    """A model sized for the data, with standardisation statistics from the training split."""
    model = build_model(config, train.audio_dim, train.video_dim)
    model.set_input_stats(*input_stats(train.audio), *input_stats(train.video))
    return model


def start_from(model: TivmModel, run: str | Path) -> None:
    """Copy a trained run's weights and buffers (input statistics included) into model: fine-tuning. The
    run must have the same heads (config model block and input dims), else ValueError."""
    trained, record = load_checkpoint(run)
    if (trained.audio_dim, trained.video_dim) != (model.audio_dim, model.video_dim) or \
            trained.config["model"] != model.config["model"]:
        raise ValueError(f"{run}: --init needs a run with the same model block and input dims "
                         f"({record.get('name')} has {trained.audio_dim}/{trained.video_dim}-d inputs)")
    model.load_state_dict(trained.state_dict())


def kmeans(x: np.ndarray, k: int, seed: int = 0, iterations: int = 20) -> np.ndarray:
    """int64 cluster id per row of x (standardised first), Lloyd's algorithm from k distinct random rows."""
    x = np.asarray(x, np.float64)
    x = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-6)
    rng = np.random.default_rng(seed)
    centres = x[rng.choice(len(x), size=min(k, len(x)), replace=False)]
    for _ in range(iterations):
        d = (x * x).sum(1)[:, None] - 2 * x @ centres.T + (centres * centres).sum(1)[None, :]
        ids = d.argmin(axis=1)
        for c in range(len(centres)):
            members = x[ids == c]
            if len(members):
                centres[c] = members.mean(axis=0)
    return ids.astype(np.int64)


def clustered_order(perm: torch.Tensor, cluster_ids: torch.Tensor, batch: int, fraction: float,
                    generator: torch.Generator) -> torch.Tensor:
    """An order whose every batch holds round(fraction * batch) clips of (mostly) one cluster and random
    clips for the rest; each clip appears once per epoch, so no batch holds a clip twice."""
    n = perm.numel()
    steps = n // batch
    hard = int(round(fraction * batch))
    split = steps * hard  # clips that go into the clustered parts
    grouped, random_part = perm[:split], perm[split:]
    # sort the clustered share by cluster (random order within a cluster), then cut into batch parts
    grouped = grouped[torch.argsort(cluster_ids[grouped] * n + torch.arange(split), stable=True)]
    parts = grouped[:steps * hard].reshape(steps, hard)[torch.randperm(steps, generator=generator)]
    fill = random_part[:steps * (batch - hard)].reshape(steps, batch - hard)
    rows = torch.cat((parts, fill), dim=1)
    return torch.cat((rows.reshape(-1), random_part[steps * (batch - hard):]))


def domain_mask(fs: FeatureSet, labels: list[int]) -> np.ndarray:
    """bool per clip: it carries any of labels (all False for a data set without labels)."""
    mask = np.zeros(len(fs), bool)
    for label in labels if fs.has_labels else []:
        mask |= fs.has_label(int(label))
    return mask


def domain_order(general: torch.Tensor, domain: torch.Tensor, batch: int, domain_count: int, steps: int,
                 generator: torch.Generator) -> torch.Tensor:
    """steps batches, each of domain_count distinct in-domain clips (a fresh random draw per batch, so the
    few in-domain pairs recur many times an epoch and meet each other as negatives) and batch - domain_count
    of the general clips (a random pass over them, wrapping round when short), shuffled within the batch."""
    rest = batch - domain_count
    general = general[torch.randperm(general.numel(), generator=generator)]
    if general.numel() < steps * rest:
        general = general.repeat(-(-steps * rest // general.numel()))
    rows = []
    for step in range(steps):
        picked = domain[torch.randperm(domain.numel(), generator=generator)[:domain_count]]
        row = torch.cat((picked, general[step * rest:(step + 1) * rest]))
        rows.append(row[torch.randperm(batch, generator=generator)])
    return torch.cat(rows)


class WeightAverage:
    """An exponential moving average of a model's weights and buffers (train.ema_decay): a deep copy, in
    eval mode, updated after every optimisation step. Floating-point tensors are averaged (BatchNorm running
    statistics too, so they belong to the averaged weights); integer ones (batch counters) are copied."""

    EMA_FILE = "ema.safetensors"  # beside the resume point

    def __init__(self, model: TivmModel, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"train.ema_decay must be in (0, 1), got {decay}")
        self.decay, self.updates = decay, 0
        # never back-propagated (updates run under no_grad); its parameters keep requires_grad so that a
        # checkpoint of it counts them like the trained model's
        self.model = copy.deepcopy(model).eval()

    def current_decay(self) -> float:
        """The decay of the next update: ramps up as (1 + n) / (10 + n) to ema_decay, so the average forgets
        the random initialisation within a few steps instead of 1 / (1 - decay) of them."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: TivmModel) -> None:
        decay = self.current_decay()
        self.updates += 1
        current = model.state_dict()
        for key, average in self.model.state_dict().items():
            value = current[key].detach()
            if average.dtype.is_floating_point:
                average.mul_(decay).add_(value.to(average.dtype), alpha=1.0 - decay)
            else:
                average.copy_(value)

    def save(self, run_dir: Path) -> None:
        from safetensors.torch import save_file
        where = run_dir / RESUME_DIR / self.EMA_FILE
        where.parent.mkdir(parents=True, exist_ok=True)
        partial = where.with_name(where.name + ".partial")
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(partial),
                  metadata={"updates": str(self.updates)})
        partial.replace(where)

    def load(self, run_dir: Path) -> None:
        from safetensors import safe_open
        where = run_dir / RESUME_DIR / self.EMA_FILE
        if not where.is_file():
            raise ValueError(f"{where}: missing; the run to resume was not trained with train.ema_decay")
        with safe_open(str(where), framework="pt") as f:
            self.model.load_state_dict({k: f.get_tensor(k) for k in f.keys()})
            self.updates = int((f.metadata() or {}).get("updates", 0))


@torch.no_grad()
def teacher_embeddings(runs: list[str], train: FeatureSet, device: torch.device,
                       data: dict | None = None) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """(audio, video, 1/temperature) per teacher run: its embeddings of every training clip (eval mode,
    float16 to halve the memory), looked up per batch for loss.distill_weight. With data (the student's data
    record), a teacher must have been trained on the same data and split, so that none of the student's
    validation or test clips taught it."""
    out = []
    for run in runs:
        teacher, record = load_checkpoint(run)
        if (teacher.audio_dim, teacher.video_dim) != (train.audio_dim, train.video_dim):
            raise ValueError(f"{run}: a teacher needs {train.audio_dim}/{train.video_dim}-d inputs, it has "
                             f"{teacher.audio_dim}/{teacher.video_dim}")
        if data is not None:
            theirs = record.get("data") or {}
            for key in ("fingerprint", "label", "sizes", "domain_val_fraction"):
                if theirs.get(key) != data.get(key):
                    raise ValueError(f"{run}: a teacher must be trained on this run's data and split "
                                     f"(its data {key} differs), else it may have seen validation or test clips")
        teacher.to(device)
        audio, video = embed(teacher, train.audio, train.video, device)
        out.append((torch.from_numpy(audio).half(), torch.from_numpy(video).half(),
                    float(teacher.logit_scale.detach())))
    return out


class LabelClassifiers(nn.Module):
    """The label-aware auxiliary objective's classifiers (loss.label_weight): one linear layer per branch
    from the embedding to the `labels` (the most frequent labels of the training clips). Trained beside the
    model by the same optimizer and saved only with the resume point: the model's checkpoint, and so what
    tivm-export reads, does not change."""

    FILE = "labels.safetensors"  # beside the resume point

    def __init__(self, embed_dim: int, labels: np.ndarray, frequency: np.ndarray | None = None):
        super().__init__()
        self.register_buffer("labels", torch.as_tensor(np.asarray(labels, np.int64)))
        self.audio = nn.Linear(embed_dim, len(labels))
        self.video = nn.Linear(embed_dim, len(labels))
        # unit embeddings have entries of about 1/sqrt(E): scaled to about 1, so that the default
        # initialisation and AdamW's steps of about lr move the logits at a useful pace
        self.scale = math.sqrt(embed_dim)
        if frequency is not None:  # start at each label's base rate: rare labels need logits near -5, which
            # a bias stepping by lr would take thousands of steps to reach (Lin et al. 2017's prior init)
            p = torch.as_tensor(np.clip(np.asarray(frequency, np.float64), 1e-4, 1 - 1e-4), dtype=torch.float32)
            with torch.no_grad():
                for layer in (self.audio, self.video):
                    layer.bias.copy_(torch.log(p / (1 - p)))

    def forward(self, audio: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.audio(audio * self.scale), self.video(video * self.scale)

    def save(self, run_dir: Path) -> None:
        from safetensors.torch import save_file
        where = run_dir / RESUME_DIR / self.FILE
        partial = where.with_name(where.name + ".partial")
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(partial))
        partial.replace(where)

    def load(self, run_dir: Path) -> None:
        from safetensors.torch import load_file
        where = run_dir / RESUME_DIR / self.FILE
        if not where.is_file():
            raise ValueError(f"{where}: missing; the run to resume was not trained with loss.label_weight")
        self.load_state_dict(load_file(str(where)))


def label_targets(fs: FeatureSet, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, targets): the `count` most frequent labels of fs (ties: the lower id), most frequent first,
    and a uint8 (len(fs), len(labels)) multi-hot matrix of which clip carries which."""
    if not fs.has_labels or len(fs.labels) == 0:
        raise ValueError("loss.label_weight needs labelled training clips (e.g. YouTube-8M)")
    flat = np.asarray(fs.labels, np.int64)
    ids, counts = np.unique(flat, return_counts=True)
    labels = ids[np.lexsort((ids, -counts))][:count]
    column = np.full(int(ids.max()) + 1, -1, np.int64)
    column[labels] = np.arange(len(labels))
    targets = np.zeros((len(fs), len(labels)), np.uint8)
    rows = np.repeat(np.arange(len(fs)), np.diff(np.asarray(fs.labels_indptr)))
    kept = column[flat] >= 0
    targets[rows[kept], column[flat][kept]] = 1
    return labels, targets


def _log(run_dir: Path, entry: dict) -> None:
    with open(run_dir / LOG_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")


def _steps(n_train: int, batch_size: int, world_size: int) -> tuple[int, int]:
    """(global batch, steps per epoch): full batches only; a training split smaller than a batch is one batch."""
    batch = min(batch_size, n_train)
    batch -= batch % world_size
    if batch < 2 * world_size:
        raise ValueError(f"the training split has {n_train} clips: too few for a batch "
                         f"(need at least {2 * world_size})")
    return batch, n_train // batch


# ---------------------------------------------------------------------------------------------- training

class _Epoch:
    """One pass over the training split (one object per fit(), so the loop reads as a few named steps)."""

    def __init__(self, model: TivmModel, net: nn.Module, optimizer, scheduler, config: dict, args: TrainArgs,
                 train: FeatureSet, device: torch.device):
        self.model, self.net, self.optimizer, self.scheduler = model, net, optimizer, scheduler
        self.loss_config = config.get("loss", {"kind": "infonce"})
        self.args, self.device = args, device
        self.audio, self.video = as_tensor(train.audio), as_tensor(train.video)
        self.rank, self.world_size = world()
        self.batch, self.steps = _steps(len(train), args.batch_size, self.world_size)
        self.train = train
        self.ema: WeightAverage | None = None
        self.teachers: list[tuple[torch.Tensor, torch.Tensor, float]] | None = None
        self.label_weight, label_count = label_settings(self.loss_config)
        self.classifiers: LabelClassifiers | None = None
        if self.label_weight > 0:
            labels, targets = label_targets(train, label_count)
            self.label_targets = torch.from_numpy(targets)
            self.classifiers = LabelClassifiers(int(model.config["model"]["embed_dim"]), labels,
                                                targets.mean(axis=0)).to(device)
            optimizer.add_param_group({"params": list(self.classifiers.parameters()),
                                       "weight_decay": args.weight_decay})
        # the clips of the target domain itself (--label), for domain_batchnorm
        self.in_domain = domain_mask(train, [args.domain_label]) if args.domain_label is not None else None
        if args.domain_batchnorm and (self.in_domain is None or self.in_domain.sum() < 2):
            raise ValueError("train.domain_batchnorm needs in-domain training clips (clips with --label in "
                             "training: --extra-data)")
        self.domain = None
        if args.domain_fraction > 0:
            if args.batching != "random":
                raise ValueError("train.domain_fraction goes with batching 'random' only")
            wanted = ([args.domain_label] if args.domain_label is not None else []) + list(args.domain_labels or [])
            in_domain = domain_mask(train, wanted)
            self.domain_count = int(round(args.domain_fraction * self.batch))
            if self.domain_count < 1 or in_domain.sum() < self.domain_count or (~in_domain).sum() < 1:
                raise ValueError(f"train.domain_fraction {args.domain_fraction} needs at least "
                                 f"{max(1, self.domain_count)} in-domain training clips (clips with --label "
                                 f"in training: --extra-data) and some others; the training split has "
                                 f"{int(in_domain.sum())} in-domain of {len(train)}")
            self.domain = torch.from_numpy(np.flatnonzero(in_domain))
            self.general = torch.from_numpy(np.flatnonzero(~in_domain))
            self.steps = max(1, self.general.numel() // (self.batch - self.domain_count))

    def order(self, epoch: int) -> torch.Tensor:
        """This epoch's clip order; consecutive slices of self.batch clips are the batches."""
        generator = torch.Generator().manual_seed(self.args.seed * SEED_STRIDE + epoch)
        if self.domain is not None:
            return domain_order(self.general, self.domain, self.batch, self.domain_count, self.steps, generator)
        perm = torch.randperm(self.audio.shape[0], generator=generator)
        if self.args.batching == "random":
            return perm
        if self.args.batching != "clustered":
            raise ValueError(f"train.batching must be 'random' or 'clustered', got {self.args.batching!r}")
        return clustered_order(perm, self.cluster_ids, self.batch, self.args.clustered_fraction, generator)

    @property
    def cluster_ids(self) -> torch.Tensor:
        if not hasattr(self, "_cluster_ids"):
            pooled = torch.cat((self.audio.mean(dim=1), self.video.mean(dim=1)), dim=1).numpy()
            self._cluster_ids = torch.from_numpy(kmeans(pooled, self.args.clusters, seed=self.args.seed))
        return self._cluster_ids

    def step(self, index: torch.Tensor) -> float:
        local = index.chunk(self.world_size)[self.rank]
        a, v = self.audio[local].to(self.device), self.video[local].to(self.device)
        with autocast(self.device, self.args.amp):
            ea, ev = self.net(a, v)
        ea, ev = gather_with_grad(ea.float()), gather_with_grad(ev.float())
        ref_a = ref_v = None
        if self.loss_config.get("kind") == "triplet_structure":
            ref_a = gather_no_grad(self.model.audio_head.reference_features(a))
            ref_v = gather_no_grad(self.model.video_head.reference_features(v))
        teacher_logits = None
        if self.teachers:  # index is the global batch, in the row order of the gathered embeddings
            teacher_logits = [scale * (tv[index].to(self.device).float() @ ta[index].to(self.device).float().T)
                              for ta, tv, scale in self.teachers]
        loss = compute_loss(self.loss_config, self.model.logit_scale, ea, ev, ref_a, ref_v, teacher_logits)
        if self.classifiers is not None:  # the gathered rows are the global batch, in index order
            loss = loss + self.label_weight * label_loss(*self.classifiers(ea, ev),
                                                         self.label_targets[index].to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return float(loss.detach())

    def run(self, epoch: int) -> float:
        self.net.train()
        order = self.order(epoch)
        bar = _progress(range(self.steps), f"epoch {epoch + 1}", self.args.progress and self.rank == 0)
        losses = []
        for s in bar:
            losses.append(self.step(order[s * self.batch:(s + 1) * self.batch]))
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
        return float(np.mean(losses))


def domain_recalibrated(model: TivmModel, epoch_runner: _Epoch) -> TivmModel:
    """A copy of model with the BatchNorm statistics of the in-domain training clips (train.domain_batchnorm)."""
    clips = epoch_runner.train.subset(epoch_runner.in_domain)
    return recalibrate_batchnorm(copy.deepcopy(model), clips, next(model.parameters()).device)


def _progress(iterable, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, unit="batch", leave=False)


def _device(args: TrainArgs) -> torch.device:
    device = torch.device(args.device)
    if device.type == "cuda" and world()[1] > 1 and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def fit(config: dict, parts: dict[str, FeatureSet], run_dir: str | Path, args: TrainArgs,
        data: dict | None = None, resume: bool = False,
        on_epoch_end: Callable[[int, TivmModel], None] | None = None) -> dict:
    """Train config on parts["train"], select on parts["val"], report parts["test"]; returns the summary.

    on_epoch_end(epoch, model) runs in every process after each epoch (monitoring, tests).
    """
    run_dir = Path(run_dir)
    rank, world_size = world()
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    device = _device(args)
    torch.manual_seed(args.seed)
    train, val = parts["train"], parts["val"]
    if len(val) < 2:
        raise ValueError("the validation split is empty: early stopping and model selection need one")
    model = new_model(config, train)
    if args.init:
        start_from(model, args.init)
    model = model.to(device)
    net = nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    epoch_runner = _Epoch(model, net, optimizer, None, config, args, train, device)
    total = args.epochs * epoch_runner.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(int(args.warmup_epochs * epoch_runner.steps), total))
    epoch_runner.scheduler = scheduler
    distill = float(config.get("loss", {}).get("distill_weight", 0.0)) > 0
    if distill != bool(args.teachers):
        raise ValueError("loss.distill_weight > 0 needs teacher runs (--teacher), and teachers need "
                         "loss.distill_weight > 0")
    if args.teachers:
        epoch_runner.teachers = teacher_embeddings(args.teachers, train, device, data)
    ema = epoch_runner.ema = WeightAverage(model, args.ema_decay) if args.ema_decay > 0 else None
    state = {"epoch": 0, "best_score": [-1.0], "best_epoch": -1, "bad_epochs": 0, "train_seconds": 0.0}
    if resume and has_resume_state(run_dir):
        state = load_resume_state(run_dir, model, optimizer, scheduler)
        if ema is not None:
            ema.load(run_dir)
        if epoch_runner.classifiers is not None:
            epoch_runner.classifiers.load(run_dir)
    elif rank == 0 and (run_dir / LOG_FILE).exists():
        (run_dir / LOG_FILE).unlink()  # a fresh run: the old log would mix two runs
    train_args = {**asdict(args), "batch_global": epoch_runner.batch, "steps_per_epoch": epoch_runner.steps,
                  "world_size": world_size}

    while state["epoch"] < args.epochs and state["bad_epochs"] < args.patience:
        epoch = state["epoch"]
        started = time.perf_counter()
        train_loss = epoch_runner.run(epoch)
        seconds = time.perf_counter() - started
        trained = ema.model if ema is not None else model
        selected = domain_recalibrated(trained, epoch_runner) if args.domain_batchnorm else trained
        val_metrics = evaluate(selected, val, device, args.eval_batch_size, args.amp)
        score = selection_score(val_metrics)
        improved = score > list(state["best_score"])
        state.update(epoch=epoch + 1, train_seconds=state["train_seconds"] + seconds)
        if improved:
            state.update(best_score=score, best_epoch=epoch + 1, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        entry = {"epoch": epoch + 1, "train_loss": train_loss, "lr": scheduler.get_last_lr()[0],
                 "temperature": float(1.0 / model.logit_scale.detach()), "epoch_seconds": seconds,
                 "val": {"recall": val_metrics["recall"], "median_rank": val_metrics["median_rank"],
                         "n": val_metrics["n"]}, "improved": improved}
        if rank == 0:
            _log(run_dir, entry)
            if improved:
                save_checkpoint(run_dir, selected, data=data, train_args=train_args,
                                metrics={"val": val_metrics, "epoch": epoch + 1}, epoch=epoch + 1)
            save_resume_state(run_dir, model, optimizer, state, scheduler)
            if ema is not None:
                ema.save(run_dir)
            if epoch_runner.classifiers is not None:
                epoch_runner.classifiers.save(run_dir)
            if args.progress:
                print(f"epoch {epoch + 1}: loss {train_loss:.4f}  val R@10 {score[0]:.2f}%  "
                      f"(best {state['best_score'][0]:.2f}% at {state['best_epoch']})  {seconds:.1f}s", flush=True)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, model)
        if world_size > 1:
            dist.barrier()
    return _finish(run_dir, parts, args, device, state, rank, world_size)


def _finish(run_dir: Path, parts: dict[str, FeatureSet], args: TrainArgs, device: torch.device, state: dict,
            rank: int, world_size: int) -> dict:
    """Evaluate the best checkpoint on the test split; write results.json (process 0)."""
    if world_size > 1:
        dist.barrier()
    best, record = load_checkpoint(run_dir)
    best.to(device)
    summary = {"name": record["name"], "parameters": count_parameters(best), "best_epoch": state["best_epoch"],
               "epochs_run": state["epoch"], "train_seconds": state["train_seconds"],
               "val": record["metrics"].get("val"), "sizes": {k: len(v) for k, v in parts.items()}}
    if len(parts.get("test", ())) >= 2:
        summary["test"] = evaluate(best, parts["test"], device, args.eval_batch_size, args.amp)
    if rank == 0:
        (run_dir / RESULTS_FILE).write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return summary
