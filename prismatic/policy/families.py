"""The model families by name (``PolicyConfig.model_family``): one line per family.

Each entry is a class with the parts of :class:`prismatic.models.family.ModelFamily`. A new family adds its folder
(``prismatic/models/<family>/``), its name to ``prismatic.vla.policy_config.MODEL_FAMILIES`` and one line here.
"""

from __future__ import annotations

from prismatic.policy.pi0_policy import Pi0Policy
from prismatic.policy.policy import VLAPolicy
from prismatic.policy.spatialvla_policy import SpatialVLAPolicy

FAMILIES: dict[str, type] = {
    VLAPolicy.family_name: VLAPolicy,
    SpatialVLAPolicy.family_name: SpatialVLAPolicy,
    Pi0Policy.family_name: Pi0Policy,
}


def family_class(model_family: str) -> type:
    """The class of ``model_family``; a ValueError names the known families."""
    if model_family not in FAMILIES:
        raise ValueError(f"model_family {model_family!r}: expected one of {sorted(FAMILIES)}")
    return FAMILIES[model_family]
