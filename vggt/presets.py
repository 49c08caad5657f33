"""Named VGGT configurations: the real teacher and a tiny one for tests and the demo."""

from __future__ import annotations

from typing import Any

from vggt.models.vggt import FEATURE_ONLY_KWARGS


def tiny_aggregator_kwargs() -> dict[str, Any]:
    """The aggregator of the golden fixtures: ViT-S/14 DINOv2 patch embedding, width 384, 2 rounds of 6 heads."""
    return {"embed_dim": 384, "depth": 2, "num_heads": 6, "patch_embed": "dinov2_vits14_reg"}


def tiny_vggt_kwargs() -> dict[str, Any]:
    """Feature-only ``VGGT(**tiny_vggt_kwargs())`` with the tiny aggregator (29.2 M parameters)."""
    return {**FEATURE_ONLY_KWARGS, **tiny_aggregator_kwargs()}


def teacher_vggt_kwargs() -> dict[str, Any]:
    """Feature-only ``VGGT(**teacher_vggt_kwargs())`` at full size, which loads facebook/VGGT-1B ``model.pt``."""
    return dict(FEATURE_ONLY_KWARGS)
