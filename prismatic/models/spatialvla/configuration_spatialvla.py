"""Configuration of SpatialVLA, field for field compatible with the released ``config.json``.

The released folder (``IPEC-COMMUNITY/spatialvla-4b-224-pt``) stores a PaliGemma2 configuration (SigLIP vision
config, Gemma2 text config) plus a ZoeDepth config and the SpatialVLA fields below. Its ``auto_map`` points at
remote code that we never import: ``import prismatic.models.spatialvla`` registers these classes under the model
type ``spatialvla``.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PaliGemmaConfig, ZoeDepthConfig


class SpatialVLAConfig(PaliGemmaConfig):
    """PaliGemma config + ``vision_zoe_config`` and the spatial fields.

    Args:
        vision_zoe_config: ZoeDepth (metric depth) config, a dict or ``ZoeDepthConfig``.
        action_token_begin_idx: id of ``<ACTION00000>``, the first of ``spatial_token_num`` action tokens.
        spatial_token_num: number of action tokens (translation + rotation + gripper bins).
        use_spatial_token: embed action ids with ``spatial_embed_tokens`` instead of the word embeddings.
        use_vision_zoe: add the Ego3D position encoding of back-projected ZoeDepth points to the SigLIP features.
        ego3d_patch_reso: sample points per patch side for the back-projection (2 -> 4 points per patch).
        n_freqs: sine/cosine frequencies per coordinate of the position encoding.
    """

    model_type = "spatialvla"
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig, "vision_zoe_config": ZoeDepthConfig}

    def __init__(
        self,
        vision_config: dict[str, Any] | None = None,
        text_config: dict[str, Any] | None = None,
        vision_zoe_config: dict[str, Any] | ZoeDepthConfig | None = None,
        image_token_index: int = 257152,
        action_token_begin_idx: int = 257153,
        spatial_token_num: int = 8194,
        use_spatial_token: bool = True,
        use_vision_zoe: bool = True,
        ego3d_patch_reso: int = 2,
        n_freqs: int = 8,
        vocab_size: int = 265347,
        projection_dim: int = 2304,
        hidden_size: int = 2048,
        **kwargs: Any,
    ):
        if isinstance(text_config, dict):
            text_config = {"model_type": "gemma2", **text_config}
        if isinstance(vision_zoe_config, dict):
            vision_zoe_config = ZoeDepthConfig(**vision_zoe_config)
        self.vision_zoe_config = vision_zoe_config if vision_zoe_config is not None else ZoeDepthConfig()
        self.action_token_begin_idx = action_token_begin_idx
        self.spatial_token_num = spatial_token_num
        self.use_spatial_token = use_spatial_token
        self.use_vision_zoe = use_vision_zoe
        self.ego3d_patch_reso = ego3d_patch_reso
        self.n_freqs = n_freqs
        # The released file names the vocabulary size "_vocab_size"; PretrainedConfig drops underscored kwargs.
        self._vocab_size = kwargs.pop("_vocab_size", vocab_size)
        super().__init__(
            vision_config=vision_config,
            text_config=text_config,
            image_token_index=image_token_index,
            vocab_size=self._vocab_size,
            projection_dim=projection_dim,
            hidden_size=hidden_size,
            **kwargs,
        )

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["_vocab_size"] = self._vocab_size
        return output
