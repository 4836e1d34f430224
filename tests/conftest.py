"""Shared fixtures. Tests that need the real photographs under ../shared/data use `shared_data`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests explore the same examples on every run: CI must not fail on a draw a developer never saw.
settings.register_profile("recon", derandomize=True, deadline=None)
settings.load_profile("recon")

SHARED_DATA = Path(os.environ.get("RECON_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def pytest_configure(config):
    """Ray's token for the test clusters, before any test imports Ray (ray_cluster.use_session_auth_token)."""
    from ray_cluster import use_session_auth_token

    use_session_auth_token()


def pytest_collection_modifyitems(config, items):
    """`gpu`-marked tests need CUDA: skipped with a reason without it (benchmarks/gpu_check.sh runs them)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run benchmarks/gpu_check.sh on a machine with one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the real images in {SHARED_DATA} (set RECON_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def tiny_model_env(monkeypatch):
    """Register the tiny test model (tests/tiny_model.py) and run torch on one thread: tiny convs gain nothing from
    more threads, which only spin on a shared, busy machine. RECON_THREADS is what execute_run configures from."""
    import torch
    from tiny_model import register_tiny

    register_tiny(monkeypatch)
    monkeypatch.setenv("RECON_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
