"""The tiny SpatialVLA of the ``spatialvla_tiny`` golden fixtures, and a checkpoint folder in the released layout.

Everything is built from the fixture's JSON (``tests/golden/spatialvla_tiny.json``): the tiny config, the processor
fields (statistics, bin_policy, intrinsics), the image processor and the tokenizer recipe (a 320-piece
sentencepiece model + ``<image>``, ``<loc....>``/``<seg...>`` and the 8,194 action tokens).
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AddedToken, GemmaTokenizerFast, GenerationConfig, SiglipImageProcessor

from prismatic.models.spatialvla import SpatialVLAConfig, SpatialVLAForConditionalGeneration, SpatialVLAProcessor
from prismatic.testing.golden import apply_svla_golden_weights

NUM_LOC_TOKENS, NUM_SEG_TOKENS = 1024, 128
# What the released config.json / preprocessor_config.json point their auto_map at (remote code we never import).
RELEASED_AUTO_MAP = {
    "AutoConfig": "configuration_spatialvla.SpatialVLAConfig",
    "AutoModel": "modeling_spatialvla.SpatialVLAForConditionalGeneration",
}
RELEASED_PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_spatialvla.SpatialVLAProcessor"}
# The released folder ships these remote-code files; the tiny folder's copies fail on import to prove they are unused.
REMOTE_CODE_FILES = (
    "configuration_spatialvla.py",
    "modeling_spatialvla.py",
    "modeling_gemma2.py",
    "processing_spatialvla.py",
    "action_tokenizer.py",
)
NOT_IMAGE_PROCESSOR_ARGS = ("_processor_class", "image_processor_type")  # bookkeeping in the saved JSON
PROCESSOR_FIELDS = (
    "statistics",
    "bin_policy",
    "intrinsic_config",
    "action_config",
    "action_chunk_size",
    "num_obs_steps",
    "obs_delta",
    "min_sigma",
)


def tiny_spatialvla_config(golden_meta: dict[str, Any]) -> SpatialVLAConfig:
    return SpatialVLAConfig(**golden_meta["config"])


def tiny_spatialvla_tokenizer(golden_meta: dict[str, Any]) -> GemmaTokenizerFast:
    """The fixture's tokenizer, following its ``tokenizer_recipe``."""
    with tempfile.TemporaryDirectory() as folder:
        model_path = Path(folder) / "tokenizer.model"
        model_path.write_bytes(base64.b64decode(golden_meta["tokenizer"]["tokenizer_model_b64"]))
        tokenizer = GemmaTokenizerFast(vocab_file=str(model_path), add_bos_token=False, add_eos_token=False)
    tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken("<image>", normalized=False, special=True)]})
    tokenizer.add_tokens(
        [f"<loc{index:04d}>" for index in range(NUM_LOC_TOKENS)]
        + [f"<seg{index:03d}>" for index in range(NUM_SEG_TOKENS)]
    )
    num_actions = golden_meta["config"]["spatial_token_num"]
    action_tokens = [AddedToken(f"<ACTION{index:05d}>", normalized=False, special=True) for index in range(num_actions)]
    tokenizer.add_tokens(action_tokens, special_tokens=True)
    return tokenizer


def tiny_spatialvla_processor(golden_meta: dict[str, Any]) -> SpatialVLAProcessor:
    fields = golden_meta["processor"]
    image_processor = SiglipImageProcessor(
        **{key: value for key, value in fields["image_processor"].items() if key not in NOT_IMAGE_PROCESSOR_ARGS}
    )
    return SpatialVLAProcessor(
        image_processor,
        tiny_spatialvla_tokenizer(golden_meta),
        **{name: fields[name] for name in PROCESSOR_FIELDS},
    )


@torch.no_grad()
def build_tiny_spatialvla(golden_meta: dict[str, Any]) -> SpatialVLAForConditionalGeneration:
    """The tiny model with weight rule ``svla-golden-v1``, in eval mode (float32)."""
    return apply_svla_golden_weights(SpatialVLAForConditionalGeneration(tiny_spatialvla_config(golden_meta))).eval()


def save_tiny_spatialvla_checkpoint(out_dir: str | Path, golden_meta: dict[str, Any]) -> Path:
    """Write the golden tiny SpatialVLA in the released folder layout and return the folder.

    ``config.json`` (with ``auto_map``), two weight shards + ``model.safetensors.index.json``,
    ``generation_config.json``, ``preprocessor_config.json`` and ``processor_config.json`` (with ``auto_map``),
    the tokenizer files, and the five remote-code file names (here: modules that raise when imported).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build_tiny_spatialvla(golden_meta)
    model.config.auto_map = RELEASED_AUTO_MAP
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(out_dir, max_shard_size="3MB")
    GenerationConfig(bos_token_id=2, eos_token_id=1, pad_token_id=0, cache_implementation="hybrid").save_pretrained(
        out_dir
    )
    processor = tiny_spatialvla_processor(golden_meta)
    processor.image_processor.auto_map = RELEASED_PROCESSOR_AUTO_MAP
    processor.auto_map = RELEASED_PROCESSOR_AUTO_MAP
    processor.save_pretrained(out_dir)
    for name in REMOTE_CODE_FILES:
        (out_dir / name).write_text('raise ImportError("remote code must not be imported")\n')
    return out_dir
