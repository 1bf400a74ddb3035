"""Real embeddings for search accuracy: YouTube-8M videos through a trained run's two branches.

Library windows: the audio-branch embeddings of every video in the shards (one vector per video: the
video-level shards hold feature means only). Queries: the video-branch embeddings of the videos carrying
`label` (the YouTube-8M protocol's test gallery, held out from training by `tivm-train --label`), so the
queries follow the distribution `tivm-recommend` sees and each has its own soundtrack in the library.
Needs the `train` extra (torch); the result is cached as a plain npz so later runs need neither.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CACHE_VERSION = 1


def load_or_embed(run_dir: Path, data_glob: str, label: int, cache: Path | None) -> dict:
    """{"windows": float32 (N, 512) audio embeddings, "queries": float32 (Q, 512), "query_rows": (Q,) the row
    of each query's own video among the windows, "about": what it is}."""
    key = {"version": CACHE_VERSION, "run": str(Path(run_dir).resolve()), "data": data_glob, "label": label}
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as npz:
            if json.loads(str(npz["key"])) == key:
                return {"windows": npz["windows"], "queries": npz["queries"], "query_rows": npz["query_rows"],
                        "about": json.loads(str(npz["about"]))}
    from tivm.train.checkpoint import load_checkpoint
    from tivm.train.trainer import embed
    from tivm.train.yt8m import read_yt8m

    model, record = load_checkpoint(run_dir)
    features = read_yt8m(data_glob, progress=False)
    audio, video = embed(model, features.audio, features.video, batch_size=2048, amp=False)
    query_rows = np.flatnonzero(features.has_label(label))
    about = {"run": str(run_dir), "config": record.get("config", {}).get("name"), "data": data_glob,
             "videos": int(len(audio)), "queries": int(len(query_rows)), "label": label,
             "windows": "audio-branch embedding of each video (video-level means)",
             "query": f"video-branch embedding of each label-{label} video (held out from training)"}
    out = {"windows": audio.astype(np.float32), "queries": video[query_rows].astype(np.float32),
           "query_rows": query_rows.astype(np.int64), "about": about}
    if cache is not None:
        np.savez(cache, key=np.array(json.dumps(key)), about=np.array(json.dumps(about)),
                 **{k: v for k, v in out.items() if k != "about"})
    return out
