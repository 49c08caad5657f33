"""Native SpatialVLA: full-size layout, parity with the official code on the ``spatialvla_tiny`` golden fixtures
(tests/golden/README.md), the action decoder, and loading a released-layout folder without remote code."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from prismatic.models.spatialvla import SpatialVLAConfig, SpatialVLAForConditionalGeneration, SpatialVLAProcessor
from prismatic.models.spatialvla.action_tokenizer import SpatialActionTokenizer, unnormalize_actions
from prismatic.models.spatialvla.load import load_spatialvla
from prismatic.models.spatialvla.modeling_spatialvla import attention_bias
from prismatic.testing.golden import assert_max_abs
from prismatic.testing.spatialvla_tiny import (
    build_tiny_spatialvla,
    save_tiny_spatialvla_checkpoint,
    tiny_spatialvla_processor,
)

pytestmark = pytest.mark.slow

UNNORM_KEY = "droid/1.0.0"
PROMPT = "pick up the black bowl"


@pytest.fixture(scope="module")
def golden(golden_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(golden_dir / "spatialvla_tiny.safetensors")


@pytest.fixture(scope="module")
def golden_meta(golden_dir: Path) -> dict:
    return json.loads((golden_dir / "spatialvla_tiny.json").read_text())


@pytest.fixture(scope="module")
def model(golden_meta: dict) -> SpatialVLAForConditionalGeneration:
    return build_tiny_spatialvla(golden_meta)


@pytest.fixture(scope="module")
def processor(golden_meta: dict) -> SpatialVLAProcessor:
    return tiny_spatialvla_processor(golden_meta)


@pytest.fixture(scope="module")
def inputs(processor: SpatialVLAProcessor, golden: dict[str, torch.Tensor]):
    return processor(Image.fromarray(golden["image_uint8"].numpy()), PROMPT, unnorm_key=UNNORM_KEY)


# --- Full size ----------------------------------------------------------------------------------------------------
def test_full_size_model_matches_the_released_state_dict_manifest(manifest_dir: Path):
    config = SpatialVLAConfig(**json.loads((manifest_dir / "spatialvla-4b-224-pt-config.json").read_text()))
    with torch.device("meta"):
        model = SpatialVLAForConditionalGeneration(config)
    manifest = json.loads((manifest_dir / "spatialvla_4b_state_dict.json").read_text())
    shapes = {key: list(tensor.shape) for key, tensor in model.state_dict().items()}
    assert sorted(set(manifest) - set(shapes)) == [] and sorted(set(shapes) - set(manifest)) == []
    assert shapes == manifest
    assert len(shapes) == 1382
    assert sum(parameter.numel() for parameter in model.parameters()) == 4_027_854_731
    assert model.language_model.lm_head.weight is not model.get_input_embeddings().weight  # untied head
    assert model.language_model.config._attn_implementation == "eager"
    assert model.language_model.config.attn_logit_softcapping == 50.0


# --- Golden parity ------------------------------------------------------------------------------------------------
def test_processor_outputs_match_golden_exactly(inputs, golden: dict[str, torch.Tensor]):
    for name in ("input_ids", "attention_mask", "pixel_values", "intrinsic"):
        assert inputs[name].dtype == golden[name].dtype, name
        assert torch.equal(inputs[name], golden[name]), name
    assert inputs["input_ids"].shape == (1, 274)


def test_depth_backprojection_and_position_encoding_match_golden(model, golden: dict[str, torch.Tensor]):
    with torch.no_grad():
        depth = model.estimate_depth(golden["pixel_values"])
        xyz = model.backproject(depth, golden["intrinsic"])
        encoding = model.position_embedding_3d.encode(golden["xyz"])
        embedding = model.position_embedding_3d(golden["xyz"])
    assert_max_abs(depth, golden["depth_224"], 1e-5, "depth_224")
    assert_max_abs(xyz, golden["xyz"], 1e-5, "xyz")
    assert_max_abs(encoding, golden["pos_encoding_204"], 1e-4, "pos_encoding_204")
    assert_max_abs(embedding, golden["pos_embed_3d"], 5e-5, "pos_embed_3d")


def test_image_features_match_golden(model, golden: dict[str, torch.Tensor]):
    with torch.no_grad():
        features = model.get_image_features(golden["pixel_values"], golden["intrinsic"])
        siglip = model.vision_tower(pixel_values=(golden["pixel_values"] - 0.5) / 0.5).last_hidden_state
    assert_max_abs(siglip, golden["siglip_last_hidden_state"], 1e-5, "siglip_last_hidden_state")
    assert_max_abs(features, golden["image_features"], 1e-5, "image_features")


def test_prefix_logits_match_golden(model, inputs, golden: dict[str, torch.Tensor]):
    with torch.no_grad():
        logits = model(**inputs).logits[0]
    assert_max_abs(logits[golden["prefix_logits_positions"]], golden["prefix_logits_sel"], 1e-4, "prefix_logits_sel")
    assert_max_abs(logits[-1], golden["prefix_logits_last"], 1e-4, "prefix_logits_last")


def test_dropping_the_attention_softcap_breaks_parity(model, inputs, golden: dict[str, torch.Tensor]):
    """The check can fail: SDPA (which drops the attention soft-cap) moves the logits beyond the tolerance."""
    text_config = model.language_model.config
    text_config._attn_implementation = "sdpa"
    try:
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
    finally:
        text_config._attn_implementation = "eager"
    assert (logits - golden["prefix_logits_last"]).abs().max().item() > 1e-3


def test_greedy_decoding_matches_golden_ids(model, inputs, golden: dict[str, torch.Tensor]):
    generated = model.generate_action_ids(**inputs, max_new_tokens=256)
    assert torch.equal(generated, golden["generated_ids"])


def test_prefix_lm_forward_reproduces_the_decode_step_logits(model, inputs, golden: dict[str, torch.Tensor]):
    """Prompt (prefix, bidirectional) + the first 12 generated ids (suffix, causal) in one forward pass."""
    suffix = golden["generated_ids"][:, :12]
    input_ids = torch.cat([inputs["input_ids"], suffix], dim=1)
    token_type_ids = torch.cat([torch.zeros_like(inputs["input_ids"]), torch.ones_like(suffix)], dim=1)
    with torch.no_grad():
        logits = model(
            input_ids=input_ids,
            pixel_values=inputs["pixel_values"],
            intrinsic=inputs["intrinsic"],
            attention_mask=torch.ones_like(input_ids),
            token_type_ids=token_type_ids,
        ).logits[0]
    prefix_length = inputs["input_ids"].shape[1]
    step_logits = logits[prefix_length - 1 : prefix_length + 11]
    assert_max_abs(step_logits, golden["greedy_step_logits_12"], 1e-4, "greedy_step_logits_12")


def test_decoded_actions_match_golden_exactly(processor, golden: dict[str, torch.Tensor]):
    decoded = processor.decode_actions(golden["generated_ids"], UNNORM_KEY)
    np.testing.assert_array_equal(decoded["action_ids"], golden["action_ids"].numpy())
    np.testing.assert_array_equal(decoded["normalized_actions"], golden["normalized_actions"].numpy())
    np.testing.assert_array_equal(decoded["actions"], golden["actions"].numpy())
    assert decoded["actions"].dtype == np.float64 and decoded["actions"].shape == (4, 7)

    probe = processor.decode_actions(golden["decode_probe_ids"].reshape(1, -1), UNNORM_KEY)
    np.testing.assert_array_equal(probe["normalized_actions"], golden["decode_probe_normalized"].numpy())
    np.testing.assert_array_equal(probe["actions"], golden["decode_probe_actions"].numpy())


# --- Action decoder by hand -----------------------------------------------------------------------------------
def test_action_decoder_uses_bin_midpoints_clipping_and_unnormalisation():
    begin = 100
    bin_policy = {
        "translation": {
            "theta_bins": [0.0, 1.0, math.pi],
            "phi_bins": [-math.pi, 0.0, 1.0, math.pi],
            "r_bins": [0.0, 0.5, 2.0],
        },
        "rotation": {"roll_bins": [-1.0, 0.0, 1.0], "pitch_bins": [-1.0, 0.5, 1.0], "yaw_bins": [-1.0, -0.5, 1.0]},
    }
    tokenizer = SpatialActionTokenizer(bin_policy, begin)
    assert tokenizer.vocab_size == 12 + 8 + 2  # 2 x 3 x 2 translation, 2 x 2 x 2 rotation, 2 gripper
    # theta 1, phi 2, r 0 -> 1*6 + 2*2 + 0 = 10; roll 1, pitch 0, yaw 1 -> 4 + 0 + 1 = 5; gripper "1.0"
    ids = np.array([[begin + 10, begin + 12 + 5, begin + 21]])
    theta, phi, radius = (1.0 + math.pi) / 2, (1.0 + math.pi) / 2, 0.25
    expected = [
        radius * math.sin(theta) * math.cos(phi),
        radius * math.sin(theta) * math.sin(phi),
        radius * math.cos(theta),
        0.5,
        -0.25,
        0.25,
        1.0,
    ]
    np.testing.assert_allclose(tokenizer.decode(ids)[0], expected, rtol=0, atol=1e-15)

    # Wrong-kind ids clip into the slot's range: 0 -> first translation bin, a translation id in the rotation slot
    # -> first rotation bin, a huge id in the gripper slot -> "1.0". Radius 1.25 (r bin 1) at theta 0.5 gives
    # z = 1.097, clipped to 1.
    clipped = tokenizer.decode(np.array([[0, begin, 10**6], [begin + 1, begin + 12 + 7, begin + 20]]))
    first_translation = [0.25 * math.sin(0.5) * math.cos(-math.pi / 2), 0.25 * math.sin(0.5) * -1, 0.25 * math.cos(0.5)]
    np.testing.assert_allclose(clipped[0], [*first_translation, -0.5, -0.25, -0.75, 1.0], atol=1e-15)
    np.testing.assert_allclose(
        clipped[1, :3], [1.25 * math.sin(0.5) * math.cos(-math.pi / 2), -1.25 * math.sin(0.5), 1.0]
    )
    assert clipped[1, 6] == 0.0

    stats = {"q01": [-2.0] * 6 + [0.0], "q99": [2.0] * 6 + [1.0], "mask": [True] * 6 + [False]}
    actions = unnormalize_actions(np.array([[-1.0, 0.0, 1.0, 0.5, -0.5, 0.25, 1.0]]), stats)
    np.testing.assert_allclose(actions, [[-2.0, 0.0, 2.0, 1.0, -1.0, 0.5, 1.0]], atol=1e-15)


def test_processor_config_with_infinity_statistics_loads(tmp_path: Path, golden_meta: dict):
    folder = save_tiny_spatialvla_checkpoint(tmp_path / "svla", golden_meta)
    config_path = folder / "processor_config.json"
    config = json.loads(config_path.read_text())
    config["statistics"]["rh20t_rlds/1.0.0"] = {
        "action": {"q01": [-math.inf] * 7, "q99": [math.inf] * 7, "mask": [True] * 6 + [False]}
    }
    config_path.write_text(json.dumps(config))  # Python's json writes the bare `Infinity` the released file has
    assert "Infinity" in config_path.read_text()
    processor = load_spatialvla(folder, dtype=torch.float32).processor
    assert processor.action_statistics("rh20t_rlds/1.0.0")["q99"][0] == math.inf
    with pytest.raises(KeyError, match="bridge_orig/1.0.0"):
        processor.action_statistics("libero_spatial")


def test_unknown_intrinsic_key_falls_back_to_default(processor, golden: dict[str, torch.Tensor]):
    assert torch.equal(processor.intrinsic_for("libero_spatial"), golden["intrinsic"])
    expected = torch.tensor([[218.2558, 0, 111.8254], [0, 291.0077, 111.7877], [0, 0, 1]])
    torch.testing.assert_close(processor.intrinsic_for(None), expected, rtol=0, atol=1e-4)


def test_prefix_lm_mask_is_bidirectional_on_the_prefix_and_causal_on_the_suffix():
    attention_mask = torch.tensor([[1, 1, 1, 1, 0]])  # the last key is padding
    token_type_ids = torch.tensor([[0, 0, 1, 1, 1]])
    bias = attention_bias(attention_mask, token_type_ids, torch.arange(5), torch.float32)[0, 0]
    visible = (bias == 0).int()
    assert visible.tolist() == [
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
    ]


# --- Released folder ------------------------------------------------------------------------------------------
def test_released_layout_loads_without_remote_code_and_reproduces_golden(tmp_path: Path, golden_meta: dict, golden):
    folder = save_tiny_spatialvla_checkpoint(tmp_path / "svla", golden_meta)
    assert json.loads((folder / "config.json").read_text())["auto_map"]  # remote code is advertised ...
    assert (folder / "modeling_spatialvla.py").exists()  # ... and would raise if imported
    loaded = load_spatialvla(folder, dtype=torch.float32)
    assert isinstance(loaded.model, SpatialVLAForConditionalGeneration)
    assert isinstance(loaded.processor, SpatialVLAProcessor)
    assert loaded.model.language_model.config._attn_implementation == "eager"
    inputs = loaded.processor(Image.fromarray(golden["image_uint8"].numpy()), PROMPT, unnorm_key=UNNORM_KEY)
    with torch.no_grad():
        logits = loaded.model(**inputs).logits[0, -1]
    assert_max_abs(logits, golden["prefix_logits_last"], 1e-4, "prefix_logits_last (loaded)")
    generated = loaded.model.generate_action_ids(**inputs, max_new_tokens=12)
    decoded = loaded.processor.decode_actions(generated, UNNORM_KEY)
    np.testing.assert_array_equal(decoded["actions"], golden["actions"].numpy())


def test_loading_rejects_a_folder_with_a_missing_weight(tmp_path: Path, golden_meta: dict):
    folder = save_tiny_spatialvla_checkpoint(tmp_path / "svla", golden_meta)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = index["weight_map"].pop("spatial_embed_tokens.weight")
    index_path.write_text(json.dumps(index))
    tensors = load_file(folder / shard)
    tensors.pop("spatial_embed_tokens.weight")
    save_file(tensors, folder / shard, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="spatial_embed_tokens.weight"):
        load_spatialvla(folder, dtype=torch.float32)


def test_bfloat16_model_decodes_actions(model, inputs):
    """The CUDA dtype (bf16) runs the same code path; on CPU it just has to produce a valid chunk."""
    bf16_model = copy.deepcopy(model).to(torch.bfloat16)
    bf16_inputs = {
        key: value.to(torch.bfloat16) if value.is_floating_point() else value for key, value in inputs.items()
    }
    generated = bf16_model.generate_action_ids(**bf16_inputs, max_new_tokens=12)
    assert generated.shape == (1, 12) and generated.dtype == torch.int64
