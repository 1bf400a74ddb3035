"""Checkpoints without pickle: tensors in safetensors, everything else in JSON.

A run directory holds::

    checkpoint.json        the best model's record: config, input dims, data fingerprint/manifest, training
                           arguments, metrics, epoch, parameter count (format "tivm-checkpoint", version 1)
    model.safetensors      the best model's state_dict
    resume/                the latest epoch, for --resume: model.safetensors, optimizer.safetensors
                           (optimizer tensors + torch RNG state) and state.json (everything else)
    metrics.jsonl          one JSON object per epoch (written by the trainer)

API::

    save_checkpoint(run_dir, model, config=None, data=None, train_args=None, metrics=None, epoch=None)
    model, record = load_checkpoint(path)          # path: run dir, checkpoint.json or model.safetensors
    save_resume_state(run_dir, model, optimizer, state, scheduler=None)
    state = load_resume_state(run_dir, model, optimizer, scheduler=None)

`record["config"]` is the architecture config build_model takes; `record["audio_dim"]`/`["video_dim"]` the
input dims; `record["data"]["fingerprint"]` the data-set fingerprint the model was trained on. State-dict keys
are `audio_head.*`, `video_head.*` and `log_logit_scale`; runs saved with the older module names
(`audio_branch.*`, `audio_branch.head.*`) load too: their keys are renamed on reading (RENAMED_PREFIXES).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tivm.runtime.errors import ModelError
from tivm.runtime.files import atomic_path, read_json_object, write_text
from tivm.train.config import known_keys_only
from tivm.train.heads import TivmModel, build_model, count_parameters

CHECKPOINT_FORMAT = "tivm-checkpoint"
CHECKPOINT_VERSION = 1
RECORD_FILE = "checkpoint.json"
WEIGHTS_FILE = "model.safetensors"
RESUME_DIR = "resume"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
RNG_KEY = "rng.torch"
# State-dict prefixes of runs saved before the modules were renamed (TivmModel.audio_branch -> audio_head, the
# head's VM-NET stack .head -> .mlp), most specific first; only names moved, so old tensors load unchanged.
# A resume point's optimizer state refers to parameters by position, which the rename kept.
RENAMED_PREFIXES = (("audio_branch.head.", "audio_head.mlp."), ("video_branch.head.", "video_head.mlp."),
                    ("audio_branch.", "audio_head."), ("video_branch.", "video_head."))


# ---------------------------------------------------------------------------------------------- helpers

def _write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n")


def _save_tensors_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata=metadata)


def _read_json(path: Path) -> dict:
    return read_json_object(path, lambda problem: ModelError(f"{path}: {problem}"))


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"{path}: missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{path}: not a readable safetensors file ({e})") from None


def unwrap(model: torch.nn.Module) -> TivmModel:
    """The TivmModel inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


# ---------------------------------------------------------------------------------------------- best model

def save_checkpoint(run_dir: str | os.PathLike, model: torch.nn.Module, config: dict | None = None, *,
                    data: dict | None = None, train_args: dict | None = None, metrics: dict | None = None,
                    epoch: int | None = None) -> Path:
    """Write model.safetensors + checkpoint.json into run_dir; returns the record's path.

    data: {"fingerprint": ..., "manifest": {...}} of the training data set.
    """
    net = unwrap(model)
    run = Path(run_dir)
    record = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "name": net.name,
        "config": config if config is not None else net.config,
        "audio_dim": net.audio_dim, "video_dim": net.video_dim,
        "embed_dim": int(net.config["model"]["embed_dim"]),
        "parameters": count_parameters(net),
        "data": data or {}, "train_args": train_args or {}, "metrics": metrics or {}, "epoch": epoch,
        "weights": WEIGHTS_FILE,
    }
    _save_tensors_atomic(run / WEIGHTS_FILE, net.state_dict(), metadata={"format": CHECKPOINT_FORMAT})
    _write_json_atomic(run / RECORD_FILE, record)
    return run / RECORD_FILE


def _record_path(path: Path) -> Path:
    if path.is_dir():
        return path / RECORD_FILE
    if path.suffix == ".safetensors":
        return path.parent / RECORD_FILE
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> tuple[TivmModel, dict]:
    """(model in eval mode, record) from a run directory, its checkpoint.json or its model.safetensors."""
    record_path = _record_path(Path(path))
    if not record_path.exists():
        raise ModelError(f"{path}: no {RECORD_FILE} (not a tivm training run or checkpoint)")
    record = _read_json(record_path)
    if record.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{record_path}: format is {record.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    if record.get("version") != CHECKPOINT_VERSION:
        raise ModelError(f"{record_path}: checkpoint version {record.get('version')!r} is not supported")
    config, ignored = known_keys_only(record.get("config"))
    if ignored:
        warnings.warn(f"{record_path}: the run's config holds key(s) no code reads ({', '.join(ignored)}); "
                      "they never affected the model and are ignored", RuntimeWarning, stacklevel=2)
    try:
        model = build_model(config, record["audio_dim"], record["video_dim"])
    except (KeyError, ValueError, TypeError) as e:
        raise ModelError(f"{record_path}: cannot rebuild the model ({e})") from None
    weights = Path(path) if Path(path).suffix == ".safetensors" else record_path.parent / record["weights"]
    _load_state(model, _read_tensors(weights), weights)
    model.to(map_location).eval()
    return model, record


def current_key(key: str) -> str:
    """A saved state-dict key under today's module names (RENAMED_PREFIXES); current keys pass unchanged."""
    for old, new in RENAMED_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _load_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], where: Path) -> None:
    tensors = {current_key(key): value for key, value in tensors.items()}
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "mismatch"
        raise ModelError(f"{where}: weights do not fit the configured model ({first})") from None


# ---------------------------------------------------------------------------------------------- resume

def _optimizer_to_plain(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into tensors (for safetensors) and JSON (the rest)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in sd["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _optimizer_from_plain(tensors: dict[str, torch.Tensor], plain: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("state."):
            continue
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in plain.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for g in plain["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def save_resume_state(run_dir: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                      state: dict, scheduler: Any = None) -> Path:
    """The latest epoch's model, optimizer, scheduler, torch RNG and trainer state under run_dir/resume/."""
    where = Path(run_dir) / RESUME_DIR
    opt_tensors, opt_plain = _optimizer_to_plain(optimizer)
    opt_tensors[RNG_KEY] = torch.get_rng_state()
    _save_tensors_atomic(where / WEIGHTS_FILE, unwrap(model).state_dict())
    _save_tensors_atomic(where / OPTIMIZER_FILE, opt_tensors)
    sched = scheduler.state_dict() if scheduler is not None else None
    if sched is not None:
        sched = {k: v for k, v in sched.items() if k != "lr_lambdas"}  # functions: rebuilt by the trainer
    _write_json_atomic(where / STATE_FILE, {"trainer": state, "optimizer": opt_plain, "scheduler": sched})
    return where


def has_resume_state(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / RESUME_DIR / STATE_FILE).is_file()


def load_resume_state(run_dir: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                      scheduler: Any = None) -> dict:
    """Restore what save_resume_state wrote into model/optimizer/scheduler; returns the trainer state."""
    where = Path(run_dir) / RESUME_DIR
    saved = _read_json(where / STATE_FILE)
    _load_state(unwrap(model), _read_tensors(where / WEIGHTS_FILE), where / WEIGHTS_FILE)
    opt_tensors = _read_tensors(where / OPTIMIZER_FILE)
    rng = opt_tensors.pop(RNG_KEY, None)
    try:
        optimizer.load_state_dict(_optimizer_from_plain(opt_tensors, saved["optimizer"]))
    except (KeyError, ValueError) as e:
        raise ModelError(f"{where / OPTIMIZER_FILE}: optimizer state does not fit ({e})") from None
    if scheduler is not None and saved.get("scheduler") is not None:
        scheduler.load_state_dict({**scheduler.state_dict(), **saved["scheduler"]})
    if rng is not None:
        torch.set_rng_state(rng)
    return saved["trainer"]
