"""Fixtures for the OpenVLA model tests: tiny configs and models, dataset statistics and a checkpoint folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prismatic.models import OpenVLAConfig, OpenVLAForActionPrediction
from prismatic.testing.tiny_vla import save_tiny_vla_checkpoint, tiny_vla_config


@pytest.fixture
def tiny_config() -> OpenVLAConfig:
    return tiny_vla_config()


@pytest.fixture
def tiny_vla(tiny_config: OpenVLAConfig) -> OpenVLAForActionPrediction:
    """The tiny VLA with one camera (shorter sequences keep the tests fast; geometry as released)."""
    torch.manual_seed(0)
    return OpenVLAForActionPrediction(tiny_config).eval()


@pytest.fixture
def tiny_norm_stats() -> dict:
    generator = torch.Generator().manual_seed(7)
    low = -(0.1 + torch.rand(7, generator=generator))
    high = 0.1 + torch.rand(7, generator=generator)
    return {
        "libero_spatial_no_noops": {
            "action": {
                "q01": low.tolist(),
                "q99": high.tolist(),
                "min": (low - 0.1).tolist(),
                "max": (high + 0.1).tolist(),
                "mask": [True] * 6 + [False],
            },
            "proprio": {"q01": [-1.0] * 8, "q99": [1.0] * 8},
            "num_transitions": 10,
            "num_trajectories": 1,
        }
    }


@pytest.fixture
def tiny_checkpoint(tmp_path: Path, tiny_norm_stats: dict) -> Path:
    """A tiny checkpoint in the fine-tuned (SF) release layout: merged weights, heads, dataset statistics."""
    return save_tiny_vla_checkpoint(tmp_path / "tiny-ckpt", seed=0, norm_stats=tiny_norm_stats, with_heads=True)
