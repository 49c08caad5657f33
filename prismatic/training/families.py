"""The model families the fine-tuning scripts train, by ``--model_family``: one line per family.

Each entry is a :class:`prismatic.training.training_family.TrainingFamily`. A new family adds its training module
(``prismatic/training/<family>_training.py``) and one line here, beside its inference class in
``prismatic.policy.families``.
"""

from __future__ import annotations

from prismatic.training.oft_training import OFTTraining
from prismatic.training.pi0_training import Pi0Training
from prismatic.training.training_family import TrainingFamily

TRAINING_FAMILIES: dict[str, TrainingFamily] = {
    OFTTraining.family_name: OFTTraining(),
    Pi0Training.family_name: Pi0Training(),
}


def training_family(model_family: str) -> TrainingFamily:
    """The training half of ``model_family``; a ValueError names the flag and the trainable families."""
    if model_family not in TRAINING_FAMILIES:
        raise ValueError(f"--model_family {model_family!r}: expected one of {list(TRAINING_FAMILIES)}")
    return TRAINING_FAMILIES[model_family]
