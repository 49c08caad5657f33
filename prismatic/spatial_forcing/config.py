"""Settings of the Spatial Forcing alignment; the single source of their defaults."""

from __future__ import annotations

from dataclasses import dataclass

from prismatic.spatial_forcing.losses import check_align_loss_type
from prismatic.spatial_forcing.targets import check_pooling_func


@dataclass
class AlignConfig:
    """Spatial Forcing alignment settings. Field names are upstream's ``finetune_align.py`` flags.

    Defaults are the paper's LIBERO setting on OpenVLA-7B + VGGT-1B. Upstream's script defaults differ in three
    fields (``vla_layers_align=-1``, ``use_vlm_norm=False``, ``use_vggt_pe=False``) which its training command
    overrides to the values below.
    """

    vla_dim: int = 4096  # width of the VLA's hidden states (Llama-2-7B)
    vggt_dim: int = 1024  # VGGT embed dim C; its aggregator features, and so the targets, are 2C wide
    use_vlm_norm: bool = True  # LayerNorm on the VLA hidden states before the projector MLP
    use_vggt_pe: bool = True  # add 0.1 x a fixed 2D sin-cos embedding of the VGGT patch grid to the targets
    pooling_func: str = "bilinear"  # VGGT grid -> VLA grid resampling: "bilinear" (upstream) or "avg"
    align_loss_type: str = "cosine"  # "cosine" (upstream: 1 - mean cosine) or "smooth_l1" (raw features)
    vla_layers_align: int = 24  # index into the VLA's hidden_states (0 = embeddings, k = after decoder layer k)
    vggt_layers_align: int = -1  # index into VGGT's aggregator layers (-1 = last)
    # Upstream pairs target k with VLA position 2 + k instead of 1 + k (one token past the matching patch);
    # True keeps that shift so released results reproduce, False aligns each target with its own patch.
    gain_feat_1move: bool = True
    align_loss_coeff: float = 0.5  # weight of the alignment loss in the total loss
    vggt_patch_size: int = 14  # VGGT's patch size, for its grid size from its image size

    def __post_init__(self) -> None:
        check_pooling_func(self.pooling_func)
        check_align_loss_type(self.align_loss_type)
        for name in ("vla_dim", "vggt_dim", "vggt_patch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if self.align_loss_coeff < 0:
            raise ValueError(f"align_loss_coeff must be >= 0, got {self.align_loss_coeff}.")
