"""Which base model a fine-tuned checkpoint came from, recorded so that merging and evaluation can verify it.

A LoRA adapter only makes sense on the exact weights it was trained on; another base of the same shapes loads
without complaint and silently yields a different policy. Training records the base's identity in the checkpoint
(``base_model.json``, and ``PolicyConfig.base_model``): a checksum of its ``config.json`` (minus its own path) and
of the leading elements of a few weight matrices read straight from its safetensors files. The record survives
copying the base anywhere; it does not survive re-saving the base in another dtype (which is another base).
Checkpoints without a record (the released ones) are not checked.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from prismatic.util.cli import UserError
from prismatic.util.file_checks import read_json_file
from prismatic.util.io import write_json_atomic

BASE_MODEL_RECORD_NAME = "base_model.json"
RECORD_VERSION = 1
NUM_SAMPLED_TENSORS = 4
SAMPLED_ELEMENTS = 65_536  # per tensor: leading rows, enough to tell two initialisations or trainings apart
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version")
_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
_WEIGHTS_NAME = "model.safetensors"
OVERRIDE_HINT = "pass --ignore_base_model_check True only if you know the adapter fits this base"


def _config_digest(model_dir: Path) -> str:
    config = read_json_file(model_dir / "config.json")
    for key in _VOLATILE_CONFIG_KEYS:
        config.pop(key, None)
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _tensor_files(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (empty when the base has no safetensors weights)."""
    index_path = model_dir / _WEIGHTS_INDEX_NAME
    if index_path.is_file():
        weight_map = read_json_file(index_path).get("weight_map", {})
        return {name: model_dir / shard for name, shard in weight_map.items()}
    single = model_dir / _WEIGHTS_NAME
    if single.is_file():
        with safe_open(str(single), framework="pt") as handle:
            return dict.fromkeys(handle.keys(), single)
    return {}


def _tensor_digest(path: Path, name: str) -> str:
    with safe_open(str(path), framework="pt") as handle:
        tensor_slice = handle.get_slice(name)
        shape = tensor_slice.get_shape()
        row_elements = max(1, int(torch.tensor(shape[1:]).prod().item()) if len(shape) > 1 else 1)
        rows = min(shape[0], -(-SAMPLED_ELEMENTS // row_elements))
        sample = tensor_slice[:rows].contiguous()
    data = sample.view(torch.uint8) if sample.dtype != torch.bool else sample.to(torch.uint8)
    return hashlib.sha256(f"{name}:{list(shape)}:{sample.dtype}".encode() + data.numpy().tobytes()).hexdigest()


def base_model_record(model_dir: str | Path) -> dict[str, Any]:
    """The identity of the base model in ``model_dir``: config checksum and checksums of a few weight matrices."""
    model_dir = Path(model_dir)
    files = _tensor_files(model_dir)
    with_rows = []
    for name, path in sorted(files.items()):
        with safe_open(str(path), framework="pt") as handle:
            if len(handle.get_slice(name).get_shape()) >= 2:
                with_rows.append(name)
    count = len(with_rows)
    picks = sorted({with_rows[i * (count - 1) // max(1, NUM_SAMPLED_TENSORS - 1)] for i in range(NUM_SAMPLED_TENSORS)})
    return {
        "format_version": RECORD_VERSION,
        "name": model_dir.resolve().name,
        "config_sha256": _config_digest(model_dir),
        "tensor_sha256": {name: _tensor_digest(files[name], name) for name in picks} if count else {},
    }


def write_base_model_record(checkpoint_dir: str | Path, record: dict[str, Any]) -> Path:
    """Writes ``base_model.json`` into a checkpoint folder (atomically)."""
    path = Path(checkpoint_dir) / BASE_MODEL_RECORD_NAME
    write_json_atomic(path, record)
    return path


def read_base_model_record(checkpoint_dir: str | Path) -> dict[str, Any] | None:
    """The checkpoint's record (``base_model.json``, else ``policy_config.json``'s ``base_model``), or None."""
    checkpoint_dir = Path(checkpoint_dir)
    path = checkpoint_dir / BASE_MODEL_RECORD_NAME
    if path.is_file():
        return read_json_file(path)
    policy_config = checkpoint_dir / "policy_config.json"
    if policy_config.is_file():
        return read_json_file(policy_config).get("base_model")
    return None


def verify_base_model(checkpoint_dir: str | Path, base_dir: str | Path, flag: str) -> None:
    """Raises a UserError unless ``base_dir`` is the base model the checkpoint recorded (no record: no check)."""
    record = read_base_model_record(checkpoint_dir)
    if not record:
        return
    actual = base_model_record(base_dir)
    if actual["config_sha256"] != record.get("config_sha256"):
        what = "its config.json differs"
    elif actual["tensor_sha256"] != record.get("tensor_sha256"):
        what = "its weights differ"
    else:
        return
    raise UserError(
        f"{flag} {base_dir} is not the base model {checkpoint_dir} was trained on ({what} from the recorded "
        f"{record.get('name')!r} in {BASE_MODEL_RECORD_NAME}): expected that base model; {OVERRIDE_HINT}"
    )
