"""The LIBERO RLDS writer: the schema of openvla/modified_libero_rlds, every value preserved on read-back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prismatic.vla.datasets.tf_runtime import import_tensorflow, import_tensorflow_datasets
from prismatic.vla.datasets.writer import LiberoEpisode, write_libero_rlds


def test_written_folder_has_the_downloaded_layout(synthetic_dataset):
    builder_dir = synthetic_dataset.builder_dir
    assert builder_dir.parent.name == "libero_spatial_no_noops" and builder_dir.name == "1.0.0"
    names = sorted(path.name for path in builder_dir.iterdir() if not path.name.startswith("dataset_statistics_"))
    assert names == ["dataset_info.json", "features.json", "libero_spatial_no_noops-train.tfrecord-00000-of-00001"]
    info = json.loads((builder_dir / "dataset_info.json").read_text())
    assert info["name"] == "libero_spatial_no_noops" and info["splits"][0]["shardLengths"] == ["20"]


def test_default_schema_is_modified_libero_rlds(tmp_path):
    write_libero_rlds([_episode(2, image_size=256)], tmp_path, "libero_object_no_noops")
    builder = import_tensorflow_datasets().builder_from_directory(str(tmp_path / "libero_object_no_noops/1.0.0"))
    step = builder.info.features["steps"].feature  # the per-step FeaturesDict of the steps Dataset
    assert set(builder.info.features.keys()) == {"steps", "episode_metadata"}
    assert set(builder.info.features["episode_metadata"].keys()) == {"file_path"}
    assert set(step.keys()) == {
        "observation",
        "action",
        "discount",
        "reward",
        "is_first",
        "is_last",
        "is_terminal",
        "language_instruction",
    }
    for camera in ("image", "wrist_image"):
        assert step["observation"][camera].shape == (256, 256, 3)
        assert step["observation"][camera].encoding_format == "jpeg"
    assert step["observation"]["state"].shape == (8,) and step["observation"]["joint_state"].shape == (7,)
    assert step["action"].shape == (7,) and step["action"].dtype == np.float32


def test_write_then_read_preserves_every_value(synthetic_dataset):
    tf = import_tensorflow()
    tfds = import_tensorflow_datasets()
    builder = tfds.builder_from_directory(str(synthetic_dataset.builder_dir))
    raw = builder.as_dataset(split="train", decoders={"steps": tfds.decode.SkipDecoding()})
    seen = set()
    for episode in raw.as_numpy_iterator():
        file_path = episode["episode_metadata"]["file_path"].decode()
        original = synthetic_dataset.episode_by_path(file_path)
        steps, observation = episode["steps"], episode["steps"]["observation"]
        num_steps = len(original.actions)
        np.testing.assert_array_equal(steps["action"], original.actions)
        np.testing.assert_array_equal(observation["state"], original.states)
        np.testing.assert_array_equal(observation["joint_state"], original.joint_states)
        assert [s.decode() for s in steps["language_instruction"]] == [original.language_instruction] * num_steps
        np.testing.assert_array_equal(steps["is_first"], np.arange(num_steps) == 0)
        np.testing.assert_array_equal(steps["is_last"], np.arange(num_steps) == num_steps - 1)
        np.testing.assert_array_equal(steps["is_terminal"], np.arange(num_steps) == num_steps - 1)
        np.testing.assert_array_equal(steps["reward"], (np.arange(num_steps) == num_steps - 1).astype(np.float32))
        np.testing.assert_array_equal(steps["discount"], np.ones(num_steps, np.float32))
        # Images are stored as JPEG (tf.image.encode_jpeg, quality 95): the stored bytes are reproducible and
        # decode to within JPEG error of the originals.
        for key, originals in (("image", original.images), ("wrist_image", original.wrist_images)):
            for t in range(num_steps):
                assert observation[key][t] == tf.io.encode_jpeg(originals[t]).numpy()
            decoded = tf.io.decode_jpeg(observation[key][-1]).numpy()
            assert np.abs(decoded.astype(int) - originals[-1]).mean() < 6.0  # 64 px images: chroma subsampling
        seen.add(file_path)
    assert seen == {episode.file_path for episode in synthetic_dataset.episodes}


def _episode(num_steps: int, image_size: int = 32) -> LiberoEpisode:
    return LiberoEpisode(
        images=np.zeros((num_steps, image_size, image_size, 3), np.uint8),
        wrist_images=np.zeros((num_steps, image_size, image_size, 3), np.uint8),
        states=np.zeros((num_steps, 8), np.float32),
        joint_states=np.zeros((num_steps, 7), np.float32),
        actions=np.zeros((num_steps, 7), np.float32),
        language_instruction="stay",
        file_path="episode",
    )


def test_writer_rejects_a_wrong_field_shape_naming_it(tmp_path):
    episode = _episode(3)
    episode.states = np.zeros((3, 9), np.float32)
    with pytest.raises(ValueError, match=r"Episode 'episode': states has shape \(3, 9\)"):
        write_libero_rlds([episode], tmp_path, "libero_spatial_no_noops", image_size=32)


def test_writer_refuses_to_overwrite_unless_asked(tmp_path):
    write_libero_rlds([_episode(2)], tmp_path, "libero_goal_no_noops", image_size=32)
    with pytest.raises(FileExistsError, match="libero_goal_no_noops/1.0.0 already exists"):
        write_libero_rlds([_episode(2)], tmp_path, "libero_goal_no_noops", image_size=32)
    write_libero_rlds([_episode(4)], tmp_path, "libero_goal_no_noops", image_size=32, overwrite=True)
    info = json.loads((tmp_path / "libero_goal_no_noops/1.0.0/dataset_info.json").read_text())
    assert info["splits"][0]["shardLengths"] == ["1"]
