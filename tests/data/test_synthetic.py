"""The synthetic task is learnable: its expert action can be read off the agentview image and the instruction."""

from __future__ import annotations

import draccus
import numpy as np

from prismatic.vla.datasets.synthetic import (
    AGENTVIEW_HALF_EXTENT,
    COLOURS,
    GRIPPER_COLOUR,
    SyntheticLiberoConfig,
    generate_synthetic_episodes,
)


def pixel_centre_to_world(rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    x = ((cols + 0.5) / size * 2 - 1) * AGENTVIEW_HALF_EXTENT
    y = -((rows + 0.5) / size * 2 - 1) * AGENTVIEW_HALF_EXTENT
    return np.array([x, y])


def read_planar_action(image: np.ndarray, colour: str) -> np.ndarray:
    """The planar expert action, recomputed from pixels alone: block box centre minus gripper disk centre."""
    size = image.shape[0]
    block_rows, block_cols = np.nonzero((image == COLOURS[colour]).all(-1))
    # The gripper disk can hide part of the block, never a whole edge: the bounding box is the block's.
    block = pixel_centre_to_world(
        (block_rows.min() + block_rows.max()) / 2, (block_cols.min() + block_cols.max()) / 2, size
    )
    gripper_rows, gripper_cols = np.nonzero((image == GRIPPER_COLOUR).all(-1))
    gripper = pixel_centre_to_world(gripper_rows.mean(), gripper_cols.mean(), size)
    return np.clip((block - gripper) / 0.15, -1, 1)


def test_expert_action_is_a_function_of_the_image_and_the_instruction():
    config = SyntheticLiberoConfig(num_episodes=6, episode_length=12, seed=11)
    for episode in generate_synthetic_episodes(config):
        colour = episode.language_instruction.removeprefix("move the gripper to the ").removesuffix(" block")
        distractor = next(c for c in COLOURS if c != colour and (episode.images[0] == COLOURS[c]).all(-1).any())
        for image, action in zip(episode.images, episode.actions, strict=True):
            np.testing.assert_allclose(read_planar_action(image, colour), action[:2], atol=0.08)
        # The instruction matters: read for the other block, the images give other actions.
        misread = np.stack([read_planar_action(image, distractor) for image in episode.images])
        assert np.abs(misread - episode.actions[:, :2]).max() > 0.5


def test_expert_reaches_and_grasps_the_named_block():
    config = SyntheticLiberoConfig(num_episodes=8, episode_length=40, image_size=32, seed=5)
    for episode in generate_synthetic_episodes(config):
        assert episode.actions[-1, 6] == 1.0  # closed at the end
        assert episode.actions[0, 6] == -1.0 and episode.states[-1, 2] < 0.1  # started open, ends low


def test_cli_flags_parse_into_the_config(tmp_path):
    args = ["--data_root_dir", str(tmp_path), "--dataset_name", "libero_goal_no_noops", "--num_episodes", "3"]
    config = draccus.parse(SyntheticLiberoConfig, args=args)
    assert (config.data_root_dir, config.dataset_name, config.num_episodes) == (tmp_path, "libero_goal_no_noops", 3)
    assert config.episode_length == 40 and config.image_size == 256
