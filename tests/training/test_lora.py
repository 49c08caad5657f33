"""LoRA adapters in the base model's dtype (upstream's peft 0.11.1, the released bf16 adapters), fp32 on request."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForVision2Seq

import prismatic.models  # noqa: F401  (registers the OpenVLA Auto classes)
from prismatic.training.lora import apply_lora


@pytest.mark.parametrize("fp32_adapters, expected", [(False, torch.bfloat16), (True, torch.float32)])
def test_adapters_take_the_base_dtype_unless_fp32_is_asked(tiny_checkpoints, tmp_path, fp32_adapters, expected):
    base = AutoModelForVision2Seq.from_pretrained(tiny_checkpoints[0], dtype=torch.bfloat16)
    peft_model = apply_lora(base, rank=4, dropout=0.0, fp32_adapters=fp32_adapters)
    adapter_dtypes = {p.dtype for name, p in peft_model.named_parameters() if "lora_" in name}
    assert adapter_dtypes == {expected}
    peft_model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert {tensor.dtype for name, tensor in saved.items() if "lora_" in name} == {expected}
