"""tivm-train: train one of the seven configurations (or your own JSON config) on a data SPEC.

    tivm-train --config TIVM --data synthetic -o runs/tivm
    tivm-train --config IVM-M --data '/data/yt8m/video_level/*.tfrecord' --label 14 -o runs/ivm-m
    tivm-train --config IVM-M-INDOMAIN --data 'Y/video_level/*.tfrecord' --label 14 \
        --extra-data 'Y/video_level_extra/*.tfrecord' -o runs/ivm-m-indomain   # in-domain validation
    tivm-train --config my-distil.json ... --teacher runs/a --teacher runs/b -o runs/student  # distillation
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
    extra_data: Optional[list[str]] = typer.Option(
        None, "--extra-data", help="more data (repeatable; needs --label): its clips train, and a share of its "
        "--label clips validates; the test gallery stays the --label clips of --data"),
    domain_val_fraction: Optional[float] = typer.Option(
        None, help="share of the extra data's --label sources that validate (default: the config's, else 0.5)"),
    domain_fraction: Optional[float] = typer.Option(
        None, help="override train.domain_fraction: share of each batch drawn from in-domain training clips"),
    init: Optional[Path] = typer.Option(None, help="start from this run's weights (fine-tuning)"),
    teacher: Optional[list[Path]] = typer.Option(
        None, "--teacher", help="a trained run to distil from (repeatable; with loss.distill_weight > 0): the "
        "student also matches the teachers' averaged in-batch similarity distributions"),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    seed: Optional[int] = typer.Option(None, help="seeds initialisation, batch order and dropout "
                                       "(default: the config's train.seed, else 0)"),
    resume: bool = typer.Option(False, "--resume", help="continue from RUN_DIR/resume"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train, select the best epoch on validation Recall@10, and report it on the test split."""
    from tivm.runtime.errors import TivmError
    from tivm.train.config import ConfigError
    from tivm.train.data_spec import data_record, load_data
    from tivm.train.metrics import format_table
    from tivm.train.trainer import fit, world

    _init_distributed(device)
    try:
        # the config first: a typo fails in a second, before any data is read
        cfg, share, args = resolve(config, val_fraction, epochs=epochs, batch_size=batch_size, lr=lr,
                                   weight_decay=weight_decay, patience=patience, device=device, seed=seed,
                                   progress=progress, domain_fraction=domain_fraction, domain_label=label,
                                   init=str(init) if init is not None else None,
                                   teachers=[str(t) for t in teacher] if teacher else None)
        domain_share = resolve_domain_val_fraction(cfg, domain_val_fraction)
        check_teachers(cfg, args.teachers)
        extras = list(extra_data or [])
        fs, parts = load_data(data, label, share, extras, domain_share, progress=progress and world()[0] == 0)
        record = data_record(fs, data, label, parts, extras, domain_share if extras else None)
        summary = fit(cfg, parts, output, args, data=record, resume=resume)
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


def check_teachers(cfg: dict, teachers: list[str] | None) -> None:
    """Distillation needs both loss.distill_weight > 0 and --teacher runs; one without the other is a
    ConfigError before any data is read."""
    from tivm.train.config import ConfigError

    weight = float(cfg.get("loss", {}).get("distill_weight", 0.0))
    if weight > 0 and not teachers:
        raise ConfigError("--teacher", f"the config distils (loss.distill_weight {weight:g}): give the "
                                       "teacher runs with --teacher RUN (repeatable)")
    if teachers and weight <= 0:
        raise ConfigError("--teacher", "teachers need a config with loss.distill_weight > 0")


def resolve_domain_val_fraction(cfg: dict, option: float | None) -> float:
    """The in-domain validation share: the option, else the config's train.domain_val_fraction, else the
    default (ConfigError for a bad option)."""
    from tivm.train.config import check_option
    from tivm.train.data_spec import DEFAULT_DOMAIN_VAL_FRACTION

    if option is not None:
        check_option("domain_val_fraction", option)
        return float(option)
    return float(cfg.get("train", {}).get("domain_val_fraction", DEFAULT_DOMAIN_VAL_FRACTION))


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
