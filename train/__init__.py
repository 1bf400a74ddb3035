"""tivm training side: backbones, data sets, heads, losses and the training loop (PyTorch).

The public API, imported on first use (torch loads only when one of these is touched)::

    from tivm.train import load_config, load_spec, split_data, TrainArgs, fit, load_checkpoint, evaluate

    config = load_config("TIVM")                        # a packaged name or a JSON file; typos are errors
    parts = split_data(load_spec("synthetic"))          # {"train", "val", "test"} feature sets
    fit(config, parts, "runs/tivm", TrainArgs.from_config(config, epochs=8))
    model, record = load_checkpoint("runs/tivm")        # the best epoch, in eval mode
    print(evaluate(model, parts["test"]))               # Recall@k both ways, median rank
"""

from __future__ import annotations

from tivm.runtime.lazy import lazy_exports

_LAZY = {
    "load_config": "tivm.train.config",
    "ConfigError": "tivm.train.config",
    "build_model": "tivm.train.heads",
    "TivmModel": "tivm.train.heads",
    "load_spec": "tivm.train.data_spec",
    "split_data": "tivm.train.data_spec",
    "TrainArgs": "tivm.train.trainer",
    "fit": "tivm.train.trainer",
    "evaluate": "tivm.train.trainer",
    "embed": "tivm.train.trainer",
    "load_checkpoint": "tivm.train.checkpoint",
    "save_checkpoint": "tivm.train.checkpoint",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports("tivm.train", _LAZY, globals())
