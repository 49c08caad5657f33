"""SpatialVLA: PaliGemma2 (SigLIP + Gemma2) with ZoeDepth-based 3-D position encodings and spatial action tokens.

Built from transformers' own ``SiglipVisionModel``, ``ZoeDepthForDepthEstimation``, ``Gemma2ForCausalLM`` (eager
attention, so the attention logit soft-cap applies) and ``PaliGemmaMultiModalProjector``. The module tree matches
the released checkpoint's state dict key for key (``vision_tower.vision_model.*``, ``multi_modal_projector.*``,
``language_model.{model,lm_head}.*``, ``vision_zoe_model.*``, ``position_embedding_3d.*``,
``spatial_embed_tokens.*``), so it loads strictly with ``from_pretrained``. Ours: the depth back-projection, the
Ego3D frequency encoding, the spatial-token embedding, the prefix-LM mask and greedy action decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    DynamicCache,
    Gemma2ForCausalLM,
    PreTrainedModel,
    SiglipVisionModel,
    ZoeDepthForDepthEstimation,
)
from transformers.models.paligemma.modeling_paligemma import PaliGemmaMultiModalProjector
from transformers.utils import ModelOutput

from prismatic.models.spatialvla.configuration_spatialvla import SpatialVLAConfig

# ZoeDepth sees the [0, 1] image reflect-padded by this many pixels per side (224 -> 286), resized to its input size.
DEPTH_PAD = 31
# The Ego3D encoding centres points at (0, 0, 2) m and halves them.
EGO3D_CENTER = (0.0, 0.0, 2.0)
EGO3D_SCALE = 2.0


@dataclass
class SpatialVLAOutput(ModelOutput):
    logits: torch.FloatTensor | None = None
    image_features: torch.FloatTensor | None = None


class Ego3DPositionEmbedding(nn.Module):
    """Frequency encoding + MLP of the back-projected points of each patch: ``[B, N, 3 P] -> [B, N, D]``."""

    def __init__(self, points_per_patch: int, n_freqs: int, hidden_size: int):
        super().__init__()
        self.points_per_patch = points_per_patch
        self.n_freqs = n_freqs
        in_features = 3 * points_per_patch * (1 + 2 * n_freqs)
        self.position_embedding_head = nn.Sequential(
            nn.Linear(in_features, hidden_size),
            nn.LayerNorm(hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def encode(self, xyz: torch.Tensor) -> torch.Tensor:
        """Per scalar n = (p - c) / 2: ``[n, sin(2^k n) for k < F, cos(2^k n) for k < F]``; ``[B, N, 3P (1 + 2F)]``."""
        center = xyz.new_tensor(EGO3D_CENTER).repeat(self.points_per_patch)
        normalized = (xyz - center) / EGO3D_SCALE  # [B, N, 3 P]
        freqs = 2.0 ** torch.arange(self.n_freqs, device=xyz.device, dtype=xyz.dtype)
        scaled = normalized[..., None] * freqs  # [B, N, 3 P, F]
        encoded = torch.cat([normalized[..., None], scaled.sin(), scaled.cos()], dim=-1)  # [B, N, 3 P, 1 + 2 F]
        return encoded.flatten(-2)

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        return self.position_embedding_head(self.encode(xyz))


def attention_bias(
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor,
    query_positions: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    """PaliGemma's prefix-LM mask as an additive bias ``[B, 1, Q, K]``.

    Key k is visible to the query at absolute position q when k is not padding and either k <= q or k belongs to
    the prefix (``token_type_ids`` 0): the prompt (image, ``<bos>``, text, newline) is fully bidirectional, the
    suffix (generated or target tokens, type 1) is causal.
    """
    key_positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    causal = key_positions[None, :] <= query_positions[:, None]  # [Q, K]
    prefix = (token_type_ids == 0)[:, None, :]  # [B, 1, K]
    visible = (causal[None] | prefix) & attention_mask.bool()[:, None, :]  # [B, Q, K]
    bias = torch.zeros(visible.shape, dtype=dtype, device=attention_mask.device)
    return bias.masked_fill(~visible, torch.finfo(dtype).min)[:, None]


class SpatialVLAPreTrainedModel(PreTrainedModel):
    config_class = SpatialVLAConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SiglipEncoderLayer", "Gemma2DecoderLayer", "BeitLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.text_config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()


class SpatialVLAForConditionalGeneration(SpatialVLAPreTrainedModel):
    """SpatialVLA. Inputs as the processor returns them: ``pixel_values`` ``[B, 3, H, W]`` in [0, 1] (not
    normalised), ``intrinsic`` ``[3, 3]`` or ``[B, 3, 3]`` at the model's image size, ``input_ids`` with one
    ``<image>`` token per patch, ``attention_mask``."""

    def __init__(self, config: SpatialVLAConfig):
        super().__init__(config)
        self.vision_tower = SiglipVisionModel(config.vision_config)
        self.multi_modal_projector = PaliGemmaMultiModalProjector(config)
        # Eager attention: SDPA kernels would drop Gemma2's attention logit soft-cap.
        config.text_config._attn_implementation = "eager"
        self.language_model = Gemma2ForCausalLM(config.text_config)
        if config.use_vision_zoe:
            self.vision_zoe_model = ZoeDepthForDepthEstimation(config.vision_zoe_config)
            self.position_embedding_3d = Ego3DPositionEmbedding(
                config.ego3d_patch_reso**2, config.n_freqs, config.vision_config.hidden_size
            )
        if config.use_spatial_token:
            self.spatial_embed_tokens = nn.Embedding(config.spatial_token_num, config.text_config.hidden_size)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def tie_weights(self) -> None:
        """The released head is untied from the input embeddings, whatever the top-level default says."""

    # --- Vision: SigLIP features + 3-D position encodings -------------------------------------------------------
    def estimate_depth(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Metric depth ``[B, 1, H, W]`` of ``[0, 1]`` images ``[B, 3, H, W]`` (ZoeDepth, no gradient)."""
        height, width = pixel_values.shape[-2:]
        zoe_size = self.config.vision_zoe_config.backbone_config.image_size
        padded = F.pad(pixel_values, (DEPTH_PAD,) * 4, mode="reflect")
        zoe_input = F.interpolate(padded, size=(zoe_size, zoe_size), mode="bicubic", align_corners=True)
        with torch.no_grad():
            depth = self.vision_zoe_model(pixel_values=(zoe_input - 0.5) / 0.5).predicted_depth  # [B, Z, Z]
        padded_size = (height + 2 * DEPTH_PAD, width + 2 * DEPTH_PAD)
        depth = F.interpolate(depth[:, None], size=padded_size, mode="bicubic", align_corners=True)
        return depth[..., DEPTH_PAD:-DEPTH_PAD, DEPTH_PAD:-DEPTH_PAD]

    def backproject(self, depth: torch.Tensor, intrinsic: torch.Tensor) -> torch.Tensor:
        """Camera-frame points of ``S x S`` sample points per patch: ``[B, N, 3 S^2]`` (sub-points row-major)."""
        batch, _, height, width = depth.shape
        patch, reso = self.config.vision_config.patch_size, self.config.ego3d_patch_reso
        rows, cols = height // patch, width // patch
        sampled = F.interpolate(depth.float(), size=(rows * reso, cols * reso), mode="area")  # [B, 1, R S, C S]
        step_v, step_u = height / (rows * reso), width / (cols * reso)
        v = torch.arange(rows * reso, device=depth.device, dtype=torch.float32) * step_v + step_v / 2
        u = torch.arange(cols * reso, device=depth.device, dtype=torch.float32) * step_u + step_u / 2
        grid_v, grid_u = torch.meshgrid(v, u, indexing="ij")
        pixels = torch.stack([grid_u, grid_v, torch.ones_like(grid_u)]).reshape(3, -1)  # [3, R S C S]
        rays = torch.linalg.inv(intrinsic.float()) @ pixels  # [(B,) 3, R S C S]
        points = rays * sampled.flatten(2)  # [B, 3, R S C S]
        points = points.transpose(1, 2).reshape(batch, rows, reso, cols, reso, 3)
        return points.permute(0, 1, 3, 2, 4, 5).reshape(batch, rows * cols, reso * reso * 3)

    def get_image_features(self, pixel_values: torch.Tensor, intrinsic: torch.Tensor | None) -> torch.Tensor:
        """Image tokens for the language model ``[B, N, D_text]``."""
        features = self.vision_tower(pixel_values=(pixel_values - 0.5) / 0.5).last_hidden_state  # [B, N, D_vision]
        if self.config.use_vision_zoe:
            if intrinsic is None:
                raise ValueError("SpatialVLA needs the camera `intrinsic` (from the processor) with use_vision_zoe")
            xyz = self.backproject(self.estimate_depth(pixel_values), intrinsic)
            features = features + self.position_embedding_3d(xyz.to(features.dtype))
        return self.multi_modal_projector(features) / self.config.text_config.hidden_size**0.5

    # --- Language model ------------------------------------------------------------------------------------------
    def embed_tokens(self, input_ids: torch.Tensor, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Word embeddings, action ids replaced by ``spatial_embed_tokens``, ``<image>`` slots by image features."""
        embeds = self.get_input_embeddings()(input_ids)  # [B, L, D]
        if self.config.use_spatial_token:
            offsets = input_ids - self.config.action_token_begin_idx
            is_action = (offsets >= 0) & (offsets < self.config.spatial_token_num)
            spatial = self.spatial_embed_tokens(offsets.clamp(0, self.config.spatial_token_num - 1))
            embeds = torch.where(is_action[..., None], spatial, embeds)
        image_slots = input_ids == self.config.image_token_index
        num_features = 0 if image_features is None else image_features.shape[0] * image_features.shape[1]
        if int(image_slots.sum()) != num_features:
            raise ValueError(
                f"input_ids hold {int(image_slots.sum())} <image> tokens but there are {num_features} image features"
            )
        if image_features is not None:
            embeds = embeds.masked_scatter(image_slots[..., None], image_features.to(embeds.dtype))
        return embeds

    def _language_model_logits(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        past_key_values: DynamicCache | None,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, DynamicCache | None]:
        """Gemma2 on ``inputs_embeds`` (the last ones if a cache holds earlier tokens); masks span all tokens."""
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        total = past + inputs_embeds.shape[1]
        if total > self.config.text_config.sliding_window:
            raise ValueError(
                f"{total} tokens exceed Gemma2's sliding window ({self.config.text_config.sliding_window}), "
                "which this mask does not model"
            )
        positions = torch.arange(past, total, device=inputs_embeds.device)
        bias = attention_bias(attention_mask, token_type_ids, positions, inputs_embeds.dtype)
        output = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask={"full_attention": bias, "sliding_attention": bias},
            position_ids=(positions + 1).expand(inputs_embeds.shape[0], -1),  # 1-indexed, as PaliGemma
            cache_position=positions,
            past_key_values=past_key_values,
            use_cache=past_key_values is not None,
            logits_to_keep=logits_to_keep,
        )
        return output.logits, output.past_key_values

    def forward(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.FloatTensor | None = None,
        intrinsic: torch.FloatTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        logits_to_keep: int = 0,
    ) -> SpatialVLAOutput:
        """Logits ``[B, L, V]`` under the prefix-LM mask (no ``token_type_ids``: the whole input is the prefix)."""
        image_features = None if pixel_values is None else self.get_image_features(pixel_values, intrinsic)
        inputs_embeds = self.embed_tokens(input_ids, image_features)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        logits, _ = self._language_model_logits(inputs_embeds, attention_mask, token_type_ids, None, logits_to_keep)
        return SpatialVLAOutput(logits=logits, image_features=image_features)

    @torch.no_grad()
    def generate_action_ids(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.FloatTensor,
        intrinsic: torch.FloatTensor,
        attention_mask: torch.LongTensor | None = None,
        max_new_tokens: int = 12,
    ) -> torch.LongTensor:
        """Greedy decoding with a KV cache: the new ids ``[B, n]``, ``n <= max_new_tokens`` (all rows stop at
        ``<eos>``; rows that finished early are filled with ``<pad>``)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        token_type_ids = torch.zeros_like(input_ids)
        inputs_embeds = self.embed_tokens(input_ids, self.get_image_features(pixel_values, intrinsic))
        cache = DynamicCache()
        logits, cache = self._language_model_logits(inputs_embeds, attention_mask, token_type_ids, cache, 1)
        eos_id, pad_id = self.config.eos_token_id, self.config.pad_token_id
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        generated = []
        for _ in range(max_new_tokens):
            next_ids = logits[:, -1].argmax(dim=-1).masked_fill(finished, pad_id)  # [B]
            generated.append(next_ids)
            finished |= next_ids == eos_id
            if finished.all() or len(generated) == max_new_tokens:
                break
            attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
            token_type_ids = torch.cat([token_type_ids, torch.ones_like(token_type_ids[:, :1])], dim=1)
            logits, cache = self._language_model_logits(
                self.embed_tokens(next_ids[:, None]), attention_mask, token_type_ids, cache, 1
            )
        return torch.stack(generated, dim=1)
