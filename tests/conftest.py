"""Shared test fixtures: where ../shared is, and skips with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TIVM_SHARED", REPO.parent / "shared"))


def pytest_configure(config):
    """tivm's caches (optimized onnxruntime graphs, search indexes) go to a folder of this test session's,
    not the user's: a test run must neither read what earlier runs left nor leave files behind."""
    if "TIVM_HOME" not in os.environ:
        import tempfile

        os.environ["TIVM_HOME"] = config._tivm_home = tempfile.mkdtemp(prefix="tivm-test-home-")


def pytest_unconfigure(config):
    home = getattr(config, "_tivm_home", None)
    if home:
        import shutil

        shutil.rmtree(home, ignore_errors=True)
        os.environ.pop("TIVM_HOME", None)


def shared_path(*parts: str) -> Path:
    """Path under ../shared, or skip the test with the reason when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        # allow_module_level: some modules name their media at import; inside a test it skips just the test
        pytest.skip(f"needs {path} (the project's ../shared folder, or set TIVM_SHARED)", allow_module_level=True)
    return path


@pytest.fixture
def media_dir() -> Path:
    return shared_path("media")


@pytest.fixture
def yt8m_dir() -> Path:
    return shared_path("data", "yt8m", "video_level")


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (small models: thread start-up costs more than it saves), then back."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def e2e_models(tmp_path_factory):
    """The small TIVM checkpoint exported by the real exporter (full branches, float32 and int8; see
    e2e_models.py), built once per session: the end-to-end and raw-bundle tests share it (about a minute)."""
    from e2e_models import build_models

    return build_models(tmp_path_factory.mktemp("e2e models"), shared_path("media", "clips"))


@pytest.fixture(scope="session")
def edge_world(e2e_models, tmp_path_factory):
    """A real int8 raw bundle, its song library (npz and flat) and a clip's frames: for the tests that run
    the bundle outside Python (Node, aarch64 under qemu). See edge_fixtures.py."""
    from edge_fixtures import build_edge_world

    return build_edge_world(tmp_path_factory.mktemp("edge"), e2e_models, shared_path("media"))
