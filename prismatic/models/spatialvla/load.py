"""Load a SpatialVLA folder (the released layout) without remote code, strictly."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from prismatic.models.spatialvla.configuration_spatialvla import SpatialVLAConfig
from prismatic.models.spatialvla.modeling_spatialvla import SpatialVLAForConditionalGeneration
from prismatic.models.spatialvla.processing_spatialvla import SpatialVLAProcessor

REQUIRED_FILES = ("config.json", "preprocessor_config.json", "processor_config.json", "tokenizer_config.json")


@dataclass
class LoadedSpatialVLA:
    model: SpatialVLAForConditionalGeneration
    processor: SpatialVLAProcessor


def load_spatialvla(
    checkpoint_dir: str | Path, *, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu"
) -> LoadedSpatialVLA:
    """Model (every checkpoint tensor used, none missing) and processor of ``checkpoint_dir``, ``trust_remote_code``
    off. Raises naming the missing file, the wrong model type or the mismatched keys."""
    checkpoint_dir = Path(checkpoint_dir)
    missing_files = [name for name in REQUIRED_FILES if not (checkpoint_dir / name).is_file()]
    if missing_files:
        raise FileNotFoundError(f"{checkpoint_dir} is not a SpatialVLA folder: it lacks {missing_files}")
    model_type = json.loads((checkpoint_dir / "config.json").read_text()).get("model_type")
    if model_type != SpatialVLAConfig.model_type:
        raise ValueError(
            f"{checkpoint_dir / 'config.json'} has model_type={model_type!r}; expected {SpatialVLAConfig.model_type!r}"
        )
    model, info = AutoModelForImageTextToText.from_pretrained(
        checkpoint_dir, dtype=dtype, trust_remote_code=False, output_loading_info=True
    )
    problems = {name: sorted(keys) for name, keys in info.items() if keys and name != "error_msgs"}
    if problems or info.get("error_msgs"):
        raise ValueError(f"{checkpoint_dir}: the weights do not match SpatialVLA exactly: {problems or info}")
    processor = AutoProcessor.from_pretrained(checkpoint_dir, trust_remote_code=False)
    return LoadedSpatialVLA(model.to(device).eval(), processor)
