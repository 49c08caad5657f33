"""SpatialVLA (PaliGemma2 + ZoeDepth 3-D position encodings + spatial action tokens), native and Auto-registered.

Importing this package registers the classes with the transformers Auto classes under the model type
``spatialvla``, so a released folder loads with ``trust_remote_code=False``; see ``load.load_spatialvla``.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoModelForVision2Seq, AutoProcessor

from prismatic.models.spatialvla.action_tokenizer import SpatialActionTokenizer, unnormalize_actions
from prismatic.models.spatialvla.configuration_spatialvla import SpatialVLAConfig
from prismatic.models.spatialvla.modeling_spatialvla import SpatialVLAForConditionalGeneration
from prismatic.models.spatialvla.processing_spatialvla import SpatialVLAProcessor


def register_spatialvla() -> None:
    """Make the Auto classes load model type ``spatialvla`` with our classes. Idempotent."""
    AutoConfig.register(SpatialVLAConfig.model_type, SpatialVLAConfig, exist_ok=True)
    for auto_class in (AutoModel, AutoModelForVision2Seq, AutoModelForImageTextToText):
        auto_class.register(SpatialVLAConfig, SpatialVLAForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(SpatialVLAConfig, SpatialVLAProcessor, exist_ok=True)


register_spatialvla()

__all__ = [
    "SpatialActionTokenizer",
    "SpatialVLAConfig",
    "SpatialVLAForConditionalGeneration",
    "SpatialVLAProcessor",
    "register_spatialvla",
    "unnormalize_actions",
]
