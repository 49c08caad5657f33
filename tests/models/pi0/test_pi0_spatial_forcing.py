"""Spatial Forcing on pi0 through ``prismatic.spatial_forcing``: the golden align mask and loss, and one SF-pi0
training loss end to end."""

from __future__ import annotations

import pytest
import torch

from prismatic.models.pi0 import Pi0Config, Pi0Model, Pi0Observation, Pi0Output
from prismatic.models.pi0.spatial_forcing_pi0 import (
    image_grid,
    image_token_hidden,
    pi0_align_config,
    pi0_align_mask,
    pi0_spatial_forcing_loss,
)
from prismatic.spatial_forcing import SpatialForcingAligner, TeacherFeatures, align_loss
from prismatic.testing.golden import apply_pi0_golden_weights, assert_max_abs
from prismatic.testing.pi0_tiny import pi0_training_batch

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def golden_aligner(golden: dict, golden_meta: dict, golden_config: Pi0Config) -> SpatialForcingAligner:
    """SF's AlignProjector(llm_dim 64, vggt_dim 32, vlm norm) under rule pi0-golden-v1, tapping per the golden set."""
    vggt_dim = golden["in.sf_target"].shape[-1] // 2
    config = pi0_align_config(golden_config, tap_layer=golden_meta["config"]["tap_index"], vggt_dim=vggt_dim)
    aligner = SpatialForcingAligner(config)
    apply_pi0_golden_weights(aligner.projector)
    return aligner


def test_full_size_align_config_is_sf_pi0s():
    config = pi0_align_config(Pi0Config())
    assert (config.vla_dim, 2 * config.vggt_dim, config.vla_layers_align) == (2048, 2048, 12)
    assert config.use_vlm_norm and not config.gain_feat_1move and config.align_loss_coeff == 0.5
    assert sum(p.numel() for p in SpatialForcingAligner(config).projector.parameters()) == 2 * 2048 * 2049 + 2 * 2048


def test_align_mask_is_camera_present_and_letterbox(
    golden: dict, golden_config: Pi0Config, golden_inputs: Pi0Observation
):
    mask = pi0_align_mask(golden_inputs.image_masks, golden["in.sf_pad_mask"].bool(), image_grid(golden_config))
    assert torch.equal(mask, golden["out.sf_align_mask"].bool())
    assert mask.sum(dim=1).tolist() == [448, 704]


def test_align_loss_matches_golden(
    golden: dict, golden_meta: dict, golden_config: Pi0Config, golden_aligner, training: Pi0Output
):
    mask = golden["out.sf_align_mask"].bool()
    hidden = image_token_hidden(golden_aligner, training, golden_config)
    loss = align_loss(golden_aligner.projector(hidden), golden["in.sf_target"], mask)
    assert_max_abs(loss[None], golden["out.sf_align_loss"], TOLERANCE, "align loss at our tap")
    # SF's side alone, on the golden hidden states.
    exact = align_loss(
        golden_aligner.projector(golden[f"out.prefix_image_hidden_in_layer_{golden_meta['config']['tap_index']}"]),
        golden["in.sf_target"],
        mask,
    )
    assert_max_abs(exact[None], golden["out.sf_align_loss"], TOLERANCE, "align loss on the golden tap")


def test_image_token_hidden_needs_hidden_states(golden_aligner, golden_config: Pi0Config, training: Pi0Output):
    without = Pi0Output(training.loss, training.loss_elementwise, training.velocity)
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        image_token_hidden(golden_aligner, without, golden_config)


def test_sf_training_loss_end_to_end(small_config: Pi0Config):
    config = Pi0Config(**{**small_config.to_dict(), "image_keys": ["base_0_rgb", "left_wrist_0_rgb"]})
    torch.manual_seed(0)
    model = Pi0Model(config).train()
    aligner = SpatialForcingAligner(pi0_align_config(config, tap_layer=1, vggt_dim=8))
    batch = pi0_training_batch(config)
    letterbox = torch.ones(2, 2, config.image_size, config.image_size, dtype=torch.bool)
    letterbox[:, 0, :14] = False  # the top patch row of camera 0 is padding
    features = torch.randn(2, 2, 5 + 4 * 4, 16, generator=torch.Generator().manual_seed(4))
    teacher = TeacherFeatures(features, patch_start_idx=5, image_hw=(56, 56))
    result = pi0_spatial_forcing_loss(model, aligner, teacher, **batch, letterbox_masks=letterbox)
    assert torch.allclose(result.loss, result.action_loss + 0.5 * result.align_loss)
    assert 0 < result.align_loss.item() < 2
    result.loss.backward()
    assert aligner.projector.fc1.weight.grad.abs().sum() > 0
    vision = model.paligemma_with_expert.paligemma.model.vision_tower.vision_model
    assert vision.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    # The absent camera's and the letterbox's targets do not count.
    changed = features.clone()
    changed[0, 1] += 100.0  # sample 0's camera 1 is absent
    changed[:, 0, 5:9] += 100.0  # the VGGT rows pooled into camera 0's top patch row
    again = pi0_spatial_forcing_loss(
        model, aligner, TeacherFeatures(changed, 5, (56, 56)), **batch, letterbox_masks=letterbox
    )
    assert torch.allclose(again.align_loss, result.align_loss, atol=1e-6)
    changed[1, 1, 5:9] += 100.0  # a valid patch row: now the loss moves
    moved = pi0_spatial_forcing_loss(
        model, aligner, TeacherFeatures(changed, 5, (56, 56)), **batch, letterbox_masks=letterbox
    )
    assert not torch.allclose(moved.align_loss, result.align_loss, atol=1e-3)
    mask = pi0_align_mask(batch["observation"].image_masks, letterbox, image_grid(config))
    assert mask.tolist() == [
        [False, False, True, True, False, False, False, False],
        [False, False, True, True, True, True, True, True],
    ]


def test_sf_loss_refuses_a_camera_count_other_than_the_configs(small_config: Pi0Config, small_model: Pi0Model):
    aligner = SpatialForcingAligner(pi0_align_config(small_config, tap_layer=1, vggt_dim=8))
    batch = pi0_training_batch(Pi0Config(**{**small_config.to_dict(), "image_keys": ["a", "b"]}))
    teacher = TeacherFeatures(torch.zeros(2, 2, 21, 16), 5, (56, 56))
    with pytest.raises(ValueError, match="The observation has 2 cameras; the config's image_keys name 1"):
        pi0_spatial_forcing_loss(small_model, aligner, teacher, **batch)
