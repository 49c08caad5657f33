"""Projectors into the LLM's embedding space: the vision projector and OFT's extra-input projectors.

Parameter names match the released checkpoints (``projector.fc{1,2,3}`` inside the VLA; ``fc1``/``fc2`` in the
``proprio_projector--*`` and ``noisy_action_projector--*`` files).
"""

from __future__ import annotations

import torch
from torch import nn


class PrismaticProjector(nn.Module):
    """Vision features -> LLM embeddings. ``gelu-mlp``: fc1, GELU, fc2. ``fused-gelu-mlp``: fc1 (x4), GELU, fc2, GELU,
    fc3 (used with the fused DINOv2 + SigLIP backbone)."""

    def __init__(self, use_fused_vision_backbone: bool, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.use_fused_vision_backbone = use_fused_vision_backbone
        self.vision_dim, self.llm_dim = vision_dim, llm_dim
        if use_fused_vision_backbone:
            self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
            self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
            self.fc3 = nn.Linear(llm_dim, llm_dim)
            self.act_fn2 = nn.GELU()
        else:
            self.fc1 = nn.Linear(vision_dim, llm_dim)
            self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1 = nn.GELU()

    def forward(self, img_patches: torch.Tensor) -> torch.Tensor:
        """[B, N, vision_dim] -> [B, N, llm_dim]."""
        projected = self.fc2(self.act_fn1(self.fc1(img_patches)))
        if self.use_fused_vision_backbone:
            projected = self.fc3(self.act_fn2(projected))
        return projected


class ProprioProjector(nn.Module):
    """Proprioceptive state -> one LLM token: fc1, GELU, fc2."""

    def __init__(self, llm_dim: int, proprio_dim: int) -> None:
        super().__init__()
        self.llm_dim, self.proprio_dim = llm_dim, proprio_dim
        self.fc1 = nn.Linear(proprio_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1 = nn.GELU()

    def forward(self, proprio: torch.Tensor) -> torch.Tensor:
        """[B, proprio_dim] -> [B, llm_dim]."""
        return self.fc2(self.act_fn1(self.fc1(proprio)))


class NoisyActionProjector(nn.Module):
    """[Diffusion] One noisy action scalar -> one LLM token (each action dimension has its own token)."""

    def __init__(self, llm_dim: int) -> None:
        super().__init__()
        self.llm_dim = llm_dim
        self.action_token_dim = 1
        self.fc1 = nn.Linear(self.action_token_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1 = nn.GELU()

    def forward(self, noisy_actions: torch.Tensor) -> torch.Tensor:
        """[B, num_action_tokens, 1] -> [B, num_action_tokens, llm_dim]."""
        return self.fc2(self.act_fn1(self.fc1(noisy_actions)))
