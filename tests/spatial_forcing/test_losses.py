"""align_loss: cosine and smooth_l1 values, mask semantics, gradients, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prismatic.spatial_forcing import ALIGN_LOSS_TYPES, AlignConfig, AlignProjector, align_loss


def _pair(batch: int = 3, tokens: int = 6, channels: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, tokens, channels, requires_grad=True), torch.randn(batch, tokens, channels)


def test_supported_loss_types():
    assert ALIGN_LOSS_TYPES == ("cosine", "smooth_l1")


def test_cosine_is_one_minus_mean_cosine_per_sample_then_batch_mean():
    projected, targets = _pair()
    cosine = F.cosine_similarity(projected, targets, dim=-1)  # [B, N]
    expected = torch.stack([1 - cosine[b].mean() for b in range(3)]).mean()
    torch.testing.assert_close(align_loss(projected, targets), expected, rtol=0, atol=1e-6)


def test_cosine_ignores_scale_and_is_zero_for_aligned_and_two_for_opposite_tokens():
    _, targets = _pair()
    assert align_loss(3.0 * targets, targets).item() == pytest.approx(0.0, abs=1e-6)
    assert align_loss(-0.5 * targets, targets).item() == pytest.approx(2.0, abs=1e-6)


def test_smooth_l1_is_huber_on_raw_features_mean_over_channels_and_tokens():
    projected, targets = _pair()
    expected = F.smooth_l1_loss(projected, targets, beta=1.0)  # equal counts: global mean == mean of means
    torch.testing.assert_close(align_loss(projected, targets, loss_type="smooth_l1"), expected, rtol=0, atol=1e-6)
    assert align_loss(3.0 * targets, targets, loss_type="smooth_l1").item() > 0.1  # magnitudes matter


@pytest.mark.parametrize("loss_type", ALIGN_LOSS_TYPES)
def test_all_valid_mask_equals_no_mask_exactly(loss_type):
    projected, targets = _pair()
    all_valid = torch.ones(3, 6, dtype=torch.bool)
    with_mask = align_loss(projected, targets, all_valid, loss_type)
    assert torch.equal(with_mask, align_loss(projected, targets, None, loss_type))


@pytest.mark.parametrize("loss_type", ALIGN_LOSS_TYPES)
def test_masked_tokens_affect_neither_value_nor_gradient(loss_type):
    projected, targets = _pair()
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2, :3] = False
    loss = align_loss(projected, targets, mask, loss_type)
    (grad,) = torch.autograd.grad(loss, projected)
    assert torch.count_nonzero(grad[~mask]).item() == 0
    assert torch.count_nonzero(grad[mask].abs().sum(-1)).item() == mask.sum().item()

    changed_targets = targets.clone()
    changed_targets[~mask] = float("nan")  # e.g. an absent camera
    changed_projected = projected.detach().clone()
    changed_projected[~mask] = 1e3 * torch.randn_like(changed_projected[~mask])
    changed_projected.requires_grad_(True)
    changed_loss = align_loss(changed_projected, changed_targets, mask, loss_type)
    (changed_grad,) = torch.autograd.grad(changed_loss, changed_projected)
    torch.testing.assert_close(changed_loss, loss, rtol=0, atol=1e-7)
    torch.testing.assert_close(changed_grad, grad, rtol=0, atol=1e-7)


def test_mask_weights_every_sample_equally_and_skips_empty_samples():
    projected, targets = _pair()
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, :1] = True  # one valid token
    mask[1, :] = True  # six valid tokens; sample 2 has none
    per_token = 1 - F.cosine_similarity(projected, targets, dim=-1)
    expected = (per_token[0, :1].mean() + per_token[1].mean()) / 2
    torch.testing.assert_close(align_loss(projected, targets, mask), expected, rtol=0, atol=1e-6)


def test_no_valid_token_gives_zero_loss_and_zero_gradient():
    projected, targets = _pair()
    loss = align_loss(projected, targets, torch.zeros(3, 6, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(projected.grad).item() == 0


def test_loss_is_float32_under_autocast():
    projected, targets = _pair()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = align_loss(projected.bfloat16(), targets)
    assert loss.dtype == torch.float32


@pytest.mark.parametrize("loss_type", ALIGN_LOSS_TYPES)
def test_training_the_projector_lowers_the_loss(loss_type):
    torch.manual_seed(0)
    hidden = torch.randn(4, 16, 32)
    targets = torch.tanh(hidden @ torch.randn(32, 16))  # a function of the hidden states, as a teacher's would be
    projector = AlignProjector(vla_dim=32, vggt_dim=8, use_vlm_norm=True)
    optimizer = torch.optim.AdamW(projector.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = align_loss(projector(hidden), targets, loss_type=loss_type)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses[::10]


def test_unknown_loss_type_names_the_flag():
    projected, targets = _pair()
    with pytest.raises(ValueError, match=r"align_loss_type 'l2'.*'cosine', 'smooth_l1'"):
        align_loss(projected, targets, loss_type="l2")
    with pytest.raises(ValueError, match="align_loss_type 'l2'"):
        AlignConfig(align_loss_type="l2")


def test_shape_errors_name_the_shapes():
    projected, targets = _pair()
    with pytest.raises(ValueError, match=r"\(3, 6, 8\) and \(3, 5, 8\)"):
        align_loss(projected, targets[:, :5])
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \(3, 6\)"):
        align_loss(projected, targets, torch.ones(3, 6))
