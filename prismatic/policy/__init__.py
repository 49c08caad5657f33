"""The policy as one object: what a checkpoint is (``policy_config.json``) and how it is loaded and queried."""

from prismatic.util.checkpoint_files import POLICY_CONFIG_NAME
from prismatic.vla.policy_config import (
    EmbodimentConfig,
    ImagePreprocessingConfig,
    PolicyConfig,
    read_policy_config,
    write_policy_config,
)

__all__ = [
    "POLICY_CONFIG_NAME",
    "EmbodimentConfig",
    "ImagePreprocessingConfig",
    "PolicyConfig",
    "read_policy_config",
    "write_policy_config",
]
