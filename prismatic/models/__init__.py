"""The OpenVLA-OFT model: configuration, modeling, processor, action heads and projectors.

Importing this package registers the classes with the transformers Auto classes (``register_openvla``), so the
released checkpoints load with ``AutoModelForVision2Seq.from_pretrained(dir)`` and ``trust_remote_code=False``.
"""

from prismatic.models.action_heads import DiffusionActionHead, L1RegressionActionHead
from prismatic.models.configuration_prismatic import OpenVLAConfig, PrismaticConfig
from prismatic.models.modeling_prismatic import (
    OpenVLAForActionPrediction,
    PrismaticCausalLMOutputWithPast,
    PrismaticForConditionalGeneration,
)
from prismatic.models.processing_prismatic import PrismaticImageProcessor, PrismaticProcessor
from prismatic.models.projectors import NoisyActionProjector, ProprioProjector
from prismatic.models.registration import register_openvla

register_openvla()

__all__ = [
    "DiffusionActionHead",
    "L1RegressionActionHead",
    "NoisyActionProjector",
    "OpenVLAConfig",
    "OpenVLAForActionPrediction",
    "PrismaticCausalLMOutputWithPast",
    "PrismaticConfig",
    "PrismaticForConditionalGeneration",
    "PrismaticImageProcessor",
    "PrismaticProcessor",
    "ProprioProjector",
    "register_openvla",
]
