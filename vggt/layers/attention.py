"""Multi-head self-attention with optional per-head QK-norm and 2D RoPE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vggt.layers.rope import RotaryPositionEmbedding2D


class Attention(nn.Module):
    """Self-attention through ``F.scaled_dot_product_attention`` (scale ``head_dim ** -0.5``, no mask).

    With ``qk_norm`` the queries and keys are LayerNorm-ed per head over ``head_dim`` channels before RoPE.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
        norm_eps: float = 1e-5,
        rope: RotaryPositionEmbedding2D | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.rope = rope

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` [B, N, C]; ``positions`` [B, N, 2] (required when RoPE is on) -> [B, N, C]."""
        batch, num_tokens, channels = x.shape
        qkv = self.qkv(x).reshape(batch, num_tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, head_dim]
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            if positions is None:
                raise ValueError("This attention layer uses RoPE and needs token positions")
            q, k = self.rope(q, positions), self.rope(k, positions)
        x = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, head_dim]
        x = x.transpose(1, 2).reshape(batch, num_tokens, channels)
        return self.proj(x)
