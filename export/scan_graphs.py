"""The runtime's window-scan graphs: Cast to float32, then MatMul with the query.

tivm.runtime.window_scan runs them over blocks of a song library's stored windows (float16 rows of a full
library, int8 codes of a compact one). The runtime reads them from runtime/graphs/ and does not depend on the
onnx package, so they are made here and committed; a test checks the committed files are what this module
makes.

    python -m tivm.export.scan_graphs            # rewrite runtime/graphs/window_scan_*.onnx
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper

GRAPHS_DIR = Path(__file__).resolve().parents[1] / "runtime" / "graphs"
# onnxruntime >= 1.17 (the runtime's floor) and onnxruntime-web read both
OPSET = 17
IR_VERSION = 8
STORED_TYPES = {"float16": TensorProto.FLOAT16, "int8": TensorProto.INT8}


def file_name(stored: str) -> str:
    return f"window_scan_{stored}.onnx"


def scan_graph(stored: str) -> onnx.ModelProto:
    """rows (n, d) of the stored type, query (d, 1) float32 -> scores (n, 1) float32 = float32(rows) @ query."""
    rows = helper.make_tensor_value_info("rows", STORED_TYPES[stored], ["n", "d"])
    query = helper.make_tensor_value_info("query", TensorProto.FLOAT, ["d", 1])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 1])
    nodes = [helper.make_node("Cast", ["rows"], ["rows_float"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["rows_float", "query"], ["scores"])]
    graph = helper.make_graph(nodes, f"window_scan_{stored}", [rows, query], [scores])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="tivm.export.scan_graphs")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def write_all(folder: Path = GRAPHS_DIR) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for stored in STORED_TYPES:
        path = folder / file_name(stored)
        path.write_bytes(scan_graph(stored).SerializeToString())
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else GRAPHS_DIR):
        print(path)
