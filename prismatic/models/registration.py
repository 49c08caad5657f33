"""Registers the OpenVLA classes with the transformers Auto classes (no remote code, no ``trust_remote_code``)."""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageTextToText,
    AutoModelForVision2Seq,
    AutoProcessor,
)

from prismatic.models.configuration_prismatic import OpenVLAConfig, PrismaticConfig
from prismatic.models.modeling_prismatic import OpenVLAForActionPrediction, PrismaticForConditionalGeneration
from prismatic.models.processing_prismatic import PrismaticImageProcessor, PrismaticProcessor


def register_openvla() -> None:
    """Make ``AutoConfig``, ``AutoModelForVision2Seq`` (and ``AutoModelForImageTextToText``), ``AutoImageProcessor``
    and ``AutoProcessor`` load the model types ``openvla`` and ``prismatic`` with our classes. Idempotent."""
    for config_class, model_class in (
        (PrismaticConfig, PrismaticForConditionalGeneration),
        (OpenVLAConfig, OpenVLAForActionPrediction),
    ):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModelForVision2Seq.register(config_class, model_class, exist_ok=True)
        AutoModelForImageTextToText.register(config_class, model_class, exist_ok=True)  # Vision2Seq's successor
        AutoImageProcessor.register(config_class, slow_image_processor_class=PrismaticImageProcessor, exist_ok=True)
        AutoProcessor.register(config_class, PrismaticProcessor, exist_ok=True)
