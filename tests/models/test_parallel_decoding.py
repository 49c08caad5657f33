"""Parallel decoding: zero action embeddings, bidirectional attention among real tokens, pads masked as keys."""

from __future__ import annotations

import pytest
import torch

from prismatic.models import NoisyActionProjector, OpenVLAForActionPrediction
from prismatic.models.action_masks import gather_action_hidden_states
from prismatic.models.attention import bidirectional_attention_mask
from prismatic.testing.tiny_vla import tiny_action_head, tiny_proprio_projector, tiny_training_batch, tiny_vla_config


def run_training_forward(vla: OpenVLAForActionPrediction, batch: dict, **extra) -> tuple[torch.Tensor, object]:
    """Forward as finetune.py calls it; returns the final hidden states at the action slots and the output."""
    with torch.no_grad():
        output = vla(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            labels=batch["labels"],
            output_hidden_states=True,
            **extra,
        )
    hidden = gather_action_hidden_states(output.hidden_states[-1], batch["labels"], output.projector_features.shape[1])
    return hidden, output


def test_mask_lets_every_query_see_every_real_key():
    key_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    sdpa = bidirectional_attention_mask(key_mask, torch.float32, "sdpa")
    assert sdpa.shape == (2, 1, 5, 5) and sdpa.dtype == torch.bool
    assert torch.equal(sdpa[0, 0], key_mask[0].bool().expand(5, 5))  # every row, pad rows included
    assert bool(sdpa[1].all())
    eager = bidirectional_attention_mask(key_mask, torch.bfloat16, "eager")
    assert eager.dtype == torch.bfloat16
    assert bool((eager[0, 0, :, :3] == 0).all()) and bool((eager[0, 0, :, 3:] == torch.finfo(torch.bfloat16).min).all())


def test_action_slot_embeddings_are_zero(tiny_vla):
    batch = tiny_training_batch(tiny_vla.config, [5], num_images=1)
    _, output = run_training_forward(tiny_vla, batch)
    embeddings = output.hidden_states[0]  # [1, 1 + 256 + L - 1, D]
    action_positions = 256 + torch.nonzero(batch["labels"][0] > 31743).squeeze(1)
    assert bool((embeddings[0, action_positions] == 0).all())
    stop_position = 256 + batch["labels"].shape[1] - 1
    assert embeddings[0, stop_position].abs().sum() > 0


def test_later_action_slot_changes_earlier_slot_output(tiny_vla, tiny_config):
    """Bidirectional: the last slot's input reaches the first slot (impossible under causal attention)."""
    batch = tiny_training_batch(tiny_config, [6], num_images=1)
    torch.manual_seed(1)
    projector = NoisyActionProjector(tiny_config.text_config.hidden_size)
    noisy = torch.randn(1, tiny_config.num_actions_chunk, tiny_config.action_dim)
    changed = noisy.clone()
    changed[0, -1, -1] += 1.0  # only the last action slot
    extra = {"noisy_action_projector": projector}
    hidden, _ = run_training_forward(tiny_vla, batch, noisy_actions=noisy, **extra)
    hidden_changed, _ = run_training_forward(tiny_vla, batch, noisy_actions=changed, **extra)
    # The gathered states sit before action tokens 0..55, i.e. all before the changed last slot.
    assert bool(((hidden_changed - hidden).abs().amax(dim=-1) > 1e-6).all())

    # Under causal attention the same change leaves them untouched, so the probe is sensitive to the mask.
    original_run = tiny_vla._run_language_model

    def causal_run(inputs_embeds, attention_mask, *args, **kwargs):
        return tiny_vla.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask.long(), output_hidden_states=True
        )

    tiny_vla._run_language_model = causal_run
    try:
        hidden_causal, _ = run_training_forward(tiny_vla, batch, noisy_actions=noisy, **extra)
        hidden_causal_changed, _ = run_training_forward(tiny_vla, batch, noisy_actions=changed, **extra)
    finally:
        tiny_vla._run_language_model = original_run
    assert torch.equal(hidden_causal, hidden_causal_changed)


def test_stop_token_after_the_chunk_reaches_the_action_slots(tiny_vla, tiny_config):
    batch = tiny_training_batch(tiny_config, [6], num_images=1)
    hidden, _ = run_training_forward(tiny_vla, batch)
    batch["input_ids"][0, -1] = 5000  # the token after the last action slot
    hidden_changed, _ = run_training_forward(tiny_vla, batch)
    assert (hidden_changed - hidden)[0, 0].abs().max() > 1e-5


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_right_padding_changes_nothing_for_real_tokens(tiny_config, attn_implementation):
    torch.manual_seed(0)
    vla = OpenVLAForActionPrediction(tiny_vla_config(attn_implementation=attn_implementation)).eval()
    proprio_projector = tiny_proprio_projector(tiny_config)
    padded = tiny_training_batch(tiny_config, [4, 9], num_images=1, seed=3)  # sample 0 gets 5 pads
    alone = {key: value[:1] for key, value in padded.items()}
    real_length = int(padded["attention_mask"][0].sum())
    alone["input_ids"], alone["labels"] = alone["input_ids"][:, :real_length], alone["labels"][:, :real_length]
    alone["attention_mask"] = alone["attention_mask"][:, :real_length]
    extra = {"proprio": padded["proprio"], "proprio_projector": proprio_projector}

    hidden_padded, output_padded = run_training_forward(vla, padded, **extra)
    extra["proprio"] = padded["proprio"][:1]
    hidden_alone, output_alone = run_training_forward(vla, alone, **extra)
    num_real = output_alone.hidden_states[-1].shape[1]
    for layer_padded, layer_alone in zip(output_padded.hidden_states, output_alone.hidden_states, strict=True):
        torch.testing.assert_close(layer_padded[:1, :num_real], layer_alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden_padded[:1], hidden_alone, rtol=1e-5, atol=1e-5)

    # Whatever the pad tokens are, real tokens do not see them.
    padded["input_ids"][0, real_length:] = torch.arange(100, 100 + padded["input_ids"].shape[1] - real_length)
    hidden_repadded, _ = run_training_forward(vla, padded, **{**extra, "proprio": padded["proprio"]})
    torch.testing.assert_close(hidden_repadded, hidden_padded, rtol=0, atol=1e-6)


def test_eager_and_sdpa_agree(tiny_config):
    batch = tiny_training_batch(tiny_config, [3, 7], num_images=1, seed=4)
    hidden = {}
    for attn_implementation in ("sdpa", "eager"):
        torch.manual_seed(0)
        vla = OpenVLAForActionPrediction(tiny_vla_config(attn_implementation=attn_implementation)).eval()
        hidden[attn_implementation], _ = run_training_forward(vla, batch)
    torch.testing.assert_close(hidden["sdpa"], hidden["eager"], rtol=1e-5, atol=1e-5)


def test_training_forward_and_predict_action_see_the_same_slots(tiny_vla, tiny_config, tiny_norm_stats):
    tiny_vla.set_num_images_in_input(2)  # LIBERO's two cameras
    batch = tiny_training_batch(tiny_config, [7], seed=5)
    action_head = tiny_action_head(tiny_config).eval()
    proprio_projector = tiny_proprio_projector(tiny_config)
    extra = {"proprio": batch["proprio"], "proprio_projector": proprio_projector}
    hidden_training, _ = run_training_forward(tiny_vla, batch, **extra)

    tiny_vla.norm_stats = tiny_norm_stats
    prompt = batch["input_ids"][:, :8]  # BOS + body, without "▁": predict_action appends it
    actions, hidden_inference = tiny_vla.predict_action(
        input_ids=prompt,
        unnorm_key="libero_spatial",
        pixel_values=batch["pixel_values"],
        action_head=action_head,
        **extra,
    )
    torch.testing.assert_close(hidden_inference, hidden_training, rtol=1e-5, atol=1e-5)
    assert actions.shape == (8, 7)


def test_flash_attention_is_refused_with_a_clear_error(tiny_vla):
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2'.*bidirectional"):
        OpenVLAForActionPrediction(tiny_vla_config(attn_implementation="flash_attention_2"))
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2'"):
        tiny_vla.set_attn_implementation("flash_attention_2")
    with pytest.raises(ValueError, match="attn_implementation='flex_attention'"):
        tiny_vla.set_attn_implementation("flex_attention")
