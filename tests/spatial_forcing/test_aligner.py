"""SpatialForcingAligner: token selection, the few-line integration, gradients, config errors, full size on meta."""

from __future__ import annotations

import pytest
import torch

from prismatic.spatial_forcing import AlignConfig, SpatialForcingAligner, VGGTTeacher, align_loss, vision_token_slice

TINY = {"vla_dim": 32, "vggt_dim": 8}


def test_vision_token_slice_keeps_upstreams_one_token_shift_by_default():
    assert vision_token_slice(num_prefix_tokens=1, num_vision_tokens=512, shift_by_one=True) == slice(2, 514)
    assert vision_token_slice(num_prefix_tokens=1, num_vision_tokens=512, shift_by_one=False) == slice(1, 513)
    assert vision_token_slice(num_prefix_tokens=0, num_vision_tokens=768, shift_by_one=False) == slice(0, 768)
    assert AlignConfig().gain_feat_1move is True


@pytest.mark.parametrize(("gain_feat_1move", "first_position"), [(True, 2), (False, 1)])
def test_select_vision_tokens_reads_layer_vla_layers_align(gain_feat_1move, first_position):
    aligner = SpatialForcingAligner(AlignConfig(**TINY, vla_layers_align=2, gain_feat_1move=gain_feat_1move))
    # hidden_states[k][b, position, :] = 100 k + position, for a BOS + 8 patches + proprio + 3 text tokens sequence.
    hidden_states = tuple((100.0 * k + torch.arange(13.0))[None, :, None].expand(2, 13, 32) for k in range(4))
    selected = aligner.select_vision_tokens(hidden_states, num_prefix_tokens=1, num_vision_tokens=8)
    assert selected.shape == (2, 8, 32)
    assert selected[0, :, 0].tolist() == [200.0 + first_position + k for k in range(8)]


def test_select_vision_tokens_errors_name_the_culprit():
    aligner = SpatialForcingAligner(AlignConfig(**TINY, vla_layers_align=4))
    hidden_states = tuple(torch.zeros(1, 10, 32) for _ in range(4))
    with pytest.raises(IndexError, match="vla_layers_align=4 is out of range for 4"):
        aligner.select_vision_tokens(hidden_states, 1, 8)
    aligner = SpatialForcingAligner(AlignConfig(**TINY, vla_layers_align=-1))
    with pytest.raises(ValueError, match=r"10 tokens, too few for 9 visual tokens at positions \[2, 11\)"):
        aligner.select_vision_tokens(hidden_states, 1, 9)


def test_the_few_line_integration_trains_the_projector_and_leaves_the_teacher_alone(tiny_vggt):
    """What a training loop adds: teacher, aligner, select tokens, loss; gradients reach the projector only."""
    config = AlignConfig(**TINY, vla_layers_align=-1, use_vggt_pe=True)
    teacher = VGGTTeacher(tiny_vggt, prepare_images=lambda pixels: pixels.unflatten(1, (2, 6))[:, :, :3])
    aligner = SpatialForcingAligner(config)
    pixel_values = torch.rand(2, 12, 56, 56)  # 2 cameras -> 4x4 VGGT patches each
    vla_embeddings = torch.randn(2, 1 + 2 * 4 + 1 + 5, 32, requires_grad=True)  # BOS, 8 patches, proprio, text
    hidden_states = (vla_embeddings, torch.tanh(vla_embeddings))

    vision_hidden = aligner.select_vision_tokens(hidden_states, num_prefix_tokens=1, num_vision_tokens=8)
    loss = aligner(vision_hidden, *teacher(pixel_values), vla_grid_hw=(2, 2))
    (config.align_loss_coeff * loss).backward()

    assert loss.shape == () and 0.0 < loss.item() < 2.0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in aligner.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert vla_embeddings.grad[:, 2:10].abs().sum() > 0  # the shifted window ...
    assert vla_embeddings.grad[:, :2].abs().sum() == 0 and vla_embeddings.grad[:, 10:].abs().sum() == 0  # ... only


def test_forward_is_projector_then_align_loss_on_the_targets():
    aligner = SpatialForcingAligner(AlignConfig(**TINY, align_loss_type="smooth_l1", use_vggt_pe=False))
    features = torch.randn(2, 3, 5 + 3 * 5, 16)  # 3 cameras, non-square 3x5 VGGT grid
    hidden = torch.randn(2, 3 * 2 * 3, 32)
    mask = torch.rand(2, 18) > 0.3
    loss = aligner(hidden, features, 5, (42, 70), mask=mask, vla_grid_hw=(2, 3))
    targets = aligner.targets(features, 5, (42, 70), num_vla_tokens=18, vla_grid_hw=(2, 3))
    expected = align_loss(aligner.projector(hidden), targets, mask, "smooth_l1")
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)


def test_targets_are_float32_even_under_autocast():
    aligner = SpatialForcingAligner(AlignConfig(**TINY))
    features = torch.randn(1, 2, 5 + 4 * 4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        targets = aligner.targets(features, 5, (56, 56), num_vla_tokens=8)
        loss = aligner(torch.randn(1, 8, 32), features, 5, (56, 56))
    assert targets.dtype == torch.float32 and targets.shape == (1, 8, 16)
    assert loss.dtype == torch.float32


def test_input_errors_name_the_culprit():
    aligner = SpatialForcingAligner(AlignConfig(**TINY))
    features = torch.randn(2, 2, 5 + 16, 16)
    with pytest.raises(ValueError, match=r"2 \* vggt_dim = 16\]; got \(2, 2, 21, 12\)"):
        aligner(torch.randn(2, 8, 32), features[..., :12], 5, (56, 56))
    with pytest.raises(ValueError, match="Batch sizes differ: vla_visual_hidden has 3, teacher_features 2"):
        aligner(torch.randn(3, 8, 32), features, 5, (56, 56))


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("pooling_func", "nearest", "pooling_func 'nearest'"),
        ("align_loss_type", "mse", "align_loss_type 'mse'"),
        ("vla_dim", 0, "vla_dim must be a positive integer"),
        ("align_loss_coeff", -1.0, "align_loss_coeff must be >= 0"),
    ],
)
def test_config_rejects_bad_flags_by_name(flag, value, message):
    with pytest.raises(ValueError, match=message):
        AlignConfig(**{flag: value})


def test_full_size_openvla_step_on_meta():
    """Paper setting: hidden_states[24] of 33, 512 visual tokens at [2, 514), VGGT-1B last layer at 518x518."""
    with torch.device("meta"):
        aligner = SpatialForcingAligner(AlignConfig())
    hidden_states = tuple(torch.empty(8, 600, 4096, device="meta") for _ in range(33))
    vision_hidden = aligner.select_vision_tokens(hidden_states, num_prefix_tokens=1, num_vision_tokens=512)
    teacher_features = torch.empty(8, 2, 5 + 37 * 37, 2048, device="meta")
    targets = aligner.targets(teacher_features, 5, (518, 518), num_vla_tokens=512)
    loss = aligner(vision_hidden, teacher_features, 5, (518, 518))
    assert vision_hidden.shape == (8, 512, 4096) and targets.shape == (8, 512, 2048) and loss.shape == ()
