"""tivm-eval: Recall@1/5/10/25/50 and median rank of any checkpoint on any data SPEC.

    tivm-eval runs/ivm-m --data '/data/yt8m/video_level/*.tfrecord' --label 14 --json ivm-m.json
    tivm-eval runs/tivm --data synthetic --split test
    tivm-eval runs/a runs/b runs/c --data DIR     # an ensemble: the mean of the members' cosine similarities
    tivm-eval runs/ivm-m --data DIR --rerank isoftmax:0.1   # hubness reduction (train/hubness.py)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from tivm.runtime.cli.common import fail, run

app = typer.Typer(add_completion=False, help=__doc__)
SPLIT_CHOICES = ("test", "val", "train", "all")


@app.command()
def evaluate(
    checkpoints: list[Path] = typer.Argument(..., help="run directory, checkpoint.json or model.safetensors; "
                                             "several: evaluate their ensemble"),
    data: str = typer.Option(..., "--data", "-d", help="data-set dir, TFRecord glob, or synthetic[:n=..,seed=..]"),
    label: Optional[int] = typer.Option(None, help="the gallery = clips with this label (YouTube-8M protocol)"),
    split: str = typer.Option("test", help="which split is the gallery: test, val, train or all"),
    extra_data: Optional[list[str]] = typer.Option(
        None, "--extra-data", help="the run's extra data (tivm-train --extra-data), so that --split val/train "
        "are its in-domain splits; the test split does not change"),
    domain_val_fraction: float = typer.Option(0.5, help="the run's in-domain validation share (with --extra-data)"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the metrics as JSON here"),
    device: str = typer.Option("cpu"),
    batch_size: int = typer.Option(1024),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    rerank: str = typer.Option("none", help="hubness reduction over the gallery: none, center, csls[:K] or "
                               "isoftmax[:TEMPERATURE] (train/hubness.py)"),
) -> None:
    """Embed the gallery with both heads and rank every clip's true partner among all of them."""
    from tivm.runtime.errors import TivmError
    from tivm.train.checkpoint import load_checkpoint
    from tivm.train.data_spec import load_data
    from tivm.train.dataset import fingerprint
    from tivm.train.hubness import parse_method
    from tivm.train.metrics import format_table

    if split not in SPLIT_CHOICES:
        fail(f"--split: must be one of {', '.join(SPLIT_CHOICES)}, got {split!r}")
    try:
        parse_method(rerank)  # a bad spec fails before the data is read
        loaded = [load_checkpoint(c, map_location=device) for c in checkpoints]
        record = loaded[0][1]
        fs, parts = load_data(data, label, extra_specs=list(extra_data or []),
                              domain_val_fraction=domain_val_fraction, progress=progress)
        for (_, rec), path in zip(loaded, checkpoints):
            if (fs.audio_dim, fs.video_dim) != (rec["audio_dim"], rec["video_dim"]):
                raise ValueError(f"{data}: features are {fs.audio_dim}/{fs.video_dim}-d but {path} takes "
                                 f"{rec['audio_dim']}/{rec['video_dim']}-d")
        gallery = fs if split == "all" else parts[split]
        if len(gallery) < 2:
            raise ValueError(f"{data}: the {split} split holds {len(gallery)} clips; a gallery needs 2 or more")
        metrics = ensemble_metrics([m for m, _ in loaded], gallery, device, batch_size, rerank)
    except (TivmError, ValueError) as e:
        fail(e)
    trained_on = record.get("data", {}).get("fingerprint")
    same_features = trained_on is None or trained_on == fingerprint(fs.complete_manifest())
    if not same_features:
        typer.echo("warning: these features were not made like the training data "
                   "(data-set fingerprints differ)", err=True)
    names = ", ".join(r.get("name", "?") for _, r in loaded)
    name = record.get("name") if len(loaded) == 1 else f"ensemble({names})"
    metrics.update(checkpoint=[str(c) for c in checkpoints] if len(loaded) > 1 else str(checkpoints[0]),
                   configuration=name, data=str(data), label=label,
                   split=split, same_features_as_training=same_features, rerank=rerank)
    shown = name if rerank == "none" else f"{name}, rerank {rerank}"
    typer.echo(format_table(metrics, title=f"{shown} on {data} ({split})"))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")


def ensemble_metrics(models: list, gallery, device: str, batch_size: int, rerank: str = "none") -> dict:
    """retrieval_metrics of the members' embeddings side by side, each unit length, scaled by 1/sqrt(k):
    the cosine similarity of the result is the mean of the members' cosine similarities. `rerank` other
    than "none" re-scores that similarity matrix (train/hubness.py)."""
    import numpy as np

    from tivm.train.hubness import reranked_retrieval_metrics
    from tivm.train.metrics import retrieval_metrics
    from tivm.train.trainer import embed
    pairs = [embed(m, gallery.audio, gallery.video, device, batch_size) for m in models]
    scale = 1.0 / np.sqrt(len(models))
    audio = np.concatenate([a for a, _ in pairs], axis=1) * scale
    video = np.concatenate([v for _, v in pairs], axis=1) * scale
    if rerank == "none":
        return retrieval_metrics(audio, video)
    return reranked_retrieval_metrics(audio, video, rerank)


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
