"""Fixtures of the data tests: a small synthetic LIBERO dataset (with the arrays it was written from), the tiny
tokenizer and openvla-7b's image processor."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from prismatic.vla.datasets.synthetic import SyntheticLiberoConfig, generate_synthetic_episodes
from prismatic.vla.datasets.writer import LiberoEpisode, write_libero_rlds

DATASET_NAME = "libero_spatial_no_noops"
NUM_EPISODES = 20
EPISODE_LENGTH = 14
IMAGE_SIZE = 64  # small stored images keep the tests fast; the pipeline still resizes them to 224


@dataclass
class WrittenDataset:
    data_root_dir: Path
    builder_dir: Path
    episodes: list[LiberoEpisode]

    def episode_by_path(self, file_path: str) -> LiberoEpisode:
        return next(episode for episode in self.episodes if episode.file_path == file_path)

    def standardized_actions(self) -> list[np.ndarray]:
        """Actions with LIBERO's gripper convention applied (1 - clip(a, 0, 1)), per episode."""
        return [
            np.concatenate([e.actions[:, :6], 1.0 - np.clip(e.actions[:, 6:], 0.0, 1.0)], axis=1) for e in self.episodes
        ]


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> WrittenDataset:
    config = SyntheticLiberoConfig(
        data_root_dir=tmp_path_factory.mktemp("rlds"),
        dataset_name=DATASET_NAME,
        num_episodes=NUM_EPISODES,
        episode_length=EPISODE_LENGTH,
        image_size=IMAGE_SIZE,
        seed=3,
    )
    episodes = list(generate_synthetic_episodes(config))
    builder_dir = write_libero_rlds(episodes, config.data_root_dir, DATASET_NAME, image_size=IMAGE_SIZE)
    return WrittenDataset(config.data_root_dir, builder_dir, episodes)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from prismatic.testing.tokenizer import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def image_processor():
    from prismatic.models.presets import openvla_7b_config
    from prismatic.models.processing_prismatic import PrismaticImageProcessor

    return PrismaticImageProcessor.from_vla_config(openvla_7b_config())


@pytest.fixture(scope="session")
def expected_statistics(synthetic_dataset: WrittenDataset) -> dict:
    """The reference: numpy over the written arrays, float64, population std, linearly interpolated quantiles."""
    actions = np.concatenate(synthetic_dataset.standardized_actions()).astype(np.float64)
    proprios = np.concatenate(
        [np.concatenate([e.states[:, :6], e.states[:, -2:]], axis=1) for e in synthetic_dataset.episodes]
    ).astype(np.float64)

    def stats(values: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "mean": values.mean(0),
            "std": np.sqrt(((values - values.mean(0)) ** 2).mean(0)),
            "max": values.max(0),
            "min": values.min(0),
            "q01": np.percentile(values, 1, axis=0, method="linear"),
            "q99": np.percentile(values, 99, axis=0, method="linear"),
        }

    action_stats = stats(actions)
    action_stats["mask"] = np.array([True] * 6 + [False])
    return {
        "action": action_stats,
        "proprio": stats(proprios),
        "num_transitions": NUM_EPISODES * EPISODE_LENGTH,
        "num_trajectories": NUM_EPISODES,
    }


def assert_statistics_equal(actual: dict, expected: dict) -> None:
    assert actual["num_transitions"] == expected["num_transitions"]
    assert actual["num_trajectories"] == expected["num_trajectories"]
    assert set(actual["action"]) == set(expected["action"]) and set(actual["proprio"]) == set(expected["proprio"])
    for group in ("action", "proprio"):
        for key, value in expected[group].items():
            np.testing.assert_allclose(np.asarray(actual[group][key]), value, rtol=1e-12, atol=1e-12, err_msg=key)


@pytest.fixture(scope="session")
def check_statistics():
    """``assert_statistics_equal`` for tests (helpers of a conftest are not importable under importlib mode)."""
    return assert_statistics_equal
