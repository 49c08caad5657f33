"""Gradient checkpointing, frozen unreached parameters, DDP vs FSDP under torchrun (gloo), FSDP checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import draccus
import numpy as np
import pytest
import torch

from prismatic.testing.tiny_vla import tiny_training_batch
from prismatic.training.config import AlignFinetuneConfig
from prismatic.training.distributed import DistributedContext
from prismatic.training.metrics import read_metrics
from prismatic.training.trainer import build_model, compute_losses
from prismatic.vla.constants import constants_for

from .conftest import DATASET_NAME, REPO_ROOT, run_script, tiny_flags

CPU = DistributedContext(0, 0, 1, torch.device("cpu"))


def _tiny_model(tiny_checkpoints, tmp_path, **overrides):
    flags = tiny_flags(tiny_checkpoints, tmp_path, tmp_path, **overrides)
    cfg = draccus.parse(AlignFinetuneConfig, args=flags)
    platform = constants_for(DATASET_NAME)
    torch.manual_seed(0)
    model = build_model(cfg, platform, CPU)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # LoRA B starts at zero, which would leave A's gradients zero: give it values
        for name, parameter in model.vla.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return cfg, platform, model


def _gradients(cfg, platform, model) -> dict[str, torch.Tensor]:
    for module in model.trainable_modules():
        module.train()
    batch = tiny_training_batch(model.vla.config, [12, 9])
    compute_losses(cfg, model, batch, platform, torch.device("cpu"))["loss"].backward()
    return {
        f"{index}.{name}": p.grad
        for index, module in enumerate(model.trainable_modules())
        for name, p in module.named_parameters()
        if p.requires_grad
    }


def test_gradient_checkpointing_leaves_the_gradients_unchanged(tiny_checkpoints, tmp_path):
    expected = _gradients(*_tiny_model(tiny_checkpoints, tmp_path))
    cfg, platform, model = _tiny_model(
        tiny_checkpoints, tmp_path, gradient_checkpointing=True, gradient_checkpointing_vision=True
    )
    assert model.vla.get_base_model().language_model.model.gradient_checkpointing
    checkpointed = _gradients(cfg, platform, model)
    assert expected.keys() == checkpointed.keys() and len(expected) > 50
    assert any("lora_A" in name and grad.abs().sum() > 0 for name, grad in expected.items())
    for name, grad in expected.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_every_trainable_parameter_gets_a_gradient_so_ddp_needs_no_unused_search(tiny_checkpoints, tmp_path):
    cfg, platform, model = _tiny_model(tiny_checkpoints, tmp_path)
    gradients = _gradients(cfg, platform, model)
    assert all(grad is not None for grad in gradients.values()), [n for n, g in gradients.items() if g is None]
    frozen = {name for name, p in model.vla.named_parameters() if "lora_" in name and not p.requires_grad}
    assert frozen and all(".blocks.1." in name or "lm_head" in name or "attn_pool" in name for name in frozen)


def _two_process_run(tiny_checkpoints, synthetic_data, root, strategy, **overrides):
    flags = tiny_flags(tiny_checkpoints, synthetic_data, root, strategy=strategy, **overrides)
    result = run_script("finetune_align.py", flags, nproc=2)
    assert result.returncode == 0, result.stderr[-4000:]
    return read_metrics(root / "tiny-run")


TWO_PROCESS_FLAGS = {"max_steps": 4, "save_freq": 2}


@pytest.fixture(scope="module")
def fsdp_run(tiny_checkpoints, synthetic_data, tmp_path_factory) -> tuple[Path, list[dict]]:
    """An uninterrupted two-process FSDP run (its root and metrics), trained once for the tests below."""
    root = tmp_path_factory.mktemp("fsdp")
    return root, _two_process_run(tiny_checkpoints, synthetic_data, root, "fsdp", **TWO_PROCESS_FLAGS)


@pytest.mark.slow
def test_fsdp_and_ddp_give_the_same_losses_and_fsdp_saves_the_released_layout(
    tiny_checkpoints, synthetic_data, fsdp_run, tmp_path
):
    ddp = _two_process_run(tiny_checkpoints, synthetic_data, tmp_path / "ddp", "ddp", **TWO_PROCESS_FLAGS)
    fsdp_root, fsdp = fsdp_run
    assert [m["step"] for m in fsdp] == [0, 1, 2, 3, 4]  # update k is step k (upstream's accounting)
    for name in ("loss", "action_loss", "align_loss"):
        np.testing.assert_allclose([m[name] for m in fsdp], [m[name] for m in ddp], rtol=1e-4, err_msg=name)

    ddp_dir, fsdp_dir = tmp_path / "ddp" / "tiny-run--4_chkpt", fsdp_root / "tiny-run--4_chkpt"
    names = {p.relative_to(ddp_dir) for p in ddp_dir.rglob("*") if p.is_file()}
    assert {p.relative_to(fsdp_dir) for p in fsdp_dir.rglob("*") if p.is_file()} == names
    from safetensors.torch import load_file

    from prismatic.policy.components import load_component_state_dict
    from prismatic.policy.load import load_vla

    adapter = "lora_adapter/adapter_model.safetensors"
    ddp_adapter, fsdp_adapter = load_file(ddp_dir / adapter), load_file(fsdp_dir / adapter)
    assert ddp_adapter.keys() == fsdp_adapter.keys()
    for key, value in ddp_adapter.items():
        torch.testing.assert_close(fsdp_adapter[key], value, rtol=1e-4, atol=1e-5, msg=key)
    head = "action_head--4_checkpoint.pt"
    ddp_head, fsdp_head = load_component_state_dict(ddp_dir / head), load_component_state_dict(fsdp_dir / head)
    for key, value in ddp_head.items():
        torch.testing.assert_close(fsdp_head[key], value, rtol=1e-4, atol=1e-5, msg=key)

    loaded = load_vla(fsdp_dir, base_model_path=tiny_checkpoints[0])
    batch = tiny_training_batch(loaded.vla.config, [12])
    assert loaded.action_head is not None and torch.isfinite(batch["pixel_values"]).all()


def _kill_when_exists(command, env, checkpoint_file, timeout=300) -> None:
    process = subprocess.Popen(
        command, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    while not checkpoint_file.exists():
        if process.poll() is not None:
            raise AssertionError(f"training exited before its first checkpoint: {process.stderr.read()[-3000:]!r}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError("no checkpoint within the time limit")
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.slow
def test_killed_fsdp_run_resumes_with_the_losses_of_an_uninterrupted_one(
    tiny_checkpoints, synthetic_data, fsdp_run, tmp_path
):
    _, expected = fsdp_run  # saved a checkpoint per save instead of one latest: the same losses
    root = tmp_path / "b"
    flags = tiny_flags(
        tiny_checkpoints, synthetic_data, root, strategy="fsdp", save_latest_checkpoint_only=True, **TWO_PROCESS_FLAGS
    )
    env = {**os.environ, "USE_TF": "0", "WANDB_MODE": "disabled", "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    _kill_when_exists(
        [*command, str(REPO_ROOT / "vla-scripts" / "finetune_align.py"), *flags],
        env,
        root / "tiny-run" / "training_state--latest_checkpoint.pt",  # latest-only: in the run folder, moved in last
    )
    result = run_script("finetune_align.py", [*flags, "--resume=True"], nproc=2)
    assert result.returncode == 0, result.stderr[-4000:]
    resumed = read_metrics(root / "tiny-run")
    assert [m["step"] for m in resumed] == [0, 1, 2, 3, 4]
    for name in ("loss", "action_loss", "align_loss", "lr"):
        np.testing.assert_allclose([m[name] for m in resumed], [m[name] for m in expected], rtol=1e-5, err_msg=name)
