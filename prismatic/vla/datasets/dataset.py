"""``RLDSDataset``: the torch ``IterableDataset`` over the tf.data pipeline, one disjoint share per DDP rank."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from prismatic.vla.constants import LIBERO, PlatformConstants
from prismatic.vla.datasets.config import RLDSConfig
from prismatic.vla.datasets.pipeline import build_dataset, load_sources
from prismatic.vla.datasets.rlds import naming_corrupt_data, split_sizes
from prismatic.vla.policy_config import EmbodimentConfig


def resolve_rank(config: RLDSConfig) -> tuple[int, int]:
    """(rank, world_size) from the config, else from the initialised torch.distributed group, else (0, 1)."""
    if config.rank is not None or config.world_size is not None:
        if config.rank is None or config.world_size is None or not 0 <= config.rank < config.world_size:
            raise ValueError(
                f"RLDSConfig needs both rank and world_size with 0 <= rank < world_size; "
                f"got rank={config.rank}, world_size={config.world_size}."
            )
        return config.rank, config.world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class RLDSDataset(IterableDataset):
    """Frames of an RLDS dataset or mixture, passed through ``batch_transform`` (e.g. ``RLDSBatchTransform``).

    Opening validates the data (features, tfrecord integrity) and loads or computes the statistics, available as
    ``dataset_statistics`` (``{dataset_name: statistics}``, upstream's format). Iterating builds the tf.data
    pipeline; use it with ``DataLoader(num_workers=0)`` as upstream does (TensorFlow parallelises internally).
    ``len()`` is the number of transitions in the data (all splits, all ranks), as upstream reports it.
    """

    def __init__(self, config: RLDSConfig, batch_transform: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        super().__init__()
        self.config = config
        self.batch_transform = batch_transform
        self.rank, self.world_size = resolve_rank(config)
        self.sources = load_sources(config)
        self.dataset_statistics = {source.spec.name: source.statistics for source in self.sources}
        self.dataset_length = sum(source.statistics["num_transitions"] for source in self.sources)

    @property
    def platform(self) -> PlatformConstants:
        """Chunk length, action/proprio dims and normalisation of the data (one platform per mixture)."""
        return self.sources[0].spec.platform

    def embodiment(self) -> EmbodimentConfig:
        """The embodiment saved with the checkpoint (``PolicyConfig.embodiment``); cameras are the RLDS image keys."""
        cameras = [self.sources[0].spec.image_obs_keys[view] for view in self.config.camera_views]
        gripper = "libero" if self.platform.name == LIBERO.name else "none"
        return EmbodimentConfig.from_platform(self.platform, camera_names=cameras, gripper=gripper)

    def episode_counts(self) -> dict[str, dict[str, int]]:
        """Training and validation episodes per dataset under the config's ``val_fraction``."""
        counts = {}
        for source in self.sources:
            num_train, num_val = split_sizes(source.builder, self.config.val_fraction)
            counts[source.spec.name] = {"train": num_train, "val": num_val}
        return counts

    def policy_data(self) -> dict[str, Any]:
        """The data record saved with the checkpoint (``PolicyConfig.data``)."""
        return {"format": "rlds", "dataset_name": self.config.data_mix, "data_root_dir": str(self.config.data_root_dir)}

    @property
    def builder_dirs(self) -> list[Path]:
        return [Path(source.builder.data_dir) for source in self.sources]

    def make_tf_dataset(self) -> Any:
        """A fresh ``tf.data.Dataset`` of this rank's frames (see ``pipeline.build_dataset``)."""
        return build_dataset(self.config, self.sources, self.rank, self.world_size)

    def iter_frames(self) -> Iterator[dict[str, Any]]:
        """The frames as nested dicts of numpy arrays, before ``batch_transform``."""
        with naming_corrupt_data(self.builder_dirs):
            yield from self.make_tf_dataset().as_numpy_iterator()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        if worker is not None and worker.num_workers > 1:
            raise RuntimeError(
                f"RLDSDataset runs in one DataLoader process; got num_workers={worker.num_workers} (use 0, "
                "tf.data already parallelises reading and decoding)."
            )
        for frame in self.iter_frames():
            yield self.batch_transform(frame)

    def __len__(self) -> int:
        return self.dataset_length
