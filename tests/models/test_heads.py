"""Action heads, the DDIM sampler, the diffusion and FiLM paths, and a few training steps whose loss falls."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prismatic.models import DiffusionActionHead, L1RegressionActionHead, NoisyActionProjector
from prismatic.models.action_heads import SinusoidalPositionalEncoding
from prismatic.models.action_masks import gather_action_hidden_states
from prismatic.models.diffusion import DDIMScheduler
from prismatic.testing.tiny_vla import tiny_action_head, tiny_proprio_projector, tiny_training_batch
from prismatic.vla.normalization import unnormalize


def test_l1_head_reads_each_chunk_step_from_its_own_slots():
    torch.manual_seed(0)
    head = L1RegressionActionHead(input_dim=16, hidden_dim=32, action_dim=3, num_actions_chunk=4).eval()
    hidden = torch.randn(2, 12, 16)  # 4 steps x 3 slots
    changed = hidden.clone()
    changed[:, 7] += 1.0  # slot 7 belongs to step 2 (slots 6, 7, 8)
    actions, actions_changed = head.predict_action(hidden), head.predict_action(changed)
    assert actions.shape == (2, 4, 3)
    moved = (actions_changed - actions).abs().amax(dim=(0, 2))
    assert moved[2] > 0 and torch.equal(moved[[0, 1, 3]], torch.zeros(3))


def test_heads_reject_slot_counts_that_do_not_fill_the_chunk():
    head = L1RegressionActionHead(input_dim=8, hidden_dim=8, action_dim=7, num_actions_chunk=8)
    with pytest.raises(ValueError, match="not a multiple of num_actions_chunk=8"):
        head.predict_action(torch.zeros(1, 50, 8))


def test_sinusoidal_encoding_values():
    encoding = SinusoidalPositionalEncoding(dim=8)(torch.tensor([0.0, 2.0]))
    frequencies = torch.exp(torch.arange(4) * -math.log(10000) / 3)
    torch.testing.assert_close(encoding[0], torch.cat([torch.zeros(4), torch.ones(4)]))
    torch.testing.assert_close(encoding[1], torch.cat([(2 * frequencies).sin(), (2 * frequencies).cos()]))


def test_ddim_schedule_and_timesteps_follow_diffusers_defaults():
    scheduler = DDIMScheduler(num_train_timesteps=50)
    assert scheduler.timesteps.tolist() == list(range(49, -1, -1))
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == [45, 40, 35, 30, 25, 20, 15, 10, 5, 0]  # "leading" spacing
    alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    expected = np.cumprod([1 - min(1 - alpha_bar((i + 1) / 50) / alpha_bar(i / 50), 0.999) for i in range(50)])
    np.testing.assert_allclose(scheduler.alphas_cumprod.numpy(), expected, rtol=1e-5, atol=1e-9)  # float32 cumprod
    with pytest.raises(ValueError, match="num_inference_steps=60"):
        scheduler.set_timesteps(60)


@pytest.mark.parametrize("num_inference_steps", [50, 10])
def test_ddim_with_the_true_noise_recovers_the_clean_actions(num_inference_steps):
    scheduler = DDIMScheduler(num_train_timesteps=50)
    scheduler.set_timesteps(num_inference_steps)
    generator = torch.Generator().manual_seed(0)
    # float64: at t = 49 the clean-sample estimate divides by sqrt(alpha_bar) ~ 1e-3, amplifying float32 rounding.
    clean = torch.rand((2, 8, 7), generator=generator, dtype=torch.float64) * 1.8 - 0.9
    noise = torch.randn((2, 8, 7), generator=generator, dtype=torch.float64)
    start = int(scheduler.timesteps[0])
    sample = scheduler.add_noise(clean, noise, torch.full((2,), start))
    for timestep in scheduler.timesteps:
        sample = scheduler.step(noise, timestep, sample)  # a perfect noise predictor
    torch.testing.assert_close(sample, clean, rtol=0, atol=1e-9)


def test_unnormalize_actions_uses_bounds_and_skips_masked_dimensions():
    stats = {"q01": [-2.0, 0.0], "q99": [2.0, 1.0], "min": [-4.0, -1.0], "max": [4.0, 3.0], "mask": [True, False]}
    normalized = np.array([[0.5, 0.5], [-1.0, 1.0]])
    q99 = unnormalize(normalized, stats, "bounds_q99")
    np.testing.assert_allclose(q99, [[1.0, 0.5], [-2.0, 1.0]], atol=1e-7)
    bounds = unnormalize(normalized, stats, "bounds")
    np.testing.assert_allclose(bounds, [[2.0, 0.5], [-4.0, 1.0]], atol=1e-7)
    with pytest.raises(ValueError, match="'normal'"):
        unnormalize(normalized, stats, "normal")


def test_predict_action_with_diffusion_head(tiny_vla, tiny_config, tiny_norm_stats):
    llm_dim = tiny_config.text_config.hidden_size
    torch.manual_seed(0)
    head = DiffusionActionHead(llm_dim, llm_dim, num_diffusion_steps_train=50, num_diffusion_steps_inference=4).eval()
    projector = NoisyActionProjector(llm_dim).eval()
    tiny_vla.norm_stats = tiny_norm_stats
    batch = tiny_training_batch(tiny_config, [6], num_images=1)
    inputs = {"input_ids": batch["input_ids"][:, :7], "pixel_values": batch["pixel_values"], "action_head": head}
    torch.manual_seed(3)
    actions, hidden = tiny_vla.predict_action(**inputs, noisy_action_projector=projector)
    torch.manual_seed(3)
    actions_again, _ = tiny_vla.predict_action(**inputs, noisy_action_projector=projector)
    assert actions.shape == (8, 7) and hidden.shape == (1, 56, llm_dim)
    np.testing.assert_array_equal(actions, actions_again)
    # Un-normalised q01..q99 bounds hold, since DDIM clips its clean-sample estimate to [-1, 1].
    stats = tiny_norm_stats["libero_spatial_no_noops"]["action"]
    assert np.all(actions[:, :6] >= np.array(stats["q01"][:6]) - 1e-6)
    assert np.all(actions[:, :6] <= np.array(stats["q99"][:6]) + 1e-6)
    with pytest.raises(ValueError, match="noisy_action_projector"):
        tiny_vla.predict_action(**inputs)


def test_diffusion_training_inputs(tiny_vla, tiny_config):
    """finetune.py's diffusion step: noisy actions replace the slot embeddings, the timestep is one more token."""
    llm_dim = tiny_config.text_config.hidden_size
    head = DiffusionActionHead(llm_dim, llm_dim)
    batch = tiny_training_batch(tiny_config, [4, 6], num_images=1)
    diffusion = head.sample_noisy_actions(batch["actions"])
    assert diffusion["noisy_actions"].shape == (2, 8, 7)
    assert diffusion["diffusion_timestep_embeddings"].shape == (2, 1, llm_dim)
    with torch.no_grad():
        output = tiny_vla(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            labels=batch["labels"],
            output_hidden_states=True,
            noisy_actions=diffusion["noisy_actions"],
            noisy_action_projector=NoisyActionProjector(llm_dim),
            diffusion_timestep_embeddings=diffusion["diffusion_timestep_embeddings"],
        )
    assert output.projector_features.shape == (2, 257, llm_dim)
    hidden = gather_action_hidden_states(output.hidden_states[-1], batch["labels"], 257)
    assert head.predict_noise(hidden).shape == (2, 8, 7)
    slot_inputs = output.hidden_states[0][:, 258:][batch["labels"][:, 1:] > 31743]  # text token k+1 at 258 + k
    assert bool((slot_inputs.abs().sum(dim=-1) > 0).all())  # no longer zero


def test_each_head_owns_its_training_inputs_and_loss():
    """The trainer calls ``training_inputs`` and ``loss`` of whichever head it has: L1 on the actions (and the
    current/next-step parts), MSE on the noise the diffusion head added."""
    torch.manual_seed(0)
    actions = torch.rand(2, 8, 7)
    predicted = actions + torch.tensor([0.5] + [0.25] * 7)[None, :, None]  # step 0 off by 0.5, later steps by 0.25
    l1_head = L1RegressionActionHead(16, 16)
    l1_inputs = l1_head.training_inputs(actions)
    assert list(l1_inputs) == ["target"] and l1_inputs["target"] is actions
    losses = l1_head.loss(predicted, l1_inputs["target"])
    assert math.isclose(losses["action_loss"].item(), (0.5 + 7 * 0.25) / 8, rel_tol=1e-5)
    assert math.isclose(losses["curr_action_l1_loss"].item(), 0.5, rel_tol=1e-5)
    assert math.isclose(losses["next_actions_l1_loss"].item(), 0.25, rel_tol=1e-5)
    diffusion_head = DiffusionActionHead(16, 16)
    inputs = diffusion_head.training_inputs(actions)
    assert sorted(inputs) == ["diffusion_timestep_embeddings", "noisy_actions", "target"]
    assert inputs["target"].shape == actions.shape and not torch.equal(inputs["noisy_actions"], actions)
    assert list(diffusion_head.loss(inputs["target"] + 0.5, inputs["target"])) == ["action_loss"]
    assert math.isclose(diffusion_head.loss(inputs["target"] + 0.5, inputs["target"])["action_loss"].item(), 0.25)


def test_film_conditions_vision_on_the_prompt(tiny_vla, tiny_config):
    batch = tiny_training_batch(tiny_config, [6], num_images=1)
    with torch.no_grad():
        plain = tiny_vla(**{key: batch[key] for key in ("input_ids", "pixel_values", "labels")}).projector_features
    with pytest.raises(ValueError, match="enable_film"):
        tiny_vla(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], use_film=True)
    tiny_vla.enable_film()
    film_blocks = [m for m in tiny_vla.modules() if type(m).__name__ == "FiLMedVisionTransformerBlock"]
    assert len(film_blocks) == 4  # 2 blocks x 2 towers
    for block in film_blocks:  # gamma = beta = 0: FiLM is the identity
        for layer in (block.scale, block.shift):
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)

    def film_features(input_ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return tiny_vla(
                input_ids=input_ids, pixel_values=batch["pixel_values"], labels=batch["labels"], use_film=True
            ).projector_features

    torch.testing.assert_close(film_features(batch["input_ids"]), plain, rtol=0, atol=1e-6)
    torch.manual_seed(0)
    for block in film_blocks:
        torch.nn.init.normal_(block.scale.weight, std=0.5)
    other_prompt = batch["input_ids"].clone()
    other_prompt[0, 2:5] = torch.tensor([300, 400, 500])
    assert (film_features(other_prompt) - film_features(batch["input_ids"])).abs().max() > 1e-4


def test_a_few_training_steps_reduce_the_l1_loss(tiny_config):
    """End to end: gradients flow from the L1 loss through head, LLM, projector, proprio token and towers."""
    from prismatic.models import OpenVLAForActionPrediction

    torch.manual_seed(0)
    vla = OpenVLAForActionPrediction(tiny_config).train()
    head, proprio_projector = tiny_action_head(tiny_config), tiny_proprio_projector(tiny_config)
    batch = tiny_training_batch(tiny_config, [4, 7], num_images=1, seed=11)
    target = batch["proprio"][:, None, :7].expand(-1, tiny_config.num_actions_chunk, -1)  # learnable from the input
    parameters = [*vla.parameters(), *head.parameters(), *proprio_projector.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=3e-4)
    losses = []
    for _ in range(8):
        output = vla(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            labels=batch["labels"],
            output_hidden_states=True,
            proprio=batch["proprio"],
            proprio_projector=proprio_projector,
        )
        hidden = gather_action_hidden_states(output.hidden_states[-1], batch["labels"], 257)
        loss = torch.nn.functional.l1_loss(head.predict_action(hidden), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert min(losses[-2:]) < 0.8 * losses[0], losses
    assert vla.vision_backbone.featurizer.patch_embed.proj.weight.grad.abs().sum() > 0
    assert proprio_projector.fc1.weight.grad.abs().sum() > 0
