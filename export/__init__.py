"""tivm export: a trained run to quantized ONNX branches plus the manifest the runtime reads.

The public API, imported on first use::

    from tivm.export import export_model, ExportOptions, ExportFailed

    report = export_model("runs/tivm", "models/tivm", ExportOptions(quantize="int8"))
    report["branches"]["video"]["validation"]           # held-out cosine against PyTorch

`export_model` raises ExportFailed (and writes nothing) when a branch's held-out median cosine against
PyTorch falls below `ExportOptions.min_cosine`.
"""

from __future__ import annotations

from tivm.runtime.lazy import lazy_exports

_LAZY = {
    "export_model": "tivm.export.pipeline",
    "ExportOptions": "tivm.export.pipeline",
    "ExportFailed": "tivm.export.pipeline",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports("tivm.export", _LAZY, globals())
