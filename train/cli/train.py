"""tivm-train: train one of the seven configurations (or your own JSON config) on a data SPEC.

    tivm-train --config TIVM --data synthetic -o runs/tivm
    tivm-train --config IVM-M --data '/data/yt8m/video_level/*.tfrecord' --label 14 -o runs/ivm-m
    torchrun --nproc-per-node 4 -m tivm.train.cli.train --config TIVM --data DIR -o runs/tivm --device cuda
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from tivm.runtime.cli.common import fail, run

if TYPE_CHECKING:
    from tivm.train.trainer import TrainArgs

app = typer.Typer(add_completion=False, help=__doc__)


def _init_distributed(device: str) -> None:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1)."""
    import torch
    import torch.distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")


@app.command()
def train(
    config: str = typer.Option(..., "--config", "-c",
                               help="VM-M, VM-R, VM-MS, IVM-M, IVM-MS, LIVM, TIVM or a JSON file"),
    data: str = typer.Option(..., "--data", "-d", help="data-set dir, TFRecord glob, or synthetic[:n=..,seed=..]"),
    output: Path = typer.Option(..., "--output", "-o", help="run directory (checkpoints, metrics.jsonl)"),
    label: Optional[int] = typer.Option(None, help="test gallery = clips with this label; the rest train/validate"),
    epochs: Optional[int] = typer.Option(None, help="override the config's train.epochs"),
    batch_size: Optional[int] = typer.Option(None, help="override train.batch_size (global)"),
    lr: Optional[float] = typer.Option(None, help="override train.lr"),
    weight_decay: Optional[float] = typer.Option(None, help="override train.weight_decay"),
    patience: Optional[int] = typer.Option(None, help="override train.patience"),
    val_fraction: Optional[float] = typer.Option(None, help="validation share of non-test sources (with --label)"),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    seed: Optional[int] = typer.Option(None, help="seeds initialisation, batch order and dropout "
                                       "(default: the config's train.seed, else 0)"),
    resume: bool = typer.Option(False, "--resume", help="continue from RUN_DIR/resume"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train, select the best epoch on validation Recall@10, and report it on the test split."""
    from tivm.runtime.errors import TivmError
    from tivm.train.config import ConfigError
    from tivm.train.data_spec import data_record, load_spec, split_data
    from tivm.train.metrics import format_table
    from tivm.train.trainer import fit, world

    _init_distributed(device)
    try:
        # the config first: a typo fails in a second, before any data is read
        cfg, share, args = resolve(config, val_fraction, epochs=epochs, batch_size=batch_size, lr=lr,
                                   weight_decay=weight_decay, patience=patience, device=device, seed=seed,
                                   progress=progress)
        fs = load_spec(data, progress=progress and world()[0] == 0)
        parts = split_data(fs, label, share)
        summary = fit(cfg, parts, output, args, data=data_record(fs, data, label, parts), resume=resume)
    except ConfigError as e:
        fail(e)
    except (TivmError, ValueError) as e:
        fail(e)
    if world()[0] == 0:
        typer.echo(f"{summary['name']}: {summary['parameters']:,} parameters, best epoch {summary['best_epoch']} "
                   f"of {summary['epochs_run']}, {summary['train_seconds']:.0f} s training")
        if "test" in summary:
            typer.echo(format_table(summary["test"], title="test split"))
        typer.echo(f"run: {output} (checkpoint.json, model.safetensors, metrics.jsonl, results.json)")


def resolve(config: str, val_fraction: float | None = None, **options) -> tuple[dict, float, TrainArgs]:
    """(config dict, validation share, TrainArgs) that tivm-train trains with: the config's values, then the
    options given on the command line (None: not given). ConfigError for anything the config or an option
    gets wrong."""
    from tivm.train.config import check_option, load_config
    from tivm.train.data_spec import DEFAULT_VAL_FRACTION
    from tivm.train.trainer import TrainArgs

    cfg = load_config(config)
    share = cfg.get("train", {}).get("val_fraction", DEFAULT_VAL_FRACTION)
    if val_fraction is not None:
        check_option("val_fraction", val_fraction)
        share = val_fraction
    return cfg, float(share), TrainArgs.from_config(cfg, **options)


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
