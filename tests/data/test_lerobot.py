"""LeRobot datasets (v2.1 and v3.0, written by the real lerobot library) read directly: statistics, frames, chunks,
shuffling, resumption, sharding, the shared normalisation and augmentation, and no TensorFlow on this path."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from prismatic.util.cli import UserError
from prismatic.vla.constants import NormalizationType
from prismatic.vla.datasets.augmentation import AugmentationParams, apply_augmentation, sample_params
from prismatic.vla.datasets.config import ImageAugConfig
from prismatic.vla.datasets.lerobot import LeRobotMapping, libero_gripper_targets, open_lerobot
from prismatic.vla.datasets.lerobot_dataset import LeRobotConfig, LeRobotDataset
from prismatic.vla.normalization import normalize

FIXTURES = Path(__file__).resolve().parent / "lerobot_fixtures"
ALL_FIXTURES = ("libero_like_v21", "libero_like_v30", "aloha_like_v21", "aloha_like_v30")
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A copy of the committed fixtures (statistics caches are written beside the data)."""
    shutil.copytree(FIXTURES, tmp_path / "data")
    return tmp_path / "data"


def _dataset(data_root: Path, name: str, **overrides) -> LeRobotDataset:
    config = LeRobotConfig(data_root_dir=data_root, dataset_name=name, **overrides)
    return LeRobotDataset(config, batch_transform=lambda frame: frame)


def _parquet_columns(root: Path) -> dict[str, np.ndarray]:
    table = pq.ParquetDataset(sorted((root / "data").rglob("*.parquet"))).read()
    table = table.sort_by([("episode_index", "ascending"), ("frame_index", "ascending")])
    return {name: np.asarray(table.column(name).to_pylist()) for name in table.column_names}


def _decoded_video(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_statistics_equal_numpy_on_the_parquet_columns_and_are_cached(data_root, name):
    columns = _parquet_columns(data_root / name)
    dataset = _dataset(data_root, name, num_images_in_input=1)
    statistics = dataset.dataset_statistics[name]
    for group, column in (("action", "action"), ("proprio", "observation.state")):
        values = columns[column].astype(np.float64)
        np.testing.assert_allclose(statistics[group]["q01"], np.quantile(values, 0.01, axis=0), rtol=0, atol=1e-12)
        np.testing.assert_allclose(statistics[group]["q99"], np.quantile(values, 0.99, axis=0), rtol=0, atol=1e-12)
        np.testing.assert_allclose(statistics[group]["mean"], values.mean(axis=0), rtol=0, atol=1e-12)
        np.testing.assert_allclose(statistics[group]["std"], values.std(axis=0), rtol=0, atol=1e-12)
    assert statistics["num_transitions"] == len(columns["action"])
    assert statistics["num_trajectories"] == len(np.unique(columns["episode_index"]))
    caches = list((data_root / name).glob("dataset_statistics_*.json"))
    assert len(caches) == 1
    reread = _dataset(data_root, name, num_images_in_input=1).dataset_statistics[name]
    np.testing.assert_array_equal(reread["action"]["q99"], statistics["action"]["q99"])


@pytest.mark.parametrize("name", ["libero_like_v21", "libero_like_v30", "aloha_like_v30"])
def test_frames_equal_the_decoded_video_frames_and_the_parquet_rows(data_root, name):
    root = data_root / name
    source = open_lerobot(data_root, name, LeRobotMapping())
    num_cameras = len(source.mapping.camera_keys)
    dataset = _dataset(data_root, name, num_images_in_input=num_cameras, resize_resolution=(32, 32))
    columns = _parquet_columns(root)
    statistics = dataset.statistics
    videos = {}
    for row in dataset.rows[::7].tolist():  # rows of several episodes (and video offsets in v3.0 files)
        frame = dataset.frame_at(row, sample_index=0)
        episode = dataset.episode_of_row[row]
        for camera, view in zip(source.mapping.camera_keys, ("primary", "wrist", "wrist_2"), strict=False):
            path, offset = episode.videos[camera]
            frames = videos.setdefault(path, _decoded_video(path))
            index = round((offset + columns["timestamp"][row]) * source.fps)  # frame number in the (shared) file
            np.testing.assert_array_equal(frame["observation"][f"image_{view}"][0], frames[index])
        chunk_rows = np.minimum(np.arange(row, row + 8), episode.row_start + episode.length - 1)
        expected_action = normalize(
            columns["action"][chunk_rows], statistics["action"], NormalizationType.BOUNDS_Q99, zero_constant_dims=True
        )
        np.testing.assert_allclose(frame["action"], expected_action, atol=1e-6)
        expected_state = normalize(
            columns["observation.state"][row],
            statistics["proprio"],
            NormalizationType.BOUNDS_Q99,
            zero_constant_dims=True,
        )
        np.testing.assert_allclose(frame["observation"]["proprio"][0], expected_state, atol=1e-6)
        assert frame["task"]["language_instruction"].decode() == source.instructions[row]
    assert dataset.platform.action_dim == columns["action"].shape[1]


@pytest.mark.parametrize("name", ["libero_like_v21", "aloha_like_v30"])
def test_chunks_are_the_rlds_paths_the_last_steps_of_an_episode_start_none(data_root, name):
    """The same episodes chunked by the RLDS pipeline's ``chunk_actions``: the same (step, chunk) samples."""
    from prismatic.vla.datasets.transforms import chunk_actions

    chunk = 5
    dataset = _dataset(data_root, name, num_images_in_input=1, resize_resolution=(32, 32), num_actions_chunk=chunk)
    assert len(dataset.rows) == sum(episode.length - chunk + 1 for episode in dataset.episodes)
    for episode in dataset.episodes:
        rows = episode.row_start + np.arange(episode.length)
        actions = normalize(
            dataset.source.actions[rows],
            dataset.statistics["action"],
            NormalizationType.BOUNDS_Q99,
            zero_constant_dims=True,
        )
        trajectory = {
            "observation": {"timestep": np.arange(episode.length, dtype=np.int32)},
            "task": {"language_instruction": np.array([b"task"] * episode.length)},
            "action": actions.astype(np.float32),
            "dataset_name": np.array([name.encode()] * episode.length),
        }
        rlds = chunk_actions(trajectory, chunk)
        starts = [row for row in dataset.rows.tolist() if rows[0] <= row <= rows[-1]]
        assert starts == rows[: episode.length - chunk + 1].tolist()  # the last chunk - 1 steps start none
        ours = np.stack([dataset.frame_at(row, 0)["action"] for row in starts])
        np.testing.assert_array_equal(ours, rlds["action"].numpy())
        np.testing.assert_array_equal(
            [dataset.frame_at(row, 0)["observation"]["timestep"][0] for row in starts],
            rlds["observation"]["timestep"].numpy()[:, 0],
        )


def test_every_sample_once_per_epoch_and_a_resumed_stream_continues_exactly(data_root):
    dataset = _dataset(data_root, "libero_like_v30", resize_resolution=(32, 32), image_aug=True)
    num_rows = len(dataset.rows)
    stream = dataset.sample_rows()
    first = [next(stream) for _ in range(2 * num_rows + 3)]
    assert sorted(row for _, row in first[:num_rows]) == sorted(dataset.rows.tolist())
    assert [row for _, row in first[:num_rows]] != [row for _, row in first[num_rows : 2 * num_rows]]

    skip = num_rows + 5
    resumed = _dataset(data_root, "libero_like_v30", resize_resolution=(32, 32), image_aug=True, skip_samples=skip)
    resumed_frames = resumed.iter_frames()
    original_frames = dataset.iter_frames()
    for _ in range(skip):
        next(original_frames)
    for _ in range(3):
        expected, actual = next(original_frames), next(resumed_frames)
        np.testing.assert_array_equal(actual["action"], expected["action"])
        np.testing.assert_array_equal(actual["observation"]["image_primary"], expected["observation"]["image_primary"])


def test_the_frame_cache_returns_the_decoded_frames_within_its_budget(data_root):
    """Cached frames are the decoded ones (augmentation included, which reads and never writes them); the cache
    keeps the first frames read until its budget is full; 0 keeps none."""
    name, size = "libero_like_v30", (32, 32)
    one_frame = 32 * 32 * 3
    uncached = _dataset(data_root, name, resize_resolution=size, image_aug=True, frame_cache_mb=0)
    cached = _dataset(data_root, name, resize_resolution=size, image_aug=True)
    bounded = _dataset(data_root, name, resize_resolution=size, image_aug=True, frame_cache_mb=1)
    bounded.config.frame_cache_mb = 5 * one_frame / 2**20  # room for 5 frames
    num_rows = len(uncached.rows)
    streams = [dataset.iter_frames() for dataset in (uncached, cached, bounded)]
    for _ in range(2 * num_rows):  # two epochs: the second reads the cached frames
        expected, *others = (next(stream) for stream in streams)
        for frame in others:
            for view in ("image_primary", "image_wrist"):
                np.testing.assert_array_equal(frame["observation"][view], expected["observation"][view])
    num_cameras = 2
    assert uncached._frames == {} and uncached._frame_bytes == 0
    assert len(cached._frames) == num_cameras * num_rows
    assert len(bounded._frames) == 5 and bounded._frame_bytes == 5 * one_frame
    assert not next(iter(cached._frames.values())).flags.writeable


def test_ranks_read_disjoint_episodes_that_cover_the_train_split(data_root):
    shards = [
        _dataset(data_root, "aloha_like_v21", num_images_in_input=3, rank=rank, world_size=2) for rank in range(2)
    ]
    episodes = [{episode.index for episode in shard.episodes} for shard in shards]
    assert episodes[0].isdisjoint(episodes[1])
    assert episodes[0] | episodes[1] == {0, 1, 2, 3}


def test_the_numpy_normalisation_is_the_tf_pipelines():
    import tensorflow as tf

    from prismatic.vla.datasets.transforms import normalize_trajectory

    rng = np.random.default_rng(0)
    values = rng.normal(size=(6, 4)).astype(np.float32)
    stats = {
        "q01": np.array([-1.0, -0.5, 0.0, 2.0]),
        "q99": np.array([1.0, 0.5, 0.0, 3.0]),
        "min": np.array([-2.0, -1.0, 0.0, 1.0]),
        "max": np.array([2.0, 1.0, 0.0, 4.0]),
        "mask": np.array([True, True, True, False]),
    }
    trajectory = {"observation": {"proprio": tf.constant(values)}, "action": tf.constant(values)}
    statistics = {"action": stats, "proprio": stats}
    tf_result = normalize_trajectory(trajectory, statistics, NormalizationType.BOUNDS_Q99)["action"].numpy()
    np_result = normalize(values, stats, NormalizationType.BOUNDS_Q99, zero_constant_dims=True)
    np.testing.assert_allclose(np_result, tf_result, atol=1e-6)
    assert np.all(np_result[:, 2] == 0) and np.array_equal(np_result[:, 3], values[:, 3])


def test_the_libero_gripper_trains_as_on_the_rlds_path(data_root):
    """--lerobot_gripper libero: the last action dim becomes upstream's RLDS target (1 - clip(a, 0, 1), the TF
    transform's values), is left un-normalised, and the checkpoint's embodiment says the libero convention."""
    from prismatic.vla.datasets.registry import standardize_libero

    name = "libero_like_v30"
    raw = open_lerobot(data_root, name, LeRobotMapping()).actions
    raw[:3, -1] = [-1.0, 1.0, 0.4]  # open, close, in between
    tf_action, _ = standardize_libero(raw, np.zeros((len(raw), 8), np.float32))
    np.testing.assert_array_equal(libero_gripper_targets(raw), tf_action.numpy())

    dataset = _dataset(data_root, name, mapping=LeRobotMapping(gripper="libero"), resize_resolution=(32, 32))
    source = dataset.source
    gripper = 1.0 - np.clip(open_lerobot(data_root, name, LeRobotMapping()).actions[:, -1], 0.0, 1.0)
    np.testing.assert_array_equal(source.actions[:, -1], gripper)
    assert dataset.statistics["action"]["mask"].tolist() == [True] * (source.action_dim - 1) + [False]
    row = int(dataset.rows[0])
    frame = dataset.frame_at(row, sample_index=0)
    np.testing.assert_array_equal(frame["action"][:, -1], gripper[row : row + 8])  # passes through un-normalised
    embodiment = dataset.embodiment()
    assert embodiment.gripper == "libero" and embodiment.gripper_dims == [source.action_dim - 1]
    assert dataset.policy_data()["gripper"] == "libero"
    plain = _dataset(data_root, name, resize_resolution=(32, 32))
    assert plain.embodiment().gripper == "none" and "gripper" not in plain.policy_data()
    assert len(list((data_root / name).glob("dataset_statistics_*.json"))) == 2  # cached apart

    with pytest.raises(UserError, match="^--lerobot_gripper 'robotiq': expected one of"):
        open_lerobot(data_root, name, LeRobotMapping(gripper="robotiq"))


def test_numpy_augmentation_matches_the_tensorflow_ops_for_the_same_parameters():
    import tensorflow as tf

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
    params = sample_params(ImageAugConfig(), seed=7, sample_index=3, camera_index=1)
    assert isinstance(params, AugmentationParams)
    pixels = tf.image.convert_image_dtype(tf.constant(image), tf.float32)
    pixels = tf.image.crop_and_resize(pixels[None], [list(params.crop_box)], [0], [24, 24])[0]
    pixels = tf.clip_by_value(pixels, 0, 1)
    pixels = tf.clip_by_value(tf.image.adjust_brightness(pixels, params.brightness_delta), 0, 1)
    pixels = tf.clip_by_value(tf.image.adjust_contrast(pixels, params.contrast_factor), 0, 1)
    pixels = tf.clip_by_value(tf.image.adjust_saturation(pixels, params.saturation_factor), 0, 1)
    pixels = tf.clip_by_value(tf.image.adjust_hue(pixels, params.hue_delta), 0, 1)
    expected = tf.image.convert_image_dtype(pixels, tf.uint8, saturate=True).numpy()
    actual = apply_augmentation(image, params)
    difference = np.abs(actual.astype(int) - expected.astype(int))
    assert difference.max() <= 1 and difference.mean() < 0.05, (difference.max(), difference.mean())
    assert not np.array_equal(actual, image)


def test_reading_lerobot_data_never_imports_tensorflow(data_root):
    script = (
        "import sys\n"
        "from prismatic.vla.datasets.lerobot_dataset import LeRobotConfig, LeRobotDataset\n"
        f"dataset = LeRobotDataset(LeRobotConfig({str(data_root)!r}, 'libero_like_v30', image_aug=True), lambda f: f)\n"
        "frames = dataset.iter_frames()\n"
        "[next(frames) for _ in range(3)]\n"
        "import prismatic.training.trainer\n"
        "print('tensorflow' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, check=True
    )
    assert result.stdout.strip() == "False"


def test_inspect_dataset_describes_a_lerobot_dataset(data_root, tmp_path, capsys):
    import draccus

    from prismatic.vla.datasets import load_dataset_statistics

    from .test_inspect_dataset import load_script

    script = load_script()
    stats_out, preview_out = tmp_path / "dataset_statistics.json", tmp_path / "preview.png"
    args = ["--data_root_dir", str(data_root), "--dataset_name", "aloha_like_v30", "--num_images_in_input", "3"]
    args += ["--num_actions_chunk", "4", "--stats_out", str(stats_out), "--batch_size", "2"]
    args += ["--num_preview_frames", "2", "--preview_out", str(preview_out)]
    script.inspect_dataset(draccus.parse(script.InspectConfig, args=args))

    columns = _parquet_columns(data_root / "aloha_like_v30")
    saved = load_dataset_statistics(stats_out)["aloha_like_v30"]
    np.testing.assert_allclose(saved["action"]["q01"], np.quantile(columns["action"].astype(np.float64), 0.01, axis=0))
    printed = capsys.readouterr().out
    assert "aloha_like_v30: 4 episodes, 55 transitions" in printed
    assert "pixel_values    (2, 18, 224, 224) torch.float32" in printed
    assert "actions         (2, 4, 14) torch.float32" in printed
    assert preview_out.is_file()


def test_mapping_and_embodiment_round_trip_through_the_policy_config(data_root, tmp_path):
    from prismatic.vla.policy_config import PolicyConfig, read_policy_config, write_policy_config

    cameras = ("observation.images.cam_high", "observation.images.cam_right_wrist")
    dataset = _dataset(data_root, "aloha_like_v21", mapping=LeRobotMapping(camera_keys=cameras), num_actions_chunk=6)
    config = PolicyConfig(
        num_images_in_input=2, unnorm_key="aloha_like_v21", embodiment=dataset.embodiment(), data=dataset.policy_data()
    )
    write_policy_config(tmp_path, config)
    reloaded = read_policy_config(tmp_path)
    assert reloaded.embodiment.platform() == dataset.platform
    assert (reloaded.embodiment.action_dim, reloaded.embodiment.num_actions_chunk) == (14, 6)
    assert reloaded.embodiment.camera_names == list(cameras) and reloaded.embodiment.gripper == "none"
    assert reloaded.data["camera_keys"] == list(cameras) and reloaded.data["codebase_version"] == "v2.1"
    assert reloaded.data["state_key"] == "observation.state" and reloaded.data["action_key"] == "action"


def test_an_rlds_dataset_describes_its_embodiment_the_same_way(synthetic_dataset):
    from prismatic.vla.constants import LIBERO
    from prismatic.vla.datasets import RLDSConfig, RLDSDataset

    dataset = RLDSDataset(
        RLDSConfig(data_root_dir=synthetic_dataset.data_root_dir, data_mix="libero_spatial_no_noops"), lambda f: f
    )
    embodiment = dataset.embodiment()
    assert embodiment.platform() == LIBERO and embodiment.camera_names == ["image", "wrist_image"]
    assert embodiment.gripper == "libero" and dataset.policy_data()["format"] == "rlds"
