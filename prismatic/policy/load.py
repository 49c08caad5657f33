"""Assembling a policy from a checkpoint folder in the released OpenVLA-OFT / Spatial Forcing layout.

A folder holds the merged VLA (``config.json`` + ``model.safetensors`` or ``model.safetensors.index.json`` and its
shards) or only ``lora_adapter/`` (then the base model is needed), the processor files, ``dataset_statistics.json``
and component files ``{component}--{step|latest}_checkpoint.pt`` (``action_head``, ``proprio_projector``,
``noisy_action_projector``, FiLM's ``vision_backbone``) whose keys carry DDP's ``module.`` prefix or not.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForVision2Seq, AutoProcessor

from prismatic.models.configuration_prismatic import OpenVLAConfig
from prismatic.models.family import CheckedCheckpoint
from prismatic.models.modeling_prismatic import OpenVLAForActionPrediction
from prismatic.models.processing_prismatic import PrismaticProcessor
from prismatic.models.projectors import NoisyActionProjector, ProprioProjector
from prismatic.models.quantization import quantize_base
from prismatic.policy.components import (
    build_heads,
    component_names,
    load_component_state_dict,
    load_components,
)
from prismatic.util.checkpoint_files import (
    DATASET_STATISTICS_NAME,
    LORA_ADAPTER_DIR,
    PROCESSOR_FILES,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)
from prismatic.util.checkpoint_install import settle_pending_install
from prismatic.vla.constants import PlatformConstants
from prismatic.vla.policy_config import EmbodimentConfig, PolicyConfig, apply_flag_overrides, load_policy_config

logger = logging.getLogger(__name__)


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
    policy_config: PolicyConfig  # what the checkpoint is (policy_config.json, or upstream's defaults), flags applied


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
    use_l1_regression: bool | None = None,
    use_diffusion: bool | None = None,
    use_proprio: bool | None = None,
    use_film: bool | None = None,
    num_images_in_input: int | None = None,
    num_diffusion_steps_train: int | None = None,
    num_diffusion_steps_inference: int | None = None,
    checkpoint_step: int | str | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
    quantize: str = "none",
    components: Collection[str] | None = None,
    checked: CheckedCheckpoint | None = None,
) -> LoadedVLA:
    """Load the VLA, processor, components and dataset statistics of a checkpoint folder for inference.

    What to load comes from the folder's ``policy_config.json`` (upstream's LIBERO defaults for a released folder
    without one; see ``prismatic.policy.components`` for the components). The flags (upstream's evaluation names)
    default to ``None`` = take it from the checkpoint; a given flag that contradicts the file is honoured with a
    warning. ``platform`` likewise overrides the embodiment's action-chunk geometry. Raises naming the missing or
    malformed file. ``quantize`` (int8 | nf4) stores the LLM decoder's Linear weights through bitsandbytes
    (``prismatic.models.quantization``), after any adapter is merged. ``components`` limits the components loaded
    (default: all that inference needs; probing takes only those that shape the visual tokens). ``checked``: what
    the pre-flight parsed from this folder (its policy config, flags applied, and statistics), used instead of
    reading them again.
    """
    if use_l1_regression and use_diffusion:
        raise ValueError("use_l1_regression and use_diffusion are exclusive; choose one action head.")
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise FileNotFoundError(f"Checkpoint folder {checkpoint_dir} does not exist.")
    settle_pending_install(checkpoint_dir, "checkpoint folder")
    policy_config = apply_flag_overrides(
        checked.policy_config
        if checked is not None
        else load_policy_config(checkpoint_dir, platform.name if platform is not None else "libero"),
        use_l1_regression=use_l1_regression,
        use_diffusion=use_diffusion,
        use_proprio=use_proprio,
        use_film=use_film,
        num_images_in_input=num_images_in_input,
        num_diffusion_steps_train=num_diffusion_steps_train,
        num_diffusion_steps_inference=num_diffusion_steps_inference,
    )
    if platform is not None and platform != policy_config.embodiment.platform():
        logger.warning(
            "platform %s overrides the checkpoint's embodiment %s", platform, policy_config.embodiment.platform()
        )
        policy_config.embodiment = EmbodimentConfig.from_platform(platform)
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
    vla.config.set_platform(policy_config.embodiment.platform())
    vla.set_num_images_in_input(policy_config.num_images_in_input)

    processor_dir = checkpoint_dir if (checkpoint_dir / PROCESSOR_FILES[0]).exists() else model_dir
    missing = [name for name in PROCESSOR_FILES if not (processor_dir / name).exists()]
    if missing:
        raise FileNotFoundError(f"{processor_dir} lacks the processor file(s) {missing}.")
    processor = AutoProcessor.from_pretrained(processor_dir, trust_remote_code=False)

    if checked is not None:
        norm_stats = checked.norm_stats
    else:
        norm_stats = load_dataset_statistics(checkpoint_dir) or vla.config.norm_stats or {}
    vla.norm_stats = norm_stats

    names = [n for n in component_names(policy_config, inference_only=True) if components is None or n in components]
    paths = {name: find_checkpoint_file(checkpoint_dir, name, checkpoint_step) for name in names}
    if policy_config.use_film:
        vla.enable_film()
        state_dict = load_component_state_dict(paths["vision_backbone"])
        if any(".lora_A." in key for key in state_dict):  # saved from the peft-wrapped training model
            state_dict = merge_lora_into_state_dict(state_dict, _lora_scaling(adapter_dir))
        try:
            vla.vision_backbone.load_state_dict(state_dict)
        except RuntimeError as error:
            raise ValueError(
                f"{paths['vision_backbone'].name} does not fit the FiLM vision backbone: {error}"
            ) from None
        vla.vision_backbone.to(dtype)  # as upstream's evaluation: the FiLM layers (fp32 in training) in `dtype`
    heads = {name: head for name, head in build_heads(policy_config, vla.llm_dim).items() if name in names}
    load_components(heads, paths)

    # Already in `dtype`; a blanket cast would also round fp32 buffers (RoPE). "none" only moves it.
    vla = quantize_base(vla, quantize, torch.device(device), dtype).eval()
    heads = {name: module.to(device=device, dtype=dtype).eval() for name, module in heads.items()}
    return LoadedVLA(
        vla,
        processor,
        heads.get("action_head"),
        heads.get("proprio_projector"),
        heads.get("noisy_action_projector"),
        norm_stats=norm_stats,
        config=vla.config,
        policy_config=policy_config,
    )
