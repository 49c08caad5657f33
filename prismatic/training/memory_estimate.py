"""Predicted peak GPU memory of a fine-tuning configuration, derived from first principles without any weights.

The full-size modules are built on the ``meta`` device (shapes and dtypes, no storage) from the base model's
``config.json`` and VGGT-1B's architecture; one training step's forward and backward run on meta tensors. Bytes come
from three sources, none of them fitted:

* parameters, gradients and AdamW states: ``numel x element size`` of the modules the trainer builds;
* activations: the tensors autograd saves for backward, recorded with ``torch.autograd.graph.saved_tensors_hooks``
  (unique storages, parameters excluded), plus the outputs the step keeps (every hidden state, teacher features);
* the largest transient working set: over every operator of the forward (teacher included) and the backward, the
  bytes of its tensor inputs and outputs that are not already counted.

CUDA kernels are modelled where they differ from the meta dispatch (``DeviceKernels``): masked SDPA runs as the
memory-efficient kernel (saves q, k, v, out, log-sum-exp, the additive mask); bf16 autocast is modelled by tracing
the model in bf16 (what autocast computes its matmuls in), running autocast's float32 ops (norms, softmax) on float32
inputs and adding the bf16 copies autocast caches of the fp32 weights that require grad (the trainable modules; with
``--lora_fp32`` the LoRA adapters too). Gradient checkpointing replaces each checkpointed block's saved tensors by its
input (a returned hidden state), plus one block's recomputation.

``--upstream_script True`` models upstream's scripts instead of this trainer: the LM logits (float32, as
transformers 4.40's Llama returns them) and their loss are computed and kept, all VGGT layers are kept, and VGGT is
never frozen, so autocast also caches bf16 copies of its float32 Linear and Conv weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch._C._profiler import _EventType
from torch.overrides import TorchFunctionMode
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from prismatic.models.action_heads import L1RegressionActionHead
from prismatic.models.configuration_prismatic import OpenVLAConfig
from prismatic.models.modeling_prismatic import OpenVLAForActionPrediction
from prismatic.models.projectors import ProprioProjector
from prismatic.training.config import MemoryEstimateConfig
from prismatic.training.config_checks import check_quantization_flags
from prismatic.training.lora import apply_lora
from prismatic.training.strategy import check_strategy_flags, freeze_unreached_parameters
from prismatic.util.cli import UserError
from prismatic.vla.constants import IGNORE_INDEX, PlatformConstants, constants_for

GB = 1e9  # the published figures (and nvidia-smi's "GB" in most READMEs) are decimal gigabytes
# Memory outside PyTorch's allocator: a CUDA 12 context commonly takes ~0.5 GB (driver state and lazily loaded
# kernels); cuBLAS keeps a 32 MiB workspace per stream on sm_90; NCCL keeps per-peer buffers (NCCL_BUFFSIZE 4 MiB
# per channel and protocol), allowed for as 0.25 GB. Fixed allowances, not fitted to the published figures.
CUDA_CONTEXT_BYTES = 0.5 * GB
CUBLAS_WORKSPACE_BYTES = 32 * 2**20
NCCL_BUFFER_BYTES = 0.25 * GB
# The caching allocator rounds every block up to 512 bytes and large blocks into 2 MiB / 20 MiB segments; the
# fraction it keeps reserved beyond what tensors occupy is not a first-principles quantity, so none is added and
# docs/reference/memory.md compares the tensor estimate plus the fixed overheads above with the published figures.


def _storage_key(tensor: Tensor) -> int:
    return tensor.untyped_storage()._cdata


def _tensor_bytes(tensor: Tensor) -> int:
    return tensor.untyped_storage().nbytes()


class SavedTensorTracker:
    """Bytes autograd saves for backward, per scope: each storage once, parameters and buffers excluded."""

    def __init__(self, exclude: Iterable[Tensor]):
        self.excluded = {_storage_key(t) for t in exclude}
        self.seen: set[int] = set()
        self.by_scope: dict[str, int] = {}
        self.scope = "other"

    def _pack(self, tensor: Tensor) -> Tensor:
        key = _storage_key(tensor)
        if key not in self.excluded and key not in self.seen:
            self.seen.add(key)
            self.by_scope[self.scope] = self.by_scope.get(self.scope, 0) + _tensor_bytes(tensor)
        return tensor

    def count(self, tensors: Iterable[Tensor], scope: str) -> None:
        """Adds tensors kept alive outside autograd (returned hidden states, teacher features)."""
        previous, self.scope = self.scope, scope
        for tensor in tensors:
            self._pack(tensor)
        self.scope = previous

    @contextmanager
    def recording(self):
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor):
            yield self

    def label_modules(self, modules: dict[str, nn.Module]) -> list:
        """Attributes what is saved inside each named module to its name (for checkpointing arithmetic)."""
        handles = []
        for name, module in modules.items():

            def enter(_module, _args, name=name):
                self._outer, self.scope = self.scope, name

            def leave(_module, _args, _output):
                self.scope = self._outer

            handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
        return handles

    @property
    def total(self) -> int:
        return sum(self.by_scope.values())


class WorkingSetTracker(TorchDispatchMode):
    """The largest ``inputs + outputs`` of one operator, over all operators run inside it (parameters excluded)."""

    def __init__(self, exclude: Iterable[Tensor]):
        super().__init__()
        self.excluded = {_storage_key(t) for t in exclude}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_flatten((args, kwargs, output))[0] if isinstance(t, Tensor)]
        unique = {_storage_key(t): _tensor_bytes(t) for t in tensors if _storage_key(t) not in self.excluded}
        self.peak = max(self.peak, sum(unique.values()))
        return output


# Ops CUDA bf16 autocast runs in float32 (torch/csrc/autograd/amp: the "fp32" list) that these models call.
_AUTOCAST_FP32_FUNCTIONS = (
    nn.functional.layer_norm,
    nn.functional.group_norm,
    nn.functional.softmax,
    nn.functional.log_softmax,
    nn.functional.cross_entropy,
)
# ... and the ops it runs in bf16 (the "lower precision" list) that these models call.
_AUTOCAST_BF16_FUNCTIONS = (
    nn.functional.linear,
    nn.functional.conv2d,
    torch.matmul,
    torch.bmm,
    torch.baddbmm,
    torch.addmm,
    Tensor.__matmul__,
    Tensor.matmul,  # what ``@`` reaches for a tensor of another dtype (the rgb teacher's float32 mixing weights)
)


class DeviceKernels(TorchFunctionMode):
    """Runs a model on meta tensors as the real device would save and allocate.

    SDPA: a fused kernel (CUDA's memory-efficient or flash kernel, the CPU flash kernel), which saves q, k, v, the
    output, the log-sum-exp and the mask (boolean masks become an additive mask in the query's dtype), never the
    attention matrix that the meta dispatch's math fallback would save. With ``cuda_autocast``, a bf16 model runs
    as under CUDA bf16 autocast: float32 ops (layer norm, softmax, cross-entropy) get float32 inputs, matmuls bf16.
    """

    def __init__(self, cuda_autocast: bool):
        super().__init__()
        self.cuda_autocast = cuda_autocast

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.cuda_autocast:
            pass
        elif func in _AUTOCAST_FP32_FUNCTIONS:
            args, kwargs = _cast_floating((args, kwargs), torch.float32)
            return func(*args, **kwargs)
        elif func in _AUTOCAST_BF16_FUNCTIONS:
            args, kwargs = _cast_floating((args, kwargs), torch.bfloat16)
            return func(*args, **kwargs)
        if func is not nn.functional.scaled_dot_product_attention:
            return func(*args, **kwargs)
        query, key, value = args[:3]
        mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
        scale = kwargs.get("scale")
        if mask is not None and mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=query.dtype, device=mask.device).masked_fill(~mask, -math.inf)
        if mask is None and self.cuda_autocast:
            return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, scale=scale)[0]
        if mask is None:
            return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, scale=scale)[0]
        return torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, mask, True, scale=scale)[0]


def _cast_floating(tree, dtype: torch.dtype):
    return tree_map(lambda t: t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() else t, tree)


@dataclass
class MemoryEstimate:
    """Predicted bytes per GPU by category; ``peak`` is their sum."""

    rows: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> float:
        return sum(self.rows.values())

    def table(self, gpu_memory_gb: float) -> str:
        width = max(len(name) for name in self.rows)
        lines = [f"{'component':<{width}}  {'GB':>8}"]
        lines += [f"{name:<{width}}  {value / GB:8.2f}" for name, value in self.rows.items()]
        lines.append(f"{'predicted peak per GPU':<{width}}  {self.peak / GB:8.2f}   (GPU: {gpu_memory_gb:g} GB)")
        return "\n".join(lines + [f"note: {note}" for note in self.notes])

    def summary(self, gpu_memory_gb: float) -> str:
        return json.dumps({"peak_gb": round(self.peak / GB, 2), "fits": bool(self.peak <= gpu_memory_gb * GB)})


def read_base_config(vla_path: str | Path) -> OpenVLAConfig:
    """The base model's ``config.json`` (``--vla_path`` folder or the file itself) as an ``OpenVLAConfig``."""
    path = Path(vla_path)
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise UserError(
            f"--vla_path {vla_path}: no config.json there; expected the base model's folder or its config.json "
            f"(tests/manifests/openvla-7b-config.json holds openvla-7b's)."
        )
    try:
        fields = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"--vla_path: {path} is not valid JSON ({error}).") from error
    fields.pop("auto_map", None)
    return OpenVLAConfig(**fields)


def _param_bytes(modules: Iterable[nn.Module], trainable: bool) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters() if p.requires_grad == trainable)


def _sequence_length(cfg: MemoryEstimateConfig, platform: PlatformConstants, num_patches: int) -> tuple[int, int]:
    """(text tokens, LLM sequence): BOS + prompt + "▁" + action tokens + stop, plus patches and proprio."""
    text = 1 + cfg.prompt_tokens + 1 + platform.num_actions_chunk * platform.action_dim + 1
    return text, text + num_patches + int(cfg.use_proprio)


def build_meta_modules(cfg: MemoryEstimateConfig, dtype: torch.dtype):
    """The trainer's modules at full size on the meta device: (vla, action head, proprio projector, aligner,
    teacher, platform). The VLA, its LoRA adapters (float32 with ``--lora_fp32``) and the head are in ``dtype``; the
    proprio projector and the aligner in float32; the teacher in float32 (its weights are counted per
    ``--vggt_dtype``)."""
    from functools import partial

    from prismatic.spatial_forcing import SpatialForcingAligner, VGGTTeacher
    from prismatic.training.alignment import fixed_teacher
    from prismatic.training.oft_training import oft_teacher_images
    from vggt.models.vggt import VGGT

    platform = constants_for(cfg.dataset_name)
    config = read_base_config(cfg.vla_path)
    config.text_config._attn_implementation = "sdpa"
    with torch.device("meta"):
        vla = OpenVLAForActionPrediction(config).to(dtype)
        vla.set_num_images_in_input(cfg.num_images_in_input)
        if cfg.use_lora:
            vla = apply_lora(vla, cfg.lora_rank, cfg.lora_dropout, fp32_adapters=cfg.lora_fp32)
            if not cfg.lora_fp32:  # on real devices peft gives the adapters the base dtype; on meta it keeps fp32
                for name, module in vla.named_modules():
                    if name.endswith((".lora_A", ".lora_B")):
                        module.to(dtype)
        else:
            vla.requires_grad_(True)
        freeze_unreached_parameters(vla, uses_lm_head=not cfg.use_l1_regression)
        llm_dim = config.text_config.hidden_size
        head = None
        if cfg.use_l1_regression:
            head = L1RegressionActionHead(llm_dim, llm_dim, platform.action_dim, platform.num_actions_chunk).to(dtype)
        proprio = ProprioProjector(llm_dim, platform.proprio_dim) if cfg.use_proprio else None
        aligner = teacher = None
        if cfg.spatial_forcing and cfg.teacher != "vggt":  # buffers only: drawn on the CPU, traced on meta
            with torch.device("cpu"):
                prepare_images = oft_teacher_images(cfg.num_images_in_input)
                teacher = fixed_teacher(cfg, config.image_sizes[0], prepare_images).to("meta")
            aligner = SpatialForcingAligner(cfg.align_config(llm_dim, cfg.teacher_width // 2, cfg.teacher_patch_size))
        elif cfg.spatial_forcing:
            vggt = VGGT(**_teacher_kwargs(cfg.vggt_path))
            teacher = VGGTTeacher(
                vggt,
                prepare_images=partial(oft_teacher_images(cfg.num_images_in_input), target_size=cfg.vggt_image_size),
                layer=cfg.vggt_layers_align,
            )  # traced in float32 (an upper bound of its bf16-autocast activations); weights counted per vggt_dtype
            aligner = SpatialForcingAligner(cfg.align_config(llm_dim, vggt.embed_dim, vggt.patch_size))
    return vla, head, proprio, aligner, teacher, platform


def _teacher_kwargs(vggt_path: str) -> dict:
    """The teacher's architecture: inferred from ``--vggt_path`` (memory-mapped) when it exists, else VGGT-1B's."""
    from vggt.loading import infer_vggt_kwargs, read_state_dict
    from vggt.presets import teacher_vggt_kwargs

    if not Path(vggt_path).is_file():
        return teacher_vggt_kwargs()
    return {**teacher_vggt_kwargs(), **infer_vggt_kwargs(read_state_dict(vggt_path), source=vggt_path)}


def _decoder_layers(vla: nn.Module) -> dict[str, nn.Module]:
    base = vla.get_base_model() if hasattr(vla, "get_base_model") else vla
    layers = {f"llm.{i}": layer for i, layer in enumerate(base.language_model.model.layers)}
    for t, tower in enumerate(base.vision_backbone.towers):
        layers |= {f"vision{t}.{i}": block for i, block in enumerate(tower.blocks)}
    return layers


def _meta_batch(cfg: MemoryEstimateConfig, platform: PlatformConstants, config: OpenVLAConfig) -> dict[str, Tensor]:
    batch_size, text_length = cfg.batch_size, _sequence_length(cfg, platform, 0)[0]
    num_slots = platform.num_actions_chunk * platform.action_dim
    labels = torch.full((batch_size, text_length), IGNORE_INDEX, device="meta")
    image_size = config.image_sizes[0]
    camera_points = {}
    if cfg.spatial_forcing and cfg.teacher == "geometry":  # the point maps the geometry teacher reads
        camera_points["camera_points"] = torch.empty(
            (batch_size, cfg.num_images_in_input, image_size, image_size, 3), device="meta"
        )
    return {
        **camera_points,
        "input_ids": torch.zeros((batch_size, text_length), dtype=torch.long, device="meta"),
        "attention_mask": torch.ones((batch_size, text_length), dtype=torch.bool, device="meta"),
        "labels": labels,
        "pixel_values": torch.empty((batch_size, 6 * cfg.num_images_in_input, image_size, image_size), device="meta"),
        "proprio": torch.empty((batch_size, platform.proprio_dim), device="meta"),
        "actions": torch.empty((batch_size, platform.num_actions_chunk, platform.action_dim), device="meta"),
        "num_slots": num_slots,
    }


def trace_training_step(cfg: MemoryEstimateConfig, dtype: torch.dtype, cuda_autocast: bool) -> dict[str, object]:
    """Runs one step's forward and backward on meta tensors; returns the byte counts the estimate is built from.

    Mirrors ``trainer.compute_losses`` for the L1 head: the VLA forward with every hidden state, the action head on
    the action-slot states, then (Spatial Forcing) the teacher and the aligner on the visual tokens; with
    ``--upstream_script`` also what upstream's script computes and keeps (see the module docstring).
    """
    vla, head, proprio, aligner, teacher, platform = build_meta_modules(cfg, dtype)
    base = vla.get_base_model() if hasattr(vla, "get_base_model") else vla
    trainable_modules = [m for m in (vla, head, proprio, aligner) if m is not None]
    every_parameter = [
        t for m in (*trainable_modules, teacher) if m is not None for t in (*m.parameters(), *m.buffers())
    ]
    frozen, trainable = _param_bytes(trainable_modules, False), _param_bytes(trainable_modules, True)
    head_gradients = _param_bytes([m for m in (head, proprio, aligner) if m is not None], trainable=True)
    llm_linear_weights = sum(
        module.weight.numel() * module.weight.element_size()
        for name, module in base.language_model.model.layers.named_modules()
        if isinstance(module, nn.Linear) and not module.weight.requires_grad
    )
    trainable_fp32 = sum(  # autocast caches casts of leaf tensors that require grad only
        p.numel() * 4 for m in trainable_modules for p in m.parameters() if p.dtype == torch.float32 and p.requires_grad
    )
    for module in (vla, head, proprio):  # autocast runs their matmuls (and so what they save) in the compute dtype
        if module is not None:
            module.to(dtype)
    batch = _meta_batch(cfg, platform, base.config)
    num_patches = base.vision_backbone.get_num_patches() * cfg.num_images_in_input

    saved = SavedTensorTracker(every_parameter)
    handles = saved.label_modules(_decoder_layers(vla))
    working = WorkingSetTracker(every_parameter)
    with _autocast_accepts_meta(), DeviceKernels(cuda_autocast), working, saved.recording():
        output = vla(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            labels=batch["labels"],
            output_hidden_states=True,
            proprio=batch["proprio"],
            proprio_projector=proprio,
            return_lm_logits=cfg.upstream_script or not cfg.use_l1_regression,
        )
        saved.count(output.hidden_states, "retained hidden states")
        if output.logits is not None:  # upstream's script keeps the logits of every position (and their loss)
            # transformers 4.40's Llama returns them in float32 (``logits.float()``), whatever the compute dtype
            logits = output.logits.float() if cfg.upstream_script else output.logits
            saved.count([logits, output.loss], "retained logits")
        hidden = output.hidden_states[-1]
        loss = hidden.float().sum() * 0  # keeps the graph of every layer alive, as the real losses do
        if head is not None:
            slots = hidden[:, : batch["num_slots"]]  # the real step gathers the same number of rows
            predicted = head(slots.to(dtype)).float()
            loss = loss + nn.functional.l1_loss(predicted, batch["actions"])
        if aligner is not None:
            visual = aligner.select_vision_tokens(output.hidden_states, 1, num_patches)
            teacher_features = teacher(batch["pixel_values"], batch.get("camera_points"))
            saved.count([teacher_features.features], "teacher features")
            if cfg.upstream_script:  # upstream's VGGT returns (and the step keeps) all aggregator layers
                with torch.no_grad():
                    every_layer, _ = teacher.aggregator(teacher.prepare_images(batch["pixel_values"]))
                saved.count(every_layer, "teacher features")
            loss = loss + cfg.align_loss_coeff * aligner(visual, *teacher_features)
        loss.backward()
    for handle in handles:
        handle.remove()
    teacher_element_size = 2 if cfg.vggt_dtype == "bfloat16" else 4
    teacher_bytes = 0 if teacher is None else sum(p.numel() * teacher_element_size for p in teacher.parameters())
    teacher_autocast_copies = 0
    if teacher is not None and cfg.upstream_script and cfg.vggt_dtype == "float32":
        # Unfrozen, so autocast caches a bf16 copy of every float32 weight its bf16 ops (Linear, Conv) take.
        teacher_autocast_copies = sum(
            p.numel() * 2
            for module in teacher.modules()
            if isinstance(module, nn.Linear | nn.Conv2d)
            for p in module.parameters(recurse=False)
        )
    return {
        "frozen": frozen,
        "trainable": trainable,
        "trainable_fp32": trainable_fp32,
        "head_gradients": head_gradients,
        "llm_linear_weights": llm_linear_weights,
        "teacher": teacher_bytes,
        "teacher_autocast_copies": teacher_autocast_copies,
        "saved_by_scope": dict(saved.by_scope),
        "working_set": working.peak,
        "sequence_length": _sequence_length(cfg, platform, num_patches)[1],
    }


def trace_pi0_training_step(cfg: MemoryEstimateConfig) -> dict[str, object]:
    """``--model_family pi0``: one step of ``trainer.compute_losses`` on meta tensors, from the base's
    ``config.json`` (the released pi0's sizes without one): the flow-matching forward with the prefix hidden states,
    SF-pi0's alignment on every camera's image tokens, backward. pi0 keeps its own dtype policy (``param_dtype``:
    bf16 towers, fp32 action heads) and runs without autocast, with its eager attention (the attention matrix of
    every layer is saved); the teacher runs under bf16 autocast. Every weight a loss reaches trains
    (with ``--use_lora True``: the adapters, the heads and the projector)."""
    from prismatic.models.pi0.loading_pi0 import read_folder_config
    from prismatic.models.pi0.modeling_pi0 import Pi0Model, Pi0Observation
    from prismatic.models.pi0.spatial_forcing_pi0 import pi0_spatial_forcing_loss, pi0_teacher_images
    from prismatic.spatial_forcing import SpatialForcingAligner, VGGTTeacher
    from prismatic.training.pi0_training import (
        PI0_HEADS,
        apply_pi0_lora,
        check_pi0_training_flags,
        freeze_unreached_parameters,
    )
    from vggt.models.vggt import VGGT

    check_pi0_training_flags(cfg)
    config = read_folder_config(cfg.vla_path)
    with torch.device("meta"):
        model = Pi0Model(config)
        if cfg.use_lora:
            model = apply_pi0_lora(model, cfg.lora_rank, cfg.lora_dropout, cfg.lora_fp32)
        freeze_unreached_parameters(model, cfg.vla_layers_align if cfg.spatial_forcing else None)
        aligner = teacher = None
        if cfg.spatial_forcing:
            vggt = VGGT(**_teacher_kwargs(cfg.vggt_path))
            teacher = VGGTTeacher(vggt, layer=cfg.vggt_layers_align)
            aligner = SpatialForcingAligner(cfg.align_config(config.vlm_width, vggt.embed_dim, vggt.patch_size))
    trainable_modules = [m for m in (model, aligner) if m is not None]
    every_parameter = [
        t for m in (*trainable_modules, teacher) if m is not None for t in (*m.parameters(), *m.buffers())
    ]
    heads = [getattr(model, name) for name in PI0_HEADS] + ([aligner] if aligner is not None else [])
    batch, cameras, side = cfg.batch_size, config.num_cameras, config.image_size
    length = config.tokenizer_max_length
    observation = Pi0Observation(
        torch.empty(batch, cameras, 3, side, side, device="meta"),
        torch.ones(batch, cameras, dtype=torch.bool, device="meta"),
        torch.zeros(batch, length, dtype=torch.long, device="meta"),
        torch.ones(batch, length, dtype=torch.bool, device="meta"),
        torch.empty(batch, config.max_state_dim, device="meta"),
    )
    actions = torch.empty(batch, config.chunk_size, config.max_action_dim, device="meta")
    noise, time = torch.empty_like(actions), torch.empty(batch, device="meta")
    towers = model.paligemma_with_expert
    layers = {f"llm.{i}": layer for i, layer in enumerate(towers.language_model.layers)}
    layers |= {f"expert.{i}": layer for i, layer in enumerate(towers.gemma_expert.model.layers)}
    vision = towers.paligemma.model.vision_tower.vision_model.encoder.layers
    layers |= {f"vision.{i}": layer for i, layer in enumerate(vision)}

    saved = SavedTensorTracker(every_parameter)
    handles = saved.label_modules(layers)
    working = WorkingSetTracker(every_parameter)
    with _autocast_accepts_meta(), working, saved.recording():
        if aligner is None:
            loss = model(observation, actions, noise=noise, time=time).loss
        else:
            with DeviceKernels(cuda_autocast=True):  # the teacher runs under CUDA bf16 autocast, SDPA fused
                teacher_features = teacher(pi0_teacher_images(observation.images, None, cfg.vggt_image_size))
            saved.count([teacher_features.features], "teacher features")
            loss = pi0_spatial_forcing_loss(model, aligner, teacher_features, observation, actions, None, noise, time)
            loss = loss.loss
        loss.backward()
    for handle in handles:
        handle.remove()
    teacher_element_size = 2 if cfg.vggt_dtype == "bfloat16" else 4
    return {
        "frozen": _param_bytes(trainable_modules, False),
        "trainable": _param_bytes(trainable_modules, True),
        "trainable_fp32": 0,
        "head_gradients": _param_bytes(heads, trainable=True),
        "llm_linear_weights": 0,
        "teacher": 0 if teacher is None else sum(p.numel() * teacher_element_size for p in teacher.parameters()),
        "teacher_autocast_copies": 0,
        "saved_by_scope": dict(saved.by_scope),
        "working_set": working.peak,
        "sequence_length": cameras * config.num_image_tokens + length + 1 + config.chunk_size,
    }


class _AutocastAcceptingMeta(torch.autocast):
    def __init__(self, device_type: str, *args, **kwargs):
        super().__init__("cpu" if device_type == "meta" else device_type, *args, **kwargs)


@contextmanager
def _autocast_accepts_meta():
    """Lets ``torch.autocast("meta", enabled=False)`` (transformers' rotary embedding) run on meta tensors; CPU
    autocast never touches meta tensors."""
    original = torch.autocast
    torch.autocast = _AutocastAcceptingMeta
    try:
        yield
    finally:
        torch.autocast = original


def _checkpointed_activations(saved_by_scope: dict[str, int], prefixes: tuple[str, ...]) -> tuple[int, int]:
    """(activations kept, extra bytes of one recomputed block) when the blocks under ``prefixes`` are checkpointed.

    A checkpointed block keeps only its input, which is the previous block's output: for the LLM that is a returned
    hidden state (already counted); for a vision block it is one [B, tokens, D] tensor, at most its saved bytes.
    """
    kept, recompute = 0, 0
    for scope, size in saved_by_scope.items():
        if scope.startswith(prefixes):
            recompute = max(recompute, size)
        else:
            kept += size
    return kept, recompute


def estimate_memory(cfg: MemoryEstimateConfig) -> MemoryEstimate:
    """Predicted peak memory per GPU of ``cfg`` on ``cfg.num_gpus`` CUDA GPUs (bf16 autocast, as the trainer runs)."""
    if cfg.num_gpus < 1 or cfg.gpu_memory_gb <= 0:
        raise UserError(f"--num_gpus must be >= 1 and --gpu_memory_gb > 0; got {cfg.num_gpus}, {cfg.gpu_memory_gb}.")
    check_strategy_flags(cfg)
    check_quantization_flags(cfg)
    if cfg.use_diffusion:
        raise UserError("--use_diffusion True: the estimator models the L1 head (the paper's); expected False.")
    if cfg.model_family == "pi0":
        return full_fine_tune_peak(assemble_estimate(cfg, trace_pi0_training_step(cfg), on_cuda=True))
    trace = trace_training_step(cfg, torch.bfloat16, cuda_autocast=True)
    return assemble_estimate(cfg, trace, on_cuda=True)


def assemble_estimate(cfg: MemoryEstimateConfig, trace: dict, on_cuda: bool) -> MemoryEstimate:
    """Turns a trace into the per-GPU table for ``cfg``'s strategy, checkpointing, quantisation and world size."""
    shards = cfg.num_gpus if cfg.strategy == "fsdp" else 1
    frozen = trace["frozen"]
    if cfg.quantize_base != "none":  # the LLM's Linear weights: 1 byte + an fp32 scale per row (int8), or 4 bits
        # + an 8-bit absmax per 64 weights + an fp32 scale per 256 absmaxes (nf4 with double quantisation)
        bytes_per_weight = 1.0 if cfg.quantize_base == "int8" else 0.5 + 1 / 64 + 4 / (64 * 256)
        frozen -= trace["llm_linear_weights"] * (1 - bytes_per_weight / 2)
    trainable = trace["trainable"]
    prefixes = ()
    if cfg.gradient_checkpointing:  # the LLM's decoder layers (pi0: and the action expert's, recomputed jointly)
        prefixes = ("llm.", "expert.", "vision") if cfg.gradient_checkpointing_vision else ("llm.", "expert.")
    activations, recompute = _checkpointed_activations(trace["saved_by_scope"], prefixes)
    estimate = MemoryEstimate()
    estimate.rows["frozen base weights"] = frozen / shards
    estimate.rows["LoRA + trainable heads"] = trainable / shards
    # The peak is at the start of backward: zero_grad(set_to_none) freed last step's gradients; the heads' come
    # first, the LoRA gradients appear layer by layer as those layers' saved activations are freed.
    estimate.rows["gradients of the heads"] = trace["head_gradients"] / shards
    estimate.rows["AdamW states (2 x param)"] = 2 * trainable / shards
    if on_cuda:
        estimate.rows["autocast bf16 copies of fp32 weights"] = trace["trainable_fp32"] / 2
    if cfg.strategy == "ddp" and cfg.num_gpus > 1:
        estimate.rows["DDP gradient buckets"] = trainable
    if cfg.strategy == "fsdp" and cfg.num_gpus > 1:  # one decoder layer all-gathered (plus one prefetched)
        layer_bytes = (trace["frozen"] + trainable) / max(1, _num_llm_layers(cfg))
        estimate.rows["FSDP all-gathered layers (2)"] = 2 * layer_bytes
    estimate.rows["activations saved for backward"] = activations
    if recompute:
        estimate.rows["checkpoint recomputation (1 block)"] = recompute
    estimate.rows["largest op working set"] = trace["working_set"]
    if trace["teacher"]:
        estimate.rows["VGGT teacher weights"] = trace["teacher"]
    if on_cuda and trace["teacher_autocast_copies"]:
        estimate.rows["autocast bf16 copies of unfrozen VGGT weights"] = trace["teacher_autocast_copies"]
    if on_cuda:
        estimate.rows["CUDA context + cuBLAS workspace"] = CUDA_CONTEXT_BYTES + CUBLAS_WORKSPACE_BYTES
        if cfg.num_gpus > 1:
            estimate.rows["NCCL buffers"] = NCCL_BUFFER_BYTES
    estimate.notes.append(
        f"sequence {trace['sequence_length']} tokens x batch {cfg.batch_size}; activations per scope "
        + ", ".join(f"{k}={v / GB:.2f}" for k, v in _grouped(trace["saved_by_scope"]).items())
    )
    return estimate


BACKWARD_START_ROWS = ("activations saved for backward", "largest op working set", "gradients of the heads")


def full_fine_tune_peak(estimate: MemoryEstimate) -> MemoryEstimate:
    """A full fine-tune's peak is either at the start of backward (activations, working set, the heads' gradients)
    or at its end, when every trained weight holds a gradient and the activations are freed: the larger one."""
    every_gradient = estimate.rows["LoRA + trainable heads"]
    if every_gradient > sum(estimate.rows[name] for name in BACKWARD_START_ROWS):
        for name in BACKWARD_START_ROWS:
            del estimate.rows[name]
        estimate.rows["gradients of every trained weight (end of backward)"] = every_gradient
    return estimate


def step_allocation_bytes(trace: dict) -> int:
    """Peak bytes a first training step allocates on top of its weights and batch: saved activations, the
    largest operator working set and the heads' gradients at the start of backward, or, if more, every gradient
    plus the two AdamW states after it."""
    activations = sum(trace["saved_by_scope"].values()) + trace["working_set"] + trace["head_gradients"]
    return max(activations, 3 * trace["trainable"])


def measure_peak_allocation(step: Callable[[], object]) -> int:
    """Peak bytes allocated (above what existed before) while ``step()`` runs on the CPU, from the allocation
    records of PyTorch's profiler (``profile_memory=True``): every allocation and free, in time order."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    events, pending = [], list(profiler.profiler.kineto_results.experimental_event_tree())
    while pending:
        node = pending.pop()
        pending.extend(node.children)
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
    current = peak = 0
    for _, size in sorted(events):
        current += size
        peak = max(peak, current)
    return peak


def _grouped(saved_by_scope: dict[str, int]) -> dict[str, int]:
    groups: dict[str, int] = {}
    for scope, size in saved_by_scope.items():
        name = scope.split(".")[0]
        groups[name] = groups.get(name, 0) + size
    return groups


def _num_llm_layers(cfg: MemoryEstimateConfig) -> int:
    """The base's decoder layers (pi0: per tower; FSDP gathers a part of one layer of one tower at a time there, so
    two whole layers are an upper bound)."""
    if cfg.model_family == "pi0":
        from prismatic.models.pi0.loading_pi0 import read_folder_config

        return read_folder_config(cfg.vla_path).depth
    return read_base_config(cfg.vla_path).text_config.num_hidden_layers
