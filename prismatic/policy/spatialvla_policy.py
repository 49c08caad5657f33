"""The SpatialVLA policy (``--model_family svla``): a released-layout folder served through :class:`Policy`.

load (``from_config``) -> preprocess (third-person image, optionally center-cropped; prompt; camera intrinsics of
the ``unnorm_key``) -> predict a chunk (greedy action tokens -> 4 un-normalised 7-D actions, gripper in [0, 1]).
The post-processing that keeps state across steps (``--action_ensembling``) and the gripper binarise + invert run
with the episode in the simulator worker (``action_ensembling.py``, ``robot_utils.postprocess_actions``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature

from prismatic.models.family import Observation
from prismatic.models.spatialvla.load import LoadedSpatialVLA, load_spatialvla
from prismatic.models.spatialvla.processing_spatialvla import TOKENS_PER_STEP
from prismatic.policy.policy import policy_device, resolve_unnorm_key
from prismatic.vla.image_utils import OPENVLA_IMAGE_SIZE, center_crop_image, check_image_format
from prismatic.vla.prompt import build_prompt


def svla_prompt(instruction: str, prompt_format: str) -> str:
    """``"instruction"``: the lower-cased instruction (SpatialVLA's training prompt); ``"openvla"``: the LIBERO
    fork's OpenVLA template ``"In: What action should the robot take to {task}?\\nOut:"``."""
    if prompt_format == "openvla":
        return build_prompt(instruction)
    return instruction.lower().strip()


class SpatialVLAPolicy:
    """A loaded SpatialVLA answering :meth:`predict_chunk` deterministically (greedy decoding)."""

    family_name = "spatialvla"
    gripper = "libero"  # trained on RLDS data (1 = open): binarised and inverted for LIBERO, as the fork does

    def __init__(
        self,
        loaded: LoadedSpatialVLA,
        unnorm_key: str,
        *,
        prompt_format: str,
        center_crop: bool,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.model, self.processor = loaded.model, loaded.processor
        self.unnorm_key = unnorm_key
        self.prompt_format = prompt_format
        self.center_crop = center_crop
        self.device, self.dtype = device, dtype
        self.max_new_tokens = self.processor.action_chunk_size * TOKENS_PER_STEP

    @classmethod
    def from_config(cls, cfg: Any) -> SpatialVLAPolicy:
        """Load ``cfg.pretrained_checkpoint`` with ``run_libero_eval.py``'s flags (a ``GenerateConfig``; bf16 on CUDA,
        fp32 on CPU); ``--unnorm_key`` picks the statistics (default: the task suite's) and the camera intrinsics
        (unknown keys use the ``default`` camera)."""
        if not cfg.pretrained_checkpoint:
            raise ValueError("--pretrained_checkpoint is required (a SpatialVLA folder)")
        device, dtype = policy_device()
        loaded = load_spatialvla(cfg.pretrained_checkpoint, dtype=dtype, device=device)
        unnorm_key = resolve_unnorm_key(
            loaded.processor.statistics, cfg.unnorm_key, cfg.task_suite_name, "processor_config.json statistics"
        )
        center_crop = True if cfg.center_crop is None else cfg.center_crop  # the fork's setting
        return cls(
            loaded, unnorm_key, prompt_format=cfg.svla_prompt, center_crop=center_crop, device=device, dtype=dtype
        )

    def resolved_flags(self) -> dict[str, Any]:
        """The evaluation flags this policy runs with, for logs and resume checks."""
        return {"unnorm_key": self.unnorm_key, "center_crop": self.center_crop}

    def preprocess(self, observation: Observation, instruction: str) -> BatchFeature:
        """Model inputs for the third-person image (224 x 224 from the worker) and the instruction."""
        image = observation["full_image"]
        check_image_format(image, "observation['full_image']")
        if image.shape[:2] != (OPENVLA_IMAGE_SIZE, OPENVLA_IMAGE_SIZE):
            raise ValueError(f"observation['full_image'] is {image.shape[:2]}; expected the worker's 224 x 224 frame")
        if self.center_crop:
            image = center_crop_image(image)
        inputs = self.processor(
            Image.fromarray(image), svla_prompt(instruction, self.prompt_format), unnorm_key=self.unnorm_key
        )
        return inputs.to(self.device, dtype=self.dtype)  # BatchFeature casts only the floating-point tensors

    @torch.inference_mode()
    def predict_chunk(self, observation: Observation, instruction: str) -> np.ndarray:
        """Un-normalised actions ``[chunk, 7]`` (float64; gripper 0 = close, 1 = open, before post-processing)."""
        inputs = self.preprocess(observation, instruction)
        generated = self.model.generate_action_ids(**inputs, max_new_tokens=self.max_new_tokens)
        return self.processor.decode_actions(generated, self.unnorm_key)["actions"]
