"""Which base model a fine-tuned checkpoint came from, recorded so that merging and evaluation can verify it.

A LoRA adapter only makes sense on the exact weights it was trained on; another base of the same shapes loads
without complaint and silently yields a different policy. Training records the base's identity in the checkpoint
(``base_model.json``, and ``PolicyConfig.base_model``): a checksum of its ``config.json`` (minus its own path) and
a SHA-256 of every tensor, read straight from its safetensors files (``benchmarks/bench_base_model_record.py``
measures the cost). The record survives copying the base anywhere; it does not survive re-saving the base in
another dtype (which is another base). Checkpoints without a record (the released ones) are not checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prismatic.util.checkpoint_files import BASE_MODEL_RECORD_NAME, POLICY_CONFIG_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME
from prismatic.util.cli import UserError
from prismatic.util.file_checks import read_json_file
from prismatic.util.io import write_json_atomic

logger = logging.getLogger(__name__)

RECORD_VERSION = 2  # 1: digests of the leading rows of 4 sampled tensors (only the config is checked against it)
HASH_CHUNK_BYTES = 16 * 2**20
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version")
OVERRIDE_HINT = "pass --ignore_base_model_check True only if you know the adapter fits this base"


def _config_digest(model_dir: Path) -> str:
    config = read_json_file(model_dir / "config.json")
    for key in _VOLATILE_CONFIG_KEYS:
        config.pop(key, None)
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _weight_files(model_dir: Path) -> list[Path]:
    """The base's safetensors files (empty when it has none)."""
    index_path = model_dir / WEIGHTS_INDEX_NAME
    if index_path.is_file():
        return sorted({model_dir / shard for shard in read_json_file(index_path).get("weight_map", {}).values()})
    single = model_dir / WEIGHTS_NAME
    return [single] if single.is_file() else []


def _file_tensor_digests(path: Path) -> dict[str, str]:
    """SHA-256 of every tensor of a safetensors file (name, dtype, shape and all its bytes), read in chunks straight
    from the file's data section (no tensor is materialised)."""
    digests = {}
    with open(path, "rb") as handle:
        header_size = struct.unpack("<Q", handle.read(8))[0]
        header = json.loads(handle.read(header_size))
        data_start = 8 + header_size
        buffer = bytearray(HASH_CHUNK_BYTES)
        for name, entry in sorted(header.items()):
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            digest = hashlib.sha256(f"{name}:{entry['shape']}:{entry['dtype']}".encode())
            handle.seek(data_start + begin)
            remaining = end - begin
            while remaining:
                read = handle.readinto(memoryview(buffer)[: min(remaining, HASH_CHUNK_BYTES)])
                if not read:
                    raise UserError(f"{path} is truncated: tensor {name!r} ends past the file's end")
                digest.update(memoryview(buffer)[:read])
                remaining -= read
            digests[name] = digest.hexdigest()
    return digests


def base_model_record(model_dir: str | Path) -> dict[str, Any]:
    """The identity of the base model in ``model_dir``: config checksum and a checksum of every tensor (the files are
    hashed in parallel threads; hashlib releases the GIL)."""
    model_dir = Path(model_dir)
    files = _weight_files(model_dir)
    with ThreadPoolExecutor(max_workers=max(1, min(len(files), os.cpu_count() or 1))) as pool:
        per_file = list(pool.map(_file_tensor_digests, files))
    return {
        "format_version": RECORD_VERSION,
        "name": model_dir.resolve().name,
        "config_sha256": _config_digest(model_dir),
        "tensor_sha256": {name: digest for digests in per_file for name, digest in sorted(digests.items())},
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
    policy_config = checkpoint_dir / POLICY_CONFIG_NAME
    if policy_config.is_file():
        return read_json_file(policy_config).get("base_model")
    return None


def verify_base_model(checkpoint_dir: str | Path, base_dir: str | Path, flag: str) -> None:
    """Raises a UserError unless ``base_dir`` is the base model the checkpoint recorded (no record: no check)."""
    record = read_base_model_record(checkpoint_dir)
    if not record:
        return
    actual = base_model_record(base_dir)
    recorded_tensors = record.get("tensor_sha256") or {}
    if actual["config_sha256"] != record.get("config_sha256"):
        what = "its config.json differs"
    elif record.get("format_version", 1) < RECORD_VERSION:
        logger.warning(
            "%s: its %s predates whole-tensor digests: only the config of %s was compared",
            checkpoint_dir,
            BASE_MODEL_RECORD_NAME,
            base_dir,
        )
        return
    elif actual["tensor_sha256"] != recorded_tensors:
        names = sorted(set(actual["tensor_sha256"]) | set(recorded_tensors))
        differing = [name for name in names if actual["tensor_sha256"].get(name) != recorded_tensors.get(name)]
        what = f"its weights differ: {len(differing)} tensor(s), e.g. {differing[0]}"
    else:
        return
    raise UserError(
        f"{flag} {base_dir} is not the base model {checkpoint_dir} was trained on ({what} from the recorded "
        f"{record.get('name')!r} in {BASE_MODEL_RECORD_NAME}): expected that base model; {OVERRIDE_HINT}"
    )
