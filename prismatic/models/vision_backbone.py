"""The (fused) timm vision backbone of Prismatic / OpenVLA, with FiLM language conditioning as an option.

Each image arrives as ``3 * num_towers`` stacked channels (DINOv2-normalised RGB, then SigLIP-normalised RGB for
the fused ``dinosiglip`` backbone); several images (cameras) are stacked on the channel axis as well. Each tower
returns the patch tokens of its second-to-last block (prefix tokens dropped, no final norm); the towers' tokens are
concatenated on channels and the images' tokens on the token axis.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from timm.layers import LayerScale as TimmLayerScale
from timm.models.vision_transformer import VisionTransformer
from torch import nn


class LayerScale(nn.Module):
    """timm's LayerScale with its parameter named ``scale_factor``, as stored in the released checkpoints.

    Old transformers versions renamed any parameter containing ``gamma`` on load, so the Prismatic code renamed it.
    """

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.init_values = init_values
        self.scale_factor = nn.Parameter(torch.full((dim,), init_values))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_factor


def _rename_layer_scales(vit: nn.Module) -> None:
    """Swap every timm LayerScale in ``vit`` for ours (same value, parameter named ``scale_factor``)."""
    for name, module in list(vit.named_modules()):
        if isinstance(module, TimmLayerScale):
            parent_name, _, child_name = name.rpartition(".")
            renamed = LayerScale(module.gamma.shape[0], module.init_values)
            renamed.scale_factor = nn.Parameter(module.gamma.data)
            setattr(vit.get_submodule(parent_name), child_name, renamed)


def create_vision_tower(
    timm_model_id: str, image_size: int, act_layer: str | None, overrides: dict[str, Any] | None = None
) -> VisionTransformer:
    """A randomly initialised timm ViT as Prismatic builds it (no classifier head), with optional size overrides."""
    vit = timm.create_model(
        timm_model_id, pretrained=False, num_classes=0, img_size=image_size, act_layer=act_layer, **(overrides or {})
    )
    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"timm model {timm_model_id!r} is a {type(vit).__name__}; expected a VisionTransformer.")
    _rename_layer_scales(vit)
    return vit


def penultimate_patch_tokens(
    vit: VisionTransformer, images: torch.Tensor, film_condition: torch.Tensor | None = None
) -> torch.Tensor:
    """Patch tokens after the second-to-last block of ``vit``: [B, 3, H, W] -> [B, num_patches, vit_dim].

    ``film_condition`` ([B, llm_dim]) is passed to every block when the blocks are FiLM-wrapped.
    """
    x = vit.patch_embed(images)  # [B, P, D]
    x = vit._pos_embed(x)  # [B, prefix + P, D]
    x = vit.norm_pre(vit.patch_drop(x))
    for block in vit.blocks[:-1]:
        x = block(x) if film_condition is None else block(x, film_condition)
    return x[:, vit.num_prefix_tokens :]  # [B, P, D]


class PrismaticVisionBackbone(nn.Module):
    """One timm ViT (``featurizer``) or two fused ones (``featurizer`` + ``fused_featurizer``) over 1+ images."""

    def __init__(
        self,
        use_fused_vision_backbone: bool,
        image_sizes: list[int],
        timm_model_ids: list[str],
        timm_override_act_layers: list[str | None],
        timm_model_kwargs: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        num_towers = 2 if use_fused_vision_backbone else 1
        if len(timm_model_ids) != num_towers:
            raise ValueError(
                f"Got {len(timm_model_ids)} timm_model_ids but use_fused_vision_backbone={use_fused_vision_backbone} "
                f"needs {num_towers}."
            )
        overrides = timm_model_kwargs or [{}] * num_towers
        self.use_fused_vision_backbone = use_fused_vision_backbone
        self.num_images_in_input = 1
        self.featurizer = create_vision_tower(
            timm_model_ids[0], image_sizes[0], timm_override_act_layers[0], overrides[0]
        )
        if use_fused_vision_backbone:
            self.fused_featurizer = create_vision_tower(
                timm_model_ids[1], image_sizes[1], timm_override_act_layers[1], overrides[1]
            )
        self.embed_dim = sum(tower.embed_dim for tower in self.towers)

    @property
    def towers(self) -> list[VisionTransformer]:
        """The vision transformers in channel order (DINOv2 first for ``dinosiglip``)."""
        return [self.featurizer, self.fused_featurizer] if self.use_fused_vision_backbone else [self.featurizer]

    def get_num_patches(self) -> int:
        """Patch tokens per image (256 for 224 px and patch size 14)."""
        return self.featurizer.patch_embed.num_patches

    def get_num_images_in_input(self) -> int:
        return self.num_images_in_input

    def set_num_images_in_input(self, num_images_in_input: int) -> None:
        if num_images_in_input < 1:
            raise ValueError(f"num_images_in_input must be at least 1, got {num_images_in_input}.")
        self.num_images_in_input = num_images_in_input

    def forward(self, pixel_values: torch.Tensor, film_condition: torch.Tensor | None = None) -> torch.Tensor:
        """[B, num_images * 3 * num_towers, H, W] -> patch features [B, num_images * num_patches, embed_dim]."""
        num_images, num_towers = self.num_images_in_input, len(self.towers)
        channels_per_image = 3 * num_towers
        if pixel_values.ndim != 4 or pixel_values.shape[1] != num_images * channels_per_image:
            raise ValueError(
                f"pixel_values has shape {tuple(pixel_values.shape)}; expected [B, {num_images * channels_per_image}, "
                f"H, W] = {num_images} image(s) x {channels_per_image} channels. Call "
                f"set_num_images_in_input(...) to match the number of cameras."
            )
        batch_size = pixel_values.shape[0]
        images = pixel_values.unflatten(1, (num_images, channels_per_image)).flatten(0, 1)  # [B*n, 3*towers, H, W]
        if film_condition is not None:
            film_condition = film_condition.repeat_interleave(num_images, dim=0)  # [B*n, llm_dim]
        tower_inputs = images.split(3, dim=1)
        per_tower = [
            penultimate_patch_tokens(tower, x, film_condition)
            for tower, x in zip(self.towers, tower_inputs, strict=True)
        ]
        patches = torch.cat(per_tower, dim=2)  # [B*n, P, embed_dim]
        return patches.unflatten(0, (batch_size, num_images)).flatten(1, 2)  # [B, n*P, embed_dim]


class FiLMedVisionTransformerBlock(nn.Module):
    """A timm ViT block with FiLM between its attention and MLP halves: ``x <- x * (1 + gamma) + beta``.

    ``gamma`` and ``beta`` are linear projections (``scale``, ``shift``) of the mean language embedding, applied to
    every token alike. As upstream, the new layers are created in float32 (trained in fp32 under bf16 autocast);
    evaluation casts the whole backbone to the inference dtype.
    """

    def __init__(self, block: nn.Module, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.block = block
        device = next(block.parameters()).device  # new layers live where the block does
        self.scale = nn.Linear(llm_dim, vision_dim, device=device, dtype=torch.float32)
        self.shift = nn.Linear(llm_dim, vision_dim, device=device, dtype=torch.float32)

    def forward(self, x: torch.Tensor, average_language_embedding: torch.Tensor) -> torch.Tensor:
        condition = average_language_embedding.to(self.scale.weight.dtype)
        gamma = self.scale(condition).unsqueeze(1).to(x.dtype)  # [B, 1, vision_dim]
        beta = self.shift(condition).unsqueeze(1).to(x.dtype)  # [B, 1, vision_dim]
        block = self.block
        x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))
        x = x * (1 + gamma) + beta
        return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


class FiLMedPrismaticVisionBackbone(nn.Module):
    """Wraps a ``PrismaticVisionBackbone`` so that every ViT block is FiLM-conditioned on the language.

    The wrapping is in place (key names ``vision_backbone.featurizer.blocks.N.block.*`` plus ``...N.{scale,shift}``,
    as in upstream's ``vision_backbone--*_checkpoint.pt`` files).
    """

    def __init__(self, vision_backbone: PrismaticVisionBackbone, llm_dim: int) -> None:
        super().__init__()
        self.vision_backbone = vision_backbone
        self.llm_dim = llm_dim
        for tower in vision_backbone.towers:
            tower.blocks = nn.Sequential(
                *[FiLMedVisionTransformerBlock(block, tower.embed_dim, llm_dim) for block in tower.blocks]
            )

    @property
    def embed_dim(self) -> int:
        return self.vision_backbone.embed_dim

    def get_num_patches(self) -> int:
        return self.vision_backbone.get_num_patches()

    def get_num_images_in_input(self) -> int:
        return self.vision_backbone.get_num_images_in_input()

    def set_num_images_in_input(self, num_images_in_input: int) -> None:
        self.vision_backbone.set_num_images_in_input(num_images_in_input)

    def forward(self, pixel_values: torch.Tensor, average_language_embedding: torch.Tensor) -> torch.Tensor:
        """Like ``PrismaticVisionBackbone.forward``, conditioned on ``average_language_embedding`` [B, llm_dim]."""
        return self.vision_backbone(pixel_values, film_condition=average_language_embedding)
