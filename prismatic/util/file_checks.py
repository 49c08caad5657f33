"""Cheap checks of the files and folders a command names, run before anything is loaded or written.

Each reads at most a file's header (never its tensors), so a truncated safetensors or ``torch.save`` file, a text
file given as a checkpoint or an unwritable output folder is reported as a :class:`UserError` naming the file
before any minute is spent loading models or any file is created.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

from prismatic.util.checkpoint_files import WEIGHTS_INDEX_NAME, WEIGHTS_NAME
from prismatic.util.cli import UserError

SAFETENSORS_HEADER_LIMIT = 100_000_000  # safetensors' own cap on the JSON header


def _label(path: Path, flag: str | None) -> str:
    return f"{flag} {path}" if flag else str(path)


def check_safetensors(path: str | Path, flag: str | None = None) -> None:
    """The file is a complete safetensors file: a readable header whose tensors end exactly at the end of the file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        header_length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
        valid_length = 0 < header_length <= min(SAFETENSORS_HEADER_LIMIT, size - 8)
        header_bytes = file.read(header_length) if valid_length else b""
    try:
        header = json.loads(header_bytes) if header_bytes else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict):
        raise UserError(f"{_label(path, flag)} is not a safetensors file (unreadable header): expected model weights")
    data_end = max((entry["data_offsets"][1] for k, entry in header.items() if k != "__metadata__"), default=0)
    if 8 + header_length + data_end != size:
        raise UserError(
            f"{_label(path, flag)} is truncated or corrupt ({size} bytes, its header describes "
            f"{8 + header_length + data_end}): expected the complete file (download or copy it again)"
        )


def check_torch_file(path: str | Path, flag: str | None = None) -> None:
    """The file is a complete ``torch.save`` archive (its zip directory, at the end of the file, is readable)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            complete = any(name.endswith("data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        complete = False
    if not complete:
        raise UserError(
            f"{_label(path, flag)} is truncated or not a PyTorch checkpoint: expected a complete torch.save file"
        )


def refused_pickle_message(path: str | Path, error: pickle.UnpicklingError, expected: str) -> str:
    """One line for a file that ``torch.load(..., weights_only=True)`` refused: which file, which Python object it
    names (what would run if loaded without the restriction), and what was expected. torch's own message advises
    ``weights_only=False``, which would run that code."""
    named = re.search(r"\bGLOBAL ([\w.]+)", str(error))
    if named:
        reason = f"it names {named.group(1)}, which a weights-only load refuses (loading it could run code)"
    else:
        reason = "it is a pickle a weights-only load cannot read (it could run code)"
    return f"{path} is unsafe: {reason}; not loaded: expected {expected}"


def check_weights_file(path: str | Path, flag: str | None = None) -> None:
    """A safetensors or torch.save weights file, judged by its suffix."""
    if Path(path).suffix == ".safetensors":
        check_safetensors(path, flag)
    else:
        check_torch_file(path, flag)


def check_model_weights(model_dir: Path, flag: str) -> None:
    """The safetensors weights of a model folder are all present and complete (headers only, nothing loaded)."""
    index_path = model_dir / WEIGHTS_INDEX_NAME
    if index_path.is_file():
        weight_map = read_json_file(index_path, flag).get("weight_map") or {}
        shards = sorted(set(weight_map.values()))
        missing = [shard for shard in shards if not (model_dir / shard).is_file()]
        if not shards or missing:
            raise UserError(
                f"{flag} {model_dir}: {index_path.name} names missing shard(s) {missing or '(none listed)'}: "
                "expected every shard of the checkpoint"
            )
        for shard in shards:
            check_safetensors(model_dir / shard, flag)
    elif (model_dir / WEIGHTS_NAME).is_file():
        check_safetensors(model_dir / WEIGHTS_NAME, flag)
    else:
        raise UserError(f"{flag} {model_dir} holds no {WEIGHTS_INDEX_NAME} or {WEIGHTS_NAME}: expected model weights")


def read_json_file(path: str | Path, flag: str | None = None) -> Any:
    """The parsed JSON of ``path``; a missing or malformed file is a UserError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{_label(path, flag)} does not exist: expected a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{_label(path, flag)} is not valid JSON ({error}): expected an intact JSON file") from None


def check_folder(path: str | Path, flag: str, expected: str) -> None:
    """``path`` is a folder; else a UserError saying whether it is a file or missing, and what was ``expected``."""
    path = Path(path)
    if not path.is_dir():
        found = "is a file, not a folder" if path.exists() else "does not exist"
        raise UserError(f"{flag} {path} {found}: expected {expected}")


def check_writable_dir(path: str | Path, flag: str) -> None:
    """``path`` is, or can be created as, a folder this process may write into (nothing is created here)."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file: expected a folder (or a path that can become one)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {existing} is not writable: expected a folder this user may write into")
