"""Bad data and bad names fail early, with errors naming the file, key or name at fault."""

from __future__ import annotations

import json
import shutil

import pytest

from prismatic.util.cli import UserError
from prismatic.vla.datasets import RLDSConfig, RLDSDataset
from prismatic.vla.datasets.rlds import check_rlds_files, check_tfrecord_file

SHARD = "libero_spatial_no_noops-train.tfrecord-00000-of-00001"


def open_dataset(data_root_dir, **overrides) -> RLDSDataset:
    config = RLDSConfig(data_root_dir=data_root_dir, shuffle_buffer_size=8, num_parallel_calls=2, **overrides)
    return RLDSDataset(config, batch_transform=lambda frame: frame)


@pytest.fixture
def dataset_copy(synthetic_dataset, tmp_path):
    """A private copy of the synthetic dataset (with its statistics cache) that a test may damage."""
    shutil.copytree(synthetic_dataset.builder_dir, tmp_path / "libero_spatial_no_noops" / "1.0.0")
    open_dataset(tmp_path)  # makes sure the copy's statistics cache exists
    return tmp_path


def test_unknown_dataset_name_is_named(synthetic_dataset):
    with pytest.raises(ValueError, match=r"Unknown dataset name 'libero_spatial_typo'.*libero_spatial_no_noops"):
        open_dataset(synthetic_dataset.data_root_dir, data_mix="libero_spatial_typo")


def test_missing_dataset_folder_is_named(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path}/libero_goal_no_noops/<version>/dataset_info.json"):
        open_dataset(tmp_path, data_mix="libero_goal_no_noops")


def test_truncated_tfrecord_is_named(dataset_copy):
    shard = dataset_copy / "libero_spatial_no_noops" / "1.0.0" / SHARD
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(UserError, match=f"Truncated tfrecord file {shard}"):
        open_dataset(dataset_copy)
    with pytest.raises(UserError, match=f"Truncated tfrecord file {shard}"):
        check_rlds_files(dataset_copy, "libero_spatial_no_noops")  # before TensorFlow, as training's checks


def test_empty_dataset_folder_and_missing_tfrecords_are_named_before_tensorflow(dataset_copy):
    version_dir = dataset_copy / "libero_spatial_no_noops" / "1.0.0"
    assert check_rlds_files(dataset_copy, "libero_spatial_no_noops") == version_dir
    (version_dir / SHARD).unlink()
    with pytest.raises(UserError, match=f"Missing tfrecord shard {version_dir / SHARD}"):
        check_rlds_files(dataset_copy, "libero_spatial_no_noops")
    shutil.rmtree(version_dir)
    with pytest.raises(UserError, match="No RLDS dataset 'libero_spatial_no_noops' under --data_root_dir"):
        check_rlds_files(dataset_copy, "libero_spatial_no_noops")


def test_tfrecord_cut_at_a_record_boundary_is_caught_by_its_record_count(dataset_copy):
    shard = dataset_copy / "libero_spatial_no_noops" / "1.0.0" / SHARD
    data = shard.read_bytes()
    first_record_end = 12 + int.from_bytes(data[:8], "little") + 4
    shard.write_bytes(data[:first_record_end])
    with pytest.raises(UserError, match=f"{shard}: 1 records, dataset_info.json lists 20"):
        check_tfrecord_file(shard, expected_records=20)


def test_missing_feature_key_is_named(dataset_copy):
    features_file = dataset_copy / "libero_spatial_no_noops" / "1.0.0" / "features.json"
    features = json.loads(features_file.read_text())
    steps = features["featuresDict"]["features"]["steps"]["sequence"]["feature"]["featuresDict"]["features"]
    del steps["observation"]["featuresDict"]["features"]["wrist_image"]
    features_file.write_text(json.dumps(features))
    with pytest.raises(KeyError, match=f"{features_file}: missing feature 'steps/observation/wrist_image'"):
        open_dataset(dataset_copy)
    assert open_dataset(dataset_copy, num_images_in_input=1).sources  # the primary camera alone is still readable


def test_corrupt_record_payload_is_named_while_streaming(dataset_copy):
    shard = dataset_copy / "libero_spatial_no_noops" / "1.0.0" / SHARD
    data = bytearray(shard.read_bytes())
    offset = 0
    while offset < len(data):  # flip one byte in the middle of every record's payload; the file size is unchanged
        length = int.from_bytes(data[offset : offset + 8], "little")
        data[offset + 12 + length // 2] ^= 0xFF
        offset += 12 + length + 4
    shard.write_bytes(bytes(data))
    dataset = open_dataset(dataset_copy)
    with pytest.raises(RuntimeError, match=f"Corrupt RLDS data while reading {shard.parent}"):
        next(dataset.iter_frames())


def test_rank_must_come_with_a_valid_world_size(synthetic_dataset):
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        open_dataset(synthetic_dataset.data_root_dir, rank=2, world_size=2)
