"""``SpatialForcingAligner``: the alignment loss of one training step, driven by an ``AlignConfig``."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from prismatic.spatial_forcing.config import AlignConfig
from prismatic.spatial_forcing.losses import align_loss
from prismatic.spatial_forcing.projector import AlignProjector
from prismatic.spatial_forcing.targets import target_grid_from_token_count, teacher_targets


def vision_token_slice(num_prefix_tokens: int, num_vision_tokens: int, shift_by_one: bool) -> slice:
    """Positions of the visual tokens in a VLA's sequence, as upstream selects them for the alignment.

    The visual tokens sit right after ``num_prefix_tokens`` tokens (OpenVLA: 1, the BOS token). With
    ``shift_by_one`` (upstream's ``gain_feat_1move=True``, its default) the window starts one position later, so
    target ``k`` meets VLA position ``num_prefix_tokens + k + 1``: the next patch, for the last patch of a camera the
    first patch of the next camera, and for the very last patch the token after the visual tokens (OpenVLA: the
    proprio token). Without it each target meets its own patch.
    """
    start = num_prefix_tokens + int(shift_by_one)
    return slice(start, start + num_vision_tokens)


class SpatialForcingAligner(nn.Module):
    """Projects VLA visual hidden states and scores them against frozen-VGGT targets.

    The only trainable part is ``self.projector`` (an ``AlignProjector``); its ``state_dict()`` is what upstream
    saves as ``align_projector--*.pt`` (with a ``module.`` prefix). The targets are rebuilt every step from the
    teacher features; nothing about them is learned or stored.
    """

    def __init__(self, config: AlignConfig):
        super().__init__()
        self.config = config
        self.projector = AlignProjector(config.vla_dim, config.vggt_dim, config.use_vlm_norm)

    def select_vision_tokens(
        self, hidden_states: Sequence[Tensor], num_prefix_tokens: int, num_vision_tokens: int
    ) -> Tensor:
        """The visual tokens ``[B, N, D]`` of layer ``vla_layers_align`` from all ``[B, L, D]`` hidden states.

        ``hidden_states`` is what an HF model returns with ``output_hidden_states=True`` (index 0 = embeddings,
        index k = after decoder layer k); the window honours ``gain_feat_1move`` (see ``vision_token_slice``).
        """
        layer = self.config.vla_layers_align
        if not -len(hidden_states) <= layer < len(hidden_states):
            raise IndexError(f"vla_layers_align={layer} is out of range for {len(hidden_states)} VLA hidden states.")
        hidden = hidden_states[layer]
        window = vision_token_slice(num_prefix_tokens, num_vision_tokens, self.config.gain_feat_1move)
        if window.stop > hidden.shape[1]:
            raise ValueError(
                f"The VLA sequence has {hidden.shape[1]} tokens, too few for {num_vision_tokens} visual tokens at "
                f"positions [{window.start}, {window.stop}) (gain_feat_1move={self.config.gain_feat_1move})."
            )
        return hidden[:, window]

    def targets(
        self,
        teacher_features: Tensor,
        patch_start_idx: int,
        vggt_image_hw: tuple[int, int],
        num_vla_tokens: int,
        vla_grid_hw: tuple[int, int] | None = None,
    ) -> Tensor:
        """Teacher features ``[B, S, P, 2C]`` -> targets ``[B, num_vla_tokens, 2C]`` (float32).

        The VLA grid of each camera is ``vla_grid_hw`` if given, else derived from the token counts as upstream
        does (exact for square grids such as 37x37 -> 16x16).
        """
        expected_dim = 2 * self.config.vggt_dim
        if teacher_features.dim() != 4 or teacher_features.shape[-1] != expected_dim:
            raise ValueError(
                f"teacher_features must be [B, S, P, 2 * vggt_dim = {expected_dim}]; "
                f"got {tuple(teacher_features.shape)}."
            )
        num_cameras = teacher_features.shape[1]
        if vla_grid_hw is None:
            patch_size = self.config.vggt_patch_size
            vggt_grid_hw = (vggt_image_hw[0] // patch_size, vggt_image_hw[1] // patch_size)
            vla_grid_hw = target_grid_from_token_count(vggt_grid_hw, num_cameras, num_vla_tokens)
        if num_cameras * vla_grid_hw[0] * vla_grid_hw[1] != num_vla_tokens:
            raise ValueError(
                f"{num_cameras} cameras x a {vla_grid_hw[0]}x{vla_grid_hw[1]} VLA grid give "
                f"{num_cameras * vla_grid_hw[0] * vla_grid_hw[1]} targets, but there are {num_vla_tokens} VLA visual "
                f"tokens; pass vla_grid_hw=(h, w), the VLA's patch grid per camera."
            )
        # Float32 input keeps the whole pipeline in float32 under autocast: it has no matmul-like op.
        return teacher_targets(
            teacher_features.float(),
            patch_start_idx,
            vggt_image_hw,
            self.config.vggt_patch_size,
            vla_grid_hw,
            self.config.use_vggt_pe,
            self.config.pooling_func,
        )

    def forward(
        self,
        vla_visual_hidden: Tensor,
        teacher_features: Tensor,
        patch_start_idx: int,
        vggt_image_hw: tuple[int, int],
        mask: Tensor | None = None,
        vla_grid_hw: tuple[int, int] | None = None,
    ) -> Tensor:
        """Alignment loss (scalar, float32) of VLA visual tokens ``[B, N, D]`` against teacher features.

        The last three teacher arguments are a ``TeacherFeatures``, so ``aligner(hidden, *teacher(pixels))``
        works. ``mask`` ``[B, N]`` (True = valid) drops tokens from the loss; the projection runs under the
        caller's autocast, targets and loss in float32.
        """
        if vla_visual_hidden.shape[0] != teacher_features.shape[0]:
            raise ValueError(
                f"Batch sizes differ: vla_visual_hidden has {vla_visual_hidden.shape[0]}, "
                f"teacher_features {teacher_features.shape[0]}."
            )
        targets = self.targets(
            teacher_features, patch_start_idx, vggt_image_hw, vla_visual_hidden.shape[1], vla_grid_hw
        )  # [B, N, 2C]
        projected = self.projector(vla_visual_hidden)  # [B, N, 2C]
        return align_loss(projected, targets, mask, self.config.align_loss_type)
