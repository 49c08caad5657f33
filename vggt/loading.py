"""Strict loading of VGGT checkpoints (facebook/VGGT-1B ``model.pt`` or safetensors) and atomic saving.

Upstream Spatial Forcing loads with ``strict=False``, which would also hide a mismatched aggregator key. Here every
key the model has must be in the checkpoint with the same shape, and every checkpoint key must be in the model,
except the keys of prediction heads the model does not build, which are skipped with one log line.
"""

from __future__ import annotations

import logging
import math
import os
import zipfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vggt.layers.vision_transformer import DINO_VARIANTS

logger = logging.getLogger(__name__)

HEAD_PREFIXES = ("camera_head", "point_head", "depth_head", "track_head")
_MAX_LISTED_PROBLEMS = 20


class VGGTCheckpointError(ValueError):
    """A checkpoint does not match the VGGT model it is loaded into."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a flat ``key -> tensor`` state dict on the CPU from ``.safetensors`` or a ``torch.save`` file.

    ``torch.load`` runs with ``weights_only=True`` (memory-mapped for zip-format files). A dict wrapping the
    state dict under ``"model"`` or ``"state_dict"`` (training checkpoints) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VGGT checkpoint {str(path)!r} (--vggt_path) does not exist")
    if path.suffix == ".safetensors":
        return load_file(path, device="cpu")
    loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    if isinstance(loaded, Mapping) and not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        wrapper = next((name for name in ("model", "state_dict") if isinstance(loaded.get(name), Mapping)), None)
        if wrapper is not None:
            loaded = loaded[wrapper]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()
    ):
        found = type(loaded).__name__
        raise VGGTCheckpointError(f"{path}: expected a state dict mapping keys to tensors, found a {found}")
    return dict(loaded)


def _required(state_dict: Mapping[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if key not in state_dict:
        raise VGGTCheckpointError(f"{source}: cannot infer the VGGT configuration, key {key!r} is missing")
    return state_dict[key]


def _block_count(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of blocks ``{prefix}{N}.*`` in the state dict."""
    indices = {int(key[len(prefix) :].split(".", 1)[0]) for key in state_dict if key.startswith(prefix)}
    return max(indices) + 1 if indices else 0


def infer_vggt_kwargs(state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> dict[str, Any]:
    """The :class:`~vggt.models.vggt.VGGT` size arguments that produce the tensor shapes of a VGGT state dict.

    Works for the real VGGT-1B ``model.pt`` (which has no config) and for smaller saved models. ``aa_order``,
    ``aa_block_size`` and ``rope_freq`` leave no trace in the weights and keep their defaults.
    """
    camera_token = _required(state_dict, "aggregator.camera_token", source)  # [1, 2, 1, C]
    embed_dim = camera_token.shape[-1]
    q_norm = _required(state_dict, "aggregator.frame_blocks.0.attn.q_norm.weight", source)  # [head_dim]
    fc1 = _required(state_dict, "aggregator.frame_blocks.0.mlp.fc1.weight", source)  # [hidden, C]
    kwargs: dict[str, Any] = {
        "embed_dim": embed_dim,
        "depth": _block_count(state_dict, "aggregator.frame_blocks."),
        "num_heads": embed_dim // q_norm.shape[0],
        "mlp_ratio": fc1.shape[0] / embed_dim,
        "num_register_tokens": _required(state_dict, "aggregator.register_token", source).shape[2],
    }
    if "aggregator.frame_blocks.0.ls1.gamma" not in state_dict:
        kwargs["init_values"] = None
    if "aggregator.patch_embed.proj.weight" in state_dict:
        kwargs["patch_embed"] = "conv"
        kwargs["patch_size"] = state_dict["aggregator.patch_embed.proj.weight"].shape[-1]
        return kwargs
    proj = _required(state_dict, "aggregator.patch_embed.patch_embed.proj.weight", source)  # [D, 3, p, p]
    dino_depth = _block_count(state_dict, "aggregator.patch_embed.blocks.")
    names = [name for name, v in DINO_VARIANTS.items() if (v.embed_dim, v.depth) == (proj.shape[0], dino_depth)]
    if not names:
        raise VGGTCheckpointError(
            f"{source}: no DINOv2 patch_embed variant has width {proj.shape[0]} and {dino_depth} blocks"
        )
    pos_embed = _required(state_dict, "aggregator.patch_embed.pos_embed", source)  # [1, 1 + g*g, D]
    kwargs["patch_embed"] = names[0]
    kwargs["patch_size"] = proj.shape[-1]
    kwargs["img_size"] = math.isqrt(pos_embed.shape[1] - 1) * proj.shape[-1]
    return kwargs


def load_vggt_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """Loads ``state_dict`` into ``model`` strictly; head keys of heads the model lacks are skipped and logged.

    Raises :class:`VGGTCheckpointError` listing every missing, unexpected or mis-shaped key with its shapes. A
    model built on the meta device gets the checkpoint tensors assigned instead of copied.
    """
    expected = model.state_dict()
    model_prefixes = {key.split(".", 1)[0] for key in expected}
    skipped: Counter[str] = Counter()
    problems = []
    for key, tensor in state_dict.items():
        prefix = key.split(".", 1)[0]
        if key in expected:
            if tensor.shape != expected[key].shape:
                problems.append(
                    f"key {key!r} has shape {list(tensor.shape)} in the checkpoint "
                    f"but the model expects {list(expected[key].shape)}"
                )
        elif prefix in HEAD_PREFIXES and prefix not in model_prefixes:
            skipped[prefix] += 1
        else:
            problems.append(f"unexpected key {key!r} with shape {list(tensor.shape)}: the model has no such key")
    problems += [
        f"missing key {key!r}: the model expects shape {list(tensor.shape)}"
        for key, tensor in expected.items()
        if key not in state_dict
    ]
    if problems:
        listed = problems[:_MAX_LISTED_PROBLEMS]
        if len(problems) > len(listed):
            listed.append(f"... and {len(problems) - len(listed)} more")
        details = "\n  ".join(listed)
        raise VGGTCheckpointError(f"{source} does not match the VGGT model ({len(problems)} problems):\n  {details}")
    if skipped:
        counts = ", ".join(f"{prefix} ({count})" for prefix, count in skipped.items())
        total = sum(skipped.values())
        logger.info("Skipped %d keys of VGGT heads the model does not build from %s: %s", total, source, counts)
    on_meta = any(tensor.is_meta for tensor in expected.values())
    model.load_state_dict({key: state_dict[key] for key in expected}, strict=True, assign=on_meta)


def load_vggt_weights(model: nn.Module, path: str | Path) -> None:
    """Loads a VGGT checkpoint file (``.pt``/``.pth`` or ``.safetensors``) into ``model`` strictly."""
    load_vggt_state_dict(model, read_state_dict(path), source=str(path))


def save_vggt_weights(model: nn.Module, path: str | Path) -> None:
    """Writes ``model``'s state dict atomically, as safetensors for a ``.safetensors`` path, else with torch.save."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {key: tensor.detach().cpu().contiguous() for key, tensor in model.state_dict().items()}
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if path.suffix == ".safetensors":
            save_file(state_dict, temporary)
        else:  # through a handle: the archive's folder is "archive", not the temporary's name (reproducible bytes)
            with open(temporary, "wb") as handle:
                torch.save(state_dict, handle)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
