"""The merged openvla-7b as the script saves it, planned on the meta device: released keys, four shards."""

from __future__ import annotations

import json

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from transformers.modeling_utils import init_empty_weights

from prismatic.models.modeling_prismatic import OpenVLAForActionPrediction
from prismatic.models.presets import openvla_7b_config
from prismatic.training.merge_check import ConvertConfig


def test_default_shard_size_splits_a_bf16_openvla_7b_like_the_released_merges(manifest_dir):
    with init_empty_weights():
        vla = OpenVLAForActionPrediction(openvla_7b_config()).to(torch.bfloat16)
    state_dict = vla.state_dict()
    released = json.loads((manifest_dir / "openvla_7b_state_dict.json").read_text())
    assert {key: list(value.shape) for key, value in state_dict.items()} == released

    # save_pretrained's own split (transformers shards with this function); checkpoint-manifests.md, "Surprises" 3.
    split = split_torch_state_dict_into_shards(state_dict, max_shard_size=ConvertConfig.max_shard_size)
    shards = [split.filename_to_tensors[name] for name in sorted(split.filename_to_tensors)]
    assert [len(keys) for keys in shards] == [760, 109, 112, 1]
    assert [keys[-1] for keys in shards] == [
        "language_model.model.layers.7.mlp.gate_proj.weight",
        "language_model.model.layers.19.mlp.up_proj.weight",
        "language_model.model.norm.weight",
        "language_model.lm_head.weight",
    ]
    assert sorted(split.filename_to_tensors)[-1] == "model-00004-of-00004.safetensors"
