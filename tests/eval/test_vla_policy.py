"""The VLA policy on a tiny checkpoint: upstream's query (images, prompt, proprio), unnorm key, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.robot.libero.config import GenerateConfig
from experiments.robot.libero.preflight import check_eval_config
from experiments.robot.policy_factory import load_policy
from experiments.robot.vla_policy import VLAPolicy, resolve_unnorm_key
from prismatic.models.quantization import quantized_linear_names
from prismatic.policy.families import FAMILIES
from prismatic.vla.image_utils import center_crop_image, resize_image_for_policy
from prismatic.vla.normalization import normalize
from prismatic.vla.policy_config import (
    MODEL_FAMILIES,
    EmbodimentConfig,
    ImagePreprocessingConfig,
    PolicyConfig,
    write_policy_config,
)
from prismatic.vla.prompt import build_prompt

INSTRUCTION = "Pick up the black bowl between the plate and the ramekin and place it on the plate"


@pytest.fixture(scope="module")
def policy(tiny_checkpoint: Path) -> VLAPolicy:
    return VLAPolicy.from_config(GenerateConfig(pretrained_checkpoint=str(tiny_checkpoint)))


@pytest.fixture(scope="module")
def observation(agentview_frame: np.ndarray, wrist_frame: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "full_image": resize_image_for_policy(agentview_frame[::-1, ::-1]),
        "wrist_image": resize_image_for_policy(wrist_frame[::-1, ::-1]),
        "state": np.array([-0.2, 0.01, 1.19, 3.14, 0.01, -0.08, 0.039, -0.039]),
    }


def test_proprio_normalisation_maps_q01_q99_to_unit_range_and_clips() -> None:
    """Evaluation's proprio normalisation (``prismatic.vla.normalization``, as upstream's eval)."""
    stats = {"q01": [0.0, -1.0, 2.0], "q99": [1.0, 1.0, 2.0], "min": [-5.0] * 3, "max": [5.0] * 3}
    normalized = normalize(np.array([0.25, 3.0, 2.0]), stats, "bounds_q99", clip_unmasked=True)
    np.testing.assert_allclose(normalized, [-0.5, 1.0, -1.0], atol=1e-6)  # constant dims are not zeroed at eval
    bounds = normalize(np.array([0.0, 2.5, -5.0]), stats, "bounds", clip_unmasked=True)
    np.testing.assert_allclose(bounds, [0.0, 0.5, -1.0], atol=1e-6)
    masked = normalize(
        np.array([0.25, 0.5, 7.0]), {**stats, "mask": [True, True, False]}, "bounds_q99", clip_unmasked=True
    )
    np.testing.assert_allclose(masked, [-0.5, 0.5, 1.0], atol=1e-6)  # unmasked dims pass through, then clip


def test_unnorm_key_falls_back_to_no_noops_and_names_the_flag() -> None:
    stats = {"libero_spatial_no_noops": {}, "libero_goal": {}}
    assert resolve_unnorm_key(stats, "", "libero_spatial") == "libero_spatial_no_noops"
    assert resolve_unnorm_key(stats, "libero_goal", "libero_spatial") == "libero_goal"
    with pytest.raises(ValueError, match=r"--task_suite_name 'libero_10'.*available: \['libero_goal'"):
        resolve_unnorm_key(stats, "", "libero_10")
    with pytest.raises(ValueError, match=r"--unnorm_key 'bridge'"):
        resolve_unnorm_key(stats, "bridge", "libero_spatial")


def test_chunk_equals_upstreams_query(policy: VLAPolicy, observation: dict, libero_norm_stats: dict) -> None:
    """Primary then wrist image, each center-cropped and processed, stacked on channels; q01/q99 proprio."""
    loaded = policy.loaded
    prompt = build_prompt(INSTRUCTION)
    images = [Image.fromarray(center_crop_image(observation[key])) for key in ("full_image", "wrist_image")]
    inputs = [loaded.processor(prompt, image) for image in images]
    proprio_stats = libero_norm_stats["libero_spatial_no_noops"]["proprio"]
    low, high = np.array(proprio_stats["q01"]), np.array(proprio_stats["q99"])
    with torch.inference_mode():
        expected, _ = loaded.vla.predict_action(
            input_ids=inputs[0]["input_ids"],
            attention_mask=inputs[0]["attention_mask"],
            pixel_values=torch.cat([item["pixel_values"] for item in inputs], dim=1),
            unnorm_key="libero_spatial_no_noops",
            proprio=np.clip(2 * (observation["state"] - low) / (high - low + 1e-8) - 1, -1, 1),
            proprio_projector=loaded.proprio_projector,
            action_head=loaded.action_head,
        )
    chunk = policy.predict_chunk(observation, INSTRUCTION)
    assert chunk.shape == (8, 7)
    np.testing.assert_array_equal(chunk, expected)
    np.testing.assert_array_equal(policy.predict_chunk(observation, INSTRUCTION), chunk)  # deterministic


def test_center_crop_and_wrist_image_change_the_chunk(tiny_checkpoint: Path, policy: VLAPolicy, observation: dict):
    uncropped = VLAPolicy.from_config(GenerateConfig(pretrained_checkpoint=str(tiny_checkpoint), center_crop=False))
    chunk = policy.predict_chunk(observation, INSTRUCTION)
    assert np.abs(uncropped.predict_chunk(observation, INSTRUCTION) - chunk).max() > 1e-4
    dark_wrist = {**observation, "wrist_image": observation["wrist_image"] // 4}
    assert np.abs(policy.predict_chunk(dark_wrist, INSTRUCTION) - chunk).max() > 1e-4


def test_load_in_4bit_runs_the_llm_layers_on_their_nf4_weights(tiny_checkpoint: Path, observation: dict):
    """--load_in_4bit stores the LLM decoder's Linears in NF4 (bitsandbytes). Each layer computes x @ W_nf4^T, where
    W_nf4 is the dequantised weight; in eval mode bitsandbytes' CPU path multiplies in bf16, so each output may
    differ from the fp32 product by the rounding of x and W to bf16 (2^-8 each, relative): 2^-7 (|x| @ |W_nf4|^T)."""
    import bitsandbytes as bnb

    quantized = VLAPolicy.from_config(GenerateConfig(pretrained_checkpoint=str(tiny_checkpoint), load_in_4bit=True))
    names = quantized_linear_names(quantized.loaded.vla)
    assert len(names) == 2 * 7  # the tiny Llama: 2 layers x (q, k, v, o, gate, up, down)
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for name in names:
            layer = quantized.loaded.vla.get_submodule(name)
            assert type(layer).__name__ == "Linear4bit" and not layer.training, name
            dequantized = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
            x = torch.randn(3, layer.in_features, generator=generator)
            bound = 2**-7 * 1.01 * (x.abs() @ dequantized.abs().T) + 1e-6
            assert ((layer(x) - x @ dequantized.T).abs() <= bound).all(), name
    chunk = quantized.predict_chunk(observation, INSTRUCTION)
    unquantized = VLAPolicy.from_config(GenerateConfig(pretrained_checkpoint=str(tiny_checkpoint)))
    assert chunk.shape == (8, 7) and np.isfinite(chunk).all()
    assert np.abs(chunk - unquantized.predict_chunk(observation, INSTRUCTION)).max() > 1e-6  # the weights are rounded


def test_load_in_8bit_runs_with_int8_llm_layers(tiny_checkpoint: Path, observation: dict):
    policy = VLAPolicy.from_config(GenerateConfig(pretrained_checkpoint=str(tiny_checkpoint), load_in_8bit=True))
    layers = [policy.loaded.vla.get_submodule(name) for name in quantized_linear_names(policy.loaded.vla)]
    assert len(layers) == 2 * 7 and all(type(layer).__name__ == "Linear8bitLt" for layer in layers)
    assert all(layer.weight.dtype == torch.int8 for layer in layers)
    chunk = policy.predict_chunk(observation, INSTRUCTION)
    assert chunk.shape == (8, 7) and np.isfinite(chunk).all()


def test_missing_wrist_image_names_num_images_in_input(policy: VLAPolicy, observation: dict) -> None:
    single = {key: value for key, value in observation.items() if key != "wrist_image"}
    with pytest.raises(ValueError, match=r"--num_images_in_input 2, but the observation has 1 image"):
        policy.predict_chunk(single, INSTRUCTION)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pretrained_checkpoint": ""}, "--pretrained_checkpoint is required"),
        ({"unnorm_key": "bridge_orig"}, "--unnorm_key 'bridge_orig'"),
    ],
)
def test_bad_policy_flags_raise(tiny_checkpoint: Path, overrides: dict, message: str) -> None:
    cfg = GenerateConfig(**{"pretrained_checkpoint": str(tiny_checkpoint), **overrides})
    with pytest.raises(ValueError, match=message):
        VLAPolicy.from_config(cfg)


def test_malformed_image_names_its_observation_key(policy: VLAPolicy, observation: dict) -> None:
    malformed = {**observation, "wrist_image": observation["wrist_image"].astype(np.float32)}
    with pytest.raises(ValueError, match=r"observation\['wrist_image'\]: expected a uint8 numpy array"):
        policy.predict_chunk(malformed, INSTRUCTION)


def test_released_checkpoint_without_policy_config_gets_upstreams_defaults(policy: VLAPolicy) -> None:
    expected = PolicyConfig.upstream_default("libero_spatial")
    expected.unnorm_key = "libero_spatial_no_noops"  # resolved from --task_suite_name, as upstream
    assert policy.config == expected
    assert policy.config.num_images_in_input == 2 and policy.config.image.center_crop and policy.config.use_proprio


@pytest.fixture()
def configured_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """The tiny checkpoint with a policy_config.json: one camera, no center crop, its own statistics key."""
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    config = PolicyConfig(
        num_images_in_input=1,
        unnorm_key="libero_spatial_no_noops",
        embodiment=EmbodimentConfig(),
        image=ImagePreprocessingConfig(center_crop=False),
    )
    write_policy_config(folder, config)
    return folder


def test_policy_config_replaces_training_flags(configured_checkpoint: Path, observation: dict) -> None:
    policy = VLAPolicy.from_config(GenerateConfig(pretrained_checkpoint=str(configured_checkpoint)))
    assert policy.config.num_images_in_input == 1 and not policy.config.image.center_crop
    assert policy.unnorm_key == "libero_spatial_no_noops"
    resolved = policy.resolved_flags()  # what the evaluation log and its resume check record
    assert (resolved["num_images_in_input"], resolved["center_crop"], resolved["use_l1_regression"]) == (1, False, True)
    single = {key: value for key, value in observation.items() if key != "wrist_image"}
    assert policy.predict_chunk(single, INSTRUCTION).shape == (8, 7)


def test_explicit_flag_contradicting_the_policy_config_is_honoured_with_a_warning(
    configured_checkpoint: Path, observation: dict, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = GenerateConfig(pretrained_checkpoint=str(configured_checkpoint), num_images_in_input=2, center_crop=True)
    with caplog.at_level("WARNING"):
        policy = VLAPolicy.from_config(cfg)
    assert policy.config.num_images_in_input == 2 and policy.config.image.center_crop
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any("--num_images_in_input" in message and "says 1" in message for message in warnings), warnings
    assert any("--center_crop" in message for message in warnings), warnings
    assert policy.predict_chunk(observation, INSTRUCTION).shape == (8, 7)


def test_the_pre_flight_hands_the_loader_what_it_parsed(
    tiny_checkpoint: Path, policy: VLAPolicy, observation: dict, tmp_path: Path
) -> None:
    cfg = GenerateConfig(pretrained_checkpoint=str(tiny_checkpoint), local_log_dir=str(tmp_path))
    checked = check_eval_config(cfg, "run")
    assert checked.path == tiny_checkpoint and checked.policy_config.unnorm_key == policy.unnorm_key
    loaded = load_policy(cfg, checked)
    assert isinstance(loaded, FAMILIES["openvla-oft"]) and loaded.loaded.norm_stats is checked.norm_stats
    np.testing.assert_array_equal(
        loaded.predict_chunk(observation, INSTRUCTION), policy.predict_chunk(observation, INSTRUCTION)
    )
    tap = loaded.visual_token_tap(1)
    assert (tap.layer, tap.start, tap.count) == (1, 1, 2 * loaded.loaded.vla.vision_backbone.get_num_patches())


def test_the_family_registry_holds_every_policy_config_family() -> None:
    assert sorted(FAMILIES) == sorted(MODEL_FAMILIES)
    assert all(name == family.family_name for name, family in FAMILIES.items())
