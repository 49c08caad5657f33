"""Named model configurations: the released ``openvla/openvla-7b`` architecture (tiny test presets build on it)."""

from __future__ import annotations

from typing import Any

from prismatic.models.configuration_prismatic import OpenVLAConfig

# The fields of openvla-7b's released config.json (its norm_stats aside). text_config stores only these keys; every
# other Llama field takes the LlamaConfig default (rms_norm_eps 1e-6, max_position_embeddings 2048).
OPENVLA_7B_FIELDS: dict[str, Any] = {
    "vision_backbone_id": "dinosiglip-vit-so-224px",
    "llm_backbone_id": "llama2-7b-pure",
    "arch_specifier": "no-align+fused-gelu-mlp",
    "image_resize_strategy": "resize-naive",
    "llm_max_length": 2048,
    "pad_token_id": 32000,
    "pad_to_multiple_of": 64,
    "n_action_bins": 256,
    "text_config": {"vocab_size": 32064, "pad_token_id": 32000},
}


def openvla_7b_config(**overrides: Any) -> OpenVLAConfig:
    """``OpenVLAConfig`` of openvla-7b (7.54 B parameters), with keyword overrides of any field."""
    return OpenVLAConfig(**{**OPENVLA_7B_FIELDS, **overrides})
