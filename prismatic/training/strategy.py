"""How the trained modules are spread over the ranks (DDP replicas or FSDP shards), gradient checkpointing, and
the full (unsharded) states that checkpoints are written from.

* DDP: every rank holds the whole model; gradients are all-reduced. ``find_unused_parameters`` stays False: the
  parameters the training forward never reaches are frozen first (``freeze_unreached_parameters``), so every
  trainable parameter receives a gradient in every step.
* FSDP (``torch.distributed.fsdp.fully_shard``): each LLM decoder layer and vision block is a unit (pi0: each SigLIP
  layer, and in each Gemma decoder layer of both towers the attention projections and the MLP), then the
  whole VLA and each head; parameters, gradients and AdamW states are sharded over the ranks. On CUDA the units gather
  parameters in bf16 and reduce gradients in fp32 (``MixedPrecisionPolicy``); on CPU (tests) all stays fp32. The
  frozen VGGT teacher is never wrapped: it has no gradients and runs under ``no_grad`` on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from peft import set_peft_model_state_dict
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from prismatic.training.config import STRATEGIES, TEACHER_DTYPES
from prismatic.training.distributed import DistributedContext
from prismatic.training.lora import ADAPTER_NAME
from prismatic.util.cli import UserError

FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)
# The parts of each timm tower that ``penultimate_patch_tokens`` skips (the last block, final norms, pooling head).
UNREACHED_TOWER_PARTS = ("norm", "fc_norm", "attn_pool", "head")


def _base(vla: nn.Module) -> nn.Module:
    get_base_model = getattr(vla, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else vla


def _towers(base: nn.Module) -> list[nn.Module]:
    backbone = base.vision_backbone
    return getattr(backbone, "vision_backbone", backbone).towers  # FiLM wraps the fused backbone


def freeze_unreached_parameters(vla: nn.Module, uses_lm_head: bool) -> list[str]:
    """Freezes the trainable parameters the training forward never uses; returns their names.

    The towers' outputs come from their second-to-last block, so the last block, the final norms and SigLIP's
    pooling head get no gradient; neither does the LM head (and its LoRA) when the action head reads hidden states.
    Freezing them keeps them out of the optimizer and lets DDP run without ``find_unused_parameters``; their
    values (LoRA B = 0 at init) are saved unchanged in the adapter, as upstream's never-updated copies were.
    """
    base = _base(vla)
    unreached = [tower.blocks[-1] for tower in _towers(base)]
    unreached += [getattr(tower, part) for tower in _towers(base) for part in UNREACHED_TOWER_PARTS]
    if not uses_lm_head:
        unreached.append(base.language_model.lm_head)
    frozen_ids = {id(p) for module in unreached if module is not None for p in module.parameters() if p.requires_grad}
    names = [name for name, p in vla.named_parameters() if id(p) in frozen_ids]
    for module in unreached:
        if module is not None:
            module.requires_grad_(False)
    return names


class _CheckpointedForward:
    """A block's forward recomputed in backward (non-reentrant: works with frozen inputs and LoRA)."""

    def __init__(self, forward):
        self.forward = forward

    def __call__(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return self.forward(*args, **kwargs)
        return checkpoint(self.forward, *args, use_reentrant=False, **kwargs)


def enable_gradient_checkpointing(vla: nn.Module, include_vision: bool) -> None:
    """Recomputes each LLM decoder layer (and, with ``include_vision``, each vision block) in backward."""
    base = _base(vla)
    base.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if include_vision:
        for tower in _towers(base):
            for block in tower.blocks:
                block.forward = _CheckpointedForward(block.forward)


def _fsdp_units(module: nn.Module) -> list[nn.Module]:
    """The LLM's decoder layers and the towers' blocks of a VLA (none for a head); a model family that runs its layers
    its own way names its units (``fsdp_units()``, e.g. pi0's)."""
    base = _base(module)
    family_units = getattr(base, "fsdp_units", None)
    if callable(family_units):
        return family_units()
    if not hasattr(base, "language_model"):
        return []
    units = list(base.language_model.model.layers)
    for tower in _towers(base):
        units += list(tower.blocks)
    return units


def distribute(module: nn.Module | None, ctx: DistributedContext, strategy: str) -> nn.Module | None:
    """``module`` as this rank trains it: itself (one process), DDP-wrapped, or sharded in place by FSDP."""
    if module is None or not ctx.is_distributed:
        return module
    if strategy == "ddp":
        device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=False)
    # DDP broadcasts rank 0's parameters and buffers when it wraps; FSDP shards what each rank holds, so the same
    # broadcast comes first (the randomly initialised LoRA, frozen or not, and heads differ between ranks).
    for tensor in (*module.parameters(), *module.buffers()):
        dist.broadcast(tensor.data, src=0)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    kwargs = {"mp_policy": policy} if ctx.device.type == "cuda" else {}
    for unit in _fsdp_units(module):
        fully_shard(unit, **kwargs)
    fully_shard(module, **kwargs)
    return module


def is_sharded(module: nn.Module) -> bool:
    return isinstance(module, FSDPModule)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict of ``module`` on the CPU (a collective under FSDP: call it on every rank)."""
    if is_sharded(module):
        return get_model_state_dict(module, options=FULL_STATE)
    inner = module.module if isinstance(module, DistributedDataParallel) else module
    return inner.state_dict()


def load_full_state_dict(module: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool) -> None:
    """Loads a full (unsharded) state into ``module``'s shards or replica."""
    if is_sharded(module):
        set_model_state_dict(module, state_dict, options=StateDictOptions(full_state_dict=True, strict=strict))
    else:
        (module.module if isinstance(module, DistributedDataParallel) else module).load_state_dict(state_dict, strict)


def load_adapter(vla: nn.Module, adapter: dict[str, torch.Tensor]) -> None:
    """Loads a saved LoRA adapter (peft's file keys, without the adapter name) into replicas or FSDP shards."""
    if not is_sharded(vla):
        set_peft_model_state_dict(vla, adapter)
        return
    # peft's file keys drop the adapter name (and, for modules trained in full, the "modules_to_save" level)
    saved_names = ((f".modules_to_save.{ADAPTER_NAME}.", "."), (f".{ADAPTER_NAME}.", "."))
    model_keys = {}
    for key in vla.state_dict():
        saved = key
        for model_name, file_name in saved_names:
            saved = saved.replace(model_name, file_name)
        model_keys[saved] = key
    unknown = [key for key in adapter if key not in model_keys]
    if unknown:
        raise KeyError(f"LoRA adapter keys not in the model: {unknown[:5]}")
    load_full_state_dict(vla, {model_keys[key]: value for key, value in adapter.items()}, strict=False)


@dataclass
class FullStates:
    model: dict[str, dict[str, torch.Tensor]]  # module name -> full state dict (on rank 0 under FSDP)
    optimizer: dict


def gather_full_states(modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer) -> FullStates:
    """Full model and optimizer states of the trained modules, for rank 0 to write (collectives under FSDP)."""
    return FullStates(
        {name: full_state_dict(module) for name, module in modules.items()},
        optimizer_state_dict(modules, optimizer),
    )


def check_strategy_flags(cfg) -> None:
    """Rejects flag combinations of this module's features before anything is loaded."""
    if cfg.strategy not in STRATEGIES:
        raise UserError(f"--strategy {cfg.strategy!r} is not supported; expected one of {STRATEGIES}.")
    if cfg.gradient_checkpointing_vision and not cfg.gradient_checkpointing:
        raise UserError("--gradient_checkpointing_vision True needs --gradient_checkpointing True.")
    if cfg.strategy == "fsdp" and cfg.use_film:
        raise UserError("--strategy fsdp with --use_film True is not supported; expected --strategy ddp for FiLM.")
    vggt_dtype = getattr(cfg, "vggt_dtype", "float32")
    if vggt_dtype not in TEACHER_DTYPES:
        raise UserError(f"--vggt_dtype {vggt_dtype!r} is not supported; expected one of {TEACHER_DTYPES}.")


def optimizer_state_dict(modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state: as is for replicas, gathered by parameter name for FSDP shards (collective)."""
    if not any(is_sharded(m) for m in modules.values()):
        return optimizer.state_dict()
    return get_optimizer_state_dict(nn.ModuleDict(modules), optimizer, options=FULL_STATE)


def load_optimizer_state_dict(modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer, state: dict) -> None:
    if not any(is_sharded(m) for m in modules.values()):
        optimizer.load_state_dict(state)
        return
    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(nn.ModuleDict(modules), optimizer, optim_state_dict=state, options=options)


def prepare_for_training(vla: nn.Module, cfg) -> None:
    """Freezes what the training forward never reaches and switches on the configured gradient checkpointing."""
    freeze_unreached_parameters(vla, uses_lm_head=not (cfg.use_l1_regression or cfg.use_diffusion))
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(vla, include_vision=cfg.gradient_checkpointing_vision)
