"""The bf16 teacher: VGGT weights stored in bf16 change the features by bf16 rounding only, and the loss barely."""

from __future__ import annotations

import copy

import torch

from prismatic.spatial_forcing import AlignConfig, SpatialForcingAligner, VGGTTeacher
from vggt.models.vggt import VGGT
from vggt.presets import tiny_vggt_kwargs

BF16_EPS = 2.0**-8  # unit roundoff of bfloat16 (8 significand bits)
ALIGN_LOSS_TOLERANCE = 5e-4  # stated in docs/reference/memory.md: |loss(bf16 teacher) - loss(fp32 teacher)|


def _teachers():
    torch.manual_seed(0)
    vggt = VGGT(**tiny_vggt_kwargs()).eval()
    fp32 = VGGTTeacher(copy.deepcopy(vggt))
    bf16 = VGGTTeacher(copy.deepcopy(vggt), weights_dtype=torch.bfloat16)
    return fp32, bf16


def test_bf16_teacher_halves_the_weights_and_differs_by_bf16_rounding():
    fp32, bf16 = _teachers()
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    fp32_bytes = sum(p.numel() * p.element_size() for p in fp32.parameters())
    assert sum(p.numel() * p.element_size() for p in bf16.parameters()) * 2 == fp32_bytes

    images = torch.rand(2, 2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    reference, rounded = fp32(images), bf16(images)
    assert rounded.features.dtype == torch.float32 and rounded.features.shape == reference.features.shape
    error = (rounded.features - reference.features).norm() / reference.features.norm()
    assert 0 < error < 8 * BF16_EPS  # a few roundings deep: not identical, not more than bf16 explains
    cosine = torch.nn.functional.cosine_similarity(rounded.features, reference.features, dim=-1)
    assert cosine.min() > 0.999


def test_alignment_loss_moves_less_than_the_stated_tolerance():
    fp32, bf16 = _teachers()
    images = torch.rand(2, 2, 3, 112, 112, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(3)
    aligner = SpatialForcingAligner(AlignConfig(vla_dim=64, vggt_dim=384, vla_layers_align=1))
    visual_hidden = torch.randn(2, 512, 64, generator=torch.Generator().manual_seed(4))
    reference = aligner(visual_hidden, *fp32(images))
    with_bf16_teacher = aligner(visual_hidden, *bf16(images))
    assert abs(with_bf16_teacher - reference) < ALIGN_LOSS_TOLERANCE
