"""`tivm-export RUN_DIR_OR_CHECKPOINT -o MODEL_DIR`: a trained model as quantized ONNX branches + manifest.

Exit status: 0 exported and validated; 1 validation below --min-cosine, an export that does not match
PyTorch, or (raw branches) mobile files that do not match the ONNX files (nothing written); 2 bad input
(missing checkpoint, weights or media, a backbone that does not fit the head).
Golden vectors of a raw export: `python -m tivm.export.golden MODEL_DIR` checks them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from tivm.export.pipeline import DEFAULT_NUM_CALIBRATION, DEFAULT_NUM_VALIDATION, DEFAULT_THREADS
from tivm.runtime.cli.common import run

WEIGHTS_HOME_ENV = "TIVM_HOME"
EXIT_VALIDATION = 1
EXIT_INPUT = 2

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="training run directory, its checkpoint.json or model.safetensors"),
    output: Path = typer.Option(..., "--output", "-o", help="model directory to write"),
    quantize: str = typer.Option("int8", "--quantize", help="int8 | fp16 | none"),
    int8_target: str = typer.Option(
        "portable", "--int8-target", help="portable (default; uint8 activations, int8 weights (U8S8): any CPU, ARM "
        "included) | amx (x86 only: deep convolutions through onnxruntime's int8 GEMM, which uses Intel AMX: Xeon 4th "
        "gen and later; same arithmetic) | arm (int8 activations and weights (S8S8), onnxruntime's ARM / mobile "
        "recommendation; same accuracy, slower on x86: see docs/export.md)"),
    branch_kind: str = typer.Option(
        "auto", "--branch-kind", help="full (backbone + head: log-mel patches / preprocessed frames in) | raw (front "
        "end + backbone + head: 16 kHz PCM / uint8 frames in, with golden/ vectors and mobile/ .ort files) | head "
        "(features in) | auto (full or head, from the training data)"),
    audio_backbone: Optional[str] = typer.Option(None, "--audio-backbone", help="vggish (full branches)"),
    video_backbone: Optional[str] = typer.Option(
        None, "--video-backbone", help="resnet50 | resnet50-v2 | efficientnet-lite0; default: the training data's, "
        "else resnet50"),
    audio_weights: Optional[Path] = typer.Option(None, "--audio-weights", help="VGGish .pth (default: the cache)"),
    video_weights: Optional[Path] = typer.Option(None, "--video-weights", help="video backbone .pth (default: cache)"),
    weights_dir: Optional[Path] = typer.Option(
        None, "--weights", help="folder of official weight files under their official names (vggish-10086976.pth, "
        f"resnet50-0676ba61.pth, vggish_pca_params.npz); looked up before the cache (${WEIGHTS_HOME_ENV}/weights)"),
    pca_params: Optional[Path] = typer.Option(None, "--pca-params", help="vggish_pca_params.npz"),
    vggish_postprocess: Optional[str] = typer.Option(
        None, "--vggish-postprocess", help="none | audioset | float; default: the training data's, else none"),
    no_download: bool = typer.Option(False, "--no-download", help="never download weights; fail if not cached"),
    calibration: Optional[Path] = typer.Option(
        None, "--calibration", help="media folder (full branches) or tivm data set (head branches)"),
    num_calibration: int = typer.Option(DEFAULT_NUM_CALIBRATION, "--num-calibration", min=1,
                                        help="15 s calibration windows per branch"),
    num_validation: int = typer.Option(DEFAULT_NUM_VALIDATION, "--num-validation", min=1,
                                       help="held-out 15 s validation windows per branch"),
    min_cosine: float = typer.Option(0.99, "--min-cosine", help="required median cosine vs the float model"),
    threads: int = typer.Option(DEFAULT_THREADS, "--threads", min=1, help="CPU threads (torch and onnxruntime)"),
    json_report: Optional[Path] = typer.Option(None, "--json", help="write the export report here"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress output"),
    no_stream_split: bool = typer.Option(
        False, "--no-stream-split", help="full video branch: do not ship the per-frame split (video.window.onnx) "
        "that lets the runtime hide the backbone behind decoding"),
) -> None:
    """Export a trained checkpoint as audio.onnx + video.onnx + manifest.json, validated against PyTorch."""
    from tivm.export.mobile import MobileError
    from tivm.export.onnx_export import ExportError
    from tivm.export.pipeline import ExportFailed, ExportOptions, export_model
    from tivm.export.validate import ValidationError
    from tivm.runtime.errors import TivmError

    if weights_dir is not None and not weights_dir.is_dir():
        typer.echo(f"error: {weights_dir}: --weights names no such folder", err=True)
        raise typer.Exit(EXIT_INPUT)
    import torch

    torch.set_num_threads(threads)
    options = ExportOptions(
        quantize=quantize, int8_target=int8_target, branch_kind=branch_kind, audio_backbone=audio_backbone,
        video_backbone=video_backbone,
        audio_weights=_str(audio_weights), video_weights=_str(video_weights), pca_params=_str(pca_params),
        vggish_postprocess=vggish_postprocess, weights_dir=_str(weights_dir), download=not no_download,
        calibration=_str(calibration),
        num_calibration=num_calibration, num_validation=num_validation, min_cosine=min_cosine, threads=threads,
        progress=not quiet, stream_split=not no_stream_split)
    try:
        report = export_model(checkpoint, output, options)
    except ExportFailed as failure:
        _write_json(json_report, failure.report)
        typer.echo(f"error: {failure}", err=True)
        raise typer.Exit(EXIT_VALIDATION) from None
    except (ExportError, ValidationError, MobileError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(EXIT_VALIDATION) from None
    except (TivmError, ValueError, OSError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(EXIT_INPUT) from None
    _write_json(json_report, report)
    _print_summary(report)


def _str(path: Optional[Path]) -> Optional[str]:
    return None if path is None else str(path)


def _write_json(path: Optional[Path], report: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def _print_summary(report: dict) -> None:
    typer.echo(f"{report['out']}: {report['configuration']} exported ({report['quantize']}) "
               f"in {report['seconds']:.1f} s")
    for name, branch in report["branches"].items():
        cosine = branch["validation"]
        kind = "raw" if report.get("raw") else branch["kind"]
        typer.echo(f"  {name}: {kind} ({branch['backbone'] or 'features'}), "
                   f"{branch['bytes'] / 1e6:.1f} MB (float32 {branch['fp32_bytes'] / 1e6:.1f} MB), "
                   f"cosine min {cosine['min']:.4f} / median {cosine['median']:.4f} over {cosine['count']} "
                   f"held-out windows ({branch['inputs']['source']}), exporter {branch['exporter']}")
    raw = report.get("raw")
    if raw:
        from tivm.export.mobile import summary

        typer.echo(f"  raw: front ends merged in front of both branches (float: float64 DFT / resize products, "
                   f"float32 elsewhere), {raw['branches']['audio']['bytes'] / 1e6:.1f} + "
                   f"{raw['branches']['video']['bytes'] / 1e6:.1f} MB; golden vectors in golden/ "
                   f"(check: python -m tivm.export.golden {report['out']})")
        typer.echo(f"  mobile: {summary(raw['mobile'])}")


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
