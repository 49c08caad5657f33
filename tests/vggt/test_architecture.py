"""The model's structure: state-dict keys and shapes of the full and tiny configurations, variants and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vggt.layers.vision_transformer import DINO_VARIANTS
from vggt.models.aggregator import Aggregator
from vggt.models.vggt import VGGT
from vggt.presets import teacher_vggt_kwargs, tiny_aggregator_kwargs


def test_full_size_model_has_exactly_the_vggt_1b_aggregator_keys(manifest_dir: Path):
    manifest = json.loads((manifest_dir / "vggt_1b_state_dict.json").read_text())
    aggregator_manifest = {key: shape for key, shape in manifest.items() if key.startswith("aggregator.")}
    with torch.device("meta"):
        model = VGGT(**teacher_vggt_kwargs())
    state_dict = model.state_dict()

    assert list(state_dict) == list(aggregator_manifest)  # same keys, same order
    assert {key: list(tensor.shape) for key, tensor in state_dict.items()} == aggregator_manifest
    assert len(state_dict) == 1210
    assert sum(tensor.numel() for tensor in state_dict.values()) == 909_112_320
    assert sum(parameter.numel() for parameter in model.parameters()) == 909_112_320


def test_full_size_features_have_upstream_shapes_at_518_px():
    with torch.device("meta"):
        model = VGGT(**teacher_vggt_kwargs()).eval()
        features, patch_start_idx = model(torch.empty(1, 2, 3, 518, 518))
    assert patch_start_idx == 5
    assert len(features) == 24
    assert all(tuple(f.shape) == (1, 2, 1374, 2048) for f in features)


def test_tiny_aggregator_matches_the_golden_key_list(golden_dir: Path):
    golden_keys = json.loads((golden_dir / "state_dict_keys.json").read_text())["Aggregator"]
    with torch.device("meta"):
        aggregator = Aggregator(**tiny_aggregator_kwargs())
    state_dict = aggregator.state_dict()
    assert list(state_dict) == list(golden_keys)
    assert all(list(state_dict[key].shape) == entry["shape"] for key, entry in golden_keys.items())
    assert sum(t.numel() for t in state_dict.values()) == 29_163_904


@pytest.mark.parametrize("name", sorted(DINO_VARIANTS))
def test_each_dino_variant_builds_with_its_width_and_depth(name: str):
    variant = DINO_VARIANTS[name]
    with torch.device("meta"):
        aggregator = Aggregator(embed_dim=variant.embed_dim, depth=1, num_heads=variant.num_heads, patch_embed=name)
    dino = aggregator.patch_embed
    assert len(dino.blocks) == variant.depth
    assert tuple(dino.pos_embed.shape) == (1, 1370, variant.embed_dim)
    assert dino.blocks[0].attn.num_heads == variant.num_heads


def test_conv_patch_embed_variant_runs():
    aggregator = Aggregator(embed_dim=64, depth=2, num_heads=2, patch_embed="conv").eval()
    assert set(aggregator.patch_embed.state_dict()) == {"proj.weight", "proj.bias"}
    with torch.no_grad():
        features, patch_start_idx = aggregator(torch.rand(1, 2, 3, 28, 42))
    assert [tuple(f.shape) for f in features] == [(1, 2, 5 + 6, 128)] * 2
    assert patch_start_idx == 5


def test_unknown_patch_embed_is_named_in_the_error():
    with pytest.raises(ValueError, match="dinov2_vitx14_reg"):
        Aggregator(patch_embed="dinov2_vitx14_reg")


def test_patch_embed_width_must_match_embed_dim():
    with torch.device("meta"), pytest.raises(ValueError, match="embed_dim=384"):
        Aggregator(embed_dim=384, num_heads=6, depth=1, patch_embed="dinov2_vitl14_reg")


@pytest.mark.parametrize("flag", ["enable_camera", "enable_point", "enable_depth", "enable_track"])
def test_enabling_a_head_says_it_is_not_implemented(flag: str):
    kwargs = {**teacher_vggt_kwargs(), flag: True}
    with torch.device("meta"), pytest.raises(NotImplementedError, match=f"{flag}=True"):
        VGGT(**kwargs)


def test_upstream_default_construction_says_heads_are_not_implemented():
    with torch.device("meta"), pytest.raises(NotImplementedError, match="not implemented"):
        VGGT()


def test_feature_only_false_is_refused():
    with torch.device("meta"), pytest.raises(NotImplementedError, match="feature_only=True"):
        VGGT(**{**teacher_vggt_kwargs(), "feature_only": False})


def test_images_must_be_a_multiple_of_the_patch_size(golden_tiny_vggt: VGGT):
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        golden_tiny_vggt(torch.rand(1, 1, 3, 30, 28))


def test_images_must_be_five_dimensional_rgb(golden_tiny_vggt: VGGT):
    with pytest.raises(ValueError, match=r"\[B, S, 3, H, W\]"):
        golden_tiny_vggt.aggregator(torch.rand(1, 4, 28, 28))
