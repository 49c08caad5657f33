"""The tf.data pipeline from RLDS episodes to training frames (upstream's ``make_interleaved_dataset``).

Per dataset: read this rank's episodes (shard order shuffled) -> standardise -> normalise -> drop unlabeled
episodes -> repeat (train) -> chunk actions -> interleave into frames. Then: sample across datasets with
size-balanced weights -> shuffle (train; the buffer holds JPEG bytes, not decoded images) -> number the samples
-> skip the already-consumed ones -> decode, resize and augment.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from prismatic.util.seeds import derive_seed
from prismatic.vla.datasets.config import RLDSConfig
from prismatic.vla.datasets.registry import RLDSDatasetSpec, resolve_data_mix
from prismatic.vla.datasets.rlds import (
    find_builder_dir,
    get_dataset_statistics,
    open_builder,
    read_trajectories,
    split_for,
)
from prismatic.vla.datasets.tf_runtime import import_tensorflow, without_autograph
from prismatic.vla.datasets.transforms import chunk_actions, has_language, make_frame_transform, normalize_trajectory


@dataclass
class DatasetSource:
    """One dataset of a mixture, opened and validated, with its statistics and balanced sampling weight."""

    spec: RLDSDatasetSpec
    builder: Any  # tfds.core.DatasetBuilder
    statistics: dict[str, Any]
    weight: float  # share of the mixture's samples; the weights of a mixture sum to 1


def load_sources(config: RLDSConfig) -> list[DatasetSource]:
    """Opens every dataset of ``config.data_mix`` and loads (or computes and caches) its statistics."""
    import_tensorflow(config.tf_num_threads)
    sources = []
    for spec, weight in resolve_data_mix(config.data_mix):
        builder = open_builder(
            find_builder_dir(config.data_root_dir, spec.name), spec, config.camera_views, config.with_camera_points
        )
        statistics = get_dataset_statistics(builder, spec, config.statistics_cache_dir, config.num_parallel_calls)
        sources.append(DatasetSource(spec, builder, statistics, weight * statistics["num_transitions"]))
    platforms = {source.spec.platform for source in sources}
    if len(platforms) > 1:
        raise ValueError(f"Mixture {config.data_mix!r} mixes robot platforms {sorted(p.name for p in platforms)}.")
    total = sum(source.weight for source in sources)
    for source in sources:
        source.weight /= total
    return sources


def build_dataset(config: RLDSConfig, sources: list[DatasetSource], rank: int, world_size: int) -> Any:
    """The ``tf.data.Dataset`` of frames for this rank: infinite and shuffled for training, one ordered pass for val.

    Each frame: ``observation/image_<view>`` [1, H, W, 3] uint8, ``observation/proprio`` [1, P] float32 (with
    ``use_proprio``), ``observation/points_<view>`` [1, H, W, 3] float32 (with ``with_camera_points``),
    ``observation/timestep`` [1] int32, ``task/language_instruction`` bytes, ``action`` [C, A] float32
    (normalised), ``dataset_name`` bytes.
    """
    tf = import_tensorflow(config.tf_num_threads)
    streams = []
    for index, source in enumerate(sources):
        split = split_for(source.builder, config.train, rank, world_size, config.val_fraction)
        shuffle_seed = derive_seed(config.seed, rank, index, 0) if config.train else None
        platform = source.spec.platform
        trajectories = read_trajectories(
            source.builder,
            source.spec,
            config.camera_views,
            split,
            shuffle_seed,
            config.num_parallel_calls,
            config.with_camera_points,
        )
        normalize = partial(
            normalize_trajectory,
            statistics=source.statistics,
            normalization_type=platform.action_proprio_normalization_type,
        )
        trajectories = trajectories.map(without_autograph(normalize), num_parallel_calls=config.num_parallel_calls)
        trajectories = trajectories.filter(without_autograph(has_language))
        if config.train:
            trajectories = trajectories.repeat()
        chunks = trajectories.map(
            without_autograph(partial(chunk_actions, num_actions_chunk=platform.num_actions_chunk)),
            num_parallel_calls=config.num_parallel_calls,
        )
        frames = chunks.interleave(
            without_autograph(tf.data.Dataset.from_tensor_slices),
            cycle_length=config.num_parallel_calls,
            num_parallel_calls=config.num_parallel_calls,
        )
        streams.append(frames)

    if len(streams) == 1:
        dataset = streams[0]
    else:
        dataset = tf.data.Dataset.sample_from_datasets(
            streams, weights=[source.weight for source in sources], seed=derive_seed(config.seed, rank, 0, 1)
        )
    if config.train:
        dataset = dataset.shuffle(config.shuffle_buffer_size, seed=derive_seed(config.seed, rank, 0, 2))
    frame_transform = make_frame_transform(
        config.camera_views,
        config.resize_resolution,
        config.image_aug_config if config.image_aug else None,
        derive_seed(config.seed, rank, 0, 3),
        keep_proprio=config.use_proprio,
        with_camera_points=config.with_camera_points,
    )
    dataset = dataset.enumerate().skip(config.skip_samples)
    dataset = dataset.map(without_autograph(frame_transform), num_parallel_calls=config.num_parallel_calls)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)

    options = tf.data.Options()
    options.deterministic = config.deterministic
    options.autotune.ram_budget = config.ram_budget_gb * 1024**3
    if config.tf_num_threads > 0:
        options.threading.private_threadpool_size = config.tf_num_threads
    return dataset.with_options(options)
