"""Run a raw bundle on another CPU (aarch64 under qemu in tests/test_arm.py) with numpy + onnxruntime only.

    python arm_embed.py MODEL_DIR [FRAMES.u8 T H W]

Prints one JSON object: the golden runs' embeddings (golden/golden.json's cases, one window per run as the
runtime feeds them) and, given a frames file, one embedding per 15-frame window of it (windows as the
runtime cuts them). No tivm import: the point is that the graphs alone carry the model.
"""

import json
import platform
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

WINDOW = 15
DTYPES = {"float32": "<f4", "uint8": "u1"}


def session(model_dir: Path, name: str, manifest: dict):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(model_dir / manifest[name]["file"]), options, providers=["CPUExecutionProvider"])


def run(sess, spec: dict, data: np.ndarray, hop: int) -> list:
    feeds = {spec["input"]["name"]: data, spec["hop"]["name"]: np.array(hop, np.int64)}
    return sess.run([spec["output"]["name"]], feeds)[0][0].tolist()


def window_starts(steps: int, window: int) -> list:
    starts = list(range(0, max(steps - window + 1, 0), window)) or [0]
    if starts[-1] + window < steps:
        starts.append(steps - window)
    return starts


def main(argv: list) -> dict:
    model_dir = Path(argv[0])
    manifest = json.loads((model_dir / "manifest.json").read_text())
    golden = json.loads((model_dir / "golden" / "golden.json").read_text())
    sessions = {name: session(model_dir, name, manifest) for name in ("audio", "video")}
    out = {"machine": platform.machine(), "onnxruntime": ort.__version__, "golden": []}
    for case in golden["cases"]:
        spec, name = manifest[case["branch"]], case["branch"]
        raw = (model_dir / "golden" / Path(case["input"]["file"]).name).read_bytes()
        data = np.frombuffer(raw, DTYPES[case["input"]["dtype"]]).reshape(case["input"]["shape"])
        for golden_run in case["runs"]:
            start, stop = golden_run["slice"]
            out["golden"].append({"branch": name, "slice": [start, stop],
                                  "embedding": run(sessions[name], spec, data[start:stop], golden_run["hop"])})
    if len(argv) > 1:
        t, h, w = (int(v) for v in argv[2:5])
        frames = np.fromfile(argv[1], np.uint8).reshape(t, h, w, 3)
        out["video"] = [run(sessions["video"], manifest["video"], frames[s:s + WINDOW], WINDOW)
                        for s in window_starts(t, WINDOW)]
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
