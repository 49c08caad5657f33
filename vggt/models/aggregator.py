"""VGGT's aggregator: DINOv2 patch tokens refined by alternating frame-wise and global attention."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vggt.constants import IMAGENET_MEAN, IMAGENET_STD
from vggt.layers.block import Block, run_block
from vggt.layers.patch_embed import PatchEmbed
from vggt.layers.rope import RotaryPositionEmbedding2D, grid_positions
from vggt.layers.vision_transformer import DinoVisionTransformer, build_dino

ATTENTION_TYPES = ("frame", "global")


def _build_patch_embed(
    name: str, img_size: int, patch_size: int, num_register_tokens: int, embed_dim: int
) -> PatchEmbed | DinoVisionTransformer:
    """A plain conv patchifier for names containing ``"conv"``, else the named DINOv2 encoder."""
    if "conv" in name:
        return PatchEmbed(img_size, patch_size, 3, embed_dim)
    dino = build_dino(name, img_size, patch_size, num_register_tokens)
    if dino.norm.normalized_shape[0] != embed_dim:
        raise ValueError(
            f"patch_embed={name!r} makes {dino.norm.normalized_shape[0]}-dim tokens but embed_dim={embed_dim}"
        )
    return dino


def _first_frame_tokens(token: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
    """Slot 0 of ``token`` [1, 2, X, C] for each sequence's first frame, slot 1 for the others: [B*S, X, C]."""
    first = token[:, :1].expand(batch, 1, *token.shape[2:])
    others = token[:, 1:].expand(batch, frames - 1, *token.shape[2:])
    return torch.cat((first, others), dim=1).reshape(batch * frames, *token.shape[2:])


class Aggregator(nn.Module):
    """Turns ``[B, S, 3, H, W]`` images in [0, 1] into per-layer tokens ``[B, S, P, 2C]``.

    Each frame becomes ``[camera, registers, patches]`` (``P = 1 + R + (H/p)(W/p)``, patches row-major), then
    ``depth`` rounds of frame attention (within each frame) and global attention (across all frames) run in
    ``aa_order``, ``aa_block_size`` blocks at a time. Layer ``i`` of the output concatenates the output of frame
    block ``i`` (channels ``[0, C)``) and of global block ``i`` (``[C, 2C)``). Camera and register tokens have one
    slot for the first frame of each sequence and one for all other frames. Images are normalised with the
    ImageNet statistics inside. Argument names and defaults follow upstream VGGT (defaults = VGGT-1B).
    """

    def __init__(
        self,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        block_fn: type[nn.Module] = Block,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        patch_embed: str = "dinov2_vitl14_reg",
        aa_order: Sequence[str] = ATTENTION_TYPES,
        aa_block_size: int = 1,
        qk_norm: bool = True,
        rope_freq: float = 100,
        init_values: float | None = 0.01,
    ) -> None:
        super().__init__()
        if sorted(aa_order) != sorted(ATTENTION_TYPES):
            raise ValueError(f"aa_order must order 'frame' and 'global' once each, got {list(aa_order)}")
        if depth % aa_block_size:
            raise ValueError(f"depth={depth} must be a multiple of aa_block_size={aa_block_size}")
        self.depth = depth
        self.patch_size = patch_size
        self.aa_order = tuple(aa_order)
        self.aa_block_size = aa_block_size
        self.patch_start_idx = 1 + num_register_tokens
        # Slot 0: first frame of each sequence; slot 1: every other frame.
        self.camera_token = nn.Parameter(torch.empty(1, 2, 1, embed_dim))
        self.register_token = nn.Parameter(torch.empty(1, 2, num_register_tokens, embed_dim))
        # A normal draw with std 1e-6 (trunc_normal_ because normal_ is slow to set up on the meta device).
        nn.init.trunc_normal_(self.camera_token, std=1e-6)
        nn.init.trunc_normal_(self.register_token, std=1e-6)
        self.patch_embed = _build_patch_embed(patch_embed, img_size, patch_size, num_register_tokens, embed_dim)
        self.rope = RotaryPositionEmbedding2D(frequency=rope_freq) if rope_freq > 0 else None
        block_kwargs = dict(
            dim=embed_dim,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            ffn_bias=ffn_bias,
            init_values=init_values,
            qk_norm=qk_norm,
            rope=self.rope,
        )
        self.frame_blocks = nn.ModuleList(block_fn(**block_kwargs) for _ in range(depth))
        self.global_blocks = nn.ModuleList(block_fn(**block_kwargs) for _ in range(depth))

    def resolve_output_layers(self, output_layers: Sequence[int] | None) -> list[int]:
        """Non-negative layer indices for ``output_layers`` (``None`` = all, in order; negatives count from the end)."""
        if output_layers is None:
            return list(range(self.depth))
        if isinstance(output_layers, int) or not all(isinstance(i, int) for i in output_layers):
            raise TypeError(f"output_layers must be a sequence of ints such as [-1], got {output_layers!r}")
        if not output_layers or any(not -self.depth <= i < self.depth for i in output_layers):
            raise ValueError(
                f"output_layers={list(output_layers)} must be non-empty indices into the {self.depth} aggregator "
                f"layers (-{self.depth} to {self.depth - 1})"
            )
        return [i % self.depth for i in output_layers]

    def _token_positions(
        self, num_images: int, grid_height: int, grid_width: int, device: torch.device
    ) -> torch.Tensor:
        """RoPE positions ``[num_images, P, 2]``: (0, 0) for the special tokens, (row + 1, col + 1) for patches."""
        patch_positions = grid_positions(num_images, grid_height, grid_width, device) + 1
        special_positions = patch_positions.new_zeros(num_images, self.patch_start_idx, 2)
        return torch.cat((special_positions, patch_positions), dim=1)

    def _embed_frames(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` [B, S, 3, H, W] in [0, 1] -> per-frame tokens [B*S, P, C]: camera, registers, patches."""
        batch, frames, _, height, width = images.shape
        mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 1, 3, 1, 1)
        images = ((images - mean) / std).reshape(batch * frames, 3, height, width)
        patch_tokens = self.patch_embed(images)
        if isinstance(patch_tokens, dict):
            patch_tokens = patch_tokens["x_norm_patchtokens"]  # [B*S, h*w, C]
        camera = _first_frame_tokens(self.camera_token, batch, frames)  # [B*S, 1, C]
        registers = _first_frame_tokens(self.register_token, batch, frames)  # [B*S, R, C]
        return torch.cat((camera, registers, patch_tokens), dim=1)

    def forward(
        self, images: torch.Tensor, output_layers: Sequence[int] | None = None
    ) -> tuple[list[torch.Tensor], int]:
        """``images`` [B, S, 3, H, W] in [0, 1], H and W multiples of ``patch_size``.

        Returns the requested layers' tokens, each [B, S, P, 2C], in the order of ``output_layers`` (all ``depth``
        layers when ``None``), and ``patch_start_idx``. Other layers' tensors are never kept, and blocks after the
        last requested layer's round are skipped.
        """
        if images.ndim != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be [B, S, 3, H, W] RGB in [0, 1], got shape {tuple(images.shape)}")
        layers = self.resolve_output_layers(output_layers)
        batch, frames, _, height, width = images.shape
        tokens = self._embed_frames(images)  # [B*S, P, C]
        num_tokens, channels = tokens.shape[1:]

        frame_positions = global_positions = None
        if self.rope is not None:
            frame_positions = self._token_positions(
                batch * frames, height // self.patch_size, width // self.patch_size, images.device
            )  # [B*S, P, 2]
            global_positions = frame_positions.reshape(batch, frames * num_tokens, 2)  # same per-frame positions
        stages = {
            "frame": (self.frame_blocks, (batch * frames, num_tokens, channels), frame_positions),
            "global": (self.global_blocks, (batch, frames * num_tokens, channels), global_positions),
        }

        wanted = set(layers)
        halves: dict[str, dict[int, torch.Tensor]] = {name: {} for name in ATTENTION_TYPES}
        outputs: dict[int, torch.Tensor] = {}
        for round_index in range(max(layers) // self.aa_block_size + 1):
            round_layers = range(round_index * self.aa_block_size, (round_index + 1) * self.aa_block_size)
            for attention_type in self.aa_order:
                blocks, shape, positions = stages[attention_type]
                tokens = tokens.reshape(shape)
                for layer in round_layers:
                    tokens = run_block(blocks[layer], tokens, positions)
                    if layer in wanted:
                        halves[attention_type][layer] = tokens.reshape(batch, frames, num_tokens, channels)
            for layer in wanted.intersection(round_layers):
                # Popped inline so that no local name keeps the halves alive after the concatenation.
                outputs[layer] = torch.cat((halves["frame"].pop(layer), halves["global"].pop(layer)), dim=-1)
        return [outputs[layer] for layer in layers], self.patch_start_idx
