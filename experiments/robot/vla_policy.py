"""The OpenVLA-OFT / Spatial Forcing policy: a checkpoint folder served through :class:`Policy`.

Per query, as upstream's ``get_vla_action``: the third-person image and (with ``num_images_in_input`` > 1) every
wrist image, each center-cropped when ``center_crop``, go through the processor and are stacked on channels; the
proprio state is normalised with the checkpoint's statistics; ``predict_action`` returns the un-normalised chunk.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from experiments.robot.image_utils import (
    OPENVLA_IMAGE_SIZE,
    center_crop_image,
    check_image_format,
    resize_image_for_policy,
)
from experiments.robot.libero.config import GenerateConfig
from experiments.robot.policy import Observation
from prismatic.models.load import LoadedVLA, load_vla
from prismatic.vla.constants import NormalizationType, PlatformConstants, constants_for
from prismatic.vla.prompt import build_prompt


def normalize_proprio(
    proprio: np.ndarray, proprio_stats: dict[str, Any], normalization_type: NormalizationType | str
) -> np.ndarray:
    """Map the raw state to [-1, 1] as upstream's evaluation does: ``2 (x - low) / (high - low + 1e-8) - 1`` where
    the stats' ``mask`` allows, then clip (BOUNDS: min/max, BOUNDS_Q99: q01/q99; no zeroing of constant dims)."""
    normalization_type = NormalizationType(normalization_type)
    bounds = {NormalizationType.BOUNDS: ("min", "max"), NormalizationType.BOUNDS_Q99: ("q01", "q99")}
    if normalization_type not in bounds:
        raise ValueError(f"Cannot normalise proprio of normalization type {normalization_type.value!r}")
    missing = [key for key in bounds[normalization_type] if key not in proprio_stats]
    if missing:
        raise ValueError(f"proprio statistics lack {missing} (needed for {normalization_type.value})")
    low, high = (np.asarray(proprio_stats[key], dtype=np.float64) for key in bounds[normalization_type])
    mask = np.asarray(proprio_stats.get("mask", np.ones_like(low, dtype=bool)), dtype=bool)
    normalized = np.where(mask, 2 * (proprio - low) / (high - low + 1e-8) - 1, proprio)
    return np.clip(normalized, -1.0, 1.0)


def resolve_unnorm_key(
    norm_stats: dict[str, Any], unnorm_key: str, task_suite_name: str, statistics_file: str = "dataset_statistics.json"
) -> str:
    """``--unnorm_key`` if given, else the suite name, falling back to ``{name}_no_noops`` as upstream."""
    key = unnorm_key or task_suite_name
    if key not in norm_stats and f"{key}_no_noops" in norm_stats:
        key = f"{key}_no_noops"
    if key not in norm_stats:
        flag = "--unnorm_key" if unnorm_key else "--task_suite_name"
        raise ValueError(
            f"{flag} {unnorm_key or task_suite_name!r}: no action statistics {key!r} in the checkpoint's "
            f"{statistics_file}; available: {sorted(norm_stats)}"
        )
    return key


def policy_device() -> tuple[torch.device, torch.dtype]:
    """GPU in bfloat16 as upstream when there is one, else CPU in float32."""
    if torch.cuda.is_available():
        return torch.device("cuda:0"), torch.bfloat16
    return torch.device("cpu"), torch.float32


class VLAPolicy:
    """A loaded checkpoint answering :meth:`predict_chunk` deterministically (no sampling)."""

    def __init__(
        self,
        loaded: LoadedVLA,
        unnorm_key: str,
        platform: PlatformConstants,
        *,
        num_images_in_input: int,
        center_crop: bool,
        use_film: bool,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.loaded = loaded
        self.unnorm_key = unnorm_key
        self.platform = platform
        self.num_images_in_input = num_images_in_input
        self.center_crop = center_crop
        self.use_film = use_film
        self.device, self.dtype = device, dtype
        self.proprio_stats = None
        if loaded.proprio_projector is not None:
            self.proprio_stats = loaded.norm_stats[unnorm_key].get("proprio")
            if self.proprio_stats is None:
                raise ValueError(f"dataset_statistics.json: {unnorm_key!r} has no 'proprio' statistics (--use_proprio)")

    @classmethod
    def from_config(cls, cfg: GenerateConfig) -> VLAPolicy:
        """Load ``--pretrained_checkpoint`` with the components the flags ask for."""
        if not cfg.pretrained_checkpoint:
            raise ValueError("--pretrained_checkpoint is required (a checkpoint folder)")
        if cfg.load_in_8bit or cfg.load_in_4bit:
            raise ValueError("--load_in_8bit/--load_in_4bit: quantized loading is not supported; use bfloat16")
        platform = constants_for(cfg.task_suite_name)
        device, dtype = policy_device()
        loaded = load_vla(
            cfg.pretrained_checkpoint,
            platform=platform,
            use_l1_regression=cfg.use_l1_regression,
            use_diffusion=cfg.use_diffusion,
            use_proprio=cfg.use_proprio,
            use_film=cfg.use_film,
            num_images_in_input=cfg.num_images_in_input,
            num_diffusion_steps_train=cfg.num_diffusion_steps_train,
            num_diffusion_steps_inference=cfg.num_diffusion_steps_inference,
            dtype=dtype,
            device=device,
        )
        unnorm_key = resolve_unnorm_key(loaded.norm_stats, cfg.unnorm_key, cfg.task_suite_name)
        return cls(
            loaded,
            unnorm_key,
            platform,
            num_images_in_input=cfg.num_images_in_input,
            center_crop=cfg.center_crop,
            use_film=cfg.use_film,
            device=device,
            dtype=dtype,
        )

    def _policy_images(self, observation: Observation) -> list[Image.Image]:
        """The third-person image, then the wrist images (upstream: every key containing "wrist"), as model input."""
        keys = ["full_image"]
        if self.num_images_in_input > 1:
            keys += [key for key in observation if "wrist" in key]
        if len(keys) != self.num_images_in_input:
            raise ValueError(
                f"--num_images_in_input {self.num_images_in_input}, but the observation has {len(keys)} image(s) "
                f"(keys {sorted(observation)})"
            )
        prepared = []
        for key in keys:
            image = observation[key]
            check_image_format(image, f"observation[{key!r}]")
            if image.shape[:2] != (OPENVLA_IMAGE_SIZE, OPENVLA_IMAGE_SIZE):
                image = resize_image_for_policy(image, OPENVLA_IMAGE_SIZE)
            prepared.append(Image.fromarray(center_crop_image(image) if self.center_crop else image))
        return prepared

    @torch.inference_mode()
    def predict_chunk(self, observation: Observation, instruction: str) -> np.ndarray:
        """Un-normalised actions ``[chunk, action_dim]`` for one observation."""
        prompt = build_prompt(instruction)
        inputs = [
            self.loaded.processor(prompt, image).to(self.device, dtype=self.dtype)
            for image in self._policy_images(observation)
        ]
        pixel_values = torch.cat([item["pixel_values"] for item in inputs], dim=1)  # [1, 6 * num_images, 224, 224]
        proprio = None
        if self.proprio_stats is not None:
            proprio = normalize_proprio(
                observation["state"], self.proprio_stats, self.platform.action_proprio_normalization_type
            )
        actions, _ = self.loaded.vla.predict_action(
            input_ids=inputs[0]["input_ids"],
            attention_mask=inputs[0]["attention_mask"],
            pixel_values=pixel_values,
            unnorm_key=self.unnorm_key,
            proprio=proprio,
            proprio_projector=self.loaded.proprio_projector,
            action_head=self.loaded.action_head,
            noisy_action_projector=self.loaded.noisy_action_projector,
            use_film=self.use_film,
            do_sample=False,
        )
        return np.asarray(actions, dtype=np.float64)  # [chunk, action_dim]
