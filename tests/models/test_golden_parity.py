"""Parity with the official OpenVLA-OFT code on the ``openvla_tiny_llm`` golden fixtures (tests/golden/README.md).

Full-size DINOv2 + SigLIP towers, the fused projector, the proprio token and a 2-layer Llama, all with weight rule
sf-golden-v1; tolerances are the README's recommended ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from prismatic.models import L1RegressionActionHead, OpenVLAForActionPrediction, ProprioProjector
from prismatic.models.action_masks import (
    gather_action_hidden_states,
    get_actions_mask,
    get_current_action_mask,
    get_next_actions_mask,
)
from prismatic.testing.golden import apply_golden_weights, assert_max_abs
from prismatic.testing.tiny_vla import (
    build_with_golden_weights,
    golden_vla_config,
    tiny_action_head,
    tiny_proprio_projector,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def golden(golden_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(golden_dir / "openvla_tiny_llm.safetensors")


@pytest.fixture(scope="module")
def golden_meta(golden_dir: Path) -> dict:
    return json.loads((golden_dir / "openvla_tiny_llm.json").read_text())


@pytest.fixture(scope="module")
def golden_policy() -> tuple[OpenVLAForActionPrediction, L1RegressionActionHead, ProprioProjector]:
    config = golden_vla_config()
    vla = build_with_golden_weights(config)
    vla.set_num_images_in_input(2)
    action_head = apply_golden_weights(tiny_action_head(config)).eval()
    proprio_projector = apply_golden_weights(tiny_proprio_projector(config)).eval()
    return vla, action_head, proprio_projector


@pytest.fixture(scope="module")
def training_forward(golden_policy, golden):
    """The training forward exactly as finetune.py calls it, plus the vision backbone's output."""
    vla, _, proprio_projector = golden_policy
    captured = {}
    hook = vla.vision_backbone.register_forward_hook(lambda module, args, output: captured.update(features=output))
    with torch.no_grad():
        output = vla(
            input_ids=golden["input_ids"],
            attention_mask=golden["attention_mask"].bool(),
            pixel_values=golden["pixel_values"],
            labels=golden["labels"],
            output_hidden_states=True,
            proprio=golden["proprio"],
            proprio_projector=proprio_projector,
        )
    hook.remove()
    return output, captured["features"]


def test_model_matches_golden_config_and_weight_rule(golden_policy, golden_meta):
    vla, action_head, proprio_projector = golden_policy
    modules = {"vla": vla, "action_head": action_head, "proprio_projector": proprio_projector}
    rule = golden_meta["weight_rule"]
    for name, module in modules.items():
        assert len(module.state_dict()) == rule["n_keys"][name], name
        assert sum(p.numel() for p in module.parameters()) == rule["n_params"][name], name
    for check in rule["checks"]:
        value = modules[check["module"]].state_dict()[check["key"]]
        assert list(value.shape) == check["shape"]
        np.testing.assert_allclose(value.flatten()[:4].numpy(), check["first4"], rtol=0, atol=1e-7)
        assert value.double().sum().item() == pytest.approx(check["sum_f64"], rel=1e-6, abs=1e-4)
    text_config = golden_meta["config"]["openvla_config"]["text_config"]
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "rms_norm_eps"):
        assert getattr(vla.config.text_config, field) == text_config[field], field


def test_training_forward_matches_golden(training_forward, golden, golden_meta):
    output, vision_features = training_forward
    token_indices = torch.tensor(golden_meta["vision_sub_token_indices"])
    assert_max_abs(vision_features[:, token_indices], golden["train_vision_patch_features_sub"], 2e-3, "vision")
    assert_max_abs(output.projector_features, golden["train_projector_features"], 3e-3, "projector_features")
    assert len(output.hidden_states) == 3
    assert_max_abs(output.hidden_states[0], golden["train_hidden_states_0"], 3e-3, "hidden_states[0]")
    assert_max_abs(output.hidden_states[1], golden["train_hidden_states_1"], 3e-3, "hidden_states[1]")
    assert_max_abs(output.hidden_states[2], golden["train_hidden_states_2"], 5e-5, "hidden_states[2]")
    assert_max_abs(output.logits[:, -64:], golden["train_logits_last64"], 2e-5, "logits")
    assert_max_abs(output.loss, golden["train_lm_loss"], 1e-5, "lm loss")


def test_action_hidden_states_and_l1_losses_match_golden(training_forward, golden_policy, golden):
    output, _ = training_forward
    _, action_head, _ = golden_policy
    labels = golden["labels"]
    num_prefix_tokens = output.projector_features.shape[1]
    assert num_prefix_tokens == 513
    actions_hidden_states = gather_action_hidden_states(output.hidden_states[-1], labels, num_prefix_tokens)
    assert_max_abs(actions_hidden_states, golden["train_actions_hidden_states"], 5e-5, "action hidden states")
    # The selected positions are the ones just before each action token.
    positions = num_prefix_tokens + torch.nonzero(get_actions_mask(labels[0, 1:])).squeeze(1)
    assert torch.equal(positions, golden["train_action_positions"][0])
    actions_mask = get_actions_mask(labels)
    assert torch.equal(actions_mask, golden["train_action_token_mask"].bool())
    current, future = get_current_action_mask(labels, action_dim=7), get_next_actions_mask(labels, action_dim=7)
    assert (current.sum().item(), future.sum().item()) == (7, 49)
    assert torch.equal(current | future, actions_mask) and not (current & future).any()

    predicted = action_head.predict_action(actions_hidden_states)
    assert_max_abs(predicted, golden["train_predicted_actions"], 2e-5, "predicted actions")
    ground_truth = golden["gt_actions"]
    l1 = torch.nn.functional.l1_loss
    assert_max_abs(l1(predicted, ground_truth), golden["train_l1_loss"], 1e-5, "L1")
    assert_max_abs(l1(predicted[:, 0], ground_truth[:, 0]), golden["train_curr_action_l1_loss"], 1e-5, "current L1")
    assert_max_abs(l1(predicted[:, 1:], ground_truth[:, 1:]), golden["train_next_actions_l1_loss"], 1e-5, "next L1")


def test_predict_action_with_l1_head_matches_golden(golden_policy, golden, golden_meta):
    vla, action_head, proprio_projector = golden_policy
    vla.norm_stats = golden_meta["norm_stats"]
    prompt = golden["infer_prompt_ids_0"]
    actions, actions_hidden_states = vla.predict_action(
        input_ids=prompt,
        unnorm_key=golden_meta["unnorm_key"],
        proprio=golden["proprio"].double().numpy(),
        proprio_projector=proprio_projector,
        action_head=action_head,
        pixel_values=golden["pixel_values"],
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
    )
    assert actions.shape == (8, 7) and actions.dtype == np.float64
    assert_max_abs(actions_hidden_states, golden["infer_actions_hidden_states"], 5e-5, "action hidden states")
    assert_max_abs(torch.from_numpy(actions)[None], golden["infer_actions_f64"], 2e-5, "actions")
    # The gripper dimension is not un-normalised (mask false): it equals the head's output.
    assert_max_abs(torch.from_numpy(actions[:, 6]), golden["infer_normalized_actions"][0, :, 6], 2e-5, "gripper")


class _RecordedVisionBackbone(torch.nn.Module):
    """Stands in for the (already verified) vision backbone with its recorded output, to spare a full-size pass."""

    def __init__(self, backbone: torch.nn.Module, pixel_values: torch.Tensor, features: torch.Tensor) -> None:
        super().__init__()
        self.backbone, self.pixel_values, self.features = backbone, pixel_values, features

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        assert torch.equal(pixel_values, self.pixel_values)
        return self.features


def test_predict_action_from_action_tokens_matches_golden(golden_policy, training_forward, golden, golden_meta):
    vla, _, proprio_projector = golden_policy
    vla.norm_stats = golden_meta["norm_stats"]
    prompt = golden["infer_prompt_ids_0"]
    backbone = vla.vision_backbone
    vla.vision_backbone = _RecordedVisionBackbone(backbone, golden["pixel_values"], training_forward[1])
    try:
        actions, _ = vla.predict_action(
            input_ids=prompt,
            unnorm_key=golden_meta["unnorm_key"],
            proprio=golden["proprio"].double().numpy(),
            proprio_projector=proprio_projector,
            pixel_values=golden["pixel_values"],
            attention_mask=torch.ones_like(prompt),
        )
    finally:
        vla.vision_backbone = backbone
    assert_max_abs(torch.from_numpy(actions), golden["infer_discrete_actions"], 1e-6, "discrete actions")
