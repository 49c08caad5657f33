"""Tiny OpenVLA presets for tests, benchmarks and the demo: the same classes as openvla-7b, smaller widths.

The tiny towers are the real timm DINOv2 and SigLIP classes with small widths and depths but the released geometry
(224 px, patch 14: 256 patches per image); the LLM is a 2-layer Llama of width 64 that keeps Llama-2's 32,064-row
vocabulary, so every token id of upstream (29871, 32000, the action ids 31744..31999) holds unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig
from transformers.modeling_utils import init_empty_weights

from prismatic.models.action_heads import L1RegressionActionHead
from prismatic.models.configuration_prismatic import OpenVLAConfig
from prismatic.models.modeling_prismatic import OpenVLAForActionPrediction
from prismatic.models.presets import OPENVLA_7B_FIELDS, openvla_7b_config
from prismatic.models.processing_prismatic import PrismaticImageProcessor, PrismaticProcessor
from prismatic.models.projectors import ProprioProjector
from prismatic.policy.components import save_component_state_dict
from prismatic.testing.golden import apply_golden_weights
from prismatic.testing.tokenizer import build_tiny_tokenizer
from prismatic.util.checkpoint_files import DATASET_STATISTICS_NAME
from prismatic.util.io import write_json_atomic
from prismatic.vla.constants import IGNORE_INDEX, STOP_INDEX

# Per-tower timm overrides: DINOv2 (with registers and LayerScale) and SigLIP (with its MAP head) at small width.
TINY_TIMM_MODEL_KWARGS: list[dict[str, Any]] = [
    {"embed_dim": 32, "depth": 2, "num_heads": 2},
    {"embed_dim": 48, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0},
]
# The Llama of the golden fixtures (tests/golden/README.md, "openvla_tiny_llm").
TINY_TEXT_CONFIG: dict[str, Any] = {
    **OPENVLA_7B_FIELDS["text_config"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 2048,
}
# What the released config.json files point their auto_map at (remote code we never need).
RELEASED_AUTO_MAP = {
    "AutoConfig": "configuration_prismatic.OpenVLAConfig",
    "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction",
}
PAD_TOKEN_ID = 32000
EMPTY_TOKEN_ID = 29871
RELEASED_PROCESSOR_AUTO_MAP = {
    "AutoImageProcessor": "processing_prismatic.PrismaticImageProcessor",
    "AutoProcessor": "processing_prismatic.PrismaticProcessor",
}


def tiny_vla_config(**overrides: Any) -> OpenVLAConfig:
    """openvla-7b's configuration with tiny timm towers and the tiny Llama (about 5 M parameters)."""
    return openvla_7b_config(
        **{"timm_model_kwargs": TINY_TIMM_MODEL_KWARGS, "text_config": TINY_TEXT_CONFIG, **overrides}
    )


def golden_vla_config(**overrides: Any) -> OpenVLAConfig:
    """The configuration of the ``openvla_tiny_llm`` golden fixtures: full-size towers, the tiny Llama."""
    return openvla_7b_config(**{"text_config": TINY_TEXT_CONFIG, **overrides})


@torch.no_grad()
def build_with_golden_weights(config: OpenVLAConfig) -> OpenVLAForActionPrediction:
    """The VLA with weight rule ``sf-golden-v1``, built without running the (slow, overwritten) initialisers."""
    with init_empty_weights():
        vla = OpenVLAForActionPrediction(config)
    for module in vla.modules():
        for name, parameter in list(module.named_parameters(recurse=False)):
            if parameter.is_meta:
                materialized = torch.empty_like(parameter, device="cpu")
                setattr(module, name, nn.Parameter(materialized, requires_grad=parameter.requires_grad))
    return apply_golden_weights(vla).eval()


def tiny_action_head(config: OpenVLAConfig) -> L1RegressionActionHead:
    """The L1 regression head for a VLA of ``config``."""
    llm_dim = config.text_config.hidden_size
    return L1RegressionActionHead(llm_dim, llm_dim, config.action_dim, config.num_actions_chunk)


def tiny_proprio_projector(config: OpenVLAConfig) -> ProprioProjector:
    return ProprioProjector(config.text_config.hidden_size, config.proprio_dim)


def tiny_training_batch(
    config: OpenVLAConfig, prompt_lengths: list[int], num_images: int = 2, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A random right-padded batch as the collator builds it: BOS, prompt body, "▁", action ids, stop, pads.

    Keys: input_ids, labels (``IGNORE_INDEX`` except actions and stop), attention_mask, pixel_values
    [B, 6 * num_images, 224, 224], proprio [B, proprio_dim] and actions [B, chunk, action_dim] in [-1, 1].
    """
    generator = torch.Generator().manual_seed(seed)
    num_slots = config.num_actions_chunk * config.action_dim
    batch_size, max_length = len(prompt_lengths), max(prompt_lengths) + num_slots + 3
    input_ids = torch.full((batch_size, max_length), PAD_TOKEN_ID)
    labels = torch.full((batch_size, max_length), IGNORE_INDEX)
    for row, length in enumerate(prompt_lengths):
        body = torch.randint(100, 20001, (length,), generator=generator)
        action_ids = torch.randint(
            config.action_token_begin_idx + 1, config.base_vocab_size, (num_slots,), generator=generator
        )
        ids = torch.cat(
            [torch.tensor([1]), body, torch.tensor([EMPTY_TOKEN_ID]), action_ids, torch.tensor([STOP_INDEX])]
        )
        input_ids[row, : len(ids)] = ids
        labels[row, length + 2 : len(ids)] = ids[length + 2 :]
    image_size = config.image_sizes[0]
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": input_ids != PAD_TOKEN_ID,
        "pixel_values": torch.randn((batch_size, 6 * num_images, image_size, image_size), generator=generator),
        "proprio": torch.rand((batch_size, config.proprio_dim), generator=generator) * 2 - 1,
        "actions": torch.rand((batch_size, config.num_actions_chunk, config.action_dim), generator=generator) * 2 - 1,
    }


def save_tiny_vla_checkpoint(
    out_dir: str | Path,
    seed: int = 0,
    *,
    norm_stats: dict[str, Any] | None = None,
    with_heads: bool = False,
    max_shard_size: str = "8MB",
    **config_overrides: Any,
) -> Path:
    """Write a randomly initialised tiny VLA in openvla-7b's released layout and return the folder.

    Layout: ``config.json`` (with the released ``auto_map``), sharded safetensors + ``model.safetensors.index.json``,
    ``generation_config.json``, tokenizer files, ``preprocessor_config.json`` and ``processor_config.json``. With
    ``norm_stats``: ``dataset_statistics.json`` too. With ``with_heads``: the fine-tuned layout's
    ``action_head--latest_checkpoint.pt`` and ``proprio_projector--latest_checkpoint.pt`` (``module.`` keys).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = tiny_vla_config(norm_stats=norm_stats, **config_overrides)
    config.auto_map = RELEASED_AUTO_MAP
    vla = OpenVLAForActionPrediction(config)
    vla.save_pretrained(out_dir, max_shard_size=max_shard_size)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=config.pad_token_id).save_pretrained(out_dir)

    image_processor = PrismaticImageProcessor.from_vla_config(config)
    image_processor.auto_map = RELEASED_PROCESSOR_AUTO_MAP
    processor = PrismaticProcessor(image_processor, build_tiny_tokenizer())
    processor.auto_map = {"AutoProcessor": RELEASED_PROCESSOR_AUTO_MAP["AutoProcessor"]}  # -> processor_config.json
    processor.save_pretrained(out_dir)

    if norm_stats is not None:
        write_json_atomic(out_dir / DATASET_STATISTICS_NAME, norm_stats)
    if with_heads:
        save_component_state_dict(tiny_action_head(config), out_dir / "action_head--latest_checkpoint.pt")
        save_component_state_dict(tiny_proprio_projector(config), out_dir / "proprio_projector--latest_checkpoint.pt")
    return out_dir
