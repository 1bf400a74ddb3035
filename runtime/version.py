"""The installed tivm's version, recorded in every artefact it writes (manifests, libraries, data sets)."""

from __future__ import annotations


def tivm_version() -> str:
    """The distribution's version; "unknown" when running from a checkout that was never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tivm")
    except PackageNotFoundError:
        return "unknown"
