"""AlignProjector: released key layout, initialisation, forward semantics."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from prismatic.spatial_forcing import AlignConfig, AlignProjector, SpatialForcingAligner


def test_full_size_keys_and_shapes_match_the_released_align_projector(manifest_dir):
    manifest = json.loads((manifest_dir / "sf_extra_state_dict.json").read_text())["AlignProjector"]
    released = {key.removeprefix("module."): shape for key, shape in manifest["keys_on_disk"].items()}
    with torch.device("meta"):
        aligner = SpatialForcingAligner(AlignConfig())  # paper defaults: 4096 -> 2 x 1024, with vlm_norm
    ours = {key: list(tensor.shape) for key, tensor in aligner.projector.state_dict().items()}
    assert list(ours) == list(released)  # same keys, in the released order
    assert ours == released
    assert sum(p.numel() for p in aligner.projector.parameters()) == manifest["num_parameters"] == 12_595_200
    # The aligner adds nothing persistent beyond the projector.
    assert {key.removeprefix("projector.") for key in aligner.state_dict()} == set(released)


def test_released_file_layout_loads_strictly():
    """A DDP-saved file (``module.`` keys) loads into a fresh projector after stripping the prefix."""
    source = AlignProjector(16, 4, use_vlm_norm=True)
    on_disk = {f"module.{key}": value.clone() for key, value in source.state_dict().items()}
    target = AlignProjector(16, 4, use_vlm_norm=True)
    target.load_state_dict({key.removeprefix("module."): value for key, value in on_disk.items()}, strict=True)
    hidden = torch.randn(2, 3, 16)
    torch.testing.assert_close(target(hidden), source(hidden), rtol=0, atol=0)


def test_without_vlm_norm_there_are_no_norm_keys():
    projector = AlignProjector(16, 4, use_vlm_norm=False)
    assert list(projector.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    hidden = torch.randn(1, 5, 16)
    expected = projector.fc2(nn.functional.gelu(projector.fc1(hidden)))
    torch.testing.assert_close(projector(hidden), expected, rtol=0, atol=0)


def test_init_is_xavier_uniform_weights_and_zero_biases():
    projector = AlignProjector(vla_dim=256, vggt_dim=128, use_vlm_norm=True)
    for linear, (fan_out, fan_in) in ((projector.fc1, (256, 256)), (projector.fc2, (256, 256))):
        assert linear.weight.shape == (fan_out, fan_in)
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert linear.weight.abs().max().item() <= bound
        assert linear.weight.abs().max().item() > 0.95 * bound  # uniform fills the whole range
        assert linear.weight.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=0.02)
        assert torch.count_nonzero(linear.bias).item() == 0
    torch.testing.assert_close(projector.vlm_norm.weight, torch.ones(256))
    torch.testing.assert_close(projector.vlm_norm.bias, torch.zeros(256))


def test_gelu_is_exact_erf_and_norm_is_layernorm():
    projector = AlignProjector(8, 2, use_vlm_norm=True)
    hidden = torch.randn(1, 4, 8) * 3 + 1
    normed = (hidden - hidden.mean(-1, keepdim=True)) / torch.sqrt(hidden.var(-1, unbiased=False, keepdim=True) + 1e-5)
    pre_act = projector.fc1(normed)
    exact_gelu = 0.5 * pre_act * (1 + torch.erf(pre_act / math.sqrt(2.0)))
    torch.testing.assert_close(projector(hidden), projector.fc2(exact_gelu), rtol=1e-5, atol=1e-6)


def test_bf16_hidden_states_are_projected_by_fp32_weights():
    projector = AlignProjector(8, 2, use_vlm_norm=False)
    hidden = torch.randn(2, 3, 8).bfloat16()
    projected = projector(hidden)
    assert projected.dtype == torch.float32
    torch.testing.assert_close(projected, projector(hidden.float()), rtol=0, atol=0)
