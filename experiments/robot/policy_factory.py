"""The policy of a ``--model_family``: each family's class loads itself from the evaluation flags."""

from __future__ import annotations

from experiments.robot.libero.config import GenerateConfig
from experiments.robot.svla_policy import SpatialVLAPolicy
from experiments.robot.vla_policy import VLAPolicy

POLICY_CLASSES = {"openvla": VLAPolicy, "svla": SpatialVLAPolicy}


def load_policy(cfg: GenerateConfig) -> VLAPolicy | SpatialVLAPolicy:
    """Load ``--pretrained_checkpoint`` as the policy of ``--model_family``."""
    if cfg.model_family not in POLICY_CLASSES:
        raise ValueError(f"--model_family {cfg.model_family!r} has no policy; expected one of {list(POLICY_CLASSES)}")
    return POLICY_CLASSES[cfg.model_family].from_config(cfg)
