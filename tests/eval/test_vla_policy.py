"""The VLA policy on a tiny checkpoint: upstream's query (images, prompt, proprio), unnorm key, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.robot.image_utils import center_crop_image, resize_image_for_policy
from experiments.robot.libero.config import GenerateConfig
from experiments.robot.vla_policy import VLAPolicy, normalize_proprio, resolve_unnorm_key
from prismatic.vla.prompt import build_prompt

INSTRUCTION = "Pick up the black bowl between the plate and the ramekin and place it on the plate"


@pytest.fixture(scope="module")
def policy(tiny_checkpoint: Path) -> VLAPolicy:
    return VLAPolicy.from_config(GenerateConfig(pretrained_checkpoint=str(tiny_checkpoint)))


@pytest.fixture(scope="module")
def observation(agentview_frame: np.ndarray, wrist_frame: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "full_image": resize_image_for_policy(agentview_frame[::-1, ::-1]),
        "wrist_image": resize_image_for_policy(wrist_frame[::-1, ::-1]),
        "state": np.array([-0.2, 0.01, 1.19, 3.14, 0.01, -0.08, 0.039, -0.039]),
    }


def test_proprio_normalisation_maps_q01_q99_to_unit_range_and_clips() -> None:
    stats = {"q01": [0.0, -1.0, 2.0], "q99": [1.0, 1.0, 2.0], "min": [-5.0] * 3, "max": [5.0] * 3}
    normalized = normalize_proprio(np.array([0.25, 3.0, 2.0]), stats, "bounds_q99")
    np.testing.assert_allclose(normalized, [-0.5, 1.0, -1.0], atol=1e-6)  # constant dims are not zeroed at eval
    bounds = normalize_proprio(np.array([0.0, 2.5, -5.0]), stats, "bounds")
    np.testing.assert_allclose(bounds, [0.0, 0.5, -1.0], atol=1e-6)
    masked = normalize_proprio(np.array([0.25, 0.5, 7.0]), {**stats, "mask": [True, True, False]}, "bounds_q99")
    np.testing.assert_allclose(masked, [-0.5, 0.5, 1.0], atol=1e-6)  # unmasked dims pass through, then clip


def test_unnorm_key_falls_back_to_no_noops_and_names_the_flag() -> None:
    stats = {"libero_spatial_no_noops": {}, "libero_goal": {}}
    assert resolve_unnorm_key(stats, "", "libero_spatial") == "libero_spatial_no_noops"
    assert resolve_unnorm_key(stats, "libero_goal", "libero_spatial") == "libero_goal"
    with pytest.raises(ValueError, match=r"--task_suite_name 'libero_10'.*available: \['libero_goal'"):
        resolve_unnorm_key(stats, "", "libero_10")
    with pytest.raises(ValueError, match=r"--unnorm_key 'bridge'"):
        resolve_unnorm_key(stats, "bridge", "libero_spatial")


def test_chunk_equals_upstreams_query(policy: VLAPolicy, observation: dict, libero_norm_stats: dict) -> None:
    """Primary then wrist image, each center-cropped and processed, stacked on channels; q01/q99 proprio."""
    loaded = policy.loaded
    prompt = build_prompt(INSTRUCTION)
    images = [Image.fromarray(center_crop_image(observation[key])) for key in ("full_image", "wrist_image")]
    inputs = [loaded.processor(prompt, image) for image in images]
    proprio_stats = libero_norm_stats["libero_spatial_no_noops"]["proprio"]
    low, high = np.array(proprio_stats["q01"]), np.array(proprio_stats["q99"])
    with torch.inference_mode():
        expected, _ = loaded.vla.predict_action(
            input_ids=inputs[0]["input_ids"],
            attention_mask=inputs[0]["attention_mask"],
            pixel_values=torch.cat([item["pixel_values"] for item in inputs], dim=1),
            unnorm_key="libero_spatial_no_noops",
            proprio=np.clip(2 * (observation["state"] - low) / (high - low + 1e-8) - 1, -1, 1),
            proprio_projector=loaded.proprio_projector,
            action_head=loaded.action_head,
        )
    chunk = policy.predict_chunk(observation, INSTRUCTION)
    assert chunk.shape == (8, 7)
    np.testing.assert_array_equal(chunk, expected)
    np.testing.assert_array_equal(policy.predict_chunk(observation, INSTRUCTION), chunk)  # deterministic


def test_center_crop_and_wrist_image_change_the_chunk(tiny_checkpoint: Path, policy: VLAPolicy, observation: dict):
    uncropped = VLAPolicy.from_config(GenerateConfig(pretrained_checkpoint=str(tiny_checkpoint), center_crop=False))
    chunk = policy.predict_chunk(observation, INSTRUCTION)
    assert np.abs(uncropped.predict_chunk(observation, INSTRUCTION) - chunk).max() > 1e-4
    dark_wrist = {**observation, "wrist_image": observation["wrist_image"] // 4}
    assert np.abs(policy.predict_chunk(dark_wrist, INSTRUCTION) - chunk).max() > 1e-4


def test_missing_wrist_image_names_num_images_in_input(policy: VLAPolicy, observation: dict) -> None:
    single = {key: value for key, value in observation.items() if key != "wrist_image"}
    with pytest.raises(ValueError, match=r"--num_images_in_input 2, but the observation has 1 image"):
        policy.predict_chunk(single, INSTRUCTION)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pretrained_checkpoint": ""}, "--pretrained_checkpoint is required"),
        ({"load_in_4bit": True}, "--load_in_8bit/--load_in_4bit"),
        ({"unnorm_key": "bridge_orig"}, "--unnorm_key 'bridge_orig'"),
    ],
)
def test_bad_policy_flags_raise(tiny_checkpoint: Path, overrides: dict, message: str) -> None:
    cfg = GenerateConfig(**{"pretrained_checkpoint": str(tiny_checkpoint), **overrides})
    with pytest.raises(ValueError, match=message):
        VLAPolicy.from_config(cfg)


def test_malformed_image_names_its_observation_key(policy: VLAPolicy, observation: dict) -> None:
    malformed = {**observation, "wrist_image": observation["wrist_image"].astype(np.float32)}
    with pytest.raises(ValueError, match=r"observation\['wrist_image'\]: expected a uint8 numpy array"):
        policy.predict_chunk(malformed, INSTRUCTION)
