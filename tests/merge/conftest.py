"""Fixtures for the LoRA merge: a tiny bf16 base, a fine-tuned checkpoint folder as training leaves it (adapter with
non-trivial random ``lora_B``, action head, proprio projector, statistics, processor files) and one CLI merge of it.
"""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForVision2Seq

from prismatic.testing.tiny_vla import save_tiny_vla_checkpoint
from prismatic.training.lora import apply_lora
from prismatic.util.checkpoint_files import LORA_ADAPTER_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "vla-scripts" / "merge_lora_weights_and_save.py"
LORA_RANK = 4
LORA_B_STD = 0.02  # large enough that the adapter moves the actions far beyond the tolerance
SHARD_SIZE = "4MB"  # a few shards for the ~4.4 M parameter tiny VLA in bf16
NORM_STATS = {
    "libero_spatial_no_noops": {
        "action": {
            "q01": [-0.5] * 7,
            "q99": [0.5] * 7,
            "min": [-1.0] * 7,
            "max": [1.0] * 7,
            "mask": [True] * 6 + [False],
        },
        "proprio": {"q01": [-1.0] * 8, "q99": [1.0] * 8, "min": [-1.0] * 8, "max": [1.0] * 8},
    }
}


def write_bf16_base(out_dir: Path) -> Path:
    """A tiny base VLA stored in bf16 like openvla-7b (so a bf16 merge rounds only the adapted weights)."""
    save_tiny_vla_checkpoint(out_dir, seed=0)
    vla = AutoModelForVision2Seq.from_pretrained(out_dir, dtype=torch.bfloat16)
    for weights in out_dir.glob("model*.safetensors*"):
        weights.unlink()
    vla.save_pretrained(out_dir, max_shard_size=SHARD_SIZE)
    return out_dir


def write_adapter(adapter_dir: Path, base_dir: Path, seed: int) -> None:
    """Upstream's LoRA on the base with random ``lora_B`` (zero at initialisation, which would make merging trivial)."""
    peft_model = apply_lora(AutoModelForVision2Seq.from_pretrained(base_dir, dtype=torch.bfloat16), LORA_RANK, 0.0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * LORA_B_STD)
    peft_model.save_pretrained(adapter_dir)


def scale_lora_b(adapter_dir: Path, factor: float) -> None:
    """Corrupts a saved adapter in place: every ``lora_B`` tensor multiplied by ``factor``."""
    path = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(path)
    save_file({key: value * factor if ".lora_B." in key else value for key, value in tensors.items()}, path)


def merge_in_memory(base_dir: Path, adapter_dir: Path, dtype: torch.dtype) -> torch.nn.Module:
    """What the merge should produce: peft's own merge of the adapter into the base."""
    base = AutoModelForVision2Seq.from_pretrained(base_dir, dtype=dtype)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()


def run_cli_in_process(flags: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """Runs the script's ``__main__`` in this process; returns its exit status."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *flags])
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bf16_base(tmp_path_factory.mktemp("merge") / "tiny-openvla")


@pytest.fixture(scope="module")
def pre_merge_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> Path:
    """A fine-tuned checkpoint folder before any merge; copy it before changing it."""
    folder = save_tiny_vla_checkpoint(
        tmp_path_factory.mktemp("merge") / "run--1000_chkpt", seed=1, norm_stats=NORM_STATS, with_heads=True
    )
    for model_file in [*folder.glob("model*.safetensors*"), folder / "config.json"]:
        model_file.unlink()
    write_adapter(folder / LORA_ADAPTER_DIR, tiny_base, seed=0)
    return folder


@pytest.fixture
def checkpoint_copy(tmp_path: Path, pre_merge_checkpoint: Path) -> Path:
    return Path(shutil.copytree(pre_merge_checkpoint, tmp_path / pre_merge_checkpoint.name))


@pytest.fixture(scope="module")
def merged_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, pre_merge_checkpoint: Path
) -> tuple[Path, subprocess.CompletedProcess]:
    """The CLI, in a fresh process with default flags (bf16 merge, float32 probe), on a copy of the checkpoint."""
    folder = Path(shutil.copytree(pre_merge_checkpoint, tmp_path_factory.mktemp("merged") / pre_merge_checkpoint.name))
    flags = [
        f"--base_checkpoint={tiny_base}",
        f"--lora_finetuned_checkpoint_dir={folder}",
        f"--max_shard_size={SHARD_SIZE}",
        "--device=cpu",
    ]
    env = {**os.environ, "USE_TF": "0", "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "2"}
    process = subprocess.run(
        [sys.executable, str(SCRIPT), *flags], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300
    )
    return folder, process
