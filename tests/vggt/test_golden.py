"""Parity with the official VGGT aggregator on the golden tiny configuration (tests/golden/README.md, set public)."""

from __future__ import annotations

import pytest
import torch

from prismatic.testing.golden import golden_value
from vggt.models.vggt import VGGT

# README section 7: max |diff| <= 2e-5 on aggregated tokens and DINO tensors (values reach ~5.5).
TOLERANCE = {"rtol": 1e-5, "atol": 2e-5}

# README section 2: first 4 values and sum of the weight rule for some Aggregator keys (shapes of the tiny config).
WEIGHT_PROBES = {
    "patch_embed.pos_embed": ((1, 1370, 384), (0.08203145, -0.01740810, 0.01196000, -0.04169403), 14.2326233),
    "patch_embed.norm.weight": ((384,), (0.98383236, 1.20791388, 1.06942177, 0.95653993), 383.960779),
    "frame_blocks.0.attn.qkv.weight": ((1152, 384), (0.00209616, 0.10919209, 0.01714853, 0.13149171), -26.6378642),
    "frame_blocks.0.attn.q_norm.weight": ((64,), (1.03337991, 0.87655503, 1.01810086, 1.09213781), 62.9142975),
    "global_blocks.1.ls2.gamma": ((384,), (0.02792294, 0.06143610, 0.10358579, 0.06148852), -1.08544015),
    "camera_token": ((1, 2, 1, 384), (-0.02687809, 0.04184467, 0.08619648, -0.03590910), 1.64091105),
}


@pytest.mark.parametrize("key", sorted(WEIGHT_PROBES))
def test_weight_rule_reproduces_the_readme_probes(key: str, golden_tiny_vggt: VGGT):
    shape, first_values, total = WEIGHT_PROBES[key]
    value = golden_value(key, shape)
    torch.testing.assert_close(value.flatten()[:4], torch.tensor(first_values), rtol=0, atol=1e-7)
    assert value.double().sum().item() == pytest.approx(total, abs=1e-5)
    # The model received exactly these values under its nested key.
    assert torch.equal(golden_tiny_vggt.state_dict()[f"aggregator.{key}"], value)


def test_aggregated_tokens_match_the_official_aggregator(golden_tiny_vggt: VGGT, golden_case):
    with torch.no_grad():
        features, patch_start_idx = golden_tiny_vggt(golden_case["images"])
    assert patch_start_idx == golden_case["patch_start_idx"].item() == 5
    assert len(features) == 2
    for layer, actual in enumerate(features):
        torch.testing.assert_close(actual, golden_case[f"aggregated_tokens.{layer}"], **TOLERANCE)


def test_dino_position_embedding_interpolation_matches(golden_tiny_vggt: VGGT, golden_case):
    height, width = golden_case["images"].shape[-2:]
    dino = golden_tiny_vggt.aggregator.patch_embed
    pos_embed = dino.interpolate_pos_encoding(height // 14, width // 14)
    torch.testing.assert_close(pos_embed, golden_case["dino_pos_embed"], **TOLERANCE)


def test_dino_patch_tokens_match(golden_tiny_vggt: VGGT, golden_case):
    images = golden_case["images"].flatten(0, 1)  # [B*S, 3, H, W]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = golden_tiny_vggt.aggregator.patch_embed((images - mean) / std)["x_norm_patchtokens"]
    torch.testing.assert_close(tokens, golden_case["dino_x_norm_patchtokens"], **TOLERANCE)


def test_spot_value_from_the_readme(golden_tiny_vggt: VGGT, golden_main):
    with torch.no_grad():
        features, _ = golden_tiny_vggt(golden_main["images"], output_layers=[-1])
    expected = torch.tensor([-0.305163, 0.125460, 0.221959])
    torch.testing.assert_close(features[0][0, 0, 0, :3], expected, rtol=0, atol=2e-6)
