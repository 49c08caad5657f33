"""The trainable half of Spatial Forcing: an MLP from VLA hidden states to VGGT's feature space."""

from __future__ import annotations

from torch import Tensor, nn


class AlignProjector(nn.Module):
    """Optional LayerNorm, then Linear(d_vla -> 2C), GELU, Linear(2C -> 2C) with C = VGGT's embed dim.

    2C matches VGGT's aggregator features (frame and global streams concatenated). Parameter names are the
    released ones (``fc1``, ``fc2``, ``vlm_norm`` when ``use_vlm_norm``), so ``align_projector--*.pt`` files load
    after stripping DDP's ``module.`` prefix. Linear weights are xavier-uniform, biases zero.
    """

    def __init__(self, vla_dim: int, vggt_dim: int, use_vlm_norm: bool):
        super().__init__()
        target_dim = 2 * vggt_dim
        self.fc1 = nn.Linear(vla_dim, target_dim)
        self.act_fn1 = nn.GELU()
        self.fc2 = nn.Linear(target_dim, target_dim)
        self.vlm_norm = nn.LayerNorm(vla_dim) if use_vlm_norm else nn.Identity()
        for linear in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, vla_hidden: Tensor) -> Tensor:
        """``[B, N, d_vla]`` -> ``[B, N, 2C]``; the input is cast to the weights' dtype (autocast still applies)."""
        hidden = self.vlm_norm(vla_hidden.to(self.fc1.weight.dtype))
        return self.fc2(self.act_fn1(self.fc1(hidden)))
