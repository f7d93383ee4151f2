"""Shared fixtures: every test gets its own model root and cache folder, never the user's."""

from __future__ import annotations

import pytest
import torch

from engine.settings import get_settings


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    """Point model roots and the cache at per-test folders; yields the model root."""
    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setenv("MERGESCOPE_MODEL_ROOTS", str(root))
    monkeypatch.setenv("MERGESCOPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MERGESCOPE_DEVICE", "cpu")
    get_settings.cache_clear()
    yield root
    get_settings.cache_clear()


@pytest.fixture
def model_root(isolated_settings):
    """The folder tests may write checkpoints into; it is the only configured model root."""
    return isolated_settings


@pytest.fixture
def one_torch_thread():
    """One torch thread: tiny models are latency-bound, and on a shared 2-core machine OpenMP
    threads spinning against other processes make each matmul many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
