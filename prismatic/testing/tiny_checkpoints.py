"""Tiny base checkpoints for CPU work: an OpenVLA folder in openvla-7b's released layout and a VGGT ``model.pt``."""

from __future__ import annotations

from pathlib import Path

import torch

from prismatic.testing.tiny_vla import save_tiny_vla_checkpoint
from prismatic.training.presets import get_preset
from vggt.loading import save_vggt_weights
from vggt.models.vggt import VGGT
from vggt.presets import tiny_vggt_kwargs

TINY_VLA_DIRNAME = "tiny-openvla"
TINY_VGGT_FILENAME = "tiny-vggt-model.pt"
TINY_VLA_IMAGE_SIZE = 224  # openvla-7b's input side
PATCH_SIZE = 14  # both towers' patch side


def tiny_finetune_flags(
    vla_dir: Path, vggt_path: Path, data_root: Path, run_root: Path, dataset_name: str, **overrides: object
) -> list[str]:
    """``finetune_align.py`` flags of a tiny CPU run: the ``tiny_cpu`` preset (the paper's command with tiny sizes and a
    short schedule) with these paths, every value written out. ``overrides`` replace or add flags."""
    flags: dict[str, object] = {
        **get_preset("tiny_cpu").settings,
        "vla_path": vla_dir,
        "vggt_path": vggt_path,
        "data_root_dir": data_root,
        "dataset_name": dataset_name,
        "run_root_dir": run_root,
        **overrides,
    }
    return [f"--{name}={value}" for name, value in flags.items()]


def write_tiny_base_checkpoints(
    out_dir: str | Path, seed: int = 0, image_size: int = TINY_VLA_IMAGE_SIZE
) -> tuple[Path, Path]:
    """Writes ``{out_dir}/tiny-openvla/`` and ``{out_dir}/tiny-vggt-model.pt``; returns their paths.

    Both are randomly initialised from ``seed``; they load exactly like ``ckpts/openvla-7b`` and ``ckpts/model.pt``
    (the VGGT loader infers the tiny sizes from the tensor shapes). ``image_size``: the VLA's input side (both towers,
    patch 14; 224 is the released one).
    """
    out_dir = Path(out_dir)
    vla_dir = save_tiny_vla_checkpoint(out_dir / TINY_VLA_DIRNAME, seed=seed, image_sizes=[image_size, image_size])
    torch.manual_seed(seed)
    vggt_path = out_dir / TINY_VGGT_FILENAME
    save_vggt_weights(VGGT(**tiny_vggt_kwargs()), vggt_path)
    return vla_dir, vggt_path
