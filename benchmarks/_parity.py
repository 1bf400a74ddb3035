"""Recall parity: does the int8 runtime rank a gallery like the fp32 PyTorch reference?

For one trained checkpoint: the PyTorch model (fp32, eager) embeds every test clip; the int8 head-only
export embeds the same clips through tivm.runtime's onnxruntime branches; Recall@{1,5,10,25,50} of both on
the same gallery (tivm.train.metrics, video -> audio and audio -> video), their difference in points, and the
cosine between each clip's fp32 and int8 embedding (min / p1 / median).

Galleries: the YouTube-8M music videos (label 14 of the video-level shards; the model trains on every other
video) and every clip of the synthetic order-only data set, for every configuration that exports.
"""

from __future__ import annotations

import numpy as np

from benchmarks import _artifacts as A
from benchmarks._context import YT8M, YT8M_MUSIC_LABEL, Context
from benchmarks._stats import NotMeasured, cosine_summary, not_measured

RUNTIME_BATCH = 256
# Parity compares two implementations of one model, not generalisation: the synthetic gallery is every clip
# (a test split of ~10 % would resolve Recall only to ~0.3 points, too coarse for a 0.5-point target).
SYNTHETIC_GALLERY = "every clip of the data set (train + val + test)"


def _runtime_embed(branch, features: np.ndarray) -> np.ndarray:
    return np.concatenate([branch.run(np.asarray(features[i:i + RUNTIME_BATCH], np.float32))
                           for i in range(0, len(features), RUNTIME_BATCH)])


def parity(ctx: Context, run, test) -> dict:
    """Recall of fp32 PyTorch vs the int8 runtime on `test` (a FeatureSet), and the embedding cosines."""
    from tivm.runtime.model import Model
    from tivm.train.checkpoint import load_checkpoint
    from tivm.train.metrics import retrieval_metrics
    from tivm.train.trainer import embed

    model, record = load_checkpoint(run)
    audio32, video32 = embed(model, np.asarray(test.audio), np.asarray(test.video), "cpu")
    model_dir, export_record = A.export(run, "int8", "head")
    runtime = Model.load(model_dir, intra_op_threads=ctx.threads)
    audio8 = _runtime_embed(runtime.audio, test.audio)
    video8 = _runtime_embed(runtime.video, test.video)
    reference, quantized = retrieval_metrics(audio32, video32), retrieval_metrics(audio8, video8)
    ks = list(reference["recall"])
    return {
        "n": reference["n"], "configuration": record.get("name"),
        "fp32_pytorch": {"video_to_audio": reference["recall"],
                         "audio_to_video": reference["audio_to_video"]["recall"]},
        "int8_runtime": {"video_to_audio": quantized["recall"],
                         "audio_to_video": quantized["audio_to_video"]["recall"]},
        "delta_points": {
            "video_to_audio": {k: quantized["recall"][k] - reference["recall"][k] for k in ks},
            "audio_to_video": {k: quantized["audio_to_video"]["recall"][k] - reference["audio_to_video"]["recall"][k]
                               for k in ks}},
        "random": reference["random"],
        "cosine_fp32_vs_int8": {"audio": cosine_summary(audio32, audio8), "video": cosine_summary(video32, video8)},
        "export_seconds": export_record.get("seconds"),
    }


def yt8m_parity(ctx: Context) -> dict:
    from tivm.train.data_spec import load_spec, split_data

    spec = str(ctx.shared(YT8M) / ctx.plan.yt8m_shards)
    fs = load_spec(spec, progress=False)
    run, train_s = A.trained_run(ctx.plan.yt8m_config, fs, spec, ctx.plan.yt8m_epochs, label=YT8M_MUSIC_LABEL)
    test = split_data(fs, YT8M_MUSIC_LABEL)["test"]
    result = parity(ctx, run, test)
    result.update(data=f"YouTube-8M video level, {len(fs):,} videos; gallery = label {YT8M_MUSIC_LABEL} "
                       f"(music video), trained on the rest", epochs=ctx.plan.yt8m_epochs,
                  train_seconds=train_s, run=run.name)
    return result


def synthetic_parity(ctx: Context) -> dict:
    from tivm.train.synthetic import from_spec

    spec = ctx.plan.synthetic_spec
    fs = from_spec(spec)
    out = {"data": spec, "epochs": ctx.plan.synthetic_epochs, "gallery": SYNTHETIC_GALLERY, "configs": {}}
    for config in ctx.plan.synthetic_configs:
        try:
            run, train_s = A.trained_run(config, fs, spec, ctx.plan.synthetic_epochs)
            out["configs"][config] = {**parity(ctx, run, fs), "train_seconds": train_s}
        except NotMeasured as exc:
            out["configs"][config] = not_measured(str(exc))
    return out
