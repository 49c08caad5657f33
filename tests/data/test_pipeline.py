"""The tf.data pipeline behind RLDSDataset: chunking, normalisation, augmentation, determinism, DDP sharding,
mixtures, and the collated batch (upstream's keys, shapes and dtypes)."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from prismatic.vla.normalization import unnormalize
from prismatic.vla.action_tokenizer import ActionTokenizer
from prismatic.vla.constants import IGNORE_INDEX
from prismatic.vla.datasets import PaddedCollatorForActionPrediction, RLDSBatchTransform, RLDSConfig, RLDSDataset
from prismatic.vla.datasets.rlds import split_sizes
from prismatic.vla.datasets.synthetic import SyntheticLiberoConfig, write_synthetic_libero
from prismatic.vla.datasets.tf_runtime import import_tensorflow

from .conftest import NUM_EPISODES

CHUNK = 8


def make_dataset(data_root_dir, **overrides) -> RLDSDataset:
    config = RLDSConfig(data_root_dir=data_root_dir, shuffle_buffer_size=64, num_parallel_calls=2, **overrides)
    return RLDSDataset(config, batch_transform=lambda frame: frame)


def take(dataset: RLDSDataset, count: int) -> list[dict]:
    return list(itertools.islice(dataset.iter_frames(), count))


def identify(frame: dict, statistics: dict, written) -> int:
    """Index of the written episode a frame comes from: same instruction, same (clipped) state at its timestep."""
    t = int(frame["observation"]["timestep"][0])
    proprio_stats = statistics["proprio"]
    proprio = unnormalize(frame["observation"]["proprio"][0], proprio_stats, "bounds_q99")
    instruction = frame["task"]["language_instruction"].decode()
    clip = lambda state: np.clip(state, proprio_stats["q01"], proprio_stats["q99"])  # normalisation clips
    distances = {
        index: np.abs(clip(np.concatenate([e.states[t, :6], e.states[t, -2:]])) - proprio).max()
        for index, e in enumerate(written.episodes)
        if e.language_instruction == instruction and t < len(e.actions)
    }
    index = min(distances, key=distances.get)
    assert distances[index] < 1e-4, "no written episode has this frame's state"
    return index


def test_frames_have_upstream_layout(synthetic_dataset):
    frame = take(make_dataset(synthetic_dataset.data_root_dir), 1)[0]
    observation = frame["observation"]
    assert observation["image_primary"].shape == (1, 224, 224, 3) and observation["image_primary"].dtype == np.uint8
    assert observation["image_wrist"].shape == (1, 224, 224, 3) and observation["image_wrist"].dtype == np.uint8
    assert observation["proprio"].shape == (1, 8) and observation["proprio"].dtype == np.float32
    assert frame["action"].shape == (CHUNK, 7) and frame["action"].dtype == np.float32
    assert frame["dataset_name"] == b"libero_spatial_no_noops"
    assert frame["task"]["language_instruction"].decode().startswith("move the gripper to the")


def test_primary_camera_only_without_proprio(synthetic_dataset):
    dataset = make_dataset(synthetic_dataset.data_root_dir, num_images_in_input=1, use_proprio=False)
    frame = take(dataset, 1)[0]
    assert set(frame["observation"]) == {"image_primary", "timestep"}


def test_chunks_start_only_where_complete_and_unnormalize_to_the_originals(synthetic_dataset):
    dataset = make_dataset(synthetic_dataset.data_root_dir)
    statistics = dataset.dataset_statistics["libero_spatial_no_noops"]
    actions_by_episode = synthetic_dataset.standardized_actions()
    low, high = statistics["action"]["q01"], statistics["action"]["q99"]
    mask = statistics["action"]["mask"]
    for frame in take(dataset, 60):
        t = int(frame["observation"]["timestep"][0])
        episode = actions_by_episode[identify(frame, statistics, synthetic_dataset)]
        assert t + CHUNK <= len(episode), f"chunk at t={t} runs past the episode end"
        original = episode[t : t + CHUNK]  # [8, 7]
        restored = unnormalize(frame["action"], statistics["action"], "bounds_q99")
        expected = np.where(mask, np.clip(original, low, high), original)  # values beyond q01/q99 are clipped
        constant_dims = statistics["action"]["min"] == statistics["action"]["max"]
        expected = np.where(constant_dims, low + 0.5e-8, expected)  # constant dims normalise to 0
        np.testing.assert_allclose(restored, expected, atol=2e-6)
        np.testing.assert_array_equal(frame["action"][:, ~mask], original[:, ~mask])  # gripper untouched


def test_training_reads_every_episode_by_default(synthetic_dataset):
    dataset = make_dataset(synthetic_dataset.data_root_dir)
    statistics = dataset.dataset_statistics["libero_spatial_no_noops"]
    seen = {identify(frame, statistics, synthetic_dataset) for frame in take(dataset, 280)}  # 2 epochs of frames
    assert seen == set(range(NUM_EPISODES))


def test_val_set_holds_out_the_last_whole_episodes_and_training_never_sees_them(synthetic_dataset):
    val = make_dataset(synthetic_dataset.data_root_dir, train=False, val_fraction=0.1)
    statistics = val.dataset_statistics["libero_spatial_no_noops"]
    frames = list(val.iter_frames())  # one ordered pass: round(0.1 * 20) = 2 episodes of 14 - 8 + 1 chunks
    held_out = [identify(frame, statistics, synthetic_dataset) for frame in frames]
    assert len(set(held_out)) == 2 and all(held_out.count(episode) == 14 - CHUNK + 1 for episode in held_out)
    again = [identify(frame, statistics, synthetic_dataset) for frame in val.iter_frames()]
    assert again == held_out  # deterministic
    train = make_dataset(synthetic_dataset.data_root_dir, val_fraction=0.1)
    seen = {identify(frame, statistics, synthetic_dataset) for frame in take(train, 280)}
    assert seen == set(range(NUM_EPISODES)) - set(held_out)
    assert split_sizes(train.sources[0].builder, 0.1) == (18, 2)
    assert split_sizes(train.sources[0].builder, 0.0) == (20, 0)


def test_val_split_without_held_out_episodes_names_the_flag(synthetic_dataset):
    with pytest.raises(ValueError, match="--val_set_fraction"):
        make_dataset(synthetic_dataset.data_root_dir, train=False).make_tf_dataset()


def test_two_passes_without_augmentation_give_identical_images(synthetic_dataset):
    dataset = make_dataset(synthetic_dataset.data_root_dir, image_aug=False)
    first, second = take(dataset, 12), take(dataset, 12)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a["observation"]["image_primary"], b["observation"]["image_primary"])
        np.testing.assert_array_equal(a["observation"]["image_wrist"], b["observation"]["image_wrist"])
        np.testing.assert_array_equal(a["action"], b["action"])


def test_augmentation_changes_only_images_and_follows_the_seed(synthetic_dataset):
    plain = take(make_dataset(synthetic_dataset.data_root_dir, image_aug=False), 4)
    augmented = take(make_dataset(synthetic_dataset.data_root_dir, image_aug=True), 4)
    for a, p in zip(augmented, plain, strict=True):
        np.testing.assert_array_equal(a["action"], p["action"])
        for camera in ("image_primary", "image_wrist"):
            assert np.abs(a["observation"][camera].astype(int) - p["observation"][camera]).mean() > 1.0
    other_seed = take(make_dataset(synthetic_dataset.data_root_dir, image_aug=True, seed=8), 1)[0]
    assert not np.array_equal(other_seed["observation"]["image_primary"], augmented[0]["observation"]["image_primary"])


def test_skip_samples_resumes_the_exact_augmented_stream(synthetic_dataset):
    full = take(make_dataset(synthetic_dataset.data_root_dir, image_aug=True), 15)
    resumed = take(make_dataset(synthetic_dataset.data_root_dir, image_aug=True, skip_samples=5), 10)
    for a, b in zip(full[5:], resumed, strict=True):
        np.testing.assert_array_equal(a["observation"]["image_wrist"], b["observation"]["image_wrist"])
        np.testing.assert_array_equal(a["observation"]["proprio"], b["observation"]["proprio"])
        np.testing.assert_array_equal(a["action"], b["action"])


def test_ranks_read_disjoint_episodes(synthetic_dataset):
    episodes_per_rank = []
    for rank in (0, 1):
        dataset = make_dataset(synthetic_dataset.data_root_dir, rank=rank, world_size=2)
        statistics = dataset.dataset_statistics["libero_spatial_no_noops"]
        episodes_per_rank.append({identify(f, statistics, synthetic_dataset) for f in take(dataset, 80)})
    assert not episodes_per_rank[0] & episodes_per_rank[1]
    # 20 training episodes split 10 / 10; 80 frames of 7 per episode visit (nearly) all of a rank's share.
    assert 8 <= len(episodes_per_rank[0]) <= 10 and 8 <= len(episodes_per_rank[1]) <= 10


def test_four_suite_mixture_samples_every_suite_with_size_balanced_weights(tmp_path):
    lengths = {
        "libero_spatial_no_noops": 9,
        "libero_object_no_noops": 10,
        "libero_goal_no_noops": 12,
        "libero_10_no_noops": 15,
    }
    for seed, (name, length) in enumerate(lengths.items()):
        write_synthetic_libero(
            SyntheticLiberoConfig(tmp_path, name, 2, episode_length=length, image_size=32, seed=seed)
        )
    dataset = make_dataset(tmp_path, data_mix="libero_4_task_suites_no_noops")
    weights = {source.spec.name: source.weight for source in dataset.sources}
    assert weights == pytest.approx({name: length / sum(lengths.values()) for name, length in lengths.items()})
    assert len(dataset) == 2 * sum(lengths.values())
    names = {frame["dataset_name"].decode() for frame in take(dataset, 40)}
    assert names == set(lengths)


def test_collated_batches_match_upstream_keys_shapes_and_dtypes(synthetic_dataset, tiny_tokenizer, image_processor):
    transform = RLDSBatchTransform(
        ActionTokenizer(tiny_tokenizer),
        tiny_tokenizer,
        image_processor.apply_transform,
        use_wrist_image=True,
        use_proprio=True,
    )
    dataset = RLDSDataset(
        RLDSConfig(data_root_dir=synthetic_dataset.data_root_dir, shuffle_buffer_size=64, num_parallel_calls=2),
        transform,
    )
    collator = PaddedCollatorForActionPrediction(tiny_tokenizer.model_max_length, tiny_tokenizer.pad_token_id)
    batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collator, num_workers=0)))
    assert list(batch) == [
        "pixel_values",
        "proprio",
        "input_ids",
        "attention_mask",
        "labels",
        "actions",
        "dataset_names",
    ]
    assert batch["pixel_values"].shape == (3, 12, 224, 224) and batch["pixel_values"].dtype == torch.float32
    assert batch["proprio"].shape == (3, 8) and batch["proprio"].dtype == torch.float32
    assert batch["actions"].shape == (3, CHUNK, 7) and batch["actions"].dtype == torch.float32
    length = batch["input_ids"].shape[1]
    assert batch["input_ids"].dtype == torch.int64 and batch["labels"].shape == (3, length)
    assert batch["attention_mask"].dtype == torch.bool and batch["attention_mask"].shape == (3, length)
    assert batch["dataset_names"] == ["libero_spatial_no_noops"] * 3
    action_tokenizer = ActionTokenizer(tiny_tokenizer)
    for row in range(3):
        targets = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX]
        expected = action_tokenizer.token_ids(batch["actions"][row].numpy()).reshape(-1).tolist() + [2]
        assert targets.tolist() == expected


def test_import_does_not_load_tensorflow():
    code = "import sys, prismatic.vla.datasets; assert 'tensorflow' not in sys.modules, 'tensorflow was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env={"USE_TF": "0", "PATH": ""})


def test_tensorflow_sees_no_gpu():
    assert import_tensorflow().config.get_visible_devices("GPU") == []
