"""2D rotary position embedding (RoPE) over a patch grid, as used by VGGT's aggregator."""

from __future__ import annotations

import torch
from torch import nn


def grid_positions(batch_size: int, height: int, width: int, device: torch.device | str) -> torch.Tensor:
    """Integer (y, x) coordinates of a row-major ``height x width`` patch grid: ``[batch_size, height*width, 2]``."""
    positions = torch.cartesian_prod(
        torch.arange(height, device=device), torch.arange(width, device=device)
    )  # [h*w, 2], y first
    return positions.unsqueeze(0).expand(batch_size, -1, -1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Pairs channel i with channel i + d/2 (GPT-NeoX style): ``[a, b] -> [-b, a]``."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class RotaryPositionEmbedding2D(nn.Module):
    """Rotates the first half of each head's channels by the token's y coordinate and the second half by its x.

    Within each half of ``d`` channels, frequency ``j`` is ``frequency ** (-2j / d)`` for ``j < d/2``, applied with
    the rotate-half pairing. Angles are cast to the token dtype before the sine and cosine, as upstream does.
    """

    def __init__(self, frequency: float = 100.0) -> None:
        super().__init__()
        self.frequency = frequency

    def _rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``x`` [B, heads, N, d]; ``positions`` [B, N] integer coordinates along one axis."""
        dim = x.shape[-1]
        inv_freq = 1.0 / (self.frequency ** (torch.arange(0, dim, 2, device=x.device).float() / dim))  # [d/2]
        angles = positions.float().unsqueeze(-1) * inv_freq  # [B, N, d/2]
        angles = torch.cat((angles, angles), dim=-1).to(x.dtype)  # [B, N, d]
        cos = angles.cos()[:, None]  # [B, 1, N, d]
        sin = angles.sin()[:, None]
        return x * cos + _rotate_half(x) * sin

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``tokens`` [B, heads, N, head_dim]; ``positions`` [B, N, 2] integer (y, x) -> tokens of the same shape."""
        head_dim = tokens.shape[-1]
        if head_dim % 4:
            raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got {head_dim}")
        vertical, horizontal = tokens.chunk(2, dim=-1)
        vertical = self._rotate(vertical, positions[..., 0])
        horizontal = self._rotate(horizontal, positions[..., 1])
        return torch.cat((vertical, horizontal), dim=-1)
