"""FiLM as upstream: fp32 scale/shift layers, conditioned on the mean embedding of every non-action token."""

from __future__ import annotations

import torch

from prismatic.models.modeling_prismatic import PrismaticForConditionalGeneration
from prismatic.models.vision_backbone import FiLMedVisionTransformerBlock


def test_language_average_includes_pads_and_excludes_only_action_slots():
    embeddings = torch.arange(12, dtype=torch.float32).reshape(1, 6, 2)  # [B=1, L=6, D=2]
    actions_mask = torch.tensor([[False, False, True, True, False, False]])  # last two: stop token, pad
    average = PrismaticForConditionalGeneration._average_language_embedding(embeddings, actions_mask)
    # upstream: input_embeddings[~all_actions_mask].reshape(B, -1, D).mean(1) over positions 0, 1, 4, 5
    expected = embeddings[0, [0, 1, 4, 5]].mean(dim=0, keepdim=True)
    torch.testing.assert_close(average, expected)


def test_film_layers_are_fp32_and_run_with_a_bf16_block():
    block = torch.nn.Sequential()  # stands in for a timm block: only its parameters' device is read here
    block.register_parameter("weight", torch.nn.Parameter(torch.zeros(1, dtype=torch.bfloat16)))
    film = FiLMedVisionTransformerBlock(block, vision_dim=4, llm_dim=3)
    assert film.scale.weight.dtype == film.shift.weight.dtype == torch.float32
