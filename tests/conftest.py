"""Shared fixtures: paths to the golden fixtures and manifests, and process-wide settings for fast CPU tests.

Package-specific fixtures live in the conftest.py of each tests/ subfolder.
"""

from __future__ import annotations

import os
from pathlib import Path

# transformers imports TensorFlow on its own when it is installed; nothing here needs that.
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

TESTS_DIR = Path(__file__).resolve().parent
GOLDEN_DIR = TESTS_DIR / "golden"
MANIFEST_DIR = TESTS_DIR / "manifests"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN_DIR


@pytest.fixture(scope="session")
def manifest_dir() -> Path:
    return MANIFEST_DIR


@pytest.fixture(autouse=True)
def _deterministic_cpu():
    """Every test starts from the same RNG state with fp32 defaults."""
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every simulator test is also a slow one: `make test` leaves them out, `make test-slow` and CI run them."""
    for item in items:
        if item.get_closest_marker("sim") is not None:
            item.add_marker(pytest.mark.slow)
