"""pi0 through the policy floor: the registered family, a tiny pi0 checkpoint answering the evaluation's queries
(batched = one by one), served to openpi's real client (``openpi_client_probe.py`` in openpi-client's own venv)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from experiments.robot.libero.config import GenerateConfig
from experiments.robot.policy_factory import load_policy
from experiments.robot.serving.config import ServeConfig, build_server
from experiments.robot.serving.server import server_in_thread
from prismatic.models.family import ModelFamily
from prismatic.models.pi0.processing_pi0 import observation_from_batch
from prismatic.policy.families import family_class
from prismatic.policy.pi0_policy import Pi0Policy

from .test_serving import API_KEY, INSTRUCTION, in_process_actions, openpi_client_probe


@pytest.fixture(scope="module")
def pi0_policy(tiny_pi0_checkpoint: Path) -> Pi0Policy:
    policy = load_policy(GenerateConfig(model_family="pi0", pretrained_checkpoint=str(tiny_pi0_checkpoint)))
    assert isinstance(policy, Pi0Policy)
    return policy


def test_batched_prediction_equals_one_by_one(pi0_policy: Pi0Policy, request_payload: dict) -> None:
    base = {
        "full_image": request_payload["observation/image"],
        "wrist_image": request_payload["observation/wrist_image"],
    }
    queries = [
        ({**base, "state": request_payload["observation/state"]}, INSTRUCTION),
        ({**base, "state": np.zeros(8)}, "open the drawer"),
    ]
    expected = [pi0_policy.predict_chunk(observation, instruction) for observation, instruction in queries]
    batched = pi0_policy.predict_prepared([pi0_policy.preprocess(*query) for query in queries])
    for chunk, reference in zip(batched, expected, strict=True):
        assert chunk.shape == (8, 7) and np.isfinite(chunk).all()
        np.testing.assert_allclose(chunk, reference, rtol=1e-5, atol=1e-5)
    assert not np.allclose(batched[0], batched[1])  # the state and prompt reach each query


@pytest.mark.slow
def test_openpi_client_gets_pi0_actions(
    pi0_policy: Pi0Policy, tiny_pi0_checkpoint: Path, request_payload: dict, tmp_path: Path
) -> None:
    config = ServeConfig(pretrained_checkpoint=str(tiny_pi0_checkpoint), port=0, api_key=API_KEY)
    with server_in_thread(build_server(config)) as port:
        seen = openpi_client_probe(port, request_payload, tmp_path)
    metadata = seen["metadata"]
    assert (metadata["model_family"], metadata["action_head"]) == ("pi0", "flow_matching")
    assert (metadata["action_dim"], metadata["num_actions_chunk"], metadata["proprio_dim"]) == (7, 8, 8)
    np.testing.assert_allclose(np.array(seen["actions"]), in_process_actions(pi0_policy, request_payload), atol=1e-6)
    assert set(np.array(seen["actions"])[:, -1]) <= {-1.0, 1.0}  # LIBERO's gripper command
    np.testing.assert_array_equal(np.array(seen["actions_again"]), np.array(seen["actions"]))


def test_pi0_is_a_registered_model_family(pi0_policy: Pi0Policy, tiny_pi0_checkpoint: Path, request_payload: dict):
    assert isinstance(pi0_policy, ModelFamily) and family_class("pi0") is Pi0Policy
    tap = pi0_policy.visual_token_tap(1)
    assert (tap.layer, tap.start, tap.count) == (1, 0, 3 * 16)  # 3 cameras x (56 / 14)^2 tokens, no BOS before them
    built = Pi0Policy.build(pi0_policy.policy_config, tiny_pi0_checkpoint, device=torch.device("cpu"), dtype=None)
    frames = [request_payload["observation/image"], request_payload["observation/wrist_image"]]
    sample = built.processor(frames, INSTRUCTION, np.zeros(8))
    batch = default_collate([{**sample, "actions": torch.zeros(8, 32)}])
    torch.manual_seed(0)
    output = built.training_loss(batch, output_hidden_states=True)
    torch.manual_seed(0)
    reference = built.model(observation_from_batch(batch), batch["actions"]).loss
    assert output.loss.item() == reference.item() and output.logged["action_loss"].item() == reference.item()
    assert len(output.hidden_states) == 3  # entering each of the 2 layers, then the final norm
    assert output.hidden_states[tap.layer][:, tap.start : tap.start + tap.count].shape == (1, 48, 32)
