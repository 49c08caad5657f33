"""The full-size model, built on the meta device, has exactly the released checkpoints' tensors."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModelForVision2Seq
from transformers.modeling_utils import init_empty_weights

from prismatic.models import (
    DiffusionActionHead,
    L1RegressionActionHead,
    NoisyActionProjector,
    OpenVLAConfig,
    OpenVLAForActionPrediction,
    ProprioProjector,
)
from prismatic.models.presets import openvla_7b_config


def _manifest(manifest_dir: Path, name: str) -> dict:
    return json.loads((manifest_dir / name).read_text())


@pytest.fixture(scope="module")
def released_config_dir(tmp_path_factory, manifest_dir: Path) -> Path:
    """openvla-7b's config.json (reconstructed; it carries the auto_map to remote code)."""
    config = _manifest(manifest_dir, "openvla-7b-config.json")
    config.pop("_note")
    folder = tmp_path_factory.mktemp("openvla-7b")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _build_on_meta(config_dir: Path) -> OpenVLAForActionPrediction:
    config = AutoConfig.from_pretrained(config_dir, trust_remote_code=False)
    with init_empty_weights():
        return AutoModelForVision2Seq.from_config(config, trust_remote_code=False)


@pytest.fixture(scope="module")
def meta_vla(released_config_dir: Path) -> OpenVLAForActionPrediction:
    return _build_on_meta(released_config_dir)


def test_released_config_loads_with_local_classes(released_config_dir: Path):
    config = AutoConfig.from_pretrained(released_config_dir, trust_remote_code=False)
    assert isinstance(config, OpenVLAConfig)
    assert config.text_config.model_type == "llama"
    # Only 4 keys are stored in text_config; LlamaConfig defaults supply the rest (not Llama-2-7b-hf's 1e-5 / 4096).
    assert (config.text_config.rms_norm_eps, config.text_config.max_position_embeddings) == (1e-6, 2048)
    assert config.action_token_begin_idx == 31743 and config.base_vocab_size == 32000
    assert (config.num_actions_chunk, config.action_dim, config.proprio_dim) == (8, 7, 8)
    assert config.to_dict()["timm_model_ids"] == openvla_7b_config().timm_model_ids


def test_openvla_7b_matches_released_state_dict(meta_vla: OpenVLAForActionPrediction, manifest_dir: Path):
    expected = _manifest(manifest_dir, "openvla_7b_state_dict.json")
    state_dict = meta_vla.state_dict()
    assert isinstance(meta_vla, OpenVLAForActionPrediction)
    assert sorted(state_dict) == sorted(expected)
    mismatched = {key: list(t.shape) for key, t in state_dict.items() if list(t.shape) != expected[key]}
    assert mismatched == {}
    assert len(state_dict) == 982
    assert sum(t.numel() for t in state_dict.values()) == 7_541_237_184
    assert meta_vla.language_model.config._attn_implementation == "sdpa"


def test_heads_match_released_component_files(manifest_dir: Path):
    manifest = _manifest(manifest_dir, "oft_heads_state_dict.json")
    with init_empty_weights():
        components = {
            "L1RegressionActionHead": L1RegressionActionHead(4096, 4096, action_dim=7, num_actions_chunk=8),
            "ProprioProjector": ProprioProjector(llm_dim=4096, proprio_dim=8),
            "DiffusionActionHead": DiffusionActionHead(4096, 4096, action_dim=7, num_actions_chunk=8),
            "NoisyActionProjector": NoisyActionProjector(llm_dim=4096),
        }
    for name, module in components.items():
        on_disk = {f"module.{key}": list(t.shape) for key, t in module.state_dict().items()}
        assert on_disk == manifest[name]["keys_on_disk"], name
        assert sum(p.numel() for p in module.parameters()) == manifest[name]["num_parameters"], name


def _collapse(keys: list[str]) -> Counter:
    return Counter(re.sub(r"\.blocks\.\d+\.", ".blocks.N.", key) for key in keys)


def test_film_backbone_matches_released_key_patterns(released_config_dir: Path, manifest_dir: Path):
    """Upstream's FiLM file holds LoRA-wrapped tensors; with LoRA merged they are exactly our FiLM backbone's keys."""
    released = _manifest(manifest_dir, "oft_heads_state_dict.json")["FiLMedPrismaticVisionBackbone"]
    merged = Counter()
    for pattern, count in released["key_patterns_count"].items():
        if ".lora_" not in pattern:
            merged[pattern.replace(".base_layer.", ".")] += count
    vla = _build_on_meta(released_config_dir)
    vla.enable_film()
    ours = _collapse(list(vla.vision_backbone.state_dict()))
    assert ours == merged
    assert (
        sum(
            1
            for key in ours.elements()
            if key.endswith((".scale.weight", ".scale.bias", ".shift.weight", ".shift.bias"))
        )
        == released["num_film_tensors"]
    )


def test_lora_all_linear_wraps_the_released_adapter_modules(meta_vla: OpenVLAForActionPrediction, manifest_dir: Path):
    """The released adapter_config's target modules wrap the same 437 Linear + 2 Conv2d layers, with the same
    LoRA factor shapes, so a released ``lora_adapter/`` loads onto our module tree."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    manifest = _manifest(manifest_dir, "oft_lora_adapter_manifest.json")
    adapter = manifest["adapter_config"]
    lora_config = LoraConfig(
        r=adapter["r"], lora_alpha=adapter["lora_alpha"], lora_dropout=0.0, target_modules=adapter["target_modules"]
    )
    with init_empty_weights():  # LoRA factors on the meta device too
        peft_model = get_peft_model(meta_vla, lora_config)
    try:
        state_dict = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
        wrapped = Counter(
            type(module.base_layer).__name__ for module in peft_model.modules() if hasattr(module, "lora_A")
        )
    finally:
        peft_model.unload()
    assert wrapped == Counter(manifest["wrapped_base_layer_types"])
    ours = Counter()
    for key, tensor in state_dict.items():
        pattern = re.sub(r"\.(blocks|layers)\.\d+\.", r".\1.N.", key)
        ours[(pattern, tuple(tensor.shape))] += 1
    expected = Counter(
        {
            (key, tuple(entry["shape"])): entry["count"]
            for key, entry in manifest["key_patterns"].items()
            if ".lora_" in key  # the file also carries lm_head's frozen base weight
        }
    )
    assert ours == expected
