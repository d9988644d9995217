"""Shared test fixtures: the real data folder (../shared/data) and the real SmolLM2 weights."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KANJAX_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data folder; skipped (never in CI) only when it is absent."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            raise FileNotFoundError(f"CI needs the shared data folder at {SHARED_DATA}")
        pytest.skip(f"shared data folder not found at {SHARED_DATA} (set KANJAX_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tokenizer_dir(shared_data) -> Path:
    return shared_data / "smollm2_tokenizer"
