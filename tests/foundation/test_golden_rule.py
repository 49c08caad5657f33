"""The weight rule sf-golden-v1 reproduces the probe values published with the golden fixtures."""

import pytest
import torch
from torch import nn

from prismatic.testing.golden import apply_golden_weights, golden_value

PROBES = [
    ("patch_embed.pos_embed", (1, 1370, 384), [0.08203145, -0.01740810, 0.01196000, -0.04169403], 14.2326233),
    ("patch_embed.norm.weight", (384,), [0.98383236, 1.20791388, 1.06942177, 0.95653993], 383.960779),
    ("frame_blocks.0.attn.q_norm.weight", (64,), [1.03337991, 0.87655503, 1.01810086, 1.09213781], 62.9142975),
    ("global_blocks.1.ls2.gamma", (384,), [0.02792294, 0.06143610, 0.10358579, 0.06148852], -1.08544015),
    ("camera_token", (1, 2, 1, 384), [-0.02687809, 0.04184467, 0.08619648, -0.03590910], 1.64091105),
    ("vlm_norm.weight", (64,), [1.02291763, 1.11989176, 0.99824840, 1.03852236], 64.3329923),
    ("fc1.weight", (768, 64), [-0.04842966, 0.02950176, -0.04956866, 0.03017415], -11.3203132),
]


@pytest.mark.parametrize("key, shape, first, total", PROBES)
def test_rule_matches_published_probes(key, shape, first, total):
    value = golden_value(key, shape)
    assert torch.allclose(value.flatten()[:4], torch.tensor(first), atol=1e-7)
    assert value.double().sum().item() == pytest.approx(total, abs=1e-4)


def test_apply_strips_prefix_and_keeps_integer_buffers():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
            self.register_buffer("steps", torch.tensor([5]))

    module = apply_golden_weights(Wrapper(), strip_prefix="inner.")
    assert torch.equal(module.inner[0].weight, golden_value("0.weight", (3, 4)))
    assert torch.equal(module.inner[1].weight, golden_value("1.weight", (3,)))  # "1" is not a norm component
    assert module.steps.item() == 5
