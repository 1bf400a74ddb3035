"""tivm runtime: torch-free inference (numpy + onnxruntime + PyAV).

The public API is re-exported here and imported on first use, so `import tivm.runtime` stays fast::

    from tivm.runtime import Recommender
    recommender = Recommender("model_dir", "songs.npz")
    for r in recommender.recommend("clip.mp4", k=5):
        print(r.rank, r.title, r.score, r.start)
"""

from __future__ import annotations

from tivm.runtime.errors import AudioTooShortError, LibraryError, MediaError, ModelError, OutputError, TivmError
from tivm.runtime.lazy import lazy_exports

_LAZY = {
    "Recommender": "tivm.runtime.recommend",
    "Recommendation": "tivm.runtime.recommend",
    "Model": "tivm.runtime.model",
    "WindowEmbeddings": "tivm.runtime.model",
    "SongLibrary": "tivm.runtime.library",
    "build_library": "tivm.runtime.library",
    "ModelManifest": "tivm.runtime.manifest",
    "read_manifest": "tivm.runtime.manifest",
    "write_manifest": "tivm.runtime.manifest",
    "write_preview": "tivm.runtime.preview",
}

__all__ = sorted(_LAZY) + ["AudioTooShortError", "LibraryError", "MediaError", "ModelError", "OutputError",
                           "TivmError"]


__getattr__, __dir__ = lazy_exports("tivm.runtime", _LAZY, globals())
