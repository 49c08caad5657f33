"""The policy of a ``--model_family``, looked up in the family registry; each family's class loads itself from the
evaluation flags."""

from __future__ import annotations

from typing import Any

from experiments.robot.libero.config import GenerateConfig
from prismatic.policy.families import family_class

# --model_family (upstream's evaluation names) -> PolicyConfig.model_family
EVALUATION_FAMILY_NAMES = {"openvla": "openvla-oft", "svla": "spatialvla"}


def load_policy(cfg: GenerateConfig) -> Any:
    """Load ``--pretrained_checkpoint`` as the policy of ``--model_family``."""
    if cfg.model_family not in EVALUATION_FAMILY_NAMES:
        raise ValueError(
            f"--model_family {cfg.model_family!r} has no policy; expected one of {list(EVALUATION_FAMILY_NAMES)}"
        )
    return family_class(EVALUATION_FAMILY_NAMES[cfg.model_family]).from_config(cfg)
