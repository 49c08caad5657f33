"""Fixtures for the Spatial Forcing module: the golden tensors and a tiny stand-in for VGGT's aggregator."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn


@pytest.fixture(scope="session")
def sf_golden(golden_dir: Path) -> dict[str, Tensor]:
    """``sf_align.safetensors``: VLA hidden ``h``, ``projected``, ``pooled.*`` targets and ``loss.*``."""
    return load_file(golden_dir / "sf_align.safetensors")


@pytest.fixture(scope="session")
def aggregator_golden(golden_dir: Path) -> dict[str, dict[str, Tensor]]:
    """The official aggregator outputs of the non-square ("main", 56x84) and square (112x112) inputs."""
    return {
        "main": load_file(golden_dir / "vggt_aggregator.safetensors"),
        "square": load_file(golden_dir / "vggt_aggregator_square.safetensors"),
    }


class TinyAggregator(nn.Module):
    """Follows VGGT's aggregator interface: ``(images [B, S, 3, H, W], output_layers) -> (layers, patch_start_idx)``.

    Each layer is ``[B, S, 5 + h*w, 2C]`` (camera + 4 register tokens, then patches); it records how it was called.
    """

    patch_start_idx = 5

    def __init__(self, embed_dim: int = 8, depth: int = 3, patch_size: int = 14):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.special_tokens = nn.Parameter(torch.randn(self.patch_start_idx, embed_dim))
        self.blocks = nn.ModuleList(nn.Linear(embed_dim, 2 * embed_dim) for _ in range(depth))
        self.calls: list[dict] = []

    def forward(self, images: Tensor, output_layers: Sequence[int] | None = None) -> tuple[list[Tensor], int]:
        batch, num_cameras = images.shape[:2]
        self.calls.append(
            {
                "output_layers": output_layers,
                "grad_enabled": torch.is_grad_enabled(),
                "training": self.training,
                "cuda_autocast": torch.is_autocast_enabled("cuda"),
                "cuda_autocast_dtype": torch.get_autocast_dtype("cuda"),
                "images_shape": tuple(images.shape),
            }
        )
        patches = self.patch_embed(images.flatten(0, 1)).flatten(2).transpose(1, 2)  # [B*S, h*w, C]
        special = self.special_tokens.expand(patches.shape[0], -1, -1)
        tokens = torch.cat((special, patches), dim=1)  # [B*S, P, C]
        layers = [block(tokens).reshape(batch, num_cameras, tokens.shape[1], -1) for block in self.blocks]
        selected = range(len(layers)) if output_layers is None else output_layers
        return [layers[i] for i in selected], self.patch_start_idx


class TinyVGGT(nn.Module):
    """Holds the aggregator as ``.aggregator``, like ``VGGT(feature_only=True)``."""

    def __init__(self, **kwargs):
        super().__init__()
        self.aggregator = TinyAggregator(**kwargs)


@pytest.fixture
def tiny_vggt() -> TinyVGGT:
    return TinyVGGT()
