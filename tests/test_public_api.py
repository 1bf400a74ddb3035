"""Each package's small public API (what the docs' examples import) resolves and runs as documented."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["tivm.runtime", "tivm.train", "tivm.export"])
def test_every_public_name_resolves_and_importing_the_package_is_light(package):
    code = (f"import sys, {package} as p; assert 'torch' not in sys.modules, 'torch on import'; "
            "missing = [n for n in p.__all__ if getattr(p, n, None) is None]; assert not missing, missing; "
            "print(len(p.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 3


def test_the_training_example_of_the_docs_runs(tmp_path, one_torch_thread):
    from tivm.train import TrainArgs, evaluate, fit, load_checkpoint, load_config, load_spec, split_data

    config = load_config("IVM-M")
    parts = split_data(load_spec("synthetic:n=300"))
    fit(config, parts, tmp_path / "run", TrainArgs.from_config(config, epochs=1, batch_size=64, progress=False))
    model, record = load_checkpoint(tmp_path / "run")
    metrics = evaluate(model, parts["test"])
    assert record["name"] == "IVM-M" and metrics["n"] == len(parts["test"])
    assert 0.0 <= metrics["recall"]["10"] <= 100.0 and "recall" in metrics["audio_to_video"]
