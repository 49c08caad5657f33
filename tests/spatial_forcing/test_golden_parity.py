"""Parity with the official Spatial Forcing pooling, AlignProjector and cosine loss (tests/golden/README.md §5-7)."""

from __future__ import annotations

import pytest
import torch

from prismatic.spatial_forcing import (
    AlignConfig,
    AlignProjector,
    SpatialForcingAligner,
    align_loss,
    target_grid_from_token_count,
    teacher_targets,
)
from prismatic.testing.golden import apply_golden_weights

# Golden cases: name -> (VGGT image size, pooled grid upstream derives for 2 cameras and 32 VLA tokens).
CASES = {"main": ((56, 84), (3, 4)), "square": ((112, 112), (4, 4))}
VLA_DIM, VGGT_DIM, NUM_VLA_TOKENS, NUM_CAMERAS = 64, 384, 32, 2


def _golden_projector() -> AlignProjector:
    return apply_golden_weights(AlignProjector(VLA_DIM, VGGT_DIM, use_vlm_norm=True))


@pytest.mark.parametrize("case", sorted(CASES))
def test_upstream_grid_rule_gives_the_golden_grids(case):
    image_hw, grid = CASES[case]
    vggt_grid = (image_hw[0] // 14, image_hw[1] // 14)
    assert target_grid_from_token_count(vggt_grid, NUM_CAMERAS, NUM_VLA_TOKENS) == grid


def test_upstream_grid_rule_maps_vggt_37x37_to_openvla_16x16():
    assert target_grid_from_token_count((37, 37), num_cameras=2, num_vla_tokens=512) == (16, 16)
    assert target_grid_from_token_count((37, 37), num_cameras=1, num_vla_tokens=256) == (16, 16)


@pytest.mark.parametrize("use_vggt_pe", [True, False])
@pytest.mark.parametrize("case", sorted(CASES))
def test_pooled_targets_match_golden(case, use_vggt_pe, sf_golden, aggregator_golden):
    image_hw, grid = CASES[case]
    features = aggregator_golden[case]["aggregated_tokens.1"]  # [1, 2, 5 + h*w, 768]
    patch_start_idx = int(aggregator_golden[case]["patch_start_idx"].item())
    targets = teacher_targets(features, patch_start_idx, image_hw, 14, grid, use_vggt_pe, "bilinear")
    expected = sf_golden[f"pooled.{case}.pe{int(use_vggt_pe)}"]
    torch.testing.assert_close(targets, expected, rtol=0, atol=2e-5)


def test_projector_output_matches_golden(sf_golden):
    projected = _golden_projector()(sf_golden["h"])
    torch.testing.assert_close(projected, sf_golden["projected"], rtol=0, atol=5e-6)
    assert projected[0, 0, :3].tolist() == pytest.approx([-0.219903, 0.215612, 0.046198], abs=1e-6)


@pytest.mark.parametrize("pe", [1, 0])
def test_cosine_loss_matches_golden(pe, sf_golden):
    loss = align_loss(sf_golden["projected"], sf_golden[f"pooled.square.pe{pe}"], loss_type="cosine")
    assert loss.shape == ()
    torch.testing.assert_close(loss, sf_golden[f"loss.square.pe{pe}"][0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("use_vggt_pe", [True, False])
def test_aligner_end_to_end_matches_golden_loss(use_vggt_pe, sf_golden, aggregator_golden):
    config = AlignConfig(vla_dim=VLA_DIM, vggt_dim=VGGT_DIM, use_vlm_norm=True, use_vggt_pe=use_vggt_pe)
    aligner = SpatialForcingAligner(config)
    apply_golden_weights(aligner.projector)
    square = aggregator_golden["square"]
    loss = aligner(sf_golden["h"], square["aggregated_tokens.1"], int(square["patch_start_idx"]), (112, 112))
    torch.testing.assert_close(loss, sf_golden[f"loss.square.pe{int(use_vggt_pe)}"][0], rtol=0, atol=1e-6)


def test_aligner_rejects_the_non_square_case_upstream_cannot_align(sf_golden, aggregator_golden):
    """Upstream's grid rule gives 3x4 (24 targets) for the 56x84 input and 32 tokens; we say so instead of crashing."""
    aligner = SpatialForcingAligner(AlignConfig(vla_dim=VLA_DIM, vggt_dim=VGGT_DIM))
    main = aggregator_golden["main"]
    with pytest.raises(ValueError, match=r"3x4 VLA grid give 24 targets.*vla_grid_hw"):
        aligner(sf_golden["h"], main["aggregated_tokens.1"], 5, (56, 84))


def test_aligner_aligns_the_non_square_case_with_an_explicit_vla_grid(sf_golden, aggregator_golden):
    config = AlignConfig(vla_dim=VLA_DIM, vggt_dim=VGGT_DIM, use_vggt_pe=True)
    aligner = SpatialForcingAligner(config)
    apply_golden_weights(aligner.projector)
    features = aggregator_golden["main"]["aggregated_tokens.1"]
    loss = aligner(sf_golden["h"], features, 5, (56, 84), vla_grid_hw=(4, 4))
    targets = teacher_targets(features, 5, (56, 84), 14, (4, 4), True)  # [1, 32, 768]
    torch.testing.assert_close(loss, align_loss(sf_golden["projected"], targets), rtol=0, atol=1e-6)
