"""Configuration of the RLDS pipeline: the single source of its defaults.

Field names follow upstream's ``RLDSDataset`` / ``FinetuneConfig`` where one exists (``data_root_dir``,
``data_mix`` = ``--dataset_name``, ``resize_resolution``, ``shuffle_buffer_size``, ``train``, ``image_aug``,
``num_images_in_input``, ``use_proprio``).

Distributed training: every rank reads a disjoint, equal share of the episodes (``tfds.even_splits`` of the
split by ``world_size``), so ranks never see the same trajectory. ``rank``/``world_size`` default to those of
the initialised ``torch.distributed`` process group (rank 0 of 1 without one).

Resuming: with ``deterministic=True`` the stream of samples is a pure function of (data, ``seed``, rank,
``world_size``): file order, trajectory interleaving, mixture sampling, shuffling and image augmentation are all
seeded, and augmentation draws its randomness from the sample's index in the stream. A run restarted with
``skip_samples=N`` (N = samples this rank already consumed, i.e. steps x per-rank batch size) therefore yields
exactly the samples N, N+1, ... of the original stream; skipped samples are neither decoded nor augmented.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ImageAugConfig:
    """Training image augmentation, applied per camera in this order (upstream's LIBERO settings)."""

    random_resized_crop_scale: tuple[float, float] = (0.9, 0.9)  # crop area fraction range
    random_resized_crop_ratio: tuple[float, float] = (1.0, 1.0)  # crop aspect ratio range (w / h)
    brightness_max_delta: float = 0.2
    contrast_range: tuple[float, float] = (0.8, 1.2)
    saturation_range: tuple[float, float] = (0.8, 1.2)
    hue_max_delta: float = 0.05
    # False: upstream's dlimp crop, one uniform draw fixes area, aspect and both offsets (boxes on the diagonal);
    # True: four independent draws.
    crop_independent_draws: bool = False


@dataclass
class RLDSConfig:
    """Everything the tf.data pipeline needs; ``RLDSDataset(config, batch_transform)`` builds it."""

    data_root_dir: Path = Path("data/libero")  # holds <dataset_name>/<version>/{*.tfrecord*, dataset_info.json, ...}
    data_mix: str = "libero_spatial_no_noops"  # a dataset or mixture name from registry.MIXTURES
    resize_resolution: tuple[int, int] = (224, 224)  # (height, width) after lanczos3 resizing
    shuffle_buffer_size: int = 100_000  # frames held (as JPEG bytes) by the shuffle buffer
    train: bool = True  # train split (repeated, shuffled) or val split (one ordered pass)
    # Share of the episodes held out for validation when the dataset has no "val" split (the last ones; see
    # rlds.split_for). 0: train on every episode, as upstream.
    val_fraction: float = 0.0
    image_aug: bool = False
    image_aug_config: ImageAugConfig = field(default_factory=ImageAugConfig)
    num_images_in_input: int = 2  # 1: primary camera only; 2: primary + wrist
    use_proprio: bool = True  # frames carry observation/proprio
    # Frames carry observation/points_<view>: camera-frame point maps from each camera's depth and intrinsics,
    # resized and cropped like the image (datasets.geometry); the dataset must hold them. The shuffle buffer then
    # also holds each camera's float32 depth (4 bytes per pixel).
    with_camera_points: bool = False

    # Reproducibility, resumption and distributed sharding (see module docstring).
    seed: int = 7
    deterministic: bool = True
    skip_samples: int = 0
    rank: int | None = None
    world_size: int | None = None

    # Host resources.
    num_parallel_calls: int = 16  # parallelism of the per-trajectory and per-frame map stages
    tf_num_threads: int = 0  # size of TensorFlow's op and tf.data thread pools; 0 = one per core
    ram_budget_gb: int = 1  # cap for tf.data autotuned buffers (prefetch), excluding the shuffle buffer
    statistics_cache_dir: Path | None = None  # where statistics go if the data folder is read-only

    def __post_init__(self) -> None:
        if self.num_images_in_input not in (1, 2):
            raise ValueError(f"num_images_in_input must be 1 or 2 (primary [+ wrist]); got {self.num_images_in_input}.")
        if self.shuffle_buffer_size < 1:
            raise ValueError(f"shuffle_buffer_size must be >= 1; got {self.shuffle_buffer_size}.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1); got {self.val_fraction}.")
        if self.skip_samples < 0:
            raise ValueError(f"skip_samples must be >= 0; got {self.skip_samples}.")
        self.data_root_dir = Path(self.data_root_dir)

    @property
    def camera_views(self) -> tuple[str, ...]:
        return ("primary", "wrist")[: self.num_images_in_input]


def holdout_episodes(num_episodes: int, val_fraction: float) -> int:
    """Episodes held out for validation: ``round(val_fraction * num_episodes)``, at least 1 and at most N - 1."""
    if val_fraction <= 0:
        return 0
    return min(max(1, round(val_fraction * num_episodes)), num_episodes - 1)
