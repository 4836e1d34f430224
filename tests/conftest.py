"""Shared fixtures. Tests that need the real photographs under ../shared/data use `shared_data`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("RECON_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the real images in {SHARED_DATA} (set RECON_SHARED_DATA)")
    return SHARED_DATA
