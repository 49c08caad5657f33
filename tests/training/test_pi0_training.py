"""``finetune_align.py --model_family pi0``: LoRA on both towers with merged weights that load as pi0; and under
2-process torchrun on the tiny pi0 and the synthetic LIBERO data: Spatial Forcing lowers the loss, the checkpoint is
a pi0 policy folder that loads for inference, and resume reproduces the uninterrupted run's next steps exactly (with
the preset's image augmentation: SF-pi0's colour augmentation, drawn per batch); ``--image_aug`` is openpi's
augmentation in pi0's collator, never the data pipeline's."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import IterableDataset

from prismatic.models.pi0.augmentation_pi0 import Pi0Augmentation
from prismatic.models.pi0.loading_pi0 import load_pi0_folder
from prismatic.models.pi0.processing_pi0 import Pi0Collator
from prismatic.policy.pi0_policy import Pi0Policy
from prismatic.testing.pi0_tiny import pi0_training_batch, tiny_pi0_config, write_tiny_pi0_checkpoint
from prismatic.training.config import AlignFinetuneConfig, FinetuneConfig
from prismatic.training.metrics import read_metrics
from prismatic.training.pi0_training import PI0_HEADS, apply_pi0_lora, restore_pi0_weights, save_pi0_model
from prismatic.training.trainer import build_dataloader

from .conftest import DATASET_NAME, run_script

PI0_FILES = {
    "config.json",
    "model.safetensors",
    "tokenizer.model",
    "dataset_statistics.json",
    "policy_config.json",
    "base_model.json",
    "align_projector--{s}_checkpoint.pt",
    "training_state--{s}_checkpoint.pt",
}


@pytest.fixture(scope="module")
def tiny_pi0(tmp_path_factory) -> Path:
    return write_tiny_pi0_checkpoint(tmp_path_factory.mktemp("pi0"))


def test_pi0_lora_adapts_both_towers_and_saves_merged_weights_that_load_as_pi0(tiny_pi0, tmp_path):
    model, _ = load_pi0_folder(tiny_pi0)
    peft_model = apply_pi0_lora(model, rank=4, dropout=0.0)
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    adapted = [name for name in trainable if ".lora_A." in name]
    assert len(adapted) == 2 * model.config.depth * 7  # q, k, v, o, gate, up, down of both towers
    assert sum(".gemma_expert." in name for name in adapted) == model.config.depth * 7
    heads = [name for name in trainable if ".modules_to_save." in name]
    assert sorted({name.split(".")[2] for name in heads}) == sorted(PI0_HEADS) and len(heads) == 2 * len(PI0_HEADS)
    assert len(trainable) == 2 * len(adapted) + len(heads)  # SigLIP, embeddings and norms frozen

    with torch.no_grad():  # trained-looking adapters and heads: B starts at zero, the heads at the base's values
        generator = torch.Generator().manual_seed(1)
        for name, parameter in peft_model.named_parameters():
            if ".lora_B." in name or ".modules_to_save." in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    batch = pi0_training_batch(model.config)
    with torch.no_grad():
        trained = peft_model(**batch).velocity
    save_pi0_model(peft_model, tmp_path, peft_model.state_dict())
    loaded, _ = load_pi0_folder(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).velocity, trained, rtol=0, atol=1e-6)
    merged_by_peft = peft_model.merge_and_unload().state_dict()
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, merged_by_peft[key], rtol=0, atol=1e-6, msg=key)
    base, _ = load_pi0_folder(tiny_pi0)
    with torch.no_grad():
        assert (base(**batch).velocity - trained).abs().max() > 1e-2  # the adapters and heads matter
    restore_pi0_weights(base, tmp_path)  # --resume of a full fine-tune reads the same file
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(base.state_dict()[key], value, rtol=0, atol=0, msg=key)


class RecordedDataset(IterableDataset):
    """Stands for the RLDS dataset: keeps the config the trainer builds it with."""

    def __init__(self, config, batch_transform):
        self.config = config

    def __iter__(self):
        raise NotImplementedError("not read")


@pytest.mark.parametrize(
    "config_class, train, geometric_cameras",
    [
        (FinetuneConfig, True, (True, False, False)),
        (AlignFinetuneConfig, True, (False, False, False)),
        (None, False, None),
    ],
)
def test_pi0s_image_aug_is_openpis_in_its_collator_and_not_the_pipelines(
    config_class, train, geometric_cameras, monkeypatch
):
    monkeypatch.setattr("prismatic.vla.datasets.RLDSDataset", RecordedDataset)
    cfg = (config_class or AlignFinetuneConfig)(model_family="pi0", image_aug=True, batch_size=2, seed=7)
    model = SimpleNamespace(processor=SimpleNamespace(config=tiny_pi0_config()))  # pi0's three cameras
    loader, dataset = build_dataloader(cfg, model, SimpleNamespace(rank=1, world_size=2), train, skip_samples=6)
    assert dataset.config.image_aug is False  # the data pipeline's OFT augmentation stays off
    collator = loader.collate_fn
    assert isinstance(collator, Pi0Collator) and collator.next_batch == 3  # 6 samples consumed, batches of 2
    expected = None if geometric_cameras is None else Pi0Augmentation(7, 1, geometric_cameras)
    assert collator.augmentation == expected
    no_aug = dataclasses.replace(cfg, image_aug=False)
    assert (
        build_dataloader(no_aug, model, SimpleNamespace(rank=1, world_size=2), train)[0].collate_fn.augmentation is None
    )


def _loss_and_gradients(model: torch.nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.train().zero_grad()
    loss = model(**pi0_training_batch(model.config), output_hidden_states=True).loss
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def test_pi0_gradient_checkpointing_leaves_the_loss_and_gradients_unchanged(tiny_pi0, monkeypatch):
    model, _ = load_pi0_folder(tiny_pi0)
    expected_loss, expected = _loss_and_gradients(model)
    model.enable_gradient_checkpointing(include_vision=True)
    towers, calls = model.paligemma_with_expert, []
    joint_layer = towers.joint_layer
    monkeypatch.setattr(towers, "joint_layer", lambda *args: calls.append(1) or joint_layer(*args))
    loss, gradients = _loss_and_gradients(model)
    assert len(calls) == 2 * model.config.depth  # each joint decoder layer ran again in backward
    torch.testing.assert_close(loss, expected_loss, rtol=0, atol=1e-6)
    assert gradients.keys() == expected.keys() and len(expected) > 50
    for name, gradient in expected.items():
        torch.testing.assert_close(gradients[name], gradient, rtol=0, atol=1e-6, msg=name)


def pi0_flags(tiny_pi0: Path, vggt_path: Path, data_root: Path, run_root: Path, **overrides) -> list[str]:
    flags = {
        "preset": "pi0_tiny_cpu",
        "vla_path": tiny_pi0,
        "vggt_path": vggt_path,
        "data_root_dir": data_root,
        "dataset_name": DATASET_NAME,
        "run_root_dir": run_root,
        "run_id_override": "pi0-run",
        "max_steps": 4,
        "save_freq": 2,
        **overrides,
    }
    return [f"--{name}={value}" for name, value in flags.items()]


# pi0 trained in full under DDP and FSDP, and with LoRA adapters under FSDP (saved beside the merged weights; resumed
# from the adapter).
VARIANTS = {
    "full": ({}, set()),
    "full_fsdp": ({"strategy": "fsdp"}, set()),
    "lora_fsdp": ({"use_lora": True, "lora_rank": 4, "strategy": "fsdp"}, {"lora_adapter"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_pi0_trains_with_spatial_forcing_saves_and_resumes_exactly(
    tiny_pi0, tiny_checkpoints, synthetic_data, tmp_path, variant
):
    overrides, extra_files = VARIANTS[variant]
    flags = pi0_flags(tiny_pi0, tiny_checkpoints[1], synthetic_data, tmp_path, **overrides)
    result = run_script("finetune_align.py", flags, nproc=2)
    assert result.returncode == 0, result.stderr[-4000:]
    uninterrupted = read_metrics(tmp_path / "pi0-run")
    assert [m["step"] for m in uninterrupted] == [0, 1, 2, 3, 4]
    assert uninterrupted[-1]["loss"] < uninterrupted[0]["loss"]
    assert uninterrupted[-1]["align_loss"] < uninterrupted[0]["align_loss"]

    folder = tmp_path / "pi0-run--4_chkpt"
    assert {p.name for p in folder.iterdir()} == {name.format(s=4) for name in PI0_FILES} | extra_files
    policy_config = json.loads((folder / "policy_config.json").read_text())
    assert (policy_config["model_family"], policy_config["action_head"]) == ("pi0", "flow_matching")
    assert policy_config["spatial_forcing"]["vla_layers_align"] == 1
    assert policy_config["training_augmentation"] == "openpi_colour"  # the preset's --image_aug True, under SF
    policy = Pi0Policy.from_checkpoint(folder)
    frame = np.zeros((224, 224, 3), dtype=np.uint8)
    chunk = policy.predict_chunk({"full_image": frame, "wrist_image": frame, "state": np.zeros(8)}, "open the drawer")
    assert chunk.shape == (8, 7) and np.isfinite(chunk).all()

    # Resume from step 2 in the same run folder: steps 3 and 4 are the uninterrupted run's, to the last bit.
    resumed = run_script("finetune_align.py", [*flags, "--resume=True", "--resume_step=2"], nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "continues from its checkpoint of step 2" in resumed.stdout
    again = read_metrics(tmp_path / "pi0-run")
    for name in ("loss", "action_loss", "align_loss"):
        assert [m[name] for m in again] == [m[name] for m in uninterrupted]


@pytest.mark.slow
def test_pi0_trains_on_a_fourteen_dim_three_camera_lerobot_dataset(tiny_pi0, tiny_checkpoints, lerobot_root, tmp_path):
    cameras = ["cam_high", "cam_left_wrist", "cam_right_wrist"]
    flags = pi0_flags(
        tiny_pi0,
        tiny_checkpoints[1],
        lerobot_root,
        tmp_path,
        dataset_name="aloha_like_v30",
        num_images_in_input=3,
        num_actions_chunk=8,
        lerobot_camera_keys=",".join(f"observation.images.{camera}" for camera in cameras),
        max_steps=3,
        save_freq=3,
    )
    result = run_script("finetune_align.py", flags)
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = read_metrics(tmp_path / "pi0-run")
    assert metrics[-1]["loss"] < metrics[0]["loss"] and metrics[-1]["align_loss"] < metrics[0]["align_loss"]
    policy = Pi0Policy.from_checkpoint(tmp_path / "pi0-run--3_chkpt")
    assert (policy.config.embodiment.action_dim, policy.config.num_images_in_input) == (14, 3)
    frame = np.zeros((224, 224, 3), dtype=np.uint8)
    observation = {"full_image": frame, "wrist_image": frame, "wrist_image_2": frame, "state": np.zeros(14)}
    chunk = policy.predict_chunk(observation, "transfer the cube")
    assert chunk.shape == (8, 14) and np.isfinite(chunk).all()


@pytest.mark.slow
@pytest.mark.parametrize("teacher", ["geometry", "rgb"])
def test_pi0_trains_with_the_geometry_and_rgb_teachers(tiny_pi0, depth_data, tmp_path, teacher):
    not_needed = Path("/nonexistent/not-needed.pt")  # neither teacher loads VGGT
    flags = pi0_flags(tiny_pi0, not_needed, depth_data, tmp_path, teacher=teacher, teacher_width=64, max_steps=2)
    result = run_script("finetune_align.py", flags)
    assert result.returncode == 0, result.stderr[-4000:]
    align = [m["align_loss"] for m in read_metrics(tmp_path / "pi0-run")]
    assert len(align) == 3 and all(0 < value < 2 for value in align)
    policy_config = json.loads((tmp_path / "pi0-run--2_chkpt" / "policy_config.json").read_text())
    assert policy_config["spatial_forcing"]["teacher"] == teacher
