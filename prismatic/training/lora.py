"""LoRA set-up as upstream trains it, and the merge of a saved adapter into its base model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import AutoModelForVision2Seq, PreTrainedModel

PEFT_PREFIX = "base_model.model."  # what a PeftModel's state dict puts before the base model's keys
ADAPTER_NAME = "default"  # the one adapter a training run creates

# What peft 0.11.1 (upstream's version) resolved target_modules="all-linear" to on OpenVLA: every Linear of
# both ViTs, the projector and Llama, plus lm_head and, through the "proj" suffix, both patch-embedding convs.
# Newer peft resolves "all-linear" without lm_head; naming the set keeps the released adapter layout.
UPSTREAM_LORA_TARGET_MODULES = (
    "down_proj", "fc1", "fc2", "fc3", "gate_proj", "k_proj", "kv", "lm_head",
    "o_proj", "proj", "q", "q_proj", "qkv", "up_proj", "v_proj",
)  # fmt: skip


def lora_config(
    rank: int,
    dropout: float,
    target_modules: str | Sequence[str] = UPSTREAM_LORA_TARGET_MODULES,
    modules_to_save: Sequence[str] = (),
) -> LoraConfig:
    """Upstream's adapter: alpha = min(rank, 16), gaussian init of A (B starts at zero). ``target_modules``: module
    name suffixes, or one regular expression a module's full name must match; ``modules_to_save``: modules trained
    in full beside the adapters (saved with them)."""
    return LoraConfig(
        r=rank,
        lora_alpha=min(rank, 16),
        lora_dropout=dropout,
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        modules_to_save=list(modules_to_save) or None,
        init_lora_weights="gaussian",
    )


def apply_lora(
    vla: nn.Module,
    rank: int,
    dropout: float,
    fp32_adapters: bool = False,
    target_modules: str | Sequence[str] = UPSTREAM_LORA_TARGET_MODULES,
    modules_to_save: Sequence[str] = (),
) -> PeftModel:
    """Wraps ``vla`` with LoRA adapters (see :func:`lora_config`); base weights are frozen, adapters trainable.

    The adapters take the base model's dtype (bf16 on GPU), as with upstream's peft 0.11.1 and as released;
    ``fp32_adapters`` keeps them in float32 (newer peft's default, ``autocast_adapter_dtype=True``).
    """
    config = lora_config(rank, dropout, target_modules, modules_to_save)
    return get_peft_model(vla, config, autocast_adapter_dtype=fp32_adapters)


def merged_lora_state_dict(peft_state: Mapping[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """The base model's state dict with the adapters folded in, from a (gathered) peft state dict of one adapter:
    what ``merge_and_unload`` would save, computed without touching the model being trained.

    Each adapted Linear's weight becomes ``W + scaling B A`` (``scaling`` = alpha / rank); each module trained in
    full (``modules_to_save``) takes its trained copy's values.
    """
    merged: dict[str, torch.Tensor] = {}
    for key, value in peft_state.items():
        name = key.removeprefix(PEFT_PREFIX)
        if ".lora_A." in name or ".lora_B." in name or ".original_module." in name:
            continue
        if ".base_layer." in name:
            name = name.replace(".base_layer.", ".")
            module = key[: key.index(".base_layer.")]
            if name.endswith(".weight") and f"{module}.lora_A.{ADAPTER_NAME}.weight" in peft_state:
                lora_a = peft_state[f"{module}.lora_A.{ADAPTER_NAME}.weight"].float()
                lora_b = peft_state[f"{module}.lora_B.{ADAPTER_NAME}.weight"].float()
                value = (value.float() + scaling * lora_b @ lora_a).to(value.dtype)
        merged[name.replace(f".modules_to_save.{ADAPTER_NAME}.", ".")] = value
    return merged


def merge_lora(base_model_path: str | Path, adapter_dir: str | Path, dtype: torch.dtype) -> PreTrainedModel:
    """Loads the base VLA, applies the adapter in ``adapter_dir`` and folds it into the base weights."""
    import prismatic.models  # noqa: F401  (registers the OpenVLA Auto classes)

    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"No LoRA adapter in {adapter_dir} (expected adapter_config.json there).")
    base = AutoModelForVision2Seq.from_pretrained(str(base_model_path), dtype=dtype)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
