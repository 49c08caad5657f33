"""A policy that needs no training, for the closed-loop regression check (tests/eval/test_closed_loop_regression.py,
scripts/closed_loop_regression.py): nearest-neighbour look-up over the training frames of an RLDS dataset.

It runs the real chain around a look-up instead of a network:

    ``build_policy_files`` (TensorFlow; a process that never renders): the dataset through ``RLDSDataset`` +
    ``RLDSBatchTransform`` (its statistics, normalised action chunks and proprio, processed images) -> the policy's
    files (``POLICY_FILES``): ``nearest_neighbours.npz`` (every training frame's pooled image features, proprio and
    action chunk), those statistics and the ``policy_config.json`` of the data's embodiment. Small enough to commit;
    ``complete_checkpoint`` adds a randomly initialised tiny VLA (processor, weights) to make a checkpoint folder.
    ``run_episodes`` (no TensorFlow): ``NearestNeighbourPolicy.from_checkpoint`` -> the evaluation's observation
    preparation, image preprocessing and state normalisation (``VLAPolicy.preprocess``) -> the nearest frame's chunk,
    un-normalised by the model's ``_unnormalize_actions`` -> ``run_episode`` (gripper post-processing) -> LIBERO,
    on the benchmark's held-out initial states.

``BREAKAGES`` each break one link of the chain as a bug would (the gripper, the image orientation, the action
normalisation, the chunk order, the camera order); the regression check must fail with each.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prismatic.policy.policy import PreparedQuery, VLAPolicy
from prismatic.testing.tiny_vla import save_tiny_vla_checkpoint
from prismatic.util.checkpoint_files import DATASET_STATISTICS_NAME, POLICY_CONFIG_NAME
from prismatic.util.io import atomic_output
from prismatic.vla.normalization import normalize
from prismatic.vla.policy_config import ImagePreprocessingConfig, PolicyConfig, write_policy_config

TABLE_NAME = "nearest_neighbours.npz"
PROPRIO_WEIGHT = 1.0  # weight of the normalised proprio distance beside the image feature distance (both per dim)
POLICY_FILES = (TABLE_NAME, DATASET_STATISTICS_NAME, POLICY_CONFIG_NAME)
BREAKAGES = ("none", "gripper", "image_orientation", "normalisation", "chunk_order", "camera_order")


def image_features(pixel_values: torch.Tensor, pooled_size: int) -> np.ndarray:
    """``[N, 6 * cameras, H, W]`` processed images (two 3-channel views per camera) -> ``[N, F]``: the first view of
    each camera average-pooled to ``pooled_size`` squared, in camera order."""
    first_views = [pixel_values[:, start : start + 3] for start in range(0, pixel_values.shape[1], 6)]
    pooled = torch.nn.functional.adaptive_avg_pool2d(torch.cat(first_views, dim=1).float(), pooled_size)
    return pooled.flatten(1).numpy()


@dataclass(frozen=True)
class FrameTable:
    """The training frames: image features ``[N, F]``, normalised proprio ``[N, P]``, normalised chunks ``[N, C, A]``
    (stored as float16)."""

    features: np.ndarray
    proprio: np.ndarray
    actions: np.ndarray
    num_cameras: int = 2

    @property
    def pooled_size(self) -> int:
        return int(round((self.features.shape[1] / (3 * self.num_cameras)) ** 0.5))

    def save(self, path: Path) -> None:
        arrays = {"features": self.features, "proprio": self.proprio, "actions": self.actions}
        with atomic_output(path) as temporary, open(temporary, "wb") as handle:
            np.savez_compressed(handle, **{key: value.astype(np.float16) for key, value in arrays.items()})

    @classmethod
    def load(cls, path: Path) -> FrameTable:
        with np.load(path) as arrays:
            return cls(*(arrays[key].astype(np.float32) for key in ("features", "proprio", "actions")))

    def nearest(self, features: np.ndarray, proprio: np.ndarray) -> int:
        """Index of the frame closest to one query (mean squared distance per dim, proprio weighted)."""
        image_distance = np.mean((self.features - features) ** 2, axis=1)
        proprio_distance = np.mean((self.proprio - proprio) ** 2, axis=1)
        return int(np.argmin(image_distance + PROPRIO_WEIGHT * proprio_distance))


def build_policy_files(data_root_dir: Path, dataset_name: str, out_dir: Path, pooled_size: int) -> Path:
    """The look-up's files in ``out_dir`` from an RLDS dataset read as training reads it (both cameras, proprio):
    ``nearest_neighbours.npz``, ``dataset_statistics.json`` and ``policy_config.json``. Imports TensorFlow: run it in
    a process that does not render. :func:`complete_checkpoint` adds the tiny VLA (the processor, the heads)."""
    from transformers import AutoProcessor

    from prismatic.vla.action_tokenizer import ActionTokenizer
    from prismatic.vla.datasets import RLDSBatchTransform, RLDSConfig, RLDSDataset
    from prismatic.vla.datasets.statistics import save_dataset_statistics

    complete_checkpoint(out_dir)
    processor = AutoProcessor.from_pretrained(out_dir, trust_remote_code=False)
    transform = RLDSBatchTransform(
        ActionTokenizer(processor.tokenizer),
        processor.tokenizer,
        image_transform=processor.image_processor.apply_transform,
        use_wrist_image=True,
        use_proprio=True,
    )
    # One reading thread keeps each trajectory's frames together and in order: the first len(dataset) frames of the
    # (repeating, unshuffled) training stream are every frame once.
    config = RLDSConfig(
        data_root_dir=data_root_dir,
        data_mix=dataset_name,
        shuffle_buffer_size=1,
        image_aug=False,
        num_parallel_calls=1,
    )
    dataset = RLDSDataset(config, transform)
    features, proprio, actions = [], [], []
    for index, sample in enumerate(itertools.islice(dataset, len(dataset))):
        pixel_values = torch.cat([sample["pixel_values"], sample["pixel_values_wrist"]])[None]
        features.append(image_features(pixel_values, pooled_size)[0])
        proprio.append(np.asarray(sample["proprio"], dtype=np.float32)[0])
        actions.append(np.asarray(sample["actions"], dtype=np.float32))
        if index % 200 == 0:
            print(f"frame {index} of {len(dataset)}", flush=True)
    FrameTable(np.stack(features), np.stack(proprio), np.stack(actions)).save(out_dir / TABLE_NAME)
    save_dataset_statistics(dataset.dataset_statistics, out_dir)
    policy_config = PolicyConfig(
        unnorm_key=dataset_name,
        embodiment=dataset.embodiment(),
        image=ImagePreprocessingConfig(center_crop=False),  # as trained: without image augmentation
        data=dataset.policy_data(),
    )
    write_policy_config(out_dir, policy_config)
    return out_dir


def complete_checkpoint(policy_dir: Path) -> Path:
    """A randomly initialised tiny VLA (weights, processor, heads) into ``policy_dir``; its files of
    :func:`build_policy_files` are kept."""
    return save_tiny_vla_checkpoint(policy_dir, seed=0, with_heads=True)


class NearestNeighbourPolicy(VLAPolicy):
    """A checkpoint of :func:`build_policy_files` + :func:`complete_checkpoint`: the nearest training frame's chunk."""

    table: FrameTable

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: str | Path, **kwargs: Any) -> NearestNeighbourPolicy:  # type: ignore[override]
        policy = super().from_checkpoint(checkpoint_dir, **kwargs)
        policy.table = FrameTable.load(Path(checkpoint_dir) / TABLE_NAME)
        return policy

    def predict_prepared(self, queries: Sequence[PreparedQuery]) -> list[np.ndarray]:
        chunks = []
        for query in queries:
            features = image_features(query.pixel_values, self.table.pooled_size)[0]
            index = self.table.nearest(features, query.proprio)
            chunks.append(self.loaded.vla._unnormalize_actions(self.table.actions[index], self.unnorm_key))
        return [np.asarray(chunk, dtype=np.float64) for chunk in chunks]


def break_request(
    request: Callable[[dict[str, np.ndarray]], np.ndarray], breakage: str, action_stats: dict
) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """``request`` (observation -> chunk in the dataset's frame) with one link broken (``BREAKAGES``)."""
    from prismatic.vla.image_utils import rotate_180

    def broken(observation: dict[str, np.ndarray]) -> np.ndarray:
        observation = dict(observation)
        if breakage == "image_orientation":
            observation = {k: rotate_180(v) if "image" in k else v for k, v in observation.items()}
        if breakage == "camera_order":
            observation["full_image"], observation["wrist_image"] = (
                observation["wrist_image"],
                observation["full_image"],
            )
        chunk = np.array(request(observation), dtype=np.float64)
        if breakage == "gripper":
            chunk[:, -1] = 1.0 - chunk[:, -1]
        if breakage == "normalisation":  # the chunk left normalised, as if un-normalisation were skipped
            chunk = normalize(chunk, action_stats, "bounds_q99")
        if breakage == "chunk_order":
            chunk = chunk[::-1].copy()
        return chunk

    if breakage not in BREAKAGES:
        raise ValueError(f"breakage {breakage!r}: expected one of {BREAKAGES}")
    return broken


def run_episodes(checkpoint_dir: Path, num_episodes: int, breakage: str = "none") -> list[tuple[bool, int]]:
    """(success, steps) of LIBERO libero_spatial task 0 from benchmark initial states 0..num_episodes-1 with the
    evaluation's defaults (``GenerateConfig``), in this process (which must not hold TensorFlow)."""
    from experiments.robot.libero.config import GenerateConfig, episode_max_steps
    from experiments.robot.libero.env_worker import EpisodeSettings, run_episode
    from experiments.robot.libero.evaluation import plan_tasks
    from experiments.robot.libero.libero_utils import TaskEnv
    from experiments.robot.libero.sim_setup import configure_rendering

    configure_rendering()
    cfg = GenerateConfig(task_suite_name="libero_spatial", task_ids=[0], num_trials_per_task=num_episodes)
    (plan,) = plan_tasks(cfg, print)
    policy = NearestNeighbourPolicy.from_checkpoint(checkpoint_dir, task_suite_name=cfg.task_suite_name)
    settings = EpisodeSettings(
        suite=cfg.task_suite_name,
        gripper=policy.gripper,
        num_steps_wait=cfg.num_steps_wait,
        max_steps=episode_max_steps(cfg),
        num_open_loop_steps=cfg.num_open_loop_steps,
        action_dim=policy.platform.action_dim,
        env_img_res=cfg.env_img_res,
        video_dir=None,
    )
    action_stats = policy.loaded.norm_stats[policy.unnorm_key]["action"]
    request = break_request(lambda observation: policy.predict_chunk(observation, plan.task), breakage, action_stats)
    task_env = TaskEnv(plan.task_id, plan.bddl_file, cfg.env_img_res)
    outcomes = []
    for spec in plan.episodes:
        obs = task_env.start_episode(spec.reset_index, spec.initial_state)
        outcome = run_episode(task_env.env, obs, settings, request, False, task_env.cameras)
        outcomes.append((outcome.success, outcome.steps))
        print(f"episode {spec.episode}: success={outcome.success} steps={outcome.steps}", flush=True)
    task_env.close()
    return outcomes
