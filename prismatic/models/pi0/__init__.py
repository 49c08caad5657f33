"""pi0 (PaliGemma + a Gemma action expert, flow matching) on stock transformers, with released-weight loading."""

from prismatic.models.pi0.configuration_pi0 import Pi0Config
from prismatic.models.pi0.modeling_pi0 import Pi0Model, Pi0Observation, Pi0Output, Pi0PrefixCache

__all__ = ["Pi0Config", "Pi0Model", "Pi0Observation", "Pi0Output", "Pi0PrefixCache"]
