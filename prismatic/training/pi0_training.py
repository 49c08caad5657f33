"""``--model_family pi0`` in the fine-tuning scripts: the training half of pi0 (:class:`Pi0Training`, a
:class:`prismatic.training.training_family.TrainingFamily`: checks, build, batches, losses, the checkpoint's model
files), the rest of the loop (optimizer, schedule, data position, distribution, save, resume) being shared.

pi0 is fine-tuned in full or with LoRA (``--use_lora True``: :func:`apply_pi0_lora`; the checkpoints hold the merged
weights), with or without gradient checkpointing, under DDP or FSDP (``Pi0Model.fsdp_units``), from a pi0 folder
``--vla_path`` (``config.json`` with ``model_type`` "pi0" and ``model.safetensors`` in openpi's or lerobot's layout,
plus PaliGemma's ``tokenizer.model``). Spatial Forcing attaches as SF-pi0 does
(``prismatic.models.pi0.spatial_forcing_pi0``): the residual stream entering LM layer ``--vla_layers_align``, image
tokens of every camera, masked by camera presence and letterbox, a LayerNorm + MLP projector from the LM width,
``action loss + align_loss_coeff x align loss``; the teacher is VGGT, or the geometry or rgb teacher of
``--teacher``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from peft import PeftModel
from torch import nn

from prismatic.models.pi0.augmentation_pi0 import Pi0Augmentation, augmentation_record
from prismatic.models.pi0.configuration_pi0 import Pi0Config
from prismatic.models.pi0.loading_pi0 import (
    EMBED_KEY,
    LM_HEAD_KEY,
    load_pi0_folder,
    read_checkpoint,
    read_folder_config,
    save_pi0_weights,
)
from prismatic.models.pi0.modeling_pi0 import Pi0Model
from prismatic.models.pi0.processing_pi0 import (
    IMAGES_BEFORE_COLOUR,
    TOKENIZER_NAME,
    Pi0BatchTransform,
    Pi0Collator,
    Pi0Processor,
    observation_from_batch,
)
from prismatic.models.pi0.spatial_forcing_pi0 import pi0_spatial_forcing_loss, pi0_teacher_images
from prismatic.training import checkpointing as ckpt
from prismatic.training.alignment import build_alignment
from prismatic.training.config import AlignFinetuneConfig, FinetuneConfig
from prismatic.training.lora import ADAPTER_NAME, apply_lora, merged_lora_state_dict
from prismatic.training.strategy import load_full_state_dict
from prismatic.training.training_family import BatchFormat, TrainingModel, training_policy_config
from prismatic.util.cli import UserError
from prismatic.vla.constants import PlatformConstants
from prismatic.vla.policy_config import ImagePreprocessingConfig, PolicyConfig

PI0_FAMILY = "pi0"
PI0_ACTION_HEAD = "flow_matching"
# LoRA on every attention and MLP projection of the PaliGemma LM's and the action expert's decoder layers.
PI0_LORA_TARGET_MODULES = (
    r".*\.(language_model|gemma_expert\.model)\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
)
# pi0's state projection and action heads (outside the towers), trained in full with or without LoRA.
PI0_HEADS = ("state_proj", "action_in_proj", "action_out_proj", "action_time_mlp_in", "action_time_mlp_out")


def check_pi0_training_flags(cfg: FinetuneConfig) -> None:
    """Refuse, one line each, the training flags pi0 does not support."""
    unsupported = {
        "use_film": False,
        "use_diffusion": False,
        "quantize_base": "none",
    }
    for flag, supported in unsupported.items():
        if getattr(cfg, flag) != supported:
            raise UserError(f"--model_family pi0: --{flag} {getattr(cfg, flag)} is not supported: expected {supported}")
    if cfg.use_lora and not cfg.merge_lora_during_training:
        raise UserError(
            "--model_family pi0 --use_lora True: --merge_lora_during_training False is not supported: expected True "
            "(a pi0 checkpoint folder is loaded from its merged model.safetensors)"
        )
    if not cfg.use_proprio:
        raise UserError("--model_family pi0 reads the robot state: expected --use_proprio True")
    if isinstance(cfg, AlignFinetuneConfig) and cfg.gain_feat_1move:
        raise UserError(
            "--model_family pi0: --gain_feat_1move True is not supported: expected False (pi0's image "
            "tokens open the sequence; no BOS to shift past)"
        )


def check_pi0_flags(cfg: FinetuneConfig, platform: PlatformConstants) -> Pi0Config:
    """Refuse, one line each and before any weight is read, the flags pi0 does not support and a ``--vla_path``
    that is not a pi0 fitting the data; returns the base's config."""
    check_pi0_training_flags(cfg)
    read_checkpoint(cfg.vla_path)  # the family and layout, from the header
    config = read_folder_config(cfg.vla_path)
    if config.chunk_size != platform.num_actions_chunk:
        raise UserError(
            f"--vla_path {cfg.vla_path}: pi0's chunk_size {config.chunk_size} differs from the data's chunk of "
            f"{platform.num_actions_chunk} actions: expected equal"
        )
    for name, dim, limit in (
        ("action", platform.action_dim, config.max_action_dim),
        ("proprio", platform.proprio_dim, config.max_state_dim),
    ):
        if dim > limit:
            raise UserError(f"--vla_path {cfg.vla_path}: the data's {dim} {name} dims exceed pi0's {limit} padded dims")
    if cfg.num_images_in_input > config.num_cameras:
        raise UserError(
            f"--num_images_in_input {cfg.num_images_in_input}: pi0's config reads {config.num_cameras} cameras "
            f"({config.image_keys}): expected at most that"
        )
    if not Path(cfg.vla_path, TOKENIZER_NAME).is_file():
        raise UserError(f"--vla_path {cfg.vla_path}: no {TOKENIZER_NAME}: expected PaliGemma's SentencePiece model")
    return config


def as_pi0_policy_config(config: PolicyConfig, cfg: FinetuneConfig) -> PolicyConfig:
    """The run's ``policy_config.json`` (``training_family.training_policy_config``: inputs, embodiment, Spatial
    Forcing, data, base) as pi0's: its family and flow-matching head, frames resized with padding (no center crop), the
    training augmentation pi0's (:func:`augmentation_record`)."""
    return dataclasses.replace(
        config,
        model_family=PI0_FAMILY,
        action_head=PI0_ACTION_HEAD,
        image=ImagePreprocessingConfig(center_crop=False),
        training_augmentation=augmentation_record(cfg.image_aug, isinstance(cfg, AlignFinetuneConfig)),
    )


def pi0_collator(cfg: FinetuneConfig, config: Pi0Config, rank: int, train: bool, skip_samples: int) -> Pi0Collator:
    """The collator of pi0's batches: for training with ``--image_aug True``, openpi's augmentation (SF-pi0's,
    colour only, with Spatial Forcing), each batch's draw keyed by the run's seed, ``rank`` and the batch's index
    (``skip_samples`` samples already consumed: a resumed run); the data pipeline's augmentation stays off."""
    augmentation = None
    if cfg.image_aug and train:
        augmentation = Pi0Augmentation.for_run(config, cfg.seed, rank, isinstance(cfg, AlignFinetuneConfig))
    return Pi0Collator(augmentation, next_batch=skip_samples // cfg.batch_size)


def build_pi0(cfg: FinetuneConfig, device: torch.device) -> tuple[nn.Module, Pi0Processor]:
    """The base pi0 of ``--vla_path`` (checked by :func:`check_pi0_flags`) on ``device``, ready to train in full or
    with LoRA adapters, and its processor."""
    model, _ = load_pi0_folder(cfg.vla_path)
    processor = Pi0Processor.from_folder(cfg.vla_path, model.config)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing(include_vision=cfg.gradient_checkpointing_vision)
    if cfg.use_lora:
        model = apply_pi0_lora(model, cfg.lora_rank, cfg.lora_dropout, cfg.lora_fp32)
    freeze_unreached_parameters(model, cfg.vla_layers_align if isinstance(cfg, AlignFinetuneConfig) else None)
    return model.to(device), processor


def apply_pi0_lora(model: Pi0Model, rank: int, dropout: float, fp32_adapters: bool = False) -> PeftModel:
    """LoRA adapters of ``rank`` on the attention and MLP projections of both Gemma towers (openpi's
    ``gemma_2b_lora`` and ``gemma_300m_lora`` adapt the same matrices); the state projection and the action heads
    trained in full; SigLIP, the embeddings and the norms frozen."""
    return apply_lora(
        model,
        rank,
        dropout,
        fp32_adapters,
        target_modules=PI0_LORA_TARGET_MODULES,
        modules_to_save=PI0_HEADS,
    )


def freeze_unreached_parameters(model: nn.Module, tap_layer: int | None) -> None:
    """Freeze what no training loss reaches, so that DDP sees no unused parameter (training is unchanged: they never
    get a gradient): the expert's LM head (pi0 embeds actions itself) and, past the keys and values the actions attend
    to, the LM's last layer (its output projection, post-attention norm and MLP) and its final norm, which Spatial
    Forcing reaches only when it taps the last hidden state (``tap_layer`` -1 or the depth)."""
    towers = model.paligemma_with_expert
    towers.gemma_expert.lm_head.requires_grad_(False)
    last = towers.language_model.layers[-1]
    for module in (last.self_attn.o_proj, last.post_attention_layernorm, last.mlp):
        module.requires_grad_(False)
    if tap_layer not in (-1, model.config.depth):
        towers.language_model.norm.requires_grad_(False)


def pi0_token_counts(model: nn.Module) -> tuple[int, int]:
    """(The LM width the aligner projects from, the image tokens of all cameras)."""
    config = ckpt.unwrap(model).config
    return config.vlm_width, config.num_cameras * config.num_image_tokens


def pi0_losses(cfg: FinetuneConfig, model, batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """One forward pass of pi0 (``model``: :meth:`Pi0Training.build`'s): ``loss``, ``action_loss`` and, with Spatial
    Forcing, ``align_loss``. The teacher sees the letterboxed frames before colour augmentation, with white padding
    (VGGT at ``--vggt_image_size``, the rgb control at pi0's image size) or, for ``--teacher geometry``, the point
    maps placed as the frames are (``camera_points``)."""
    observation = observation_from_batch(batch, device)
    actions = batch["actions"].to(device)
    if model.aligner is None:
        action_loss = model.vla(observation, actions).loss
        return {"action_loss": action_loss, "loss": action_loss}
    letterbox = batch["letterbox_masks"].to(device)
    image_size = cfg.vggt_image_size if cfg.teacher == "vggt" else observation.images.shape[-1]
    camera_points = batch.get("camera_points")
    before_colour = batch.get(IMAGES_BEFORE_COLOUR)  # --image_aug True: the images before colour augmentation
    teacher_view = observation.images if before_colour is None else before_colour.to(device)
    teacher = model.teacher(
        pi0_teacher_images(teacher_view, letterbox, image_size),
        None if camera_points is None else camera_points.to(device),
    )
    losses = pi0_spatial_forcing_loss(model.vla, model.aligner, teacher, observation, actions, letterbox)
    return {"action_loss": losses.action_loss, "align_loss": losses.align_loss, "loss": losses.loss}


def save_pi0_model(model: nn.Module, folder: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """The trained pi0's ``config.json`` and ``model.safetensors`` (``state_dict``: the gathered full state of
    ``model``); a LoRA run's adapters merged in, so that the folder loads as any pi0 (the adapter itself is saved
    beside it, for ``--resume``)."""
    model = ckpt.unwrap(model)
    peft_config = getattr(model, "peft_config", None)
    if peft_config is not None:
        adapter = peft_config[ADAPTER_NAME]
        state_dict = merged_lora_state_dict(state_dict, adapter.lora_alpha / adapter.r)
    save_pi0_weights(ckpt.unwrap_peft(model), folder, state_dict)


def restore_pi0_weights(model: nn.Module, folder: Path) -> None:
    """``--resume`` of a full fine-tune: the checkpoint's pi0 weights (``save_pi0_model``'s file, the tied embedding
    filled from ``lm_head``) into the model being trained, replicated or sharded."""
    state = ckpt.read_saved_weights(folder)
    state[EMBED_KEY] = state[LM_HEAD_KEY]
    load_full_state_dict(model, state, strict=True)


class Pi0Training:
    """pi0 as the fine-tuning loop trains it: the base trained in full or with LoRA (its state projection and action
    heads are inside it, so no separate heads), with the aligner and the frozen teacher of Spatial Forcing."""

    family_name = PI0_FAMILY

    def check_base_model(self, cfg: FinetuneConfig, platform: PlatformConstants) -> int:
        return check_pi0_flags(cfg, platform).depth

    def build(self, cfg: FinetuneConfig, platform: PlatformConstants, device: torch.device) -> TrainingModel:
        vla, processor = build_pi0(cfg, device)
        llm_dim, num_patches = pi0_token_counts(vla)
        policy_config = as_pi0_policy_config(training_policy_config(cfg, platform), cfg)
        # pi0_losses passes the teacher its letterboxed frames (no conversion of pixel values)
        aligner, teacher = build_alignment(
            cfg, policy_config, llm_dim, device, image_size=processor.config.image_size, prepare_images=None
        )
        return TrainingModel(vla, {}, processor, num_patches, policy_config, aligner, teacher)

    def batch_format(
        self, cfg: FinetuneConfig, model: TrainingModel, *, rank: int, train: bool, skip_samples: int
    ) -> BatchFormat:
        """pi0's inputs letterboxed to its image size; ``--image_aug`` is openpi's, in the collator
        (:func:`pi0_collator`), never the data pipeline's."""
        return BatchFormat(
            Pi0BatchTransform(model.processor, cfg.num_images_in_input),
            resize_resolution=(model.processor.config.image_size,) * 2,
            collate=pi0_collator(cfg, model.processor.config, rank, train, skip_samples),
            pipeline_image_aug=False,
        )

    def losses(
        self, cfg: FinetuneConfig, model: TrainingModel, batch: dict, device: torch.device
    ) -> dict[str, torch.Tensor]:
        return pi0_losses(cfg, model, batch, device)

    def save_model_files(
        self, cfg: FinetuneConfig, model: TrainingModel, folder: Path, vla_state: dict[str, torch.Tensor]
    ) -> None:
        save_pi0_model(model.vla, folder, vla_state)

    def restore_full_weights(self, model: TrainingModel, folder: Path) -> None:
        restore_pi0_weights(ckpt.unwrap(model.vla), folder)
