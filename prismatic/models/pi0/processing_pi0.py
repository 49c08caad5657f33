"""pi0's inputs from camera frames, a prompt and a state: for one query (serving, evaluation) and for the training
batches of the RLDS / LeRobot pipeline.

Frames are resized with padding to ``image_size`` (bilinear, aspect kept, zero padding split floor top/left, as
openpi's ``resize_with_pad``) and mapped to [-1, 1]; a letterbox mask marks the real pixels. Cameras the data lacks
(pi0 reads ``len(config.image_keys)``) are images of -1 with mask False, as lerobot feeds them. State and actions are
zero-padded to ``max_state_dim`` / ``max_action_dim``.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import default_collate

from prismatic.models.pi0.augmentation_pi0 import Pi0Augmentation
from prismatic.models.pi0.configuration_pi0 import Pi0Config
from prismatic.models.pi0.modeling_pi0 import Pi0Observation
from prismatic.models.pi0.tokenization_pi0 import Pi0Tokenizer
from prismatic.vla.image_utils import resize_bilinear

TOKENIZER_NAME = "tokenizer.model"
# The batch key of the images before colour augmentation (the Spatial Forcing teacher's), with --image_aug True.
IMAGES_BEFORE_COLOUR = "images_before_colour"


def letterbox_box(height: int, width: int, size: int) -> tuple[slice, slice]:
    """Where a ``height`` x ``width`` frame lands in ``resize_with_pad``'s ``size`` x ``size`` output: (rows,
    columns) of the resized frame (aspect kept, top/left padding = floor(half))."""
    ratio = max(width / size, height / size)
    new_height, new_width = int(height / ratio), int(width / ratio)
    top, left = (size - new_height) // 2, (size - new_width) // 2
    return slice(top, top + new_height), slice(left, left + new_width)


def resize_with_pad(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 frame ``[H, W, 3]`` as ``[size, size, 3]`` (bilinear, aspect kept, zero padding, top/left =
    floor(half)) and its letterbox mask ``[size, size]`` (True on the resized frame)."""
    height, width = image.shape[:2]
    mask = np.zeros((size, size), dtype=bool)
    if (height, width) == (size, size):
        mask[:] = True
        return image, mask
    rows, columns = letterbox_box(height, width, size)
    resized_wh = (columns.stop - columns.start, rows.stop - rows.start)
    resized = np.asarray(Image.fromarray(image).resize(resized_wh, Image.BILINEAR))
    padded = np.zeros((size, size, 3), dtype=np.uint8)
    padded[rows, columns] = resized
    mask[rows, columns] = True
    return padded, mask


def points_with_pad(points: np.ndarray, size: int) -> np.ndarray:
    """A camera's point map ``[H, W, 3]`` (the pixels of its frame) placed as ``resize_with_pad`` places the frame:
    bilinear to the resized frame's size, NaN over the letterbox padding (no geometry: the geometry teacher puts it
    at the far corner of the workspace, and the alignment mask leaves it out)."""
    height, width = points.shape[:2]
    padded = np.full((size, size, 3), np.nan, dtype=np.float32)
    rows, columns = letterbox_box(height, width, size)
    resized_hw = (rows.stop - rows.start, columns.stop - columns.start)
    padded[rows, columns] = points if (height, width) == resized_hw else resize_bilinear(points, resized_hw)
    return padded


def pad_last_dim(values: Tensor, size: int) -> Tensor:
    """``values`` ``[..., d]`` (float32) zero-padded to ``[..., size]``; refused when ``d > size``."""
    if values.shape[-1] > size:
        raise ValueError(f"a vector of {values.shape[-1]} dims does not fit pi0's {size} padded dims")
    return torch.nn.functional.pad(values.float(), (0, size - values.shape[-1]))


@dataclass
class Pi0Processor:
    """Turns frames, a prompt and a normalised state into pi0's tensors (one sample, no batch axis)."""

    config: Pi0Config
    tokenizer: Pi0Tokenizer

    @classmethod
    def from_folder(cls, folder: str | Path, config: Pi0Config) -> Pi0Processor:
        """The processor of a pi0 folder holding PaliGemma's ``tokenizer.model``."""
        tokenizer = Pi0Tokenizer(Path(folder) / TOKENIZER_NAME, config.tokenizer_max_length)
        tokenizer.check_vocab(config.vocab_size)
        return cls(config, tokenizer)

    def save_pretrained(self, folder: str | Path) -> None:
        """Copy the tokenizer into a checkpoint folder."""
        shutil.copyfile(self.tokenizer.path, Path(folder) / TOKENIZER_NAME)

    def images(self, frames: Sequence[np.ndarray]) -> dict[str, Tensor]:
        """``images`` ``[N, 3, S, S]`` in [-1, 1], ``image_masks`` ``[N]`` and ``letterbox_masks`` ``[N, S, S]`` for
        the frames of the first cameras (uint8 ``[H, W, 3]``); the config's remaining cameras are absent."""
        size, cameras = self.config.image_size, self.config.num_cameras
        if len(frames) > cameras:
            raise ValueError(f"{len(frames)} camera frames: pi0 reads at most {cameras} ({self.config.image_keys})")
        images = torch.full((cameras, 3, size, size), -1.0)
        letterbox = torch.zeros(cameras, size, size, dtype=torch.bool)
        for index, frame in enumerate(frames):
            padded, mask = resize_with_pad(np.asarray(frame, dtype=np.uint8), size)
            images[index] = torch.from_numpy(padded).permute(2, 0, 1).float() / 255.0 * 2.0 - 1.0
            letterbox[index] = torch.from_numpy(mask)
        image_masks = torch.arange(cameras) < len(frames)
        return {"images": images, "image_masks": image_masks, "letterbox_masks": letterbox}

    def camera_points(self, point_maps: Sequence[np.ndarray]) -> Tensor:
        """``camera_points`` ``[N, S, S, 3]`` for the geometry teacher: the point maps of the first cameras (each
        ``[H, W, 3]``, under its frame's pixels) placed as :meth:`images` places the frames; NaN for the padding
        and for the config's remaining, absent cameras."""
        size, cameras = self.config.image_size, self.config.num_cameras
        points = torch.full((cameras, size, size, 3), float("nan"))
        for index, point_map in enumerate(point_maps):
            points[index] = torch.from_numpy(points_with_pad(np.asarray(point_map, dtype=np.float32), size))
        return points

    def __call__(self, frames: Sequence[np.ndarray], prompt: str, state: np.ndarray | Tensor) -> dict[str, Tensor]:
        """One sample's inputs: the image tensors, ``lang_tokens``/``lang_masks`` ``[L]`` and the padded ``state``."""
        tokens, masks = self.tokenizer([prompt])
        state = pad_last_dim(torch.from_numpy(np.array(state, dtype=np.float32)).reshape(-1), self.config.max_state_dim)
        return {**self.images(frames), "lang_tokens": tokens[0], "lang_masks": masks[0], "state": state}


def observation_from_batch(batch: dict[str, Tensor], device: torch.device | str = "cpu") -> Pi0Observation:
    """The ``Pi0Observation`` of a collated batch of :class:`Pi0Processor` samples."""
    return Pi0Observation(
        batch["images"].to(device),
        batch["image_masks"].to(device),
        batch["lang_tokens"].to(device),
        batch["lang_masks"].to(device),
        batch["state"].to(device),
    )


@dataclass
class Pi0BatchTransform:
    """An RLDS / LeRobot frame (as ``RLDSBatchTransform`` takes it) -> one pi0 training sample: the third-person
    camera then the wrist cameras (the first ``num_images``), the instruction, the normalised proprio as the state,
    the normalised action chunk ``[C, A]`` padded to ``max_action_dim`` and, when the frame carries point maps,
    their ``camera_points``. The frames are taken as the data pipeline gives them (un-augmented: pi0's augmentation
    is :class:`Pi0Collator`'s, on the collated batch)."""

    processor: Pi0Processor
    num_images: int

    def __call__(self, rlds_batch: dict[str, Any]) -> dict[str, Any]:
        observation = rlds_batch["observation"]
        wrist_keys = sorted(key for key in observation if key.startswith("image_") and "wrist" in key)
        keys = ["image_primary", *wrist_keys][: self.num_images]
        if "proprio" not in observation:
            raise KeyError("pi0 reads the state: the frame has no observation/proprio (RLDSConfig.use_proprio).")
        sample = self.processor(
            [observation[key][0] for key in keys],
            rlds_batch["task"]["language_instruction"].decode(),
            observation["proprio"][0],
        )
        if "points_primary" in observation:  # --teacher geometry
            sample["camera_points"] = self.processor.camera_points(
                [observation[key.replace("image_", "points_", 1)][0] for key in keys]
            )
        actions = torch.as_tensor(np.asarray(rlds_batch["action"], dtype=np.float32))
        sample["actions"] = pad_last_dim(actions, self.processor.config.max_action_dim)
        sample["dataset_name"] = rlds_batch["dataset_name"].decode()
        return sample


@dataclass
class Pi0Collator:
    """Collates :class:`Pi0BatchTransform` samples; with ``augmentation`` (``--image_aug True`` in training), each
    batch's ``images`` augmented and their copy before colour augmentation as ``images_before_colour``. Batches are
    counted from ``next_batch`` (a resumed run: the batches its checkpoint consumed), so batch k draws the same
    augmentation in an interrupted and an uninterrupted run (the loader calls it in order: ``num_workers=0``)."""

    augmentation: Pi0Augmentation | None = None
    next_batch: int = 0

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = default_collate(samples)
        if self.augmentation is not None:
            batch["images"], batch[IMAGES_BEFORE_COLOUR] = self.augmentation(batch["images"], self.next_batch)
        self.next_batch += 1
        return batch
