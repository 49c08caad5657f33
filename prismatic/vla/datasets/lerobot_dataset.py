"""``LeRobotDataset``: a torch ``IterableDataset`` of training frames read straight from a LeRobot folder (no TF).

Frames have the RLDS pipeline's layout, so ``RLDSBatchTransform`` and the collator are shared; so are the statistics
(``compute_statistics``, same cache format), the normalisation (``prismatic.vla.normalization.normalize``,
training's rule) and the augmentation parameters (``ImageAugConfig``). Differences from the tf.data path, all by design:

- Shuffling: each epoch is a seeded permutation of this rank's (episode, step) indices; memory holds the index
  arrays and the numeric columns, never decoded images (bounded RAM without a shuffle buffer).
- Chunks: as the RLDS path (``transforms.chunk_actions``) and OpenVLA-OFT, only steps whose chunk lies inside the
  episode start one: the last C - 1 steps of every episode never do (no padded targets at episode ends).
- Resuming: sample n of the stream is (epoch n // M, position n % M), so ``skip_samples`` costs nothing.
- DDP: each rank reads a disjoint, contiguous share of the train episodes.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from prismatic.util.cli import UserError
from prismatic.util.seeds import derive_seed
from prismatic.vla.constants import NormalizationType, PlatformConstants
from prismatic.vla.datasets.augmentation import AugmentationParams, apply_augmentation, sample_params
from prismatic.vla.datasets.config import ImageAugConfig, holdout_episodes
from prismatic.vla.datasets.geometry import points_from_depth
from prismatic.vla.datasets.lerobot import (
    INFO_FILE,
    LeRobotMapping,
    frame_tolerance,
    get_lerobot_statistics,
    open_lerobot,
    read_info,
    resolve_mapping,
    split_episodes,
)
from prismatic.vla.datasets.video import VideoFrameReader
from prismatic.vla.image_utils import crop_and_resize_bilinear, resize_bilinear, resize_lanczos3, round_to_uint8
from prismatic.vla.normalization import normalize
from prismatic.vla.policy_config import EmbodimentConfig

PLATFORM_NAME = "lerobot"
NORMALIZATION = NormalizationType.BOUNDS_Q99
CAMERA_VIEWS = ("primary", "wrist", "wrist_2")  # frame keys image_<view>; the batch transform sorts wrist keys


@dataclass
class LeRobotConfig:
    """Everything ``LeRobotDataset`` needs; the fields mirror ``RLDSConfig`` where they mean the same."""

    data_root_dir: Path
    dataset_name: str
    mapping: LeRobotMapping = field(default_factory=LeRobotMapping)
    num_actions_chunk: int = 8
    resize_resolution: tuple[int, int] = (224, 224)
    train: bool = True
    image_aug: bool = False
    image_aug_config: ImageAugConfig = field(default_factory=ImageAugConfig)
    val_fraction: float = 0.0  # share of episodes held out (the last ones) for validation
    num_images_in_input: int = 2
    use_proprio: bool = True
    seed: int = 7
    skip_samples: int = 0
    rank: int = 0
    world_size: int = 1
    statistics_cache_dir: Path | None = None
    with_camera_points: bool = False  # frames carry points_<view> (needs mapping.depth_keys; datasets.geometry)
    frame_cache_mb: int = 1024  # decoded, resized frames kept in memory (the first ones read, up to this size; 0: none)


class LeRobotDataset(IterableDataset):
    """Frames of one LeRobot dataset through ``batch_transform`` (e.g. ``RLDSBatchTransform``).

    Opening validates the data and the mapping and loads (or computes and caches) the statistics, available as
    ``dataset_statistics`` (``{dataset_name: statistics}``, upstream's format).
    """

    def __init__(self, config: LeRobotConfig, batch_transform: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        super().__init__()
        self.config = config
        self.batch_transform = batch_transform
        self.source = open_lerobot(config.data_root_dir, config.dataset_name, config.mapping)
        cameras = self.source.mapping.camera_keys
        if not 1 <= config.num_images_in_input <= len(cameras):
            raise UserError(
                f"--num_images_in_input {config.num_images_in_input} does not match LeRobot dataset "
                f"{config.dataset_name!r}, mapped to cameras {list(cameras)}: expected 1..{len(cameras)}."
            )
        if config.num_actions_chunk < 1:
            raise UserError(f"--num_actions_chunk must be >= 1, got {config.num_actions_chunk}.")
        self.cameras = cameras[: config.num_images_in_input]
        if config.with_camera_points and not self.source.mapping.depth_keys:
            raise UserError(missing_depth_message(config.dataset_name))
        self.statistics = get_lerobot_statistics(self.source, config.statistics_cache_dir)
        self.dataset_statistics = {config.dataset_name: self.statistics}
        self.episodes = self._rank_episodes()
        # [M]: the rows that start a chunk, max(T - C + 1, 0) per episode
        self.rows = np.concatenate(
            [e.row_start + np.arange(max(e.length - config.num_actions_chunk + 1, 0)) for e in self.episodes]
        )
        if not len(self.rows):
            raise UserError(
                f"LeRobot dataset {config.dataset_name!r}: no episode of this split has --num_actions_chunk "
                f"{config.num_actions_chunk} steps (longest: {max(e.length for e in self.episodes)})."
            )
        self.episode_of_row = {row: e for e in self.episodes for row in range(e.row_start, e.row_start + e.length)}
        self.video_reader = VideoFrameReader()
        self._frames: dict[tuple[str, int], np.ndarray] = {}  # (camera, row) -> resized frame, read-only
        self._frame_bytes = 0

    def _rank_episodes(self) -> list:
        config = self.config
        episodes = split_episodes(self.source, config.train, config.val_fraction)
        shares = np.array_split(np.arange(len(episodes)), config.world_size)
        mine = [episodes[i] for i in shares[config.rank]] if config.train else episodes
        if not mine:
            split = "train" if config.train else "val"
            raise UserError(
                f"LeRobot dataset {self.source.root} has {len(episodes)} {split} episodes, too few for rank "
                f"{config.rank} of {config.world_size}; expected at least one episode per rank."
            )
        return mine

    def episode_counts(self) -> dict[str, dict[str, int]]:
        """Training and validation episodes under the config's ``val_fraction`` (all ranks)."""
        num_val = holdout_episodes(len(self.source.episodes), self.config.val_fraction)
        return {self.config.dataset_name: {"train": len(self.source.episodes) - num_val, "val": num_val}}

    @property
    def platform(self) -> PlatformConstants:
        """Chunk length and action/proprio dims from the data and the config (not from a dataset name)."""
        return PlatformConstants(
            PLATFORM_NAME, self.config.num_actions_chunk, self.source.action_dim, self.source.proprio_dim, NORMALIZATION
        )

    def embodiment(self) -> EmbodimentConfig:
        """The embodiment saved with the checkpoint (``PolicyConfig.embodiment``)."""
        gripper = self.source.mapping.gripper
        return EmbodimentConfig.from_platform(
            self.platform,
            camera_names=list(self.cameras),
            gripper=gripper,
            gripper_dims=[self.source.action_dim - 1] if gripper == "libero" else [],
        )

    def policy_data(self) -> dict[str, Any]:
        """The data record saved with the checkpoint (``PolicyConfig.data``): source and feature mapping."""
        return {
            **self.source.mapping.to_dict(),
            "camera_keys": list(self.cameras),
            "dataset_name": self.config.dataset_name,
            "data_root_dir": str(self.config.data_root_dir),
            "codebase_version": self.source.version,
            "fps": self.source.fps,
        }

    def frame_at(self, row: int, sample_index: int) -> dict[str, Any]:
        """The frame (RLDS pipeline layout) whose observation is data row ``row``."""
        config, source = self.config, self.source
        episode = self.episode_of_row[row]
        chunk_rows = row + np.arange(config.num_actions_chunk)  # [C], inside the episode (see self.rows)
        actions = normalize(
            source.actions[chunk_rows], self.statistics["action"], NORMALIZATION, zero_constant_dims=True
        )
        observation: dict[str, Any] = {"timestep": np.array([row - episode.row_start], np.int32)}
        if config.use_proprio:
            proprio = normalize(
                source.states[row : row + 1], self.statistics["proprio"], NORMALIZATION, zero_constant_dims=True
            )
            observation["proprio"] = proprio.astype(np.float32)  # [1, P]
        for camera_index, (camera, view) in enumerate(zip(self.cameras, CAMERA_VIEWS, strict=False)):
            image = self.resized_frame(camera, row)
            params = None
            if config.image_aug:
                params = sample_params(
                    config.image_aug_config, derive_seed(config.seed, config.rank), sample_index, camera_index
                )
                image = apply_augmentation(image, params)
            observation[f"image_{view}"] = image[None]  # [1, H, W, 3]
            if config.with_camera_points:
                observation[f"points_{view}"] = self.camera_points(camera_index, row, params)[None]  # [1, H, W, 3]
        return {
            "observation": observation,
            "task": {"language_instruction": source.instructions[row].encode()},
            "action": actions.astype(np.float32),  # [C, A]
            "dataset_name": config.dataset_name.encode(),
        }

    def camera_points(self, camera_index: int, row: int, params: AugmentationParams | None) -> np.ndarray:
        """The [H, W, 3] float32 point map of camera ``camera_index`` at data row ``row``, resized and cropped like
        its image (``datasets.geometry``)."""
        mapping, size = self.source.mapping, self.config.resize_resolution
        depth = self.source.depth_at(mapping.depth_keys[camera_index], row)
        intrinsics = self.source.intrinsics[mapping.intrinsics_keys[camera_index]][row]
        points = resize_bilinear(points_from_depth(depth, intrinsics), size)
        if params is not None:
            points = crop_and_resize_bilinear(points, params.crop_box, size[0])
        return points

    def resized_frame(self, camera: str, row: int) -> np.ndarray:
        """The [H, W, 3] uint8 frame of ``camera`` at data row ``row`` at the resize resolution (lanczos3), from the
        frame cache when there: decoding (a video seek) and resizing took ~17 % of a tiny model's training step."""
        if (image := self._frames.get((camera, row))) is not None:
            return image
        image = round_to_uint8(resize_lanczos3(self.decode_image(camera, row), self.config.resize_resolution))
        if self._frame_bytes + image.nbytes <= self.config.frame_cache_mb * 2**20:
            image.flags.writeable = False  # shared by every later sample of this frame
            self._frames[(camera, row)] = image
            self._frame_bytes += image.nbytes
        return image

    def decode_image(self, camera: str, row: int) -> np.ndarray:
        """The stored [H, W, 3] uint8 frame of ``camera`` at data row ``row``."""
        if self.source.camera_dtypes[camera] == "image":
            return np.asarray(Image.open(io.BytesIO(self.source.images[camera][row])).convert("RGB"))
        path, offset = self.episode_of_row[row].videos[camera]
        timestamp = offset + float(self.source.timestamps[row])
        return self.video_reader.read(path, timestamp, frame_tolerance(self.source.fps))

    def sample_rows(self) -> Iterator[tuple[int, int]]:
        """(sample index, data row) of this rank's stream from ``skip_samples`` on: infinite and shuffled per epoch
        for training, one ordered pass for validation."""
        config, num_rows = self.config, len(self.rows)
        if not config.train:
            yield from enumerate(self.rows.tolist())
            return
        sample_index = config.skip_samples
        while True:
            epoch, position = divmod(sample_index, num_rows)
            order = np.random.default_rng(derive_seed(config.seed, config.rank, epoch, 4)).permutation(num_rows)
            for offset in range(position, num_rows):
                yield sample_index, int(self.rows[order[offset]])
                sample_index += 1

    def iter_frames(self) -> Iterator[dict[str, Any]]:
        """The frames as nested dicts of numpy arrays, before ``batch_transform``."""
        for sample_index, row in self.sample_rows():
            yield self.frame_at(row, sample_index)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        if worker is not None and worker.num_workers > 1:
            raise RuntimeError(f"LeRobotDataset runs in one DataLoader process; got num_workers={worker.num_workers}.")
        for frame in self.iter_frames():
            yield self.batch_transform(frame)

    def __len__(self) -> int:
        return int(self.statistics["num_transitions"])


def _keys(flag_value: str) -> tuple[str, ...]:
    return tuple(key.strip() for key in flag_value.split(",") if key.strip())


def mapping_from_flags(cfg: Any) -> LeRobotMapping:
    """The feature mapping of the training flags ``--lerobot_camera_keys`` (comma-separated), ``--lerobot_state_key``,
    ``--lerobot_action_key``, ``--lerobot_gripper`` and, where the config has them, ``--lerobot_depth_keys`` /
    ``--lerobot_intrinsics_keys``."""
    return LeRobotMapping(
        _keys(cfg.lerobot_camera_keys),
        cfg.lerobot_state_key,
        cfg.lerobot_action_key,
        depth_keys=_keys(getattr(cfg, "lerobot_depth_keys", "")),
        intrinsics_keys=_keys(getattr(cfg, "lerobot_intrinsics_keys", "")),
        gripper=cfg.lerobot_gripper,
    )


def missing_depth_message(dataset_name: str) -> str:
    """The one line for LeRobot data read without depth where the teacher needs it."""
    return (
        f"--teacher geometry needs depth, and LeRobot dataset {dataset_name!r} is read without it: expected "
        f"--lerobot_depth_keys and --lerobot_intrinsics_keys naming each camera's depth [H, W] and intrinsics [3, 3] "
        f"features"
    )


def lerobot_input_flags(cfg: Any) -> dict[str, object]:
    """What a LeRobot dataset holds, as the values of ``--num_images_in_input`` and ``--use_proprio``: its cameras
    (``--lerobot_camera_keys``, or every image feature) and its state (the mapping requires one). Reads info.json."""
    root = Path(cfg.data_root_dir) / cfg.dataset_name
    mapping = resolve_mapping(mapping_from_flags(cfg), read_info(root).get("features", {}), root / INFO_FILE)
    return {"num_images_in_input": len(mapping.camera_keys), "use_proprio": True}


def lerobot_platform(cfg: Any) -> PlatformConstants:
    """Opens the dataset of the training flags (every check of ``open_lerobot``: mapping, columns, shapes, files),
    checks the number of cameras and the chunk length, and returns the platform constants of the data: dims from the
    dataset, chunk length from ``--num_actions_chunk``. Writes nothing."""
    source = open_lerobot(cfg.data_root_dir, cfg.dataset_name, mapping_from_flags(cfg))
    cameras = source.mapping.camera_keys
    if not 1 <= cfg.num_images_in_input <= len(cameras):
        raise UserError(
            f"--num_images_in_input {cfg.num_images_in_input} does not match LeRobot dataset {cfg.dataset_name!r}, "
            f"mapped to cameras {list(cameras)}: expected 1..{len(cameras)}."
        )
    if cfg.num_actions_chunk < 1:
        raise UserError(f"--num_actions_chunk must be >= 1, got {cfg.num_actions_chunk}.")
    return PlatformConstants(PLATFORM_NAME, cfg.num_actions_chunk, source.action_dim, source.proprio_dim, NORMALIZATION)
