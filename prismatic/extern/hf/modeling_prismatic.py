"""Upstream import path of the models; the code lives in ``prismatic.models.modeling_prismatic``."""

from prismatic.models.modeling_prismatic import (
    OpenVLAForActionPrediction,
    PrismaticCausalLMOutputWithPast,
    PrismaticForConditionalGeneration,
    PrismaticPreTrainedModel,
)
from prismatic.models.projectors import PrismaticProjector
from prismatic.models.vision_backbone import PrismaticVisionBackbone

__all__ = [
    "OpenVLAForActionPrediction",
    "PrismaticCausalLMOutputWithPast",
    "PrismaticForConditionalGeneration",
    "PrismaticPreTrainedModel",
    "PrismaticProjector",
    "PrismaticVisionBackbone",
]
