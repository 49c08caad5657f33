"""Load released pi0 weights unchanged: openpi's converted ``model.safetensors`` (bare keys, usually bf16) and
lerobot's (``model.`` prefix, fp32; the current layout and lerobot 0.3.3's older one).

Every check reads only the safetensors header, so a checkpoint of another family, a wrong layout or sizes other than
the config's are refused (one line naming the file and the key) before any weight is read. On disk the PaliGemma
input embedding exists only as its tied alias ``lm_head``; the loader fills the embedding from it. The action
expert's LM head is never used: it is loaded when present and reported, not required.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from prismatic.models.pi0.configuration_pi0 import Pi0Config
from prismatic.models.pi0.modeling_pi0 import Pi0Model
from prismatic.util.checkpoint_files import WEIGHTS_NAME
from prismatic.util.cli import UserError

CONFIG_NAME = "config.json"
LEROBOT_PREFIX = "model."
TOWERS_PREFIX = "paligemma_with_expert."
EMBED_KEY = "paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"
LM_HEAD_KEY = "paligemma_with_expert.paligemma.lm_head.weight"
EXPERT_HEAD_KEY = "paligemma_with_expert.gemma_expert.lm_head.weight"
# lerobot 0.3.3 (transformers < 4.52) nested PaliGemma's parts differently; these prefixes map it to today's names.
LEGACY_RENAMES = (
    ("paligemma_with_expert.paligemma.language_model.lm_head.", "paligemma_with_expert.paligemma.lm_head."),
    ("paligemma_with_expert.paligemma.language_model.model.", "paligemma_with_expert.paligemma.model.language_model."),
    ("paligemma_with_expert.paligemma.vision_tower.", "paligemma_with_expert.paligemma.model.vision_tower."),
    (
        "paligemma_with_expert.paligemma.multi_modal_projector.",
        "paligemma_with_expert.paligemma.model.multi_modal_projector.",
    ),
)
# Some openpi conversions name pi0's time MLP as pi05's; lerobot renames it back.
TIME_MLP_RENAMES = (("time_mlp_in.", "action_time_mlp_in."), ("time_mlp_out.", "action_time_mlp_out."))
# Keys only pi05 has (adaptive RMSNorm of the expert).
PI05_MARKERS = (".input_layernorm.dense.", ".post_attention_layernorm.dense.", "gemma_expert.model.norm.dense.")
PI0_TYPES = ("pi0",)


class Pi0CheckpointError(UserError):
    """A checkpoint pi0 cannot load; the message names the file and says what was expected."""


@dataclass
class Pi0Checkpoint:
    """What a checkpoint's header says: its layout and, per pi0 key (today's names), the name and shape on disk."""

    path: Path
    layout: str  # "openpi" (bare keys), "lerobot" (``model.`` prefix) or "lerobot033" (older PaliGemma nesting)
    disk_names: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]


@dataclass
class Pi0LoadReport:
    layout: str
    loaded: int  # tensors read from the file
    missing: list[str]  # model keys the file lacks (empty unless loaded with strict=False)
    unexpected: list[str]
    embedding_from_lm_head: bool
    expert_head: str  # "loaded" or "absent (never used; left as initialised)"

    def lines(self) -> list[str]:
        """One line per fact; missing and unexpected keys one line each."""
        return [
            f"layout: {self.layout} ({self.loaded} tensors loaded)",
            f"missing keys: {', '.join(self.missing) or 'none'}",
            f"unexpected keys: {', '.join(self.unexpected) or 'none'}",
            f"input embedding: {'filled from the tied lm_head' if self.embedding_from_lm_head else 'loaded'}",
            f"expert lm_head: {self.expert_head}",
        ]


def weights_path(checkpoint: str | Path) -> Path:
    """``checkpoint`` itself if it is a ``.safetensors`` file, else ``checkpoint/model.safetensors``."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise Pi0CheckpointError(f"{path}: no such file: expected a pi0 checkpoint folder holding {WEIGHTS_NAME}")
    if path.suffix != ".safetensors":
        raise Pi0CheckpointError(f"{path}: expected a .safetensors file (openpi's or lerobot's {WEIGHTS_NAME})")
    return path


def _check_family_in_config(weights: Path) -> None:
    """A ``config.json`` beside the weights that names another policy type (lerobot's ``type``, HF's
    ``model_type``) is refused."""
    config_path = weights.parent / CONFIG_NAME
    if not config_path.is_file():
        return
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise Pi0CheckpointError(
            f"{config_path}: not readable JSON ({error}): expected the checkpoint's config"
        ) from error
    for field in ("type", "model_type"):
        family = config.get(field) if isinstance(config, dict) else None
        if family is not None and family not in PI0_TYPES:
            raise Pi0CheckpointError(
                f"{config_path}: {field}={family!r} is a checkpoint of another family: expected {PI0_TYPES[0]!r}"
            )


def _canonical_name(key: str, legacy: bool) -> str:
    if legacy:
        for old, new in LEGACY_RENAMES:
            if key.startswith(old):
                return new + key[len(old) :]
    for old, new in TIME_MLP_RENAMES:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def read_checkpoint(checkpoint: str | Path) -> Pi0Checkpoint:
    """Read a checkpoint's header (no tensor data) and map its keys to today's pi0 names."""
    path = weights_path(checkpoint)
    _check_family_in_config(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
            slices = {name: handle.get_slice(name) for name in names}
            shapes = {name: tuple(piece.get_shape()) for name, piece in slices.items()}
            dtypes = {name: piece.get_dtype() for name, piece in slices.items()}
    except Exception as error:  # safetensors raises its own error types for a corrupt header
        raise Pi0CheckpointError(f"{path}: not a readable safetensors file ({error})") from error
    return parse_checkpoint_header(path, shapes, dtypes)


def parse_checkpoint_header(path: Path, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str]) -> Pi0Checkpoint:
    """Recognise the layout of the tensors named in a header (name -> shape, dtype) and map them to today's names;
    refuse another family, pi05 and mixed layouts, naming ``path``."""
    names = list(shapes)
    prefixed = [name.startswith(LEROBOT_PREFIX) for name in names]
    if any(prefixed) and not all(prefixed):
        raise Pi0CheckpointError(
            f"{path}: {sum(prefixed)} of {len(names)} keys carry lerobot's {LEROBOT_PREFIX!r} prefix: expected all "
            "(lerobot layout) or none (openpi layout)"
        )
    strip = len(LEROBOT_PREFIX) if names and all(prefixed) else 0
    bare = {name[strip:]: name for name in names}
    if not any(key.startswith(TOWERS_PREFIX) for key in bare):
        example = next(iter(bare), "(no tensors)")
        raise Pi0CheckpointError(
            f"{path}: no {TOWERS_PREFIX}* tensors (first key {example!r}): expected a pi0 checkpoint (openpi or "
            "lerobot layout), not another family"
        )
    pi05 = next((key for key in bare if any(marker in key for marker in PI05_MARKERS)), None)
    if pi05 is not None:
        raise Pi0CheckpointError(f"{path}: {pi05!r} is a pi05 (adaptive norm) key: expected a pi0 checkpoint")
    legacy = any(key.startswith(old) for old, _ in LEGACY_RENAMES[:2] for key in bare)
    current = any(key.startswith("paligemma_with_expert.paligemma.model.") for key in bare)
    if legacy and current:
        raise Pi0CheckpointError(
            f"{path}: mixes lerobot 0.3.3's paligemma.language_model.* keys with today's paligemma.model.*: "
            "expected one layout"
        )
    layout = "lerobot033" if legacy else ("lerobot" if strip else "openpi")
    disk_names = {_canonical_name(key, legacy): name for key, name in bare.items()}
    return Pi0Checkpoint(
        path=path,
        layout=layout,
        disk_names=disk_names,
        shapes={key: shapes[name] for key, name in disk_names.items()},
        dtypes={key: dtypes[name] for key, name in disk_names.items()},
    )


def check_checkpoint(
    checkpoint: Pi0Checkpoint, expected_shapes: dict[str, tuple[int, ...]], config: Pi0Config, strict: bool = True
) -> tuple[list[str], list[str]]:
    """Refuse shapes other than the model's; with ``strict``, also keys either side lacks. Returns the missing and
    the unexpected keys (see ``missing_and_unexpected``)."""
    mismatched = [
        (key, shape, expected_shapes[key])
        for key, shape in checkpoint.shapes.items()
        if key in expected_shapes and shape != expected_shapes[key]
    ]
    if mismatched:
        key, found, wanted = mismatched[0]
        raise Pi0CheckpointError(
            f"{checkpoint.path}: {len(mismatched)} tensors differ in shape from the config's pi0 (max_state_dim="
            f"{config.max_state_dim}, max_action_dim={config.max_action_dim}, vlm_width={config.vlm_width}, "
            f"expert_width={config.expert_width}), first {key} {list(found)}: expected {list(wanted)}"
        )
    missing, unexpected = missing_and_unexpected(checkpoint, expected_shapes)
    if strict and (missing or unexpected):
        raise Pi0CheckpointError(
            f"{checkpoint.path} ({checkpoint.layout} layout) does not match pi0: missing keys ({len(missing)}): "
            f"{', '.join(missing) or 'none'}; unexpected keys ({len(unexpected)}): {', '.join(unexpected) or 'none'}"
        )
    return missing, unexpected


def missing_and_unexpected(
    checkpoint: Pi0Checkpoint, expected_shapes: dict[str, tuple[int, ...]]
) -> tuple[list[str], list[str]]:
    """Model keys the file lacks (besides either name of the tied embedding and the unused expert head) and file keys
    the model lacks, both sorted."""
    tied = {EMBED_KEY: LM_HEAD_KEY, LM_HEAD_KEY: EMBED_KEY}
    tolerated = {EXPERT_HEAD_KEY} | {key for key, alias in tied.items() if alias in checkpoint.shapes}
    missing = sorted(set(expected_shapes) - set(checkpoint.shapes) - tolerated)
    unexpected = sorted(set(checkpoint.shapes) - set(expected_shapes))
    return missing, unexpected


@torch.no_grad()
def load_pi0_weights(model: nn.Module, checkpoint: str | Path | Pi0Checkpoint, strict: bool = True) -> Pi0LoadReport:
    """Copy a released checkpoint into ``model`` (a ``Pi0Model``), each tensor cast to the dtype of the parameter it
    fills (the model's dtype policy, not the file's). Checked against the header first; nothing is read on error.
    ``strict=False`` loads the matching keys and reports the others instead of refusing the file."""
    parsed = checkpoint if isinstance(checkpoint, Pi0Checkpoint) else read_checkpoint(checkpoint)
    state = model.state_dict()
    expected_shapes = {key: tuple(tensor.shape) for key, tensor in state.items()}
    missing, unexpected = check_checkpoint(parsed, expected_shapes, model.config, strict)
    embedding_from_lm_head = EMBED_KEY not in parsed.disk_names and LM_HEAD_KEY in parsed.disk_names
    with safe_open(str(parsed.path), framework="pt") as handle:
        for key, name in parsed.disk_names.items():
            if key in state:
                state[key].copy_(handle.get_tensor(name))
    # Either name of the tied pair fills the other when the model's tie was broken.
    for target, source in ((EMBED_KEY, LM_HEAD_KEY), (LM_HEAD_KEY, EMBED_KEY)):
        filled_by_source = target not in parsed.disk_names and source in parsed.disk_names
        if filled_by_source and state[target].data_ptr() != state[source].data_ptr():
            state[target].copy_(state[source])
    return Pi0LoadReport(
        layout=parsed.layout,
        loaded=len(parsed.disk_names) - len(unexpected),
        missing=missing,
        unexpected=unexpected,
        embedding_from_lm_head=embedding_from_lm_head,
        expert_head="loaded" if EXPERT_HEAD_KEY in parsed.disk_names else "absent (never used; left as initialised)",
    )


def read_folder_config(folder: str | Path) -> Pi0Config:
    """The ``Pi0Config`` a folder's ``config.json`` holds when written by this project (``model_type`` "pi0"); the
    released pi0's sizes for a folder without one or with another writer's config (openpi, lerobot)."""
    config_path = Path(folder) / CONFIG_NAME
    if not config_path.is_file():
        return Pi0Config()
    try:
        payload = json.loads(config_path.read_text())
        if not isinstance(payload, dict) or payload.get("model_type") != Pi0Config.model_type:
            return Pi0Config()
        return Pi0Config(**payload)
    except (OSError, json.JSONDecodeError, TypeError, ValueError) as error:
        raise Pi0CheckpointError(f"{config_path}: not a pi0 config ({error}): expected Pi0Config's fields") from error


def save_pi0_weights(model: nn.Module, folder: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``config.json`` and ``model.safetensors`` (openpi's bare keys; the tied embedding stored once, as
    ``lm_head``, like a release) of a ``Pi0Model`` into ``folder``; ``state_dict``: its gathered full state."""
    state = dict(model.state_dict() if state_dict is None else state_dict)
    state.pop(EMBED_KEY, None)
    save_file({key: tensor.detach().contiguous().cpu() for key, tensor in state.items()}, Path(folder) / WEIGHTS_NAME)
    model.config.to_json_file(Path(folder) / CONFIG_NAME)


def load_pi0_folder(folder: str | Path) -> tuple[Pi0Model, Pi0LoadReport]:
    """The pi0 of a folder (``config.json`` + ``model.safetensors``, or a released folder at the released sizes) on
    the CPU, its header checked before any weight is read."""
    checkpoint = read_checkpoint(folder)
    model = Pi0Model(read_folder_config(folder))
    return model, load_pi0_weights(model, checkpoint)
