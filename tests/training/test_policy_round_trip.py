"""Save -> resume -> load of every policy variant, in process: the resumed run reproduces the uninterrupted one
component by component (the FiLM backbone included), and ``load_vla`` rebuilds the policy from the folder alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from prismatic.policy.components import load_component_state_dict
from prismatic.policy.load import load_vla
from prismatic.training.checkpointing import read_saved_weights
from prismatic.training.config import FinetuneConfig
from prismatic.training.trainer import train
from prismatic.vla.policy_config import read_policy_config

from .conftest import DATASET_NAME

LEARNING_RATE = 1e-3
VARIANTS = {  # name: (flags, expected components)
    "diffusion-lora": (
        dict(use_l1_regression=False, use_diffusion=True, num_diffusion_steps_train=4),
        {"action_head", "proprio_projector", "noisy_action_projector"},
    ),
    "discrete-tokens-full-finetune": (dict(use_l1_regression=False, use_lora=False, use_proprio=False), set()),
    "l1-film-full-finetune": (
        dict(use_film=True, use_lora=False),
        {"action_head", "proprio_projector", "vision_backbone"},
    ),
}
EXACT_VARIANTS = {  # resumed == uninterrupted, tensor for tensor (the trained VLA weights included)
    "l1-lora-film-grad-accumulation": (
        dict(use_film=True, grad_accumulation_steps=2),
        {"action_head", "proprio_projector", "vision_backbone"},
    ),
    "l1-full-finetune": (dict(use_lora=False), {"action_head", "proprio_projector"}),
}


def _config(tiny_checkpoints, data_root: Path, run_root: Path, **overrides) -> FinetuneConfig:
    values = dict(
        vla_path=str(tiny_checkpoints[0]),
        data_root_dir=data_root,
        dataset_name=DATASET_NAME,
        run_root_dir=run_root,
        run_id_override="run",
        num_images_in_input=2,
        use_proprio=True,
        batch_size=1,
        learning_rate=LEARNING_RATE,
        max_steps=2,
        save_freq=1,
        merge_lora_during_training=False,
        image_aug=False,
        lora_rank=4,
        shuffle_buffer_size=32,
        use_wandb=False,
        wandb_log_freq=1,
    )
    values.update(overrides)
    return FinetuneConfig(**values)


def _saved_tensors(folder: Path, step: int, names: set[str], lora: bool) -> dict[str, torch.Tensor]:
    """The components' tensors and the trained VLA weights (the LoRA adapter, or the whole VLA of a full fine-tune)."""
    tensors = {}
    for name in names:
        for key, value in load_component_state_dict(folder / f"{name}--{step}_checkpoint.pt").items():
            tensors[f"{name}/{key}"] = value
    if lora:
        tensors.update(load_file(str(folder / "lora_adapter" / "adapter_model.safetensors")))
    else:
        tensors.update({f"vla/{key}": value for key, value in read_saved_weights(folder).items()})
    return tensors


def _check_loads_without_flags(folder: Path, flags: dict, components: set[str], saved: dict) -> None:
    policy_config = read_policy_config(folder)
    assert policy_config.use_film == flags.get("use_film", False)
    assert policy_config.data["episodes"] == {DATASET_NAME: {"train": 12, "val": 0}}
    loaded = load_vla(folder, dtype=torch.float32)  # no flags: everything from policy_config.json
    assert loaded.policy_config == policy_config
    assert loaded.vla.uses_film == policy_config.use_film
    for name in components - {"vision_backbone"}:
        for key, value in getattr(loaded, name).state_dict().items():
            torch.testing.assert_close(value, saved[f"{name}/{key}"], msg=f"{name}/{key}")
    if "vision_backbone" in components and not flags.get("use_lora", True):
        for key, value in loaded.vla.vision_backbone.state_dict().items():
            torch.testing.assert_close(value, saved[f"vision_backbone/{key}"], msg=key)
    assert np.isfinite(_predict(loaded)).all()


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(EXACT_VARIANTS))
def test_resumed_run_equals_the_uninterrupted_one(variant, tiny_checkpoints, synthetic_data, tmp_path):
    flags, components = EXACT_VARIANTS[variant]
    lora = flags.get("use_lora", True)
    uninterrupted = train(_config(tiny_checkpoints, synthetic_data, tmp_path / "a", **flags))
    assert uninterrupted == tmp_path / "a" / "run--2_chkpt"
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a" / "run--1_chkpt", tmp_path / "b" / "run--1_chkpt")
    (tmp_path / "b" / "run").mkdir()
    resumed = train(_config(tiny_checkpoints, synthetic_data, tmp_path / "b", **flags, resume=True))

    # Upstream's accounting: the checkpoint of step 2 holds 3 optimizer updates.
    state = torch.load(resumed / "training_state--2_checkpoint.pt", weights_only=True)
    assert state["step"] == 2 and {int(s["step"]) for s in state["optimizer"]["state"].values()} == {3}
    expected, actual = (_saved_tensors(d, 2, components, lora) for d in (uninterrupted, resumed))
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    _check_loads_without_flags(resumed, flags, components, actual)


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_saves_resumes_its_components_and_loads_without_flags(
    variant, tiny_checkpoints, synthetic_data, tmp_path
):
    flags, components = VARIANTS[variant]
    lora = flags.get("use_lora", True)
    first = train(_config(tiny_checkpoints, synthetic_data, tmp_path, **{**flags, "max_steps": 1}))
    resumed = train(_config(tiny_checkpoints, synthetic_data, tmp_path, **flags, resume=True))
    saved = {p.name.split("--")[0] for p in resumed.glob("*--2_checkpoint.pt")} - {"training_state"}
    assert saved == components

    # One Adam update moves a parameter by about the learning rate; a component that the resume did not restore
    # (re-initialised, as FiLM once was) would differ from its saved state by its initialisation's scale.
    before, after = (_saved_tensors(d, step, components, lora) for d, step in ((first, 1), (resumed, 2)))
    for key in before:
        assert (after[key].float() - before[key].float()).abs().max() <= 2 * LEARNING_RATE, key
    _check_loads_without_flags(resumed, flags, components, after)


def _predict(loaded) -> np.ndarray:
    from PIL import Image

    from prismatic.vla.prompt import build_prompt

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)) for _ in range(2)]
    inputs = [loaded.processor(build_prompt("put the bowl on the plate"), image) for image in images]
    actions, _ = loaded.vla.predict_action(
        input_ids=inputs[0]["input_ids"],
        attention_mask=inputs[0]["attention_mask"],
        pixel_values=torch.cat([item["pixel_values"] for item in inputs], dim=1),
        unnorm_key=DATASET_NAME,
        proprio=np.zeros(8, dtype=np.float32) if loaded.proprio_projector is not None else None,
        proprio_projector=loaded.proprio_projector,
        action_head=loaded.action_head,
        noisy_action_projector=loaded.noisy_action_projector,
        use_film=loaded.policy_config.use_film,
    )
    assert np.asarray(actions).shape == (8, 7)
    return np.asarray(actions)
