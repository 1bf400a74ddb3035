"""`tivm-features VIDEO_DIR -o DATASET_DIR`: per-second VGGish audio and ResNet-50 (or EfficientNet-Lite0)
video features of every 15 s clip of every video in a folder, written as a tivm data set.

Clips: non-overlapping 15 s windows from 0 s; a shorter tail is dropped; a video shorter than 15 s gives one
clip with its seconds looped to 15. Resumable: finished videos are kept in DATASET_DIR.parts/ and skipped on
a rerun. Files that fail are listed and the rest carry on. Exit code: 0 when the data set was written
(possibly with some videos failed, all listed), 1 when no video gave features, 2 for a usage or setup error
(missing weights, unknown backbone, no such folder).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from tivm.runtime.cli.common import fail, run
from tivm.runtime.errors import TivmError

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def extract(
    video_dir: Path = typer.Argument(..., help="folder of videos (searched recursively)"),
    output: Path = typer.Option(..., "--output", "-o", help="data-set directory to write"),
    video_backbone: str = typer.Option("resnet50", "--video-backbone",
                                       help="resnet50 (as the paper), resnet50-v2 or efficientnet-lite0"),
    weights: Optional[Path] = typer.Option(
        None, "--weights",
        help="folder holding weight files under their official names (vggish-10086976.pth, "
             "resnet50-0676ba61.pth, ...); looked up before the cache ($TIVM_HOME/weights)"),
    vggish_weights: Optional[Path] = typer.Option(None, "--vggish-weights", help="VGGish .pth file"),
    video_weights: Optional[Path] = typer.Option(None, "--video-weights", help="video backbone .pth file"),
    audio_postprocess: str = typer.Option(
        "none", "--audio-postprocess",
        help="none (raw 128-d VGGish), audioset (PCA, clip, 8-bit as AudioSet) or float (PCA + clip)"),
    pca_params: Optional[Path] = typer.Option(None, "--pca-params", help="vggish_pca_params.npz (or .pth)"),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto (GPU when present)"),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="patches / frames per forward pass"),
    offline: bool = typer.Option(False, "--offline", help="never download weights"),
    json_report: Optional[Path] = typer.Option(None, "--json", help="write the run report (JSON) here"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    from tqdm import tqdm

    from tivm.train.features import build_extractor, extract_folder

    try:
        extractor = build_extractor(
            video_backbone, weights_dir=weights, vggish_weights=vggish_weights, video_weights=video_weights,
            audio_postprocess=audio_postprocess, pca_params=pca_params, device=device, batch_size=batch_size,
            download=not offline,
        )
        report = extract_folder(video_dir, output, extractor, progress=not quiet,
                                on_failure=lambda message: tqdm.write(f"failed: {message}", file=sys.stderr))
    except (TivmError, ValueError, FileNotFoundError) as error:
        fail(error)
    if json_report is not None:
        json_report.parent.mkdir(parents=True, exist_ok=True)
        json_report.write_text(json.dumps(report.to_json(), indent=1) + "\n")
    typer.echo(
        f"{output}: {report.clips} clips from {report.succeeded} of {report.videos} videos "
        f"(extracted {len(report.extracted)}, resumed {len(report.resumed)}, failed {len(report.failed)}) "
        f"in {report.seconds:.1f} s on {extractor.device}"
    )
    if report.succeeded == 0:
        typer.echo("error: no video gave features; nothing was written", err=True)
        raise typer.Exit(1)


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
