"""Finding, validating and reading RLDS datasets that tensorflow-datasets wrote (no dlimp).

A dataset lives in ``<data_root_dir>/<name>/<version>/`` with ``dataset_info.json``, ``features.json`` and the
``<name>-<split>.tfrecord-XXXXX-of-YYYYY`` shards, exactly as ``openvla/modified_libero_rlds`` is downloaded.
Episodes are read with image bytes left encoded (JPEG decoding happens per frame, after shuffling).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from prismatic.util.cli import UserError
from prismatic.util.file_checks import read_json_file
from prismatic.vla.datasets.config import holdout_episodes
from prismatic.vla.datasets.geometry import check_depth_follows_crop
from prismatic.vla.datasets.registry import RLDSDatasetSpec
from prismatic.vla.datasets.statistics import cached_statistics, compute_statistics
from prismatic.vla.datasets.tf_runtime import import_tensorflow, import_tensorflow_datasets, without_autograph
from prismatic.vla.datasets.transforms import restructure_trajectory

STATISTICS_FORMAT = "sf-rlds-statistics-v1"  # part of the cache key; bump when the computation changes
_TFRECORD_HEADER = struct.Struct("<QI")  # record length (uint64), masked CRC32C of the length (uint32)
_TFRECORD_CRC_BYTES = 4
DEFAULT_SHARD_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def find_builder_dir(data_root_dir: Path, name: str) -> Path:
    """``<data_root_dir>/<name>/<version>`` holding ``dataset_info.json`` (the highest version if several)."""
    dataset_dir = Path(data_root_dir) / name
    versions = sorted(
        (path for path in dataset_dir.glob("*") if (path / "dataset_info.json").is_file()),
        key=lambda path: tuple(int(part) if part.isdigit() else -1 for part in path.name.split(".")),
    )
    if not versions:
        raise UserError(
            f"No RLDS dataset {name!r} under --data_root_dir {data_root_dir}: expected "
            f"{dataset_dir}/<version>/dataset_info.json (e.g. {dataset_dir}/1.0.0/)."
        )
    return versions[-1]


def check_rlds_files(data_root_dir: Path, name: str) -> Path:
    """Before TensorFlow is imported: the dataset's version folder, and every tfrecord shard its
    ``dataset_info.json`` lists (tfds' default file names) complete; returns the version folder."""
    builder_dir = find_builder_dir(data_root_dir, name)
    info = read_json_file(builder_dir / "dataset_info.json")
    file_format = info.get("fileFormat", "tfrecord")
    shards = [
        (f"{info.get('name', name)}-{split['name']}.{file_format}", [int(length) for length in split["shardLengths"]])
        for split in info.get("splits", [])
        if split.get("filepathTemplate", DEFAULT_SHARD_TEMPLATE) == DEFAULT_SHARD_TEMPLATE
    ]
    if not any(lengths for _, lengths in shards):
        raise UserError(f"{builder_dir / 'dataset_info.json'} lists no tfrecord shards: expected a converted dataset")
    for prefix, lengths in shards:
        for index, num_records in enumerate(lengths):
            check_tfrecord_file(builder_dir / f"{prefix}-{index:05d}-of-{len(lengths):05d}", num_records)
    return builder_dir


def open_builder(
    builder_dir: Path, spec: RLDSDatasetSpec, camera_views: tuple[str, ...], with_camera_points: bool = False
) -> Any:
    """The tfds builder of ``builder_dir``, after checking its features and tfrecord files.

    Raises ``KeyError`` naming ``features.json`` and the missing feature (with ``with_camera_points``: each camera's
    depth and intrinsics, ``datasets.geometry``), or ``ValueError`` naming a missing or truncated tfrecord file or a
    depth map the image crop cannot follow.
    """
    tfds = import_tensorflow_datasets()
    builder = tfds.builder_from_directory(str(builder_dir))
    features_file = builder_dir / "features.json"
    _check_features(builder.info.features, spec.required_step_keys(camera_views, with_camera_points), features_file)
    if with_camera_points:
        _check_geometry_shapes(builder.info.features["steps"]["observation"], spec, camera_views, features_file)
    for split_info in builder.info.splits.values():
        for filename, num_records in zip(split_info.filenames, split_info.shard_lengths, strict=True):
            check_tfrecord_file(builder_dir / filename, num_records)
    return builder


def _check_features(features: Any, required_step_keys: tuple[str, ...], features_file: Path) -> None:
    if "steps" not in features:
        raise KeyError(f"{features_file}: no 'steps' feature; expected an RLDS episode with a 'steps' dataset.")
    for key_path in required_step_keys:
        node = features["steps"]
        for part in key_path.split("/"):
            if part not in node:
                raise KeyError(f"{features_file}: missing feature 'steps/{key_path}' (the dataset lacks {part!r}).")
            node = node[part]


def _check_geometry_shapes(
    observation: Any, spec: RLDSDatasetSpec, camera_views: tuple[str, ...], features_file: Path
) -> None:
    for view in camera_views:
        depth_key, intrinsics_key = spec.geometry_obs_keys(view)
        image_shape, depth_shape = observation[spec.image_obs_keys[view]].shape, observation[depth_key].shape
        intrinsics_size = int(np.prod(observation[intrinsics_key].shape))
        if len(depth_shape) not in (2, 3) or depth_shape[2:] not in ((), (1,)) or intrinsics_size != 9:
            raise ValueError(
                f"{features_file}: 'steps/observation/{depth_key}' has shape {list(depth_shape)} and "
                f"'{intrinsics_key}' shape {list(observation[intrinsics_key].shape)}: expected depth [H, W] (or "
                f"[H, W, 1]) and intrinsics [3, 3]"
            )
        check_depth_follows_crop(image_shape[:2], depth_shape[:2], f"{features_file}: 'steps/observation/{depth_key}'")


def check_tfrecord_file(path: Path, expected_records: int) -> None:
    """Walks the record headers of a TFRecord file (no payload reads) and checks its length and record count."""
    if not path.is_file():
        raise UserError(f"Missing tfrecord shard {path}: expected the files dataset_info.json lists")
    file_size = path.stat().st_size
    offset, num_records = 0, 0
    with open(path, "rb") as handle:
        while offset < file_size:
            header = handle.read(_TFRECORD_HEADER.size)
            if len(header) < _TFRECORD_HEADER.size:
                break
            record_length, _ = _TFRECORD_HEADER.unpack(header)
            offset += _TFRECORD_HEADER.size + record_length + _TFRECORD_CRC_BYTES
            handle.seek(offset)
            num_records += 1
    if offset != file_size:
        raise UserError(
            f"Truncated tfrecord file {path}: record {num_records} ends at byte {offset} but the file has "
            f"{file_size} bytes; re-download or re-convert the dataset."
        )
    if num_records != expected_records:
        raise UserError(
            f"Truncated tfrecord file {path}: {num_records} records, dataset_info.json lists {expected_records}."
        )


@contextmanager
def naming_corrupt_data(builder_dirs: list[Path]) -> Iterator[None]:
    """Re-raises TensorFlow's ``DataLossError`` (bad record checksum, cut file) naming the datasets being read."""
    data_loss_error = import_tensorflow().errors.DataLossError
    try:
        yield
    except data_loss_error as error:
        dirs = ", ".join(os.fspath(path) for path in builder_dirs)
        raise RuntimeError(f"Corrupt RLDS data while reading {dirs}: {error.message}") from error


def split_sizes(builder: Any, val_fraction: float) -> tuple[int, int]:
    """(training episodes, validation episodes) of a dataset under ``val_fraction`` (see ``split_for``)."""
    splits = builder.info.splits
    if "val" in splits:
        return splits["train"].num_examples, splits["val"].num_examples
    num_episodes = splits["train"].num_examples
    held_out = holdout_episodes(num_episodes, val_fraction)
    return num_episodes - held_out, held_out


def split_for(builder: Any, train: bool, rank: int, world_size: int, val_fraction: float = 0.0) -> Any:
    """The tfds split (a string, or an even share of one) of this rank's train or val episodes.

    A dataset with a ``val`` split uses ``train`` / ``val``. Otherwise (LIBERO has only ``train``) training reads
    every episode of ``train``, as upstream; with ``val_fraction`` > 0 the LAST ``holdout_episodes(N,
    val_fraction)`` episodes of ``train`` (in the dataset's stored order) are held out as whole episodes:
    training reads ``train[:N - n]``, validation ``train[N - n:]``.
    """
    tfds = import_tensorflow_datasets()
    if "val" in builder.info.splits:
        split = "train" if train else "val"
    else:
        num_train, num_val = split_sizes(builder, val_fraction)
        if not train and num_val == 0:
            raise ValueError(
                f"Dataset {builder.name} has no 'val' split and no episodes are held out: pass --use_val_set True "
                f"with --val_set_fraction > 0 to validate on held-out training episodes."
            )
        split = (f"train[:{num_train}]" if num_val else "train") if train else f"train[{num_train}:]"
    if world_size > 1:
        split = tfds.even_splits(split, n=world_size)[rank]
    num_episodes = builder.info.splits[split].num_examples
    if num_episodes == 0:
        raise ValueError(
            f"Dataset {builder.name} at {builder.data_dir} has no episodes in split {split!r} "
            f"(rank {rank} of {world_size}); it needs more episodes for this split and number of ranks."
        )
    return split


def read_trajectories(
    builder: Any,
    spec: RLDSDatasetSpec,
    camera_views: tuple[str, ...],
    split: Any,
    shuffle_seed: int | None,
    num_parallel_calls: int,
    with_camera_points: bool = False,
) -> Any:
    """A ``tf.data.Dataset`` of standardised trajectories (see ``transforms.restructure_trajectory``).

    With ``shuffle_seed`` the shard order is shuffled (reproducibly); without it files are read in order.
    """
    tfds = import_tensorflow_datasets()
    # No autocaching: tfds would keep small datasets in RAM and warn about partially read caches.
    read_config = tfds.ReadConfig(try_autocache=False, shuffle_seed=shuffle_seed, shuffle_reshuffle_each_iteration=True)
    episodes = builder.as_dataset(
        split=split,
        shuffle_files=shuffle_seed is not None,
        decoders={"steps": tfds.decode.SkipDecoding()},
        read_config=read_config,
    )
    restructure = without_autograph(
        lambda episode: restructure_trajectory(episode, spec, camera_views, with_camera_points)
    )
    return episodes.map(restructure, num_parallel_calls=num_parallel_calls)


def get_dataset_statistics(
    builder: Any, spec: RLDSDatasetSpec, cache_dir: Path | None = None, num_parallel_calls: int = 4
) -> dict[str, Any]:
    """Statistics of all episodes of all splits, with the action mask; computed once, then read from a cache.

    The cache is ``dataset_statistics_<key>.json`` beside the data (or in ``cache_dir`` when the data folder
    is read-only); the key hashes the dataset's identity and file sizes, so a re-converted dataset is recomputed.
    """
    builder_dir = Path(builder.data_dir)
    cache_name = f"dataset_statistics_{_statistics_cache_key(builder)}.json"
    candidates = [builder_dir / cache_name]
    candidates.append((cache_dir or Path.home() / ".cache" / "spatial_forcing") / spec.name / cache_name)
    statistics = cached_statistics(candidates, lambda: _compute_builder_statistics(builder, spec, num_parallel_calls))
    statistics["action"]["mask"] = np.asarray(spec.action_normalization_mask, dtype=bool)
    return statistics


def _statistics_cache_key(builder: Any) -> str:
    builder_dir = Path(builder.data_dir)
    identity = {
        "format": STATISTICS_FORMAT,
        "name": builder.name,
        "version": str(builder.info.version),
        "files": {
            filename: (builder_dir / filename).stat().st_size
            for split_info in builder.info.splits.values()
            for filename in split_info.filenames
        },
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _compute_builder_statistics(builder: Any, spec: RLDSDatasetSpec, num_parallel_calls: int) -> dict[str, Any]:
    all_splits = "+".join(sorted(builder.info.splits.keys()))
    trajectories = read_trajectories(builder, spec, (), all_splits, None, num_parallel_calls)
    actions, proprios = [], []
    with naming_corrupt_data([Path(builder.data_dir)]):
        for trajectory in trajectories.as_numpy_iterator():
            actions.append(trajectory["action"])
            proprios.append(trajectory["observation"]["proprio"])
    return compute_statistics(actions, proprios, where=f"dataset {builder.data_dir}")
