"""The golden weight rules ``sf-golden-v1``, ``svla-golden-v1`` and ``pi0-golden-v1`` (see tests/golden/README.md).

Any module whose ``state_dict()`` keys match the official implementation's gets the same weights as the
module that produced the golden numbers, so outputs can be compared value for value.
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

WEIGHT_RULE = "sf-golden-v1"


def golden_value(key: str, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The value rule ``sf-golden-v1`` assigns to the state-dict entry ``key`` of the given shape (float32)."""
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
    x = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    parts = key.split(".")
    is_norm_weight = parts[-1] == "weight" and len(parts) >= 2 and "norm" in parts[-2].lower()
    return 1.0 + 0.1 * x if is_norm_weight else 0.05 * x


@torch.no_grad()
def apply_golden_weights(module: nn.Module, strip_prefix: str = "") -> nn.Module:
    """Overwrite every floating-point state-dict entry of ``module`` by rule ``sf-golden-v1``.

    ``strip_prefix`` is removed from each key before hashing, for modules nested deeper than the one the
    golden numbers were made with (e.g. ``"aggregator."`` for a full VGGT). Integer and bool entries are kept.
    """
    state = module.state_dict(keep_vars=True)
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        rule_key = key[len(strip_prefix) :] if strip_prefix and key.startswith(strip_prefix) else key
        tensor.data.copy_(golden_value(rule_key, tensor.shape).to(tensor.dtype))
    return module


SVLA_WEIGHT_RULE = "svla-golden-v1"
PI0_WEIGHT_RULE = "pi0-golden-v1"


def _fan_in_rule_value(key: str, shape: torch.Size | tuple[int, ...], is_zero_centred_norm: bool) -> torch.Tensor:
    """The fan-in rule shared by ``svla-golden-v1`` and ``pi0-golden-v1``: matrices scaled by 1/sqrt(fan-in),
    biases by 0.02, norm weights applied as (1 + w) by 0.1, other vectors 1 + 0.1 x (float32)."""
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
    x = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    if x.ndim >= 2:
        return x * (x.numel() // x.shape[0]) ** -0.5
    if key.endswith("bias"):
        return 0.02 * x
    if is_zero_centred_norm:
        return 0.1 * x
    return 1.0 + 0.1 * x


def svla_golden_value(key: str, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The value rule ``svla-golden-v1`` assigns to the SpatialVLA parameter ``key`` (float32, scaled by fan-in)."""
    return _fan_in_rule_value(key, shape, key.startswith("language_model") and "norm" in key)


@torch.no_grad()
def apply_svla_golden_weights(module: nn.Module) -> nn.Module:
    """Overwrite every parameter of a SpatialVLA model (released key names) by rule ``svla-golden-v1``."""
    for key, parameter in module.named_parameters():
        parameter.copy_(svla_golden_value(key, parameter.shape).to(parameter.dtype))
    return module


def pi0_golden_value(key: str, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The value rule ``pi0-golden-v1`` for the pi0 state-dict entry ``key`` (openpi's names, no ``model.``)."""
    parts = key.split(".")
    is_gemma_norm = ("language_model." in key or "gemma_expert." in key) and len(parts) >= 2 and "norm" in parts[-2]
    return _fan_in_rule_value(key, shape, is_gemma_norm)


@torch.no_grad()
def apply_pi0_golden_weights(module: nn.Module, tied_keys: dict[str, str] | None = None) -> nn.Module:
    """Overwrite every floating-point state-dict entry of a pi0 model by rule ``pi0-golden-v1``.

    ``tied_keys`` maps a tied alias to the key it is drawn under (the LM head to the input embedding); the alias is
    skipped, so a tied pair gets the value of its source key whichever name the module lists first.
    """
    tied_keys = tied_keys or {}
    for key, tensor in module.state_dict(keep_vars=True).items():
        if tensor.is_floating_point() and key not in tied_keys:
            tensor.data.copy_(pi0_golden_value(key, tensor.shape).to(tensor.dtype))
    return module


def assert_max_abs(actual: torch.Tensor, expected: torch.Tensor, tolerance: float, name: str) -> None:
    """Parity check against a golden tensor: same shape, largest absolute difference within ``tolerance``."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    error = (actual.double() - expected.double()).abs().max().item()
    assert error <= tolerance, f"{name}: max |diff| = {error:.3g} > {tolerance}"
