"""Teacher-target pipeline: special-token drop, 2D sin-cos PE, grid resampling, camera-major token order."""

from __future__ import annotations

import math

import pytest
import torch

from prismatic.spatial_forcing import (
    camera_token_mask,
    grid_position_embedding,
    resample_patch_grid,
    teacher_targets,
    uv_grid,
)

PATCH = 14


SLOPES = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, -2.0], [3.0, 0.25]], dtype=torch.float64)  # per channel


def _ramp(rows: torch.Tensor, cols: torch.Tensor, num_cameras: int) -> torch.Tensor:
    """Values affine in (row, col) with a camera-specific offset: ``[S, rows.numel(), 4]`` float64."""
    per_patch = rows.reshape(-1, 1) * SLOPES[:, 0] + cols.reshape(-1, 1) * SLOPES[:, 1]  # [n, 4]
    offsets = 100.0 * torch.arange(num_cameras, dtype=torch.float64)[:, None] + torch.arange(4, dtype=torch.float64)
    return per_patch[None] + offsets[:, None]  # [S, n, 4]


def _grid(height: int, width: int, row_step: float = 1.0, col_step: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(height, dtype=torch.float64) * row_step
    cols = torch.arange(width, dtype=torch.float64) * col_step
    return torch.meshgrid(rows, cols, indexing="ij")


@pytest.mark.parametrize("num_cameras", [1, 2, 3])
@pytest.mark.parametrize(("vggt_grid", "vla_grid"), [((5, 7), (3, 4)), ((4, 6), (4, 4)), ((8, 5), (2, 9))])
def test_bilinear_resampling_reproduces_a_linear_ramp_exactly(num_cameras, vggt_grid, vla_grid):
    h, w = vggt_grid
    special = torch.full((num_cameras, 5, 4), 1e6, dtype=torch.float64)  # camera + register tokens: dropped
    features = torch.cat((special, _ramp(*_grid(h, w), num_cameras)), dim=1)[None].float()  # [1, S, 5 + h*w, 4]
    targets = teacher_targets(features, 5, (h * PATCH, w * PATCH), PATCH, vla_grid, use_vggt_pe=False)
    out_h, out_w = vla_grid
    assert targets.shape == (1, num_cameras * out_h * out_w, 4)
    # align_corners=True: output row i samples input row i * (h - 1) / (h' - 1); corners land on corners.
    sampled = _grid(out_h, out_w, (h - 1) / (out_h - 1), (w - 1) / (out_w - 1))
    expected = _ramp(*sampled, num_cameras).reshape(-1, 4)  # camera-major, row-major
    torch.testing.assert_close(targets[0].double(), expected, rtol=0, atol=1e-4)


def test_same_grid_is_the_identity_and_tokens_stay_row_major_camera_major():
    features = torch.randn(2, 3, 5 + 4 * 6, 8)
    targets = teacher_targets(features, 5, (4 * PATCH, 6 * PATCH), PATCH, (4, 6), use_vggt_pe=False)
    torch.testing.assert_close(targets, features[:, :, 5:].reshape(2, 3 * 24, 8), rtol=0, atol=1e-6)


def test_full_size_openvla_targets_are_512_tokens_of_2048():
    features = torch.randn(1, 2, 5 + 37 * 37, 2048)
    targets = teacher_targets(features, 5, (518, 518), PATCH, (16, 16), use_vggt_pe=True)
    assert targets.shape == (1, 512, 2048)
    # Corners map to corners: target 0 is patch (0, 0) of camera 0, target 256 is patch (0, 0) of camera 1.
    pe = 0.1 * grid_position_embedding((37, 37), (518, 518), 2048)
    torch.testing.assert_close(targets[0, 0], features[0, 0, 5] + pe[0, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(targets[0, 256], features[0, 1, 5] + pe[0, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(targets[0, 511], features[0, 1, -1] + pe[-1, -1], rtol=0, atol=1e-5)


def test_uv_grid_spans_the_diagonal_normalised_image():
    grid = uv_grid((37, 37), aspect_ratio=1.0)
    assert grid.shape == (37, 37, 2) and grid.dtype == torch.float64
    corner = math.sqrt(0.5) * 36 / 37
    assert grid[0, 0].tolist() == pytest.approx([-corner, -corner], abs=1e-12)
    assert grid[-1, -1].tolist() == pytest.approx([corner, corner], abs=1e-12)
    wide = uv_grid((4, 6), aspect_ratio=1.5)  # 56x84 image
    span_x, span_y = 1.5 / math.sqrt(3.25), 1 / math.sqrt(3.25)
    assert wide[0, 0].tolist() == pytest.approx([-span_x * 5 / 6, -span_y * 3 / 4], abs=1e-12)
    assert wide[0, :, 1].unique().numel() == 1 and wide[:, 0, 0].unique().numel() == 1  # x along width, y along height


def test_position_embedding_layout_and_values():
    pe = grid_position_embedding((37, 37), (518, 518), 2048)
    assert pe.shape == (37, 37, 2048) and pe.dtype == torch.float32
    x0 = -math.sqrt(0.5) * 36 / 37  # top-left patch, x = y = -0.688
    assert pe[0, 0, 0].item() == pytest.approx(math.sin(x0), abs=1e-7)  # -0.63499
    assert pe[0, 0, 512].item() == pytest.approx(math.cos(x0), abs=1e-7)  # 0.77252
    k, y = 100, -math.sqrt(0.5) * 34 / 37  # channel 1024 + k: sin(y * 100^(-k/512)) of row 1
    assert pe[1, 0, 1024 + k].item() == pytest.approx(math.sin(y * 100 ** (-k / 512)), abs=1e-7)
    assert pe[1, 5, 1536 + k].item() == pytest.approx(math.cos(y * 100 ** (-k / 512)), abs=1e-7)


def test_position_embedding_is_cached_per_grid_dim_and_device():
    first = grid_position_embedding((5, 7), (70, 98), 16, torch.device("cpu"))
    assert grid_position_embedding((5, 7), (70, 98), 16, torch.device("cpu")) is first
    assert grid_position_embedding((5, 7), (70, 98), 32, torch.device("cpu")) is not first


def test_position_embedding_is_added_before_resampling_with_weight_0_1():
    features = torch.zeros(1, 1, 5 + 4 * 6, 16)
    targets = teacher_targets(features, 5, (56, 84), PATCH, (4, 6), use_vggt_pe=True)
    pe = grid_position_embedding((4, 6), (56, 84), 16)
    torch.testing.assert_close(targets[0], 0.1 * pe.reshape(24, 16), rtol=0, atol=1e-7)


def test_avg_pooling_averages_the_covered_patches():
    maps = torch.randn(2, 3, 4, 6)
    pooled = resample_patch_grid(maps, (2, 3), "avg")
    torch.testing.assert_close(pooled, maps.reshape(2, 3, 2, 2, 3, 2).mean(dim=(3, 5)), rtol=0, atol=1e-6)


def test_unknown_pooling_func_names_the_flag():
    with pytest.raises(ValueError, match=r"pooling_func 'nearest'.*'bilinear', 'avg'"):
        resample_patch_grid(torch.zeros(1, 1, 2, 2), (1, 1), "nearest")


def test_wrong_token_count_names_patch_start_idx_and_grid():
    features = torch.zeros(1, 2, 5 + 4 * 6, 8)
    with pytest.raises(ValueError, match=r"29 tokens per camera.*patch_start_idx=5.*4x5 patches"):
        teacher_targets(features, 5, (56, 70), PATCH, (2, 2), use_vggt_pe=False)
    with pytest.raises(ValueError, match="not a multiple of its patch size 14"):
        teacher_targets(features, 5, (56, 85), PATCH, (2, 2), use_vggt_pe=False)


def test_camera_token_mask_expands_in_target_order():
    present = torch.tensor([[True, False, True], [False, True, True]])
    mask = camera_token_mask(present, tokens_per_camera=2)
    assert mask.tolist() == [[True, True, False, False, True, True], [False, False, True, True, True, True]]
