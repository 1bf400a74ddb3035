"""`tivm-demo`: the whole product on the embedded default, one command after another, as a user runs them.

1. train TIVM on the built-in synthetic sequence data set (`tivm-train --data synthetic`),
2. evaluate it (`tivm-eval`), Recall@k against chance,
3. export it head-only to int8 ONNX (`tivm-export`), which checks the int8 branches against PyTorch,
4. serve it end to end: export full branches (VGGish + EfficientNet-Lite0 + the trained head), build a song
   library (`tivm-library build`) and recommend songs for a video clip (`tivm-recommend --preview`).

Step 4 shows the pipeline, not taste: the head learnt synthetic features, and the official VGGish weights
cannot be downloaded everywhere, so unless they sit in the weights cache the demo uses randomly initialised
VGGish weights in the official format and says so. Media: `--media DIR` (with `clips/` and `songs/`), else
`../shared/media` when present, else a few seconds of generated tones and colour video.

Each step runs the real console script in a subprocess (the demo imports no export code, keeping the
package's dependency direction) and prints the command first, so the output doubles as a tutorial.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import typer

from tivm.runtime.cli.common import run

DEFAULT_OUT = Path("tivm-demo")
DEMO_CONFIG = "TIVM"
DEMO_DATA = "synthetic"  # the default: 3,000 clips, T = 15, seed 0
SHARED_MEDIA = Path("..") / "shared" / "media"

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


def _script(name: str) -> str:
    """The console script installed beside this interpreter (a venv's bin/), else whatever PATH has."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _run(step: str, args: list[str]) -> float:
    command = [_script(args[0]), *args[1:]]
    typer.secho(f"\n== {step}", bold=True)
    typer.echo("$ " + " ".join(shlex.quote(a) for a in [args[0], *args[1:]]))
    started = time.perf_counter()
    result = subprocess.run(command)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        typer.secho(f"{step} failed (exit {result.returncode}); stopping the demo.", fg="red", err=True)
        raise typer.Exit(result.returncode)
    typer.echo(f"({elapsed:.1f} s)")
    return elapsed


def _find_media(media: Path | None) -> Path | None:
    candidates = [media] if media else []
    if os.environ.get("TIVM_SHARED"):
        candidates.append(Path(os.environ["TIVM_SHARED"]) / "media")
    candidates += [SHARED_MEDIA, Path(__file__).resolve().parents[2] / ".." / "shared" / "media"]
    for candidate in candidates:
        if candidate and (candidate / "clips").is_dir() and (candidate / "songs").is_dir():
            return candidate.resolve()
    if media:
        raise typer.BadParameter(f"{media}: needs clips/ and songs/ folders", param_hint="--media")
    return None


def _generate_media(folder: Path) -> Path:
    """A 15 s colour-bar clip and three tone 'songs', for machines without any media at hand."""
    from tivm.train.demo_media import write_demo_media

    write_demo_media(folder)
    return folder


def _vggish_weights(out: Path) -> tuple[Path, bool]:
    """The official VGGish weights from the cache when there, else random weights in the official format."""
    from tivm.train import backbones
    from tivm.train.weights import WeightsError

    try:
        return backbones.weights_file("vggish", download=False), True
    except WeightsError:
        return backbones.save_random_weights("vggish", out / "weights" / "vggish-random.pth"), False


@app.command()
def demo(
    out: Path = typer.Option(DEFAULT_OUT, "--out", "-o", help="folder for everything the demo writes"),
    media: Path = typer.Option(None, help="folder with clips/ and songs/ (default: ../shared/media, else generated)"),
    epochs: int = typer.Option(8, help="training epochs on the synthetic data"),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="step 4: full export, library, recommendation"),
) -> None:
    """Train, evaluate, export and serve TIVM on the embedded default (synthetic sequences)."""
    out.mkdir(parents=True, exist_ok=True)
    run_dir, head_dir = out / "run-tivm", out / "model-head-int8"
    timings = {}

    timings["train"] = _run("1/4 train TIVM on synthetic sequences", [
        "tivm-train", "--config", DEMO_CONFIG, "--data", DEMO_DATA, "-o", str(run_dir),
        "--epochs", str(epochs), "--no-progress"])
    timings["eval"] = _run("2/4 evaluate on the test split", [
        "tivm-eval", str(run_dir), "--data", DEMO_DATA, "--json", str(out / "eval.json"), "--no-progress"])
    timings["export_head"] = _run("3/4 export the heads to int8 ONNX (validated against PyTorch)", [
        "tivm-export", str(run_dir), "--quantize", "int8", "--branch-kind", "head", "-o", str(head_dir),
        "--json", str(out / "export-head.json")])

    if serve:
        timings.update(_serve(out, run_dir, media))

    metrics = json.loads((out / "eval.json").read_text())
    typer.secho("\n== summary", bold=True)
    typer.echo(f"TIVM on synthetic sequences: n = {metrics['n']}, "
               + ", ".join(f"R@{k} {v:.1f}% (chance {metrics['random'][k]:.1f}%)"
                           for k, v in sorted(metrics["recall"].items(), key=lambda kv: int(kv[0]))))
    typer.echo("step times: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    typer.echo(f"everything is under {out.resolve()}")


def _serve(out: Path, run_dir: Path, media: Path | None) -> dict[str, float]:
    media = _find_media(media) or _generate_media(out / "media")
    clips = sorted(p for p in (media / "clips").iterdir() if p.is_file())
    vggish, official = _vggish_weights(out)
    if not official:
        typer.secho("\nnote: official VGGish weights are not in the cache, so the audio branch uses random "
                    "weights in the official format: the ranking below shows the pipeline, not taste.",
                    fg="yellow")
    full_dir, library = out / "model-full-int8", out / "songs.npz"
    timings = {}
    timings["export_full"] = _run("4/4 a) export full branches (VGGish + EfficientNet-Lite0 + head), int8", [
        "tivm-export", str(run_dir), "--quantize", "int8", "--branch-kind", "full",
        "--video-backbone", "efficientnet-lite0", "--audio-weights", str(vggish),
        "--calibration", str(media), "--num-calibration", "4", "--num-validation", "2",
        # a random VGGish has no trained activation ranges to keep: its int8 agreement is reported, not gated
        *([] if official else ["--min-cosine", "0"]),
        "-o", str(full_dir), "--json", str(out / "export-full.json")])
    timings["library"] = _run("4/4 b) build the song library", [
        "tivm-library", "build", str(media / "songs"), "-o", str(library), "--model", str(full_dir)])
    timings["recommend"] = _run("4/4 c) recommend songs for a clip", [
        "tivm-recommend", str(clips[0]), "--library", str(library), "--top", "5",
        "--preview", str(out / "preview.mp4")])
    return timings


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
