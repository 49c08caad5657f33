"""The model-family interface: the one place a VLA family plugs into training, evaluation, serving and probing.

A family (OpenVLA-OFT, SpatialVLA, pi0, ...) is a class that satisfies :class:`ModelFamily` structurally (no base
class to inherit) and is named by one line of the registry, ``prismatic.policy.families.FAMILIES``, keyed by
``PolicyConfig.model_family``. Its six parts, as LeRobot's ``PreTrainedPolicy``:

- ``build(policy_config, base_model_path)``: a trainable policy from ``policy_config.json``'s choices and a base;
- ``load(checkpoint)``: a policy for inference from a checkpoint folder the pre-flight checked and parsed
  (:class:`CheckedCheckpoint`, so the folder is read once);
- ``preprocess(observation, instruction)``: model inputs for one query (CPU work a server runs off the model thread);
- ``predict_chunk(observation, instruction)``: un-normalised actions ``[chunk, action_dim]``;
- ``training_loss(batch)``: the loss of one batch, computed by the family's heads, with the hidden states Spatial
  Forcing taps (:class:`TrainingOutput`; the fine-tuning loop goes through the training half below);
- ``visual_token_tap(layer)``: where Spatial Forcing reads the visual tokens (:class:`VisualTokenTap`).

This module lives on the models floor so that a family folder (``prismatic/models/<family>/``) can name these types
without importing upward; it depends on torch, numpy and the policy specification only. The signatures are stable:
other families implement them. A new family also adds its name to ``prismatic.vla.policy_config.MODEL_FAMILIES``
(which ``policy_config.json`` is validated against).

Training goes through the training half beside this protocol, on the training floor because it builds with LoRA,
quantisation and the training flags: ``prismatic.training.training_family.TrainingFamily`` (check the base, build
the trainable model, the batch format, the losses of a batch with the heads' own loss and Spatial Forcing's
alignment, the model files of a checkpoint), one line per family in ``prismatic.training.families.TRAINING_FAMILIES``;
the loop (``prismatic.training.trainer``) never branches on the family or the head. Today OpenVLA-OFT's
``VLAPolicy`` implements the inference half (``load``, ``preprocess``, ``predict_chunk``, ``visual_token_tap``) and
``prismatic.training.oft_training.OFTTraining`` its training; pi0's ``Pi0Policy`` (``prismatic/policy/pi0_policy.py``)
implements all six parts here and ``prismatic.training.pi0_training.Pi0Training`` its training.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

from prismatic.vla.observation import Observation
from prismatic.vla.policy_config import PolicyConfig


@dataclass(frozen=True)
class CheckedCheckpoint:
    """What the pre-flight parsed from a checkpoint folder, handed to :meth:`ModelFamily.load` so that nothing
    reads the folder twice."""

    path: Path  # the checkpoint folder
    policy_config: PolicyConfig  # policy_config.json (or upstream's defaults for a released folder), flags applied
    norm_stats: dict[str, Any]  # dataset_statistics.json (else the model config's norm_stats; {} when optional)


@dataclass(frozen=True)
class VisualTokenTap:
    """Where Spatial Forcing reads the visual tokens: ``hidden_states[layer][:, start : start + count]``
    (``SpatialForcingAligner.select_vision_tokens`` takes ``start`` and ``count`` and honours ``gain_feat_1move``).

    ``layer`` indexes the family's tuple of hidden states (0 = the input embeddings, as transformers' convention);
    ``count`` covers every camera's patches, in the order the family stacks the cameras.
    """

    layer: int
    start: int  # tokens before the first visual token (e.g. 1: BOS)
    count: int


@dataclass
class TrainingOutput:
    """One batch's forward pass in training.

    ``loss`` is what to back-propagate before alignment; ``logged`` holds the scalars to log beside it (detached);
    ``hidden_states`` are the per-layer hidden states a :class:`VisualTokenTap` selects from (empty without SF).
    """

    loss: torch.Tensor
    logged: dict[str, torch.Tensor] = field(default_factory=dict)
    hidden_states: tuple[torch.Tensor, ...] = ()


@runtime_checkable
class ModelFamily(Protocol):
    """A policy of one model family: built for training or loaded for inference, then queried or trained."""

    family_name: ClassVar[str]  # PolicyConfig.model_family (e.g. "openvla-oft", "spatialvla", "pi0")
    policy_config: PolicyConfig  # what this policy is; written beside its weights

    @classmethod
    def build(
        cls,
        policy_config: PolicyConfig,
        base_model_path: str | Path,
        *,
        device: torch.device,
        dtype: torch.dtype,
    ) -> ModelFamily:
        """A trainable policy: the base model at ``base_model_path`` with freshly initialised heads that
        ``policy_config`` asks for."""
        ...

    @classmethod
    def load(
        cls,
        checkpoint: CheckedCheckpoint,
        *,
        device: torch.device,
        dtype: torch.dtype,
        **options: Any,
    ) -> ModelFamily:
        """A policy for inference from a checked checkpoint folder. ``options`` are family-specific loading
        choices (e.g. ``quantize``, ``checkpoint_step``, ``task_suite_name``); unknown ones raise ``TypeError``."""
        ...

    def preprocess(self, observation: Observation, instruction: str) -> Any:
        """Model inputs for one query, on the CPU (images resized/cropped as the checkpoint's preprocessing says,
        prompt tokenised, state normalised)."""
        ...

    def predict_chunk(self, observation: Observation, instruction: str) -> np.ndarray:
        """Un-normalised actions ``[chunk, action_dim]`` (float64; gripper in the dataset's convention)."""
        ...

    def training_loss(self, batch: Mapping[str, torch.Tensor], *, output_hidden_states: bool) -> TrainingOutput:
        """The loss of one collated training batch, computed by the family's own heads."""
        ...

    def visual_token_tap(self, layer: int) -> VisualTokenTap:
        """Where the visual tokens sit in the hidden states of ``training_loss`` (``layer`` as
        ``AlignConfig.vla_layers_align``)."""
        ...
