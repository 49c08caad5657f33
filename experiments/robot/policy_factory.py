"""The policy of a ``--model_family``, looked up in the family registry; each family's class loads itself from the
evaluation flags."""

from __future__ import annotations

from typing import Any

from experiments.robot.libero.config import GenerateConfig
from prismatic.models.family import CheckedCheckpoint
from prismatic.policy.families import family_class
from prismatic.policy.policy import policy_device, quantization

# --model_family (upstream's evaluation names) -> PolicyConfig.model_family
EVALUATION_FAMILY_NAMES = {"openvla": "openvla-oft", "svla": "spatialvla", "pi0": "pi0"}


def load_policy(cfg: GenerateConfig, checked: CheckedCheckpoint | None = None) -> Any:
    """Load ``--pretrained_checkpoint`` as the policy of ``--model_family``; ``checked``: what the pre-flight parsed
    of the folder (``check_eval_config``), loaded without reading the folder's policy config and statistics again."""
    if cfg.model_family not in EVALUATION_FAMILY_NAMES:
        raise ValueError(
            f"--model_family {cfg.model_family!r} has no policy; expected one of {list(EVALUATION_FAMILY_NAMES)}"
        )
    family = family_class(EVALUATION_FAMILY_NAMES[cfg.model_family])
    if checked is None:
        return family.from_config(cfg)
    device, dtype = policy_device()
    return family.load(
        checked, device=device, dtype=dtype, task_suite_name=cfg.task_suite_name, quantize=quantization(cfg)
    )
