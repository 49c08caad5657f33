"""The policy object every consumer uses: load a checkpoint folder -> preprocess an observation -> predict an action
chunk -> un-normalise it.

Per query, as upstream's ``get_vla_action``: the third-person image and (with ``num_images_in_input`` > 1) every
wrist image, each center-cropped when the checkpoint's image preprocessing says so, go through the processor and are
stacked on channels; the proprio state is normalised with the checkpoint's statistics; ``predict_action`` returns the
un-normalised chunk. What the policy is (heads, inputs, embodiment, preprocessing) comes from the checkpoint's
``policy_config.json`` (:class:`prismatic.vla.policy_config.PolicyConfig`); explicit flags override it with a warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from prismatic.models.family import CheckedCheckpoint, Observation, VisualTokenTap
from prismatic.policy.load import LoadedVLA, load_vla
from prismatic.util.checkpoint_files import DATASET_STATISTICS_NAME
from prismatic.vla.image_utils import (
    center_crop_image,
    check_image_format,
    resize_image_for_policy,
)
from prismatic.vla.normalization import normalize
from prismatic.vla.policy_config import POLICY_FLAGS, PolicyConfig, apply_flag_overrides, policy_flags
from prismatic.vla.prompt import build_prompt


@dataclass(frozen=True)
class PreparedQuery:
    """One query as model input, on the CPU: its prompt's ids ``[1, T]`` and mask, its images stacked on channels
    ``[1, 6 * num_images, 224, 224]`` (float32), and its normalised state ``[proprio_dim]`` (None without proprio)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor
    proprio: np.ndarray | None


def resolve_unnorm_key(
    norm_stats: dict[str, Any], unnorm_key: str, task_suite_name: str, statistics_file: str = DATASET_STATISTICS_NAME
) -> str:
    """``unnorm_key`` if given, else the suite name, falling back to ``{name}_no_noops`` as upstream."""
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


def evaluation_flags(config: PolicyConfig, unnorm_key: str) -> dict[str, Any]:
    """The evaluation flags (upstream's names) that select the policy ``config`` describes, ``unnorm_key`` resolved."""
    return policy_flags(config) | {"unnorm_key": unnorm_key}


def policy_device() -> tuple[torch.device, torch.dtype]:
    """GPU in bfloat16 as upstream when there is one, else CPU in float32."""
    if torch.cuda.is_available():
        return torch.device("cuda:0"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def quantization(cfg: Any) -> str:
    """``load_vla``'s ``quantize`` from the evaluation flags ``load_in_8bit`` / ``load_in_4bit``."""
    return "int8" if cfg.load_in_8bit else "nf4" if cfg.load_in_4bit else "none"


class VLAPolicy:
    """An OpenVLA-OFT / Spatial Forcing checkpoint answering :meth:`predict_chunk` deterministically (no sampling);
    the inference half of :class:`prismatic.models.family.ModelFamily` (``load``, ``preprocess``, ``predict_chunk``,
    ``visual_token_tap``)."""

    family_name = "openvla-oft"

    def __init__(self, loaded: LoadedVLA, unnorm_key: str, *, device: torch.device, dtype: torch.dtype):
        self.loaded = loaded
        self.config: PolicyConfig = loaded.policy_config
        self.unnorm_key = unnorm_key
        self.platform = self.config.embodiment.platform()
        self.device, self.dtype = device, dtype
        self.proprio_stats = None
        if loaded.proprio_projector is not None:
            self.proprio_stats = loaded.norm_stats[unnorm_key].get("proprio")
            if self.proprio_stats is None:
                raise ValueError(f"dataset_statistics.json: {unnorm_key!r} has no 'proprio' statistics (--use_proprio)")

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint_dir: str | Path,
        *,
        task_suite_name: str = "",
        unnorm_key: str | None = None,
        center_crop: bool | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        **flags: Any,
    ) -> VLAPolicy:
        """Load a checkpoint folder as a policy.

        ``flags``: ``load_vla``'s overrides (``use_l1_regression``, ``use_diffusion``, ``use_proprio``, ``use_film``,
        ``num_images_in_input``, ``num_diffusion_steps_*``; ``None`` = from the checkpoint). ``unnorm_key`` (else
        the policy config's, else ``task_suite_name`` with upstream's ``_no_noops`` fallback) selects the
        statistics; ``center_crop`` overrides the checkpoint's image preprocessing.
        """
        if not checkpoint_dir:
            raise ValueError("--pretrained_checkpoint is required (a checkpoint folder)")
        default_device, default_dtype = policy_device()
        device, dtype = device or default_device, dtype or default_dtype
        loaded = load_vla(checkpoint_dir, dtype=dtype, device=device, **flags)
        loaded.policy_config = apply_flag_overrides(
            loaded.policy_config, unnorm_key=unnorm_key, center_crop=center_crop
        )
        key = resolve_unnorm_key(loaded.norm_stats, loaded.policy_config.unnorm_key, task_suite_name)
        loaded.policy_config.unnorm_key = key
        return cls(loaded, key, device=device, dtype=dtype)

    @classmethod
    def load(
        cls,
        checkpoint: CheckedCheckpoint,
        *,
        device: torch.device,
        dtype: torch.dtype,
        task_suite_name: str = "",
        **options: Any,
    ) -> VLAPolicy:
        """Load a folder the pre-flight checked (its policy config has every flag applied). ``options``:
        ``load_vla``'s ``quantize``, ``checkpoint_step``, ``base_model_path``; ``task_suite_name`` is the fallback
        of the statistics key (upstream's ``_no_noops`` rule)."""
        loaded = load_vla(checkpoint.path, dtype=dtype, device=device, checked=checkpoint, **options)
        key = resolve_unnorm_key(loaded.norm_stats, loaded.policy_config.unnorm_key, task_suite_name)
        loaded.policy_config.unnorm_key = key
        return cls(loaded, key, device=device, dtype=dtype)

    @classmethod
    def from_config(cls, cfg: Any) -> VLAPolicy:
        """Load ``cfg.pretrained_checkpoint`` with ``run_libero_eval.py``'s flags (a ``GenerateConfig``): policy flags
        that are ``None`` come from the checkpoint, given ones override it (with a warning)."""
        flags = {name: getattr(cfg, name) for name in POLICY_FLAGS}
        return cls.from_checkpoint(
            cfg.pretrained_checkpoint,
            task_suite_name=cfg.task_suite_name,
            unnorm_key=flags.pop("unnorm_key"),
            center_crop=flags.pop("center_crop"),
            quantize=quantization(cfg),
            **flags,
        )

    @property
    def policy_config(self) -> PolicyConfig:
        return self.config

    def visual_token_tap(self, layer: int) -> VisualTokenTap:
        """The visual tokens follow BOS: every camera's patches, third-person first."""
        backbone = self.loaded.vla.vision_backbone
        return VisualTokenTap(layer, start=1, count=backbone.get_num_patches() * backbone.get_num_images_in_input())

    @property
    def gripper(self) -> str:
        """The checkpoint's gripper convention (``PolicyConfig.embodiment.gripper``)."""
        return self.config.embodiment.gripper

    def resolved_flags(self) -> dict[str, Any]:
        """The evaluation flags (upstream's names) this policy runs with, for logs and resume checks."""
        return evaluation_flags(self.config, self.unnorm_key)

    def _policy_images(self, observation: Observation) -> list[Image.Image]:
        """The third-person image, then the wrist images (upstream: every key containing "wrist"), as model input."""
        keys = ["full_image"]
        if self.config.num_images_in_input > 1:
            keys += [key for key in observation if "wrist" in key]
        if len(keys) != self.config.num_images_in_input:
            raise ValueError(
                f"--num_images_in_input {self.config.num_images_in_input}, but the observation has {len(keys)} "
                f"image(s) (keys {sorted(observation)})"
            )
        size, prepared = self.config.image.image_size, []
        for key in keys:
            image = observation[key]
            check_image_format(image, f"observation[{key!r}]")
            if image.shape[:2] != (size, size):
                image = resize_image_for_policy(image, size)
            if self.config.image.center_crop:
                image = center_crop_image(image, self.config.image.crop_area)
            prepared.append(Image.fromarray(image))
        return prepared

    def predict_chunk(self, observation: Observation, instruction: str) -> np.ndarray:
        """Un-normalised actions ``[chunk, action_dim]`` for one observation."""
        return self.predict_chunks([(observation, instruction)])[0]

    def predict_chunks(self, queries: Sequence[tuple[Observation, str]]) -> list[np.ndarray]:
        """Un-normalised chunks ``[chunk, action_dim]`` for several (observation, instruction) queries."""
        return self.predict_prepared(
            [self.preprocess(observation, instruction) for observation, instruction in queries]
        )

    def preprocess(self, observation: Observation, instruction: str) -> PreparedQuery:
        """The CPU work of one query (image resizing and cropping, tokenising, state normalisation), which a server
        runs outside the thread that runs the model."""
        per_image = [
            self.loaded.processor(build_prompt(instruction), image) for image in self._policy_images(observation)
        ]
        proprio = None
        if self.proprio_stats is not None:
            proprio = normalize(
                np.asarray(observation["state"], dtype=np.float64),
                self.proprio_stats,
                self.platform.action_proprio_normalization_type,
                clip_unmasked=True,  # upstream's evaluation rule
            )
        return PreparedQuery(
            input_ids=per_image[0]["input_ids"],
            attention_mask=per_image[0]["attention_mask"],
            pixel_values=torch.cat([item["pixel_values"] for item in per_image], dim=1),
            proprio=proprio,
        )

    @torch.inference_mode()
    def predict_prepared(self, queries: Sequence[PreparedQuery]) -> list[np.ndarray]:
        """Un-normalised chunks ``[chunk, action_dim]`` of prepared queries: queries whose prompts tokenise to the same
        length share one forward pass (``predict_action`` takes unpadded prompts only), so a batch of one is
        :meth:`predict_chunk`."""
        groups: dict[int, list[int]] = {}
        for index, query in enumerate(queries):
            groups.setdefault(query.input_ids.shape[1], []).append(index)
        chunks: list[np.ndarray] = [np.empty(0)] * len(queries)
        for indices in groups.values():
            group = [queries[index] for index in indices]
            proprio = None
            if self.proprio_stats is not None:
                proprio = np.stack([query.proprio for query in group])  # [B, proprio_dim]
            actions, _ = self.loaded.vla.predict_action(
                input_ids=torch.cat([query.input_ids for query in group]).to(self.device),
                attention_mask=torch.cat([query.attention_mask for query in group]).to(self.device),
                # [B, 6 * num_images, 224, 224]: each query's images stacked on channels, queries on the batch axis
                pixel_values=torch.cat([query.pixel_values for query in group]).to(self.device, dtype=self.dtype),
                unnorm_key=self.unnorm_key,
                proprio=proprio,
                proprio_projector=self.loaded.proprio_projector,
                action_head=self.loaded.action_head,
                noisy_action_projector=self.loaded.noisy_action_projector,
                use_film=self.config.use_film,
                do_sample=False,
            )
            actions = np.asarray(actions, dtype=np.float64).reshape(len(indices), *np.shape(actions)[-2:])
            for position, index in enumerate(indices):
                chunks[index] = actions[position]  # [chunk, action_dim]
        return chunks
