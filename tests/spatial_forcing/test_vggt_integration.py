"""The whole teacher chain on the repository's own VGGT: images -> VGGTTeacher -> aligner -> the golden loss."""

from __future__ import annotations

import torch

from prismatic.spatial_forcing import AlignConfig, SpatialForcingAligner, VGGTTeacher
from prismatic.testing.golden import apply_golden_weights
from vggt.models.vggt import VGGT
from vggt.presets import tiny_vggt_kwargs


def test_teacher_on_tiny_vggt_reproduces_golden_features_and_loss(sf_golden, aggregator_golden):
    vggt = apply_golden_weights(VGGT(**tiny_vggt_kwargs()), strip_prefix="aggregator.")
    teacher = VGGTTeacher(vggt, layer=-1)
    square = aggregator_golden["square"]
    teacher_output = teacher(square["images"])  # [1, 2, 3, 112, 112] in [0, 1]
    torch.testing.assert_close(teacher_output.features, square["aggregated_tokens.1"], rtol=0, atol=2e-5)
    assert teacher_output.patch_start_idx == 5 and teacher_output.image_hw == (112, 112)

    aligner = SpatialForcingAligner(AlignConfig(vla_dim=64, vggt_dim=384, use_vlm_norm=True, use_vggt_pe=True))
    apply_golden_weights(aligner.projector)
    loss = aligner(sf_golden["h"], *teacher_output)
    torch.testing.assert_close(loss, sf_golden["loss.square.pe1"][0], rtol=0, atol=1e-6)
