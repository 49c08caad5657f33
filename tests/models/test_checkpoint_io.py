"""Checkpoint folders in the released layout: Auto-class reloads, ``load_vla``, LoRA adapters, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForVision2Seq, AutoProcessor

from prismatic.models import (
    L1RegressionActionHead,
    OpenVLAConfig,
    OpenVLAForActionPrediction,
    PrismaticConfig,
    PrismaticForConditionalGeneration,
    PrismaticProcessor,
    ProprioProjector,
)
from prismatic.policy.components import load_component_state_dict, save_component_state_dict
from prismatic.policy.load import load_vla, merge_lora_into_state_dict
from prismatic.testing.tiny_vla import (
    TINY_TEXT_CONFIG,
    save_tiny_vla_checkpoint,
    tiny_action_head,
    tiny_training_batch,
    tiny_vla_config,
)
from prismatic.vla.constants import ALOHA
from prismatic.vla.prompt import build_prompt


def _predict(
    loaded, batch: dict, unnorm_key: str = "libero_spatial", use_film: bool = False
) -> tuple[np.ndarray, torch.Tensor]:
    return loaded.vla.predict_action(
        input_ids=batch["input_ids"][:, :9],
        unnorm_key=unnorm_key,
        pixel_values=batch["pixel_values"],
        proprio=batch["proprio"],
        proprio_projector=loaded.proprio_projector,
        action_head=loaded.action_head,
        use_film=use_film,
    )


def test_tiny_checkpoint_has_the_released_layout(tiny_checkpoint: Path):
    names = {path.name for path in tiny_checkpoint.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "preprocessor_config.json",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "dataset_statistics.json",
        "action_head--latest_checkpoint.pt",
        "proprio_projector--latest_checkpoint.pt",
    } <= names
    index = json.loads((tiny_checkpoint / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards == sorted(name for name in names if name.startswith("model-0"))
    stored = {key for shard in shards for key in load_file(tiny_checkpoint / shard)}
    assert stored == set(index["weight_map"]) and "vision_backbone.featurizer.blocks.0.ls1.scale_factor" in stored
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["model_type"] == "openvla" and config["architectures"] == ["OpenVLAForActionPrediction"]
    assert config["auto_map"]["AutoModelForVision2Seq"] == "modeling_prismatic.OpenVLAForActionPrediction"
    assert (
        json.loads((tiny_checkpoint / "processor_config.json").read_text())["processor_class"] == "PrismaticProcessor"
    )
    head_keys = torch.load(tiny_checkpoint / "action_head--latest_checkpoint.pt", weights_only=True).keys()
    assert all(key.startswith("module.") for key in head_keys)


def test_tiny_checkpoint_reloads_bit_identically_through_auto_classes(tiny_checkpoint: Path):
    torch.manual_seed(0)  # save_tiny_vla_checkpoint(seed=0) initialised the same model
    original = OpenVLAForActionPrediction(tiny_vla_config()).eval()
    config = AutoConfig.from_pretrained(tiny_checkpoint, trust_remote_code=False)
    reloaded = AutoModelForVision2Seq.from_pretrained(tiny_checkpoint, trust_remote_code=False).eval()
    processor = AutoProcessor.from_pretrained(tiny_checkpoint, trust_remote_code=False)
    assert isinstance(config, OpenVLAConfig) and isinstance(reloaded, OpenVLAForActionPrediction)
    assert isinstance(processor, PrismaticProcessor)
    original_state, reloaded_state = original.state_dict(), reloaded.state_dict()
    assert original_state.keys() == reloaded_state.keys()
    assert all(torch.equal(original_state[key], reloaded_state[key]) for key in original_state)
    batch = tiny_training_batch(config, [5], num_images=1)
    with torch.no_grad():
        outputs = [
            model(**{k: batch[k] for k in ("input_ids", "pixel_values", "labels")}) for model in (original, reloaded)
        ]
    assert torch.equal(outputs[0].logits, outputs[1].logits)

    bf16 = AutoModelForVision2Seq.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16, trust_remote_code=False)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert bf16.language_model.model.rotary_emb.inv_freq.dtype == torch.float32


def test_load_vla_assembles_the_fine_tuned_layout(tiny_checkpoint: Path, tiny_norm_stats: dict):
    loaded = load_vla(tiny_checkpoint, dtype=torch.float32)
    assert isinstance(loaded.vla, OpenVLAForActionPrediction) and isinstance(loaded.processor, PrismaticProcessor)
    assert isinstance(loaded.action_head, L1RegressionActionHead)
    assert isinstance(loaded.proprio_projector, ProprioProjector) and loaded.noisy_action_projector is None
    assert loaded.norm_stats == tiny_norm_stats == loaded.vla.norm_stats
    assert loaded.vla.get_num_images_in_input() == 2 and not loaded.vla.training
    saved_head = load_component_state_dict(tiny_checkpoint / "action_head--latest_checkpoint.pt")
    assert all(torch.equal(saved_head[key], value) for key, value in loaded.action_head.state_dict().items())

    batch = tiny_training_batch(loaded.config, [8], seed=2)
    actions, hidden = _predict(loaded, batch)  # "libero_spatial" falls back to "libero_spatial_no_noops"
    assert actions.shape == (8, 7) and hidden.shape == (1, 56, 64)
    direct, _ = _predict(loaded, batch, unnorm_key="libero_spatial_no_noops")
    np.testing.assert_array_equal(actions, direct)
    with pytest.raises(ValueError, match="'libero_goal'.*libero_spatial_no_noops"):
        _predict(loaded, batch, unnorm_key="libero_goal")

    bf16 = load_vla(tiny_checkpoint)  # the released dtype
    assert bf16.action_head.model.fc1.weight.dtype == torch.bfloat16
    assert bf16.proprio_projector.fc1.weight.dtype == torch.bfloat16
    assert _predict(bf16, batch)[0].shape == (8, 7)


def test_component_files_load_with_or_without_the_module_prefix(tmp_path: Path):
    torch.manual_seed(0)
    head = tiny_action_head(tiny_vla_config())
    save_component_state_dict(head, tmp_path / "with.pt")
    save_component_state_dict(head, tmp_path / "without.pt", ddp_prefix=False)
    assert next(iter(torch.load(tmp_path / "with.pt", weights_only=True))).startswith("module.")
    save_component_state_dict(head, tmp_path / "again" / "with.pt")  # the same tensors give the same bytes
    assert (tmp_path / "again" / "with.pt").read_bytes() == (tmp_path / "with.pt").read_bytes()
    for name in ("with.pt", "without.pt"):
        state_dict = load_component_state_dict(tmp_path / name)
        assert state_dict.keys() == head.state_dict().keys()
        assert all(torch.equal(state_dict[key], value) for key, value in head.state_dict().items())
    torch.save([1, 2], tmp_path / "not_a_state_dict.pt")
    with pytest.raises(ValueError, match="not_a_state_dict.pt does not hold a state dict"):
        load_component_state_dict(tmp_path / "not_a_state_dict.pt")


def test_load_vla_uses_the_given_platform(tiny_checkpoint: Path):
    (tiny_checkpoint / "action_head--latest_checkpoint.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"action_head--\{step\|latest\}_checkpoint.pt"):
        load_vla(tiny_checkpoint, platform=ALOHA, dtype=torch.float32)
    aloha_head = L1RegressionActionHead(64, 64, ALOHA.action_dim, ALOHA.num_actions_chunk)
    save_component_state_dict(aloha_head, tiny_checkpoint / "action_head--latest_checkpoint.pt")
    loaded = load_vla(tiny_checkpoint, platform=ALOHA, use_proprio=False, dtype=torch.float32)
    assert (loaded.config.num_actions_chunk, loaded.config.action_dim) == (25, 14)
    assert loaded.action_head.num_actions_chunk == 25 and loaded.proprio_projector is None


def _remove_shard(folder: Path) -> str:
    shard = sorted(folder.glob("model-0*.safetensors"))[1]
    shard.unlink()
    return shard.name


def _corrupt_config(folder: Path) -> str:
    (folder / "config.json").write_text("{not json")
    return "config.json is not valid JSON"


def _duplicate_head(folder: Path) -> str:
    shutil.copy(folder / "action_head--latest_checkpoint.pt", folder / "action_head--20000_checkpoint.pt")
    return "found.*action_head--20000_checkpoint.pt.*action_head--latest_checkpoint.pt.*checkpoint_step"


def _drop_tokenizer(folder: Path) -> str:
    (folder / "tokenizer_config.json").unlink()
    return "lacks the processor file.*tokenizer_config.json"


def _misfit_projector(folder: Path) -> str:
    save_component_state_dict(ProprioProjector(64, 14), folder / "proprio_projector--latest_checkpoint.pt")
    return "proprio_projector--latest_checkpoint.pt does not fit a ProprioProjector"


def _drop_all_weights(folder: Path) -> str:
    for path in [*folder.glob("model*.safetensors"), folder / "model.safetensors.index.json"]:
        path.unlink()
    return "holds no model weights"


@pytest.mark.parametrize(
    "break_folder",
    [_remove_shard, _corrupt_config, _duplicate_head, _drop_tokenizer, _misfit_projector, _drop_all_weights],
)
def test_load_vla_names_the_missing_or_malformed_file(tiny_checkpoint: Path, break_folder):
    expected_message = break_folder(tiny_checkpoint)
    with pytest.raises((FileNotFoundError, ValueError), match=expected_message):
        load_vla(tiny_checkpoint, dtype=torch.float32)


def test_duplicate_component_files_are_resolved_by_checkpoint_step(tiny_checkpoint: Path):
    _duplicate_head(tiny_checkpoint)
    _duplicate_head_proprio = tiny_checkpoint / "proprio_projector--20000_checkpoint.pt"
    shutil.copy(tiny_checkpoint / "proprio_projector--latest_checkpoint.pt", _duplicate_head_proprio)
    loaded = load_vla(tiny_checkpoint, checkpoint_step="latest", dtype=torch.float32)
    assert loaded.action_head is not None


def test_lora_only_checkpoint_is_applied_to_its_base_model(tmp_path: Path, tiny_norm_stats: dict):
    from peft import LoraConfig, get_peft_model

    base_dir = save_tiny_vla_checkpoint(tmp_path / "base", seed=0)
    finetuned_dir = save_tiny_vla_checkpoint(
        tmp_path / "finetuned", seed=0, norm_stats=tiny_norm_stats, with_heads=True
    )
    for path in [*finetuned_dir.glob("model*.safetensors"), finetuned_dir / "model.safetensors.index.json"]:
        path.unlink()  # as a run saved with merge_lora_during_training=False
    base = AutoModelForVision2Seq.from_pretrained(base_dir, trust_remote_code=False)
    torch.manual_seed(0)
    lora_config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights="gaussian")
    peft_model = get_peft_model(base, lora_config)
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.05)  # a trained adapter is not the identity
    peft_model.save_pretrained(finetuned_dir / "lora_adapter")
    merged = peft_model.merge_and_unload().eval()

    adapter_config_path = finetuned_dir / "lora_adapter" / "adapter_config.json"
    adapter_config = json.loads(adapter_config_path.read_text())
    adapter_config["base_model_name_or_path"] = "openvla/openvla-7b"  # a Hub id: not available offline
    adapter_config_path.write_text(json.dumps(adapter_config))
    with pytest.raises(FileNotFoundError, match="holds no merged weights.*'openvla/openvla-7b'.*base_model_path"):
        load_vla(finetuned_dir, dtype=torch.float32)

    loaded = load_vla(finetuned_dir, base_model_path=base_dir, dtype=torch.float32)
    merged_state = merged.state_dict()
    assert all(torch.allclose(merged_state[k], v, atol=1e-6) for k, v in loaded.vla.state_dict().items())
    base_state = AutoModelForVision2Seq.from_pretrained(base_dir, trust_remote_code=False).state_dict()
    key = "language_model.model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(loaded.vla.state_dict()[key], base_state[key])


def test_merge_lora_into_state_dict_matches_peft(tmp_path: Path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, kernel_size=2, stride=2), torch.nn.Flatten(), torch.nn.Linear(32, 5)
    )
    plain = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, kernel_size=2, stride=2), torch.nn.Flatten(), torch.nn.Linear(32, 5)
    )
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=6, target_modules=["0", "2"]))
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter)
    wrapped_state = peft_model.base_model.model.state_dict()
    assert any(".lora_A.default." in key for key in wrapped_state)
    plain.load_state_dict(merge_lora_into_state_dict(wrapped_state, scaling=6 / 2))
    images = torch.randn(4, 3, 4, 4)
    torch.testing.assert_close(plain(images), peft_model(images), rtol=1e-5, atol=1e-5)


def test_processor_and_model_run_a_prompt_end_to_end(tiny_checkpoint: Path):
    """What the evaluation does: processor(prompt, image) per camera, concatenated pixels, predict_action."""
    from PIL import Image

    loaded = load_vla(tiny_checkpoint, dtype=torch.float32)
    prompt = build_prompt("put the bowl on the plate")
    cameras = [Image.fromarray(np.full((224, 224, 3), value, dtype=np.uint8)) for value in (40, 200)]
    inputs = [loaded.processor(prompt, image) for image in cameras]
    pixel_values = torch.cat([item["pixel_values"] for item in inputs], dim=1)
    actions, _ = loaded.vla.predict_action(
        **{**inputs[0], "pixel_values": pixel_values},
        unnorm_key="libero_spatial_no_noops",
        proprio=np.zeros(8),
        proprio_projector=loaded.proprio_projector,
        action_head=loaded.action_head,
        do_sample=False,
    )
    assert actions.shape == (8, 7) and np.isfinite(actions).all()


def test_film_vision_backbone_file_is_loaded_with_use_film(tiny_checkpoint: Path):
    reference = load_vla(tiny_checkpoint, dtype=torch.float32)
    batch = tiny_training_batch(reference.config, [6], seed=4)
    without_film, _ = _predict(reference, batch)
    with pytest.raises(ValueError, match="enable_film"):
        _predict(reference, batch, use_film=True)
    reference.vla.enable_film()
    torch.manual_seed(3)
    for name, parameter in reference.vla.vision_backbone.named_parameters():
        if ".scale." in name or ".shift." in name:
            torch.nn.init.normal_(parameter, std=0.1)
    # Upstream saves the FiLM backbone without DDP's prefix.
    save_component_state_dict(
        reference.vla.vision_backbone, tiny_checkpoint / "vision_backbone--latest_checkpoint.pt", ddp_prefix=False
    )
    expected, _ = _predict(reference, batch, use_film=True)
    loaded = load_vla(tiny_checkpoint, use_film=True, dtype=torch.float32)
    assert loaded.vla.uses_film
    actual, _ = _predict(loaded, batch, use_film=True)
    np.testing.assert_array_equal(actual, expected)
    assert np.abs(actual - without_film).max() > 1e-6


def test_prismatic_model_type_round_trips_through_auto_classes(tmp_path: Path):
    """model_type "prismatic": a single (non-fused) SigLIP tower and the 2-layer gelu-mlp projector."""
    config = PrismaticConfig(
        timm_model_kwargs=[{"embed_dim": 48, "depth": 2, "num_heads": 2}], text_config=TINY_TEXT_CONFIG
    )
    assert not config.use_fused_vision_backbone and config.timm_model_ids == ["vit_so400m_patch14_siglip_224"]
    torch.manual_seed(0)
    model = PrismaticForConditionalGeneration(config).eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForVision2Seq.from_pretrained(tmp_path, trust_remote_code=False).eval()
    assert type(reloaded) is PrismaticForConditionalGeneration
    input_ids = torch.tensor([[1, 450, 3500, 29871]])
    pixel_values = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        logits = [m(input_ids=input_ids, pixel_values=pixel_values).logits for m in (model, reloaded)]
    assert logits[0].shape == (1, 4 + 256, 32064) and torch.equal(logits[0], logits[1])
