"""``--model_family svla``: the SpatialVLA policy on the tiny golden checkpoint, the per-episode action selection
(ensembling modes), the gripper post-processing and the flags."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.robot.action_ensembling import EpisodeActionSelector, TemporalEnsembler
from experiments.robot.libero.config import GenerateConfig, validate_config
from experiments.robot.policy_factory import load_policy
from experiments.robot.robot_utils import postprocess_actions
from prismatic.policy.spatialvla_policy import SpatialVLAPolicy, svla_prompt
from prismatic.testing.spatialvla_tiny import save_tiny_spatialvla_checkpoint
from prismatic.vla.image_utils import center_crop_image, resize_image_for_policy

INSTRUCTION = "Pick up the black bowl between the plate and the ramekin and place it on the plate"


@pytest.fixture(scope="module")
def svla_checkpoint(tmp_path_factory: pytest.TempPathFactory, golden_dir: Path) -> Path:
    golden_meta = json.loads((golden_dir / "spatialvla_tiny.json").read_text())
    return save_tiny_spatialvla_checkpoint(tmp_path_factory.mktemp("checkpoints") / "tiny-spatialvla", golden_meta)


@pytest.fixture(scope="module")
def policy(svla_checkpoint: Path) -> SpatialVLAPolicy:
    cfg = GenerateConfig(model_family="svla", pretrained_checkpoint=str(svla_checkpoint), unnorm_key="droid/1.0.0")
    return load_policy(cfg)


@pytest.fixture(scope="module")
def observation(agentview_frame: np.ndarray) -> dict[str, np.ndarray]:
    return {"full_image": resize_image_for_policy(agentview_frame[::-1, ::-1]), "state": np.zeros(8)}


# --- Ensembling: hand-computed ----------------------------------------------------------------------------------
def chunk(*first_values: float) -> np.ndarray:
    """A [len, 2] chunk whose step k is (v_k, 1)."""
    return np.array([[value, 1.0] for value in first_values])


def test_fork_smoothing_averages_the_first_actions_of_recent_queries_newest_heaviest():
    ensembler = TemporalEnsembler("fork")
    np.testing.assert_allclose(ensembler(chunk(1.0, 9.0)), [1.0, 1.0])
    weights = np.array([1.0, math.exp(0.8)]) / (1 + math.exp(0.8))
    np.testing.assert_allclose(ensembler(chunk(3.0, 9.0)), [weights @ [1.0, 3.0], 1.0])
    # the history holds len(chunk) = 2 queries: the first (1.0) drops out
    np.testing.assert_allclose(ensembler(chunk(5.0, 9.0)), [weights @ [3.0, 5.0], 1.0])


def test_simpler_ensembling_takes_each_chunks_prediction_for_the_current_step():
    ensembler = TemporalEnsembler("simpler")
    ensembler(chunk(1.0, 2.0))
    weights = np.array([1.0, math.exp(0.8)]) / (1 + math.exp(0.8))
    # now: the older chunk's step 1 (2.0) and the newer chunk's step 0 (10.0)
    np.testing.assert_allclose(ensembler(chunk(10.0, 20.0)), [weights @ [2.0, 10.0], 1.0])


def test_adaptive_ensembling_weights_by_cosine_similarity_to_the_newest_prediction():
    ensembler = TemporalEnsembler("adaptive")
    ensembler(np.array([[1.0, 0.0], [0.0, 1.0]]))
    # predictions now: (0, 1) from the older chunk, (1, 0) from the newer: cosines 0 and 1
    weights = np.array([1.0, math.exp(0.1)]) / (1 + math.exp(0.1))
    np.testing.assert_allclose(ensembler(np.array([[1.0, 0.0], [5.0, 5.0]])), weights @ [[0.0, 1.0], [1.0, 0.0]])


def test_each_episode_starts_with_empty_smoothing_state():
    first_episode = EpisodeActionSelector("fork", num_open_loop_steps=1)
    first_episode(chunk(100.0, 0.0))
    second_episode = EpisodeActionSelector("fork", num_open_loop_steps=1)
    np.testing.assert_allclose(second_episode(chunk(1.0, 0.0)), [[1.0, 1.0]])  # nothing of the 100 leaks in


def test_without_ensembling_the_first_open_loop_actions_are_queued():
    selector = EpisodeActionSelector("none", num_open_loop_steps=8)
    np.testing.assert_array_equal(selector(chunk(1.0, 2.0, 3.0, 4.0)), chunk(1.0, 2.0, 3.0, 4.0))
    np.testing.assert_array_equal(EpisodeActionSelector("none", 1)(chunk(1.0, 2.0)), chunk(1.0))


def test_svla_gripper_is_binarised_then_inverted_to_libero_convention():
    actions = np.array([[0.1] * 6 + [0.8], [0.1] * 6 + [0.2], [0.1] * 6 + [0.5]])
    processed = np.stack([postprocess_actions(action, SpatialVLAPolicy.gripper) for action in actions])
    assert processed[:, -1].tolist() == [-1.0, 1.0, -0.0]  # 1 = open -> -1; exactly 0.5 -> sign(0) = 0
    np.testing.assert_array_equal(processed[:, :6], actions[:, :6])


# --- Flags ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"action_ensembling": "fork"}, "--num_open_loop_steps 1"),
        ({"action_ensembling": "temporal", "num_open_loop_steps": 1}, "--action_ensembling"),
        ({"svla_prompt": "question"}, "--svla_prompt"),
        ({"model_family": "octo"}, "--model_family"),
    ],
)
def test_invalid_svla_settings_raise_naming_the_flag(overrides: dict, flag: str):
    with pytest.raises(ValueError, match=flag):
        validate_config(GenerateConfig(**{"model_family": "svla", **overrides}))


def test_prompt_formats():
    assert svla_prompt(INSTRUCTION, "instruction") == INSTRUCTION.lower()
    assert (
        svla_prompt(INSTRUCTION, "openvla") == f"In: What action should the robot take to {INSTRUCTION.lower()}?\nOut:"
    )


# --- The policy -----------------------------------------------------------------------------------------------
def test_policy_loads_through_the_factory_in_float32_on_cpu(policy: SpatialVLAPolicy):
    assert isinstance(policy, SpatialVLAPolicy)
    assert policy.model.dtype == torch.float32 and policy.unnorm_key == "droid/1.0.0"
    assert policy.max_new_tokens == 12  # 4 actions x 3 tokens


def test_chunk_equals_processor_model_and_decoder(policy: SpatialVLAPolicy, observation: dict):
    image = Image.fromarray(center_crop_image(observation["full_image"]))
    inputs = policy.processor(image, INSTRUCTION.lower(), unnorm_key="droid/1.0.0")
    generated = policy.model.generate_action_ids(**inputs, max_new_tokens=12)
    expected = policy.processor.decode_actions(generated, "droid/1.0.0")["actions"]
    actions = policy.predict_chunk(observation, INSTRUCTION)
    assert actions.shape == (4, 7) and actions.dtype == np.float64
    np.testing.assert_array_equal(actions, expected)
    np.testing.assert_array_equal(policy.predict_chunk(observation, INSTRUCTION), actions)  # deterministic
    assert set(np.unique(actions[:, -1])) <= {0.0, 1.0}


def test_unknown_statistics_key_names_the_flag_and_the_file(svla_checkpoint: Path):
    cfg = GenerateConfig(model_family="svla", pretrained_checkpoint=str(svla_checkpoint))
    with pytest.raises(ValueError, match=r"--task_suite_name 'libero_spatial'.*processor_config.json statistics"):
        load_policy(cfg)
