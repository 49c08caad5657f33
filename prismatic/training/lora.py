"""LoRA set-up as upstream trains it, and the merge of a saved adapter into its base model."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForVision2Seq, PreTrainedModel

# What peft 0.11.1 (upstream's version) resolved target_modules="all-linear" to on OpenVLA: every Linear of
# both ViTs, the projector and Llama, plus lm_head and, through the "proj" suffix, both patch-embedding convs.
# Newer peft resolves "all-linear" without lm_head; naming the set keeps the released adapter layout.
UPSTREAM_LORA_TARGET_MODULES = (
    "down_proj", "fc1", "fc2", "fc3", "gate_proj", "k_proj", "kv", "lm_head",
    "o_proj", "proj", "q", "q_proj", "qkv", "up_proj", "v_proj",
)  # fmt: skip


def lora_config(rank: int, dropout: float) -> LoraConfig:
    """Upstream's adapter: alpha = min(rank, 16), gaussian init of A (B starts at zero)."""
    return LoraConfig(
        r=rank,
        lora_alpha=min(rank, 16),
        lora_dropout=dropout,
        target_modules=list(UPSTREAM_LORA_TARGET_MODULES),
        init_lora_weights="gaussian",
    )


def apply_lora(vla: PreTrainedModel, rank: int, dropout: float, fp32_adapters: bool = False) -> PeftModel:
    """Wraps ``vla`` with LoRA adapters; base weights are frozen, adapters trainable.

    The adapters take the base model's dtype (bf16 on GPU), as with upstream's peft 0.11.1 and as released;
    ``fp32_adapters`` keeps them in float32 (newer peft's default, ``autocast_adapter_dtype=True``).
    """
    return get_peft_model(vla, lora_config(rank, dropout), autocast_adapter_dtype=fp32_adapters)


def merge_lora(base_model_path: str | Path, adapter_dir: str | Path, dtype: torch.dtype) -> PreTrainedModel:
    """Loads the base VLA, applies the adapter in ``adapter_dir`` and folds it into the base weights."""
    import prismatic.models  # noqa: F401  (registers the OpenVLA Auto classes)

    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"No LoRA adapter in {adapter_dir} (expected adapter_config.json there).")
    base = AutoModelForVision2Seq.from_pretrained(str(base_model_path), dtype=dtype)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
