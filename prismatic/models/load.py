"""Assembling a policy from a checkpoint folder in the released OpenVLA-OFT / Spatial Forcing layout.

A folder holds the merged VLA (``config.json`` + ``model.safetensors`` or ``model.safetensors.index.json`` and its
shards) or only ``lora_adapter/`` (then the base model is needed), the processor files, ``dataset_statistics.json``
and component files ``{component}--{step|latest}_checkpoint.pt`` (``action_head``, ``proprio_projector``,
``noisy_action_projector``, FiLM's ``vision_backbone``) whose keys carry DDP's ``module.`` prefix or not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForVision2Seq, AutoProcessor

from prismatic.models.action_heads import DiffusionActionHead, L1RegressionActionHead
from prismatic.models.configuration_prismatic import OpenVLAConfig
from prismatic.models.modeling_prismatic import OpenVLAForActionPrediction
from prismatic.models.processing_prismatic import PrismaticProcessor
from prismatic.models.projectors import NoisyActionProjector, ProprioProjector
from prismatic.util.io import atomic_output
from prismatic.vla.constants import PlatformConstants

DDP_PREFIX = "module."
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "model.safetensors"
LORA_ADAPTER_DIR = "lora_adapter"
DATASET_STATISTICS_NAME = "dataset_statistics.json"
PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer_config.json")


@dataclass
class LoadedVLA:
    """Everything ``predict_action`` needs, as loaded from one checkpoint folder."""

    vla: OpenVLAForActionPrediction
    processor: PrismaticProcessor
    action_head: nn.Module | None
    proprio_projector: ProprioProjector | None
    noisy_action_projector: NoisyActionProjector | None
    norm_stats: dict[str, Any]
    config: OpenVLAConfig


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"Missing file {path}.") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}.") from None


def find_checkpoint_file(checkpoint_dir: str | Path, component: str, step: int | str | None = None) -> Path:
    """The one file of ``checkpoint_dir`` named ``{component}--*checkpoint*`` (``{component}--{step}_checkpoint.pt``
    when ``step`` is given, e.g. ``"latest"`` or ``150000``)."""
    checkpoint_dir = Path(checkpoint_dir)
    candidates = sorted(
        path
        for path in checkpoint_dir.iterdir()
        if path.name.startswith(f"{component}--") and "checkpoint" in path.name
    )
    if step is not None:
        candidates = [path for path in candidates if path.name == f"{component}--{step}_checkpoint.pt"]
    if len(candidates) != 1:
        expected = f"{component}--{step if step is not None else '{step|latest}'}_checkpoint.pt"
        found = [path.name for path in candidates] or "none"
        raise FileNotFoundError(
            f"Expected exactly one {expected} in {checkpoint_dir}; found {found}"
            + (" (pass checkpoint_step to choose)." if len(candidates) > 1 else ".")
        )
    return candidates[0]


def load_component_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A component's state dict from a ``torch.save`` file, with DDP's ``module.`` prefix stripped where present."""
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return {key.removeprefix(DDP_PREFIX): value for key, value in state_dict.items()}


def save_component_state_dict(
    module: nn.Module, path: str | Path, ddp_prefix: bool = True, state_dict: dict[str, torch.Tensor] | None = None
) -> None:
    """Write ``module.state_dict()`` (or the given full ``state_dict`` of a sharded module) atomically, keys
    prefixed with ``module.`` as upstream's DDP-wrapped saves."""
    path = Path(path)
    prefix = DDP_PREFIX if ddp_prefix else ""
    source = module.state_dict() if state_dict is None else state_dict
    state_dict = {f"{prefix}{key}": value for key, value in source.items()}
    with atomic_output(path) as temporary:
        torch.save(state_dict, temporary)


def _load_component(module: nn.Module, checkpoint_dir: Path, component: str, step: int | str | None) -> nn.Module:
    path = find_checkpoint_file(checkpoint_dir, component, step)
    try:
        module.load_state_dict(load_component_state_dict(path))
    except RuntimeError as error:
        raise ValueError(f"{path.name} does not fit a {type(module).__name__}: {error}") from None
    return module


def merge_lora_into_state_dict(state_dict: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """Fold peft LoRA entries (``X.base_layer.*``, ``X.lora_A[.default].weight``, ``X.lora_B[...]``) into plain
    ``X.weight``/``X.bias``: W + scaling * B @ A (1x1-conv B and k x k-conv A for Conv2d layers)."""
    merged, factors = {}, {}
    for key, value in state_dict.items():
        for kind in ("lora_A", "lora_B"):
            for suffix in (f".{kind}.default.weight", f".{kind}.weight"):
                if key.endswith(suffix):
                    factors.setdefault(key.removesuffix(suffix), {})[kind] = value
                    break
            else:
                continue
            break
        else:
            merged[key.replace(".base_layer.", ".")] = value
    for module_name, pair in factors.items():
        weight_key = f"{module_name}.weight"
        if set(pair) != {"lora_A", "lora_B"} or weight_key not in merged:
            raise ValueError(f"Incomplete LoRA entries for {module_name!r}: found {sorted(pair)}.")
        weight = merged[weight_key]
        delta = pair["lora_B"].flatten(1).float() @ pair["lora_A"].flatten(1).float()  # [out, r] @ [r, in * k * k]
        merged[weight_key] = (weight.float() + scaling * delta.reshape(weight.shape)).to(weight.dtype)
    return merged


def _lora_scaling(adapter_dir: Path) -> float:
    adapter_config = _read_json(adapter_dir / "adapter_config.json")
    rank, alpha = adapter_config["r"], adapter_config["lora_alpha"]
    return alpha / rank**0.5 if adapter_config.get("use_rslora") else alpha / rank


def _has_merged_weights(model_dir: Path) -> bool:
    """True if ``model_dir`` holds model weights; checks that every shard named by the index exists."""
    index_path = model_dir / WEIGHTS_INDEX_NAME
    if index_path.exists():
        weight_map = _read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index_path} has no 'weight_map' mapping tensor names to shard files.")
        missing = sorted({shard for shard in weight_map.values() if not (model_dir / shard).exists()})
        if missing:
            raise FileNotFoundError(f"{index_path.name} in {model_dir} names shard(s) that are missing: {missing}.")
        return True
    return (model_dir / WEIGHTS_NAME).exists()


def _check_model_dir(model_dir: Path) -> None:
    config = _read_json(model_dir / "config.json")
    if config.get("model_type") != OpenVLAConfig.model_type:
        raise ValueError(
            f"{model_dir / 'config.json'} has model_type={config.get('model_type')!r}; expected "
            f"{OpenVLAConfig.model_type!r}."
        )


def _resolve_base_model(checkpoint_dir: Path, base_model_path: str | Path | None) -> Path:
    """The base model a LoRA-only checkpoint was fine-tuned from (argument, else ``adapter_config.json``)."""
    adapter_config_path = checkpoint_dir / LORA_ADAPTER_DIR / "adapter_config.json"
    named = base_model_path or _read_json(adapter_config_path).get("base_model_name_or_path")
    if not named or not Path(named).is_dir() or not _has_merged_weights(Path(named)):
        raise FileNotFoundError(
            f"{checkpoint_dir} holds no merged weights ({WEIGHTS_INDEX_NAME} or {WEIGHTS_NAME}), so its "
            f"{LORA_ADAPTER_DIR}/ must be applied to the base model it was trained from; "
            f"{'base_model_path' if base_model_path else adapter_config_path.name + ' base_model_name_or_path'} "
            f"= {named!r} is not a local model folder with weights. Pass base_model_path=<local openvla-7b folder>."
        )
    return Path(named)


def load_dataset_statistics(checkpoint_dir: str | Path) -> dict[str, Any] | None:
    """``dataset_statistics.json`` of a checkpoint (the norm stats used in training), or None if absent."""
    path = Path(checkpoint_dir) / DATASET_STATISTICS_NAME
    return _read_json(path) if path.exists() else None


def load_vla(
    checkpoint_dir: str | Path,
    *,
    base_model_path: str | Path | None = None,
    platform: PlatformConstants | None = None,
    use_l1_regression: bool = True,
    use_diffusion: bool = False,
    use_proprio: bool = True,
    use_film: bool = False,
    num_images_in_input: int = 2,
    num_diffusion_steps_train: int = 50,
    num_diffusion_steps_inference: int | None = None,
    checkpoint_step: int | str | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> LoadedVLA:
    """Load the VLA, processor, heads and dataset statistics of a checkpoint folder for inference.

    The flags mirror upstream's evaluation config: which components to load (``use_l1_regression`` /
    ``use_diffusion`` select the action head, ``use_proprio`` the proprio projector, ``use_film`` the FiLM vision
    backbone). ``platform`` overrides the action-chunk geometry stored in the config (default LIBERO).
    Raises naming the missing or malformed file.
    """
    if use_l1_regression and use_diffusion:
        raise ValueError("use_l1_regression and use_diffusion are exclusive; choose one action head.")
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise FileNotFoundError(f"Checkpoint folder {checkpoint_dir} does not exist.")
    adapter_dir = checkpoint_dir / LORA_ADAPTER_DIR
    if _has_merged_weights(checkpoint_dir):
        model_dir, apply_adapter = checkpoint_dir, False
    elif adapter_dir.is_dir():
        model_dir, apply_adapter = _resolve_base_model(checkpoint_dir, base_model_path), True
    else:
        raise FileNotFoundError(
            f"{checkpoint_dir} holds no model weights: expected {WEIGHTS_INDEX_NAME} with its shards, {WEIGHTS_NAME}, "
            f"or {LORA_ADAPTER_DIR}/ (plus the base model)."
        )
    _check_model_dir(model_dir)

    vla = AutoModelForVision2Seq.from_pretrained(
        model_dir, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=False
    )
    if apply_adapter:
        from peft import PeftModel

        vla = PeftModel.from_pretrained(vla, adapter_dir).merge_and_unload()
    if platform is not None:
        vla.config.set_platform(platform)
    vla.set_num_images_in_input(num_images_in_input)

    processor_dir = checkpoint_dir if (checkpoint_dir / PROCESSOR_FILES[0]).exists() else model_dir
    missing = [name for name in PROCESSOR_FILES if not (processor_dir / name).exists()]
    if missing:
        raise FileNotFoundError(f"{processor_dir} lacks the processor file(s) {missing}.")
    processor = AutoProcessor.from_pretrained(processor_dir, trust_remote_code=False)

    norm_stats = load_dataset_statistics(checkpoint_dir) or vla.config.norm_stats or {}
    vla.norm_stats = norm_stats

    llm_dim, chunk = vla.llm_dim, vla.config.platform
    if use_film:
        vla.enable_film()
        path = find_checkpoint_file(checkpoint_dir, "vision_backbone", checkpoint_step)
        state_dict = load_component_state_dict(path)
        if any(".lora_A." in key for key in state_dict):
            state_dict = merge_lora_into_state_dict(state_dict, _lora_scaling(adapter_dir))
        try:
            vla.vision_backbone.load_state_dict(state_dict)
        except RuntimeError as error:
            raise ValueError(f"{path.name} does not fit the FiLM vision backbone: {error}") from None

    action_head = None
    if use_l1_regression:
        action_head = L1RegressionActionHead(llm_dim, llm_dim, chunk.action_dim, chunk.num_actions_chunk)
    elif use_diffusion:
        action_head = DiffusionActionHead(
            llm_dim,
            llm_dim,
            chunk.action_dim,
            chunk.num_actions_chunk,
            num_diffusion_steps_train=num_diffusion_steps_train,
            num_diffusion_steps_inference=num_diffusion_steps_inference,
        )
    if action_head is not None:
        _load_component(action_head, checkpoint_dir, "action_head", checkpoint_step)
    proprio_projector = (
        _load_component(
            ProprioProjector(llm_dim, chunk.proprio_dim), checkpoint_dir, "proprio_projector", checkpoint_step
        )
        if use_proprio
        else None
    )
    noisy_action_projector = (
        _load_component(NoisyActionProjector(llm_dim), checkpoint_dir, "noisy_action_projector", checkpoint_step)
        if use_diffusion
        else None
    )

    vla = vla.to(device).eval()  # already in `dtype`; a blanket cast would also round fp32 buffers (RoPE)
    components = [
        module.to(device=device, dtype=dtype).eval() if module is not None else None
        for module in (action_head, proprio_projector, noisy_action_projector)
    ]
    return LoadedVLA(vla, processor, *components, norm_stats=norm_stats, config=vla.config)
