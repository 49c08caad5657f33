"""Configurations of Prismatic VLMs and OpenVLA, field for field compatible with the released ``config.json`` files.

The released folders (``openvla/openvla-7b`` and every OpenVLA-OFT / Spatial Forcing fine-tune) store these fields;
their ``auto_map`` points at remote code that we never need: ``import prismatic.models`` registers these classes
with the transformers Auto classes under the model types ``prismatic`` and ``openvla``.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto import CONFIG_MAPPING

from prismatic.vla.constants import LIBERO, NUM_ACTION_BINS, NormalizationType, PlatformConstants

# Vision backbone id -> input resolution, timm model ids and activation overrides (one entry per tower).
VISION_BACKBONE_TO_RESOLUTION: dict[str, list[int]] = {
    "clip-vit-l": [224],
    "siglip-vit-so400m": [224],
    "dinov2-vit-l": [224],
    "in1k-vit-l": [224],
    "clip-vit-l-336px": [336],
    "siglip-vit-so400m-384px": [384],
    "dinoclip-vit-l-336px": [336, 336],
    "dinosiglip-vit-so-224px": [224, 224],
    "dinosiglip-vit-so-384px": [384, 384],
}
VISION_BACKBONE_TO_TIMM_ID: dict[str, list[str]] = {
    "clip-vit-l": ["vit_large_patch14_clip_224.openai"],
    "clip-vit-l-336px": ["vit_large_patch14_clip_336.openai"],
    "dinov2-vit-l": ["vit_large_patch14_reg4_dinov2.lvd142m"],
    "in1k-vit-l": ["vit_large_patch16_224.augreg_in21k_ft_in1k"],
    "siglip-vit-so400m": ["vit_so400m_patch14_siglip_224"],
    "siglip-vit-so400m-384px": ["vit_so400m_patch14_siglip_384"],
    "dinoclip-vit-l-336px": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_large_patch14_clip_336.openai"],
    "dinosiglip-vit-so-224px": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
    "dinosiglip-vit-so-384px": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_384"],
}
TIMM_OVERRIDE_ACT_LAYER: dict[str, list[str | None]] = {
    "clip-vit-l": ["quick_gelu"],
    "clip-vit-l-336px": ["quick_gelu"],
    "dinov2-vit-l": [None],
    "in1k-vit-l": [None],
    "siglip-vit-so400m": [None],
    "siglip-vit-so400m-384px": [None],
    "dinoclip-vit-l-336px": [None, "quick_gelu"],
    "dinosiglip-vit-so-224px": [None, None],
    "dinosiglip-vit-so-384px": [None, None],
}
# LLM backbone id -> Hugging Face repository and transformers model type.
LLM_BACKBONE_TO_HF_PATH: dict[str, str] = {
    "llama2-7b-pure": "meta-llama/Llama-2-7b-hf",
    "llama2-13b-pure": "meta-llama/Llama-2-13b-hf",
    "llama2-7b-chat": "meta-llama/Llama-2-7b-chat-hf",
    "llama2-13b-chat": "meta-llama/Llama-2-13b-chat-hf",
    "vicuna-v15-7b": "lmsys/vicuna-7b-v1.5",
    "vicuna-v15-13b": "lmsys/vicuna-13b-v1.5",
    "mistral-v0.1-7b-pure": "mistralai/Mistral-7B-v0.1",
    "mistral-v0.1-7b-instruct": "mistralai/Mistral-7B-Instruct-v0.1",
    "phi-2-3b": "microsoft/phi-2",
}
LLM_BACKBONE_TO_HF_METACLASS: dict[str, str] = {
    "llama2-7b-pure": "llama",
    "llama2-13b-pure": "llama",
    "llama2-7b-chat": "llama",
    "llama2-13b-chat": "llama",
    "vicuna-v15-7b": "llama",
    "vicuna-v15-13b": "llama",
    "mistral-v0.1-7b-pure": "mistral",
    "mistral-v0.1-7b-instruct": "mistral",
    "phi-2-3b": "phi",
}


class PrismaticConfig(PretrainedConfig):
    """Vision backbone (one or two fused timm towers), projector and LLM of a Prismatic VLM.

    ``timm_model_ids``, ``timm_override_act_layers`` and ``image_sizes`` default to the values implied by
    ``vision_backbone_id`` (released configs store them too). ``timm_model_kwargs`` is ours: per-tower keyword
    overrides for ``timm.create_model`` (e.g. ``{"embed_dim": 32, "depth": 2}``), used by the tiny test presets; it
    is empty for every released checkpoint. ``n_action_bins`` (upstream: OpenVLA only) fixes which ids are action
    tokens: the top ``n_action_bins`` ids of the base vocabulary.
    """

    model_type = "prismatic"
    sub_configs = {"text_config": AutoConfig}

    def __init__(
        self,
        vision_backbone_id: str = "siglip-vit-so400m",
        llm_backbone_id: str = "vicuna-v15-7b",
        arch_specifier: str = "no-align+gelu-mlp",
        use_fused_vision_backbone: bool | None = None,
        image_resize_strategy: str = "letterbox",
        text_config: dict[str, Any] | PretrainedConfig | None = None,
        llm_max_length: int = 2048,
        pad_token_id: int = 32000,
        pad_to_multiple_of: int = 64,
        output_projector_states: bool = False,
        timm_model_ids: list[str] | None = None,
        timm_override_act_layers: list[str | None] | None = None,
        image_sizes: list[int] | None = None,
        hf_llm_id: str | None = None,
        timm_model_kwargs: list[dict[str, Any]] | None = None,
        n_action_bins: int = NUM_ACTION_BINS,
        **kwargs: Any,
    ) -> None:
        if vision_backbone_id not in VISION_BACKBONE_TO_TIMM_ID:
            raise ValueError(
                f"vision_backbone_id={vision_backbone_id!r} is not supported; expected one of "
                f"{sorted(VISION_BACKBONE_TO_TIMM_ID)}."
            )
        if llm_backbone_id not in LLM_BACKBONE_TO_HF_PATH:
            raise ValueError(
                f"llm_backbone_id={llm_backbone_id!r} is not supported; expected one of "
                f"{sorted(LLM_BACKBONE_TO_HF_PATH)}."
            )
        self.vision_backbone_id = vision_backbone_id
        self.llm_backbone_id = llm_backbone_id
        self.arch_specifier = arch_specifier
        self.output_projector_states = output_projector_states
        self.use_fused_vision_backbone = (
            use_fused_vision_backbone
            if use_fused_vision_backbone is not None
            else vision_backbone_id.startswith(("dinoclip", "dinosiglip"))
        )
        self.timm_model_ids = list(timm_model_ids or VISION_BACKBONE_TO_TIMM_ID[vision_backbone_id])
        self.timm_override_act_layers = list(timm_override_act_layers or TIMM_OVERRIDE_ACT_LAYER[vision_backbone_id])
        self.image_sizes = list(image_sizes or VISION_BACKBONE_TO_RESOLUTION[vision_backbone_id])
        self.timm_model_kwargs = [dict(kw) for kw in timm_model_kwargs] if timm_model_kwargs else None
        num_towers = 2 if self.use_fused_vision_backbone else 1
        for name in ("timm_model_ids", "timm_override_act_layers", "image_sizes", "timm_model_kwargs"):
            value = getattr(self, name)
            if value is not None and len(value) != num_towers:
                raise ValueError(
                    f"{name} has {len(value)} entries but use_fused_vision_backbone={self.use_fused_vision_backbone} "
                    f"needs {num_towers} (one per vision tower)."
                )
        self.image_resize_strategy = image_resize_strategy
        self.hf_llm_id = hf_llm_id or LLM_BACKBONE_TO_HF_PATH[llm_backbone_id]
        self.llm_max_length = llm_max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.n_action_bins = n_action_bins

        llm_model_type = LLM_BACKBONE_TO_HF_METACLASS[llm_backbone_id]
        if isinstance(text_config, PretrainedConfig):
            self.text_config = text_config
        else:
            self.text_config = CONFIG_MAPPING[llm_model_type](**(text_config or {}))
        # The LLM's embeddings are untied (Llama-2); saying so keeps peft and transformers from assuming otherwise.
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    @property
    def base_vocab_size(self) -> int:
        """Tokenizer vocabulary without the padding rows added to the embedding matrix (32,000 for Llama-2)."""
        return self.text_config.vocab_size - self.pad_to_multiple_of

    @property
    def action_token_begin_idx(self) -> int:
        """Every id strictly above this one is an action token (31743 for Llama-2 with 256 bins)."""
        return self.base_vocab_size - (self.n_action_bins + 1)


class OpenVLAConfig(PrismaticConfig):
    """A Prismatic VLM that predicts robot actions; adds the dataset statistics and the action-chunk geometry.

    ``norm_stats`` maps a dataset name to its ``{"action": {...}, "proprio": {...}}`` statistics (the format of
    ``dataset_statistics.json``). The platform fields (ours; upstream took them from global constants) default to
    LIBERO, so released LIBERO checkpoints need nothing else.
    """

    model_type = "openvla"

    def __init__(
        self,
        norm_stats: dict[str, dict[str, Any]] | None = None,
        n_action_bins: int = NUM_ACTION_BINS,
        platform_name: str = LIBERO.name,
        num_actions_chunk: int = LIBERO.num_actions_chunk,
        action_dim: int = LIBERO.action_dim,
        proprio_dim: int = LIBERO.proprio_dim,
        action_proprio_normalization_type: str = LIBERO.action_proprio_normalization_type.value,
        **kwargs: Any,
    ) -> None:
        self.norm_stats = norm_stats
        self.platform_name = platform_name
        self.num_actions_chunk = num_actions_chunk
        self.action_dim = action_dim
        self.proprio_dim = proprio_dim
        self.action_proprio_normalization_type = NormalizationType(action_proprio_normalization_type).value
        super().__init__(n_action_bins=n_action_bins, **kwargs)

    @property
    def platform(self) -> PlatformConstants:
        """The action-chunk geometry and normalisation this model predicts with."""
        return PlatformConstants(
            name=self.platform_name,
            num_actions_chunk=self.num_actions_chunk,
            action_dim=self.action_dim,
            proprio_dim=self.proprio_dim,
            action_proprio_normalization_type=NormalizationType(self.action_proprio_normalization_type),
        )

    def set_platform(self, platform: PlatformConstants) -> None:
        """Adopt a platform's constants (e.g. ``constants_for("aloha_...")``); saved with the config."""
        self.platform_name = platform.name
        self.num_actions_chunk = platform.num_actions_chunk
        self.action_dim = platform.action_dim
        self.proprio_dim = platform.proprio_dim
        self.action_proprio_normalization_type = NormalizationType(platform.action_proprio_normalization_type).value
