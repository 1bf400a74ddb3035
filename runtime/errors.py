"""Exceptions users can catch. Every message names the file and the problem."""

from __future__ import annotations

import os


class TivmError(Exception):
    """Base class of every error tivm raises on purpose."""


class MediaError(TivmError):
    """A media file cannot be used: missing, not media, corrupt, no such stream, too short."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)


class AudioTooShortError(MediaError, ValueError):
    """Audio shorter than what the caller asked for (one 0.96 s VGGish patch at least)."""


class ModelError(TivmError):
    """A model directory or ONNX file that cannot be used (missing, truncated, wrong format or checksum)."""


class LibraryError(TivmError):
    """A song library that cannot be used (corrupt, or built by another model)."""


class OutputError(TivmError):
    """An output path that cannot or must not be written: missing folder, read-only place, one of the
    command's inputs, or an existing file that is not an artefact of the same kind."""
