"""The training half of a model family: what the fine-tuning loop needs from OpenVLA-OFT, pi0 or a new family.

The loop (``prismatic.training.trainer``: optimizer, schedule, data position, distribution, checkpoint folder, resume)
is shared; a family (:class:`TrainingFamily`, named by one line of ``prismatic.training.families.TRAINING_FAMILIES``,
keyed by ``--model_family``) provides the five parts that differ:

- ``check_base_model``: refuse the flags it does not train with and a ``--vla_path`` that is not its base, before
  any weight is read; return the depth ``--vla_layers_align`` ranges over;
- ``build``: the base with LoRA, strategy preparation and its new heads, the Spatial Forcing aligner and teacher
  (``prismatic.training.alignment.build_alignment``) and the run's ``policy_config.json``, as a
  :class:`TrainingModel` on one device, not yet distributed;
- ``batch_format``: the batch transform, image size and collator of the data pipeline, and whether the pipeline's
  ``--image_aug`` applies (a family may augment in its collator instead);
- ``losses``: one batch's ``loss`` and its logged parts, computed by the family's own heads (Spatial Forcing's
  alignment included: where the visual tokens sit and what the teacher sees are the family's);
- ``save_model_files`` / ``restore_full_weights``: the model files of a checkpoint folder and, for ``--resume`` of a
  full fine-tune, reading them back (the LoRA adapter, the component files and the training state are the loop's).

These are on the training floor (they build with LoRA and the training flags); the inference half is
:class:`prismatic.models.family.ModelFamily`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from prismatic.policy.base_model_record import base_model_record
from prismatic.policy.components import component_names
from prismatic.training import checkpointing as ckpt
from prismatic.training.config import FinetuneConfig
from prismatic.vla.constants import PlatformConstants
from prismatic.vla.policy_config import (
    NO_AUGMENTATION,
    OFT_AUGMENTATION,
    EmbodimentConfig,
    ImagePreprocessingConfig,
    PolicyConfig,
    apply_training_flags,
)


@dataclass
class TrainingModel:
    """Everything trained (and the frozen teacher), as a family builds it for one rank."""

    vla: nn.Module  # the family's model (PeftModel with LoRA), DDP-wrapped or FSDP-sharded once distributed
    heads: dict[str, nn.Module]  # modules trained beside the VLA, by component name (prismatic.policy.components)
    processor: Any  # the family's processor: read by its batch transform, saved into every checkpoint
    num_patches: int  # visual tokens of all cameras
    policy_config: PolicyConfig  # what is saved as policy_config.json; selects the components below
    aligner: nn.Module | None = None  # SpatialForcingAligner; its .projector is distributed like the VLA
    teacher: nn.Module | None = None  # VGGTTeacher, GeometryTeacher or RGBTeacher (frozen)

    def components(self) -> dict[str, nn.Module]:
        """The modules of the checkpoint's component files (DDP unwrapped), by name: a head, the align projector,
        or else the VLA's submodule of that name (OpenVLA-OFT's FiLM-wrapped ``vision_backbone``)."""
        vla = ckpt.unwrap(self.vla)
        modules = dict(self.heads)
        if self.aligner is not None:
            modules["align_projector"] = self.aligner.projector
        return {
            name: ckpt.unwrap(modules[name] if name in modules else getattr(vla, name))
            for name in component_names(self.policy_config)
        }

    def trainable_modules(self) -> list[nn.Module]:
        modules = [self.vla, *self.heads.values()]
        if self.aligner is not None:
            modules.append(self.aligner.projector)
        return modules


@dataclass(frozen=True)
class BatchFormat:
    """How the data pipeline turns a family's samples into batches."""

    transform: Callable[[dict], dict]  # one sample (RLDS or LeRobot frame) to the family's model inputs
    resize_resolution: tuple[int, int]  # (height, width) the pipeline resizes the frames to
    collate: Callable[[list[dict]], dict]  # samples to one batch
    pipeline_image_aug: bool  # the data pipeline's --image_aug crops and colour jitter (False: the family augments)


@runtime_checkable
class TrainingFamily(Protocol):
    """A model family as the fine-tuning loop trains it (module docstring: the five parts)."""

    family_name: ClassVar[str]  # --model_family and PolicyConfig.model_family

    def check_base_model(self, cfg: FinetuneConfig, platform: PlatformConstants) -> int:
        """Refuse, one line each and before any weight is read, the flags this family does not train with and a
        ``--vla_path`` that is not its base; returns the LM depth (``--vla_layers_align`` ranges over it)."""
        ...

    def build(self, cfg: FinetuneConfig, platform: PlatformConstants, device: torch.device) -> TrainingModel:
        """The trainable model of ``cfg`` on ``device``, not yet distributed (the loop does that)."""
        ...

    def batch_format(
        self, cfg: FinetuneConfig, model: TrainingModel, *, rank: int, train: bool, skip_samples: int
    ) -> BatchFormat:
        """The data pipeline's batch transform, frame size and collator for ``model``, for this ``rank``'s training
        or validation stream (``skip_samples``: samples a resumed run already consumed)."""
        ...

    def losses(
        self, cfg: FinetuneConfig, model: TrainingModel, batch: dict, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """One forward pass: ``loss`` (to back-propagate), ``action_loss`` and, with Spatial Forcing,
        ``align_loss`` (scalars)."""
        ...

    def save_model_files(
        self, cfg: FinetuneConfig, model: TrainingModel, folder: Path, vla_state: dict[str, torch.Tensor]
    ) -> None:
        """The model files of a checkpoint folder (``vla_state``: the gathered full state of ``model.vla``)."""
        ...

    def restore_full_weights(self, model: TrainingModel, folder: Path) -> None:
        """``--resume`` of a full fine-tune: :meth:`save_model_files`' weights into ``model.vla``."""
        ...


def training_policy_config(cfg: FinetuneConfig, platform: PlatformConstants) -> PolicyConfig:
    """The ``policy_config.json`` of this run's checkpoints: the choices the table of ``prismatic.vla.policy_config``
    takes from the flags, embodiment, data and base (a Spatial Forcing run's alignment settings are added once its
    aligner is built: ``prismatic.training.alignment.build_alignment``)."""
    config = PolicyConfig(
        unnorm_key=cfg.dataset_name,
        embodiment=EmbodimentConfig.from_platform(platform),
        # Training's random crops (image_aug) are matched at evaluation by the center crop of the same area.
        image=ImagePreprocessingConfig(center_crop=cfg.image_aug),
        training_augmentation=OFT_AUGMENTATION if cfg.image_aug else NO_AUGMENTATION,
        data={"dataset_name": cfg.dataset_name},
        base_model=base_model_record(cfg.vla_path),
    )
    return apply_training_flags(config, vars(cfg))
