"""A quantised base for small cards (QLoRA): the LLM's decoder Linear layers stored in int8 or 4-bit NF4 through
bitsandbytes, everything else (vision towers, projector, embeddings, norms, lm_head, the heads) in the compute dtype.

The frozen weights are quantised when the model is moved to its device; LoRA (peft) then wraps the bitsandbytes
layers, so the adapters train in the compute dtype over the dequantised base. Unlike peft's
``prepare_model_for_kbit_training`` the unquantised parts are not upcast to fp32: training autocasts to bf16 on CUDA,
and the memory estimator counts them in bf16.
"""

from __future__ import annotations

import torch
from torch import nn

# LLM.int8's outlier threshold (transformers' default llm_int8_threshold): input features above it run in fp16.
INT8_OUTLIER_THRESHOLD = 6.0


def quantized_linear_names(vla: nn.Module) -> list[str]:
    """Names (in ``vla``) of the Linear layers a quantised base stores in int8/NF4: every Linear of the LLM's decoder
    (attention and MLP projections); lm_head and everything outside the LLM stay in the compute dtype."""
    decoder = vla.language_model.model
    prefix = "language_model.model."
    return [prefix + name for name, module in decoder.named_modules() if isinstance(module, nn.Linear)]


def _quantized_linear(linear: nn.Linear, mode: str, compute_dtype: torch.dtype) -> nn.Module:
    """A bitsandbytes layer holding ``linear``'s weights, quantised on the next ``.to(device)``."""
    import bitsandbytes as bnb

    has_bias = linear.bias is not None
    weight = linear.weight.data.to(compute_dtype)
    if mode == "int8":
        layer = bnb.nn.Linear8bitLt(
            linear.in_features,
            linear.out_features,
            bias=has_bias,
            has_fp16_weights=False,
            threshold=INT8_OUTLIER_THRESHOLD,
        )
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(
            linear.in_features, linear.out_features, bias=has_bias, compute_dtype=compute_dtype, quant_type="nf4"
        )
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
    if has_bias:
        layer.bias = nn.Parameter(linear.bias.data.to(compute_dtype), requires_grad=False)
    return layer


def quantize_base(vla: nn.Module, mode: str, device: torch.device, compute_dtype: torch.dtype) -> nn.Module:
    """Replaces the LLM decoder's Linear layers of ``vla`` by int8 or NF4 bitsandbytes layers and moves ``vla`` to
    ``device`` (which quantises them); returns ``vla``. ``mode`` "none" only moves it."""
    if mode != "none":
        for name in quantized_linear_names(vla):
            parent_name, _, child = name.rpartition(".")
            parent = vla.get_submodule(parent_name)
            setattr(parent, child, _quantized_linear(getattr(parent, child), mode, compute_dtype))
        # What transformers sets on a model loaded quantised; peft reads it to wrap these layers with its
        # bitsandbytes-aware LoRA layers.
        vla.is_loaded_in_8bit, vla.is_loaded_in_4bit = mode == "int8", mode == "nf4"
    return vla.to(device)
