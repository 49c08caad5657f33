"""Spatial Forcing on pi0 through ``prismatic.spatial_forcing`` (unchanged), as SF-pi0 attaches it.

The tap is the residual stream entering PaliGemma LM layer ``vla_layers_align`` (12 of 18) in the joint training
pass, image tokens only (every camera, wrist ones included, no language); the mask is camera present AND the
letterbox mask sampled at each patch (nearest); the projector maps the LM width (2048) to VGGT's 2C (2048); the
total loss is the action loss + ``align_loss_coeff`` (0.5) x the cosine alignment loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from prismatic.models.pi0.configuration_pi0 import Pi0Config
from prismatic.models.pi0.modeling_pi0 import Pi0Model, Pi0Observation, Pi0Output
from prismatic.spatial_forcing import AlignConfig, SpatialForcingAligner, TeacherFeatures, camera_token_mask

SF_PI0_TAP_LAYER = 12  # openpi-SF ``vla_layers_align``
VGGT_DIM = 1024  # VGGT-1B's embed dim C (targets are 2C = 2048 wide)


def pi0_align_config(
    config: Pi0Config, tap_layer: int = SF_PI0_TAP_LAYER, vggt_dim: int = VGGT_DIM, align_loss_coeff: float = 0.5
) -> AlignConfig:
    """SF-pi0's alignment settings: LayerNorm + MLP projector from the LM width, cosine loss, bilinear pooling with
    VGGT's position embedding, and each target on its own image token (no one-token shift)."""
    return AlignConfig(
        vla_dim=config.vlm_width,
        vggt_dim=vggt_dim,
        use_vlm_norm=True,
        use_vggt_pe=True,
        pooling_func="bilinear",
        align_loss_type="cosine",
        vla_layers_align=tap_layer,
        gain_feat_1move=False,
        align_loss_coeff=align_loss_coeff,
    )


def image_grid(config: Pi0Config) -> tuple[int, int]:
    """pi0's patch grid per camera (16 x 16 at 224 / 14)."""
    side = config.image_size // config.patch_size
    return side, side


def pi0_align_mask(image_masks: Tensor, letterbox_masks: Tensor | None, grid_hw: tuple[int, int]) -> Tensor:
    """Valid image tokens ``[B, N * h * w]`` (bool): camera present ``[B, N]`` AND, when given, the per-pixel
    letterbox mask ``[B, N, H, W]`` (True = real pixel) sampled at each patch by nearest interpolation."""
    mask = camera_token_mask(image_masks.bool(), grid_hw[0] * grid_hw[1])
    if letterbox_masks is None:
        return mask
    batch, cameras = letterbox_masks.shape[:2]
    sampled = F.interpolate(letterbox_masks.flatten(0, 1)[:, None].float(), size=grid_hw, mode="nearest")
    return mask & (sampled.reshape(batch, cameras * grid_hw[0] * grid_hw[1]) > 0.5)


def pi0_teacher_images(images: Tensor, letterbox_masks: Tensor | None, size: int) -> Tensor:
    """SF-pi0's teacher input: pi0's images ``[B, N, 3, S, S]`` in [-1, 1] mapped to [0, 1], letterbox padding set
    to white (1.0), resized bicubic to ``size`` (VGGT's "crop" mode on square frames): ``[B, N, 3, size, size]``."""
    rgb = (images.float() + 1.0) / 2.0
    if letterbox_masks is not None:
        rgb = torch.where(letterbox_masks[:, :, None].bool(), rgb, 1.0)
    resized = F.interpolate(rgb.flatten(0, 1), size=(size, size), mode="bicubic", align_corners=False)
    return resized.unflatten(0, images.shape[:2])


def image_token_hidden(aligner: SpatialForcingAligner, output: Pi0Output, config: Pi0Config) -> Tensor:
    """The tapped image tokens ``[B, N * T, D_vlm]`` of a forward run with ``output_hidden_states=True``."""
    if output.prefix_hidden_states is None:
        raise ValueError("Spatial Forcing needs the prefix hidden states: run pi0 with output_hidden_states=True")
    return aligner.select_vision_tokens(output.prefix_hidden_states, 0, config.num_cameras * config.num_image_tokens)


@dataclass
class Pi0AlignedLoss:
    loss: Tensor  # action loss + coeff x align loss
    action_loss: Tensor
    align_loss: Tensor


def pi0_spatial_forcing_loss(
    model: Pi0Model,
    aligner: SpatialForcingAligner,
    teacher: TeacherFeatures,
    observation: Pi0Observation,
    actions: Tensor,
    letterbox_masks: Tensor | None = None,
    noise: Tensor | None = None,
    time: Tensor | None = None,
) -> Pi0AlignedLoss:
    """One SF-pi0 training loss. ``teacher`` holds VGGT's features of the un-augmented images (one per camera);
    the action loss is over the dims ``config.action_loss_dims`` selects. ``model`` may be DDP-wrapped."""
    config = getattr(model, "module", model).config
    if observation.images.shape[1] != config.num_cameras:
        raise ValueError(
            f"The observation has {observation.images.shape[1]} cameras; the config's image_keys name "
            f"{config.num_cameras} ({config.image_keys}), which the aligned tokens are counted from"
        )
    output = model(observation, actions, noise=noise, time=time, output_hidden_states=True)
    grid = image_grid(config)
    mask = pi0_align_mask(observation.image_masks, letterbox_masks, grid)
    align = aligner(image_token_hidden(aligner, output, config), *teacher, mask=mask, vla_grid_hw=grid)
    return Pi0AlignedLoss(output.loss + aligner.config.align_loss_coeff * align, output.loss, align)
