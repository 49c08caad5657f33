"""The fine-tuning loop shared by finetune.py (OpenVLA-OFT) and finetune_align.py (+ Spatial Forcing).

Reads top to bottom: validate the config, build the model, heads and data, then loop over optimizer steps; the
Spatial Forcing alignment is one clearly marked addition to the step (``compute_losses``), present only when the
config is an ``AlignFinetuneConfig``.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from prismatic.models.quantization import quantize_base
from prismatic.policy.base_model_record import base_model_record, write_base_model_record
from prismatic.policy.components import (
    build_heads,
    component_names,
    component_path,
    load_component_state_dict,
    save_components,
)
from prismatic.spatial_forcing.config import AlignConfig
from prismatic.training import checkpointing as ckpt
from prismatic.training.config import AlignFinetuneConfig, FinetuneConfig
from prismatic.training.config_checks import check_quantization_flags, validate_config
from prismatic.training.distributed import (
    DistributedContext,
    all_reduce_mean,
    gather_objects,
    init_distributed,
    shutdown_distributed,
)
from prismatic.training.lora import apply_lora, merge_lora
from prismatic.training.metrics import MetricsLogger
from prismatic.training.pi0_training import (
    PI0_FAMILY,
    as_pi0_policy_config,
    build_pi0,
    pi0_collator,
    pi0_losses,
    pi0_token_counts,
    restore_pi0_weights,
    save_pi0_model,
)
from prismatic.training.run_guard import (
    check_run_folder,
    check_same_statistics,
    content_digests,
    prepare_run_folder,
)
from prismatic.training.schedule import build_scheduler
from prismatic.training.strategy import (
    check_strategy_flags,
    distribute,
    gather_full_states,
    load_adapter,
    load_full_state_dict,
    load_optimizer_state_dict,
    prepare_for_training,
)
from prismatic.util.checkpoint_files import ADAPTER_WEIGHTS_NAME, DATASET_STATISTICS_NAME, LORA_ADAPTER_DIR
from prismatic.util.cli import UserError, user_errors, writing
from prismatic.util.io import atomic_output, file_sha256
from prismatic.vla.constants import PlatformConstants
from prismatic.vla.datasets.statistics import save_dataset_statistics
from prismatic.vla.policy_config import (
    NO_AUGMENTATION,
    OFT_AUGMENTATION,
    EmbodimentConfig,
    ImagePreprocessingConfig,
    PolicyConfig,
    SpatialForcingRecord,
    apply_training_flags,
    write_policy_config,
)


@dataclass
class Model:
    """Everything trained (and the frozen teacher), as built for one rank."""

    vla: nn.Module  # PeftModel (or the bare VLA without LoRA), DDP-wrapped or FSDP-sharded when distributed
    action_head: nn.Module | None  # L1 regression or diffusion head; None for discrete action tokens
    proprio_projector: nn.Module | None
    noisy_action_projector: nn.Module | None
    aligner: nn.Module | None  # SpatialForcingAligner; its .projector is wrapped like the VLA when distributed
    teacher: nn.Module | None  # VGGTTeacher, GeometryTeacher or RGBTeacher (frozen)
    processor: object
    num_patches: int  # visual tokens of all cameras
    policy_config: PolicyConfig  # what is saved as policy_config.json; selects the components below

    def components(self) -> dict[str, nn.Module]:
        """The policy's component modules (``prismatic.policy.components``; DDP unwrapped), by file name."""
        available = {
            "action_head": self.action_head,
            "proprio_projector": self.proprio_projector,
            "noisy_action_projector": self.noisy_action_projector,
            "vision_backbone": ckpt.unwrap(self.vla).vision_backbone if self.policy_config.use_film else None,
            "align_projector": self.aligner.projector if self.aligner is not None else None,
        }
        return {name: ckpt.unwrap(available[name]) for name in component_names(self.policy_config)}

    def trainable_modules(self) -> list[nn.Module]:
        extras = (self.action_head, self.proprio_projector, self.noisy_action_projector)
        modules = [self.vla, *[m for m in extras if m is not None]]
        if self.aligner is not None:
            modules.append(self.aligner.projector)
        return modules


def run_id(cfg: FinetuneConfig) -> str:
    """Upstream's run id: ``{vla}+{dataset}+b{batch}+lr-{lr}[+lora-r{r}+dropout-{p}][--image_aug][--{note}]``."""
    if cfg.run_id_override:
        return cfg.run_id_override
    name = f"{Path(cfg.vla_path).name}+{cfg.dataset_name}+b{cfg.batch_size * cfg.grad_accumulation_steps}"
    name += f"+lr-{cfg.learning_rate}"
    if cfg.use_lora:
        name += f"+lora-r{cfg.lora_rank}+dropout-{cfg.lora_dropout}"
    if cfg.image_aug:
        name += "--image_aug"
    if cfg.run_id_note:
        name += f"--{cfg.run_id_note}"
    return name


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def spatial_forcing_record(cfg: AlignFinetuneConfig, align_config: AlignConfig) -> SpatialForcingRecord:
    """``policy_config.json``'s Spatial Forcing settings: the aligner's ``align_config`` and the teacher's flags."""
    teacher: dict[str, Any] = {"teacher": cfg.teacher, "vggt_image_size": cfg.vggt_image_size}
    if cfg.teacher == "vggt":  # the teacher file, for tools that load it again
        teacher["vggt_sha256"] = file_sha256(cfg.vggt_path)
    else:
        teacher |= {name: getattr(cfg, name) for name in ("teacher_width", "teacher_patch_size", "teacher_seed")}
    if cfg.teacher == "geometry":
        teacher |= {name: list(getattr(cfg, name)) for name in ("geometry_workspace_min", "geometry_workspace_max")}
    return SpatialForcingRecord(**asdict(align_config), **teacher)


def training_policy_config(cfg: FinetuneConfig, platform: PlatformConstants) -> PolicyConfig:
    """The ``policy_config.json`` of this run's checkpoints: the choices the table of ``prismatic.vla.policy_config``
    takes from the flags, embodiment, data and base (a Spatial Forcing run's alignment settings are added once its
    aligner is built: :func:`spatial_forcing_record`)."""
    config = PolicyConfig(
        unnorm_key=cfg.dataset_name,
        embodiment=EmbodimentConfig.from_platform(platform),
        # Training's random crops (image_aug) are matched at evaluation by the center crop of the same area.
        image=ImagePreprocessingConfig(center_crop=cfg.image_aug),
        training_augmentation=OFT_AUGMENTATION if cfg.image_aug else NO_AUGMENTATION,
        data={"dataset_name": cfg.dataset_name},
        base_model=base_model_record(cfg.vla_path),
    )
    return apply_training_flags(config, vars(cfg))


def build_model(cfg: FinetuneConfig, platform: PlatformConstants, ctx: DistributedContext) -> Model:
    """Loads the base VLA (+ LoRA), creates the heads, the aligner and the frozen teacher, on this rank's device."""
    if cfg.model_family == PI0_FAMILY:
        return build_pi0_training_model(cfg, platform, ctx)
    from transformers import AutoModelForVision2Seq, AutoProcessor

    dtype = torch.bfloat16 if ctx.device.type == "cuda" else torch.float32
    processor = AutoProcessor.from_pretrained(cfg.vla_path)
    vla = AutoModelForVision2Seq.from_pretrained(
        cfg.vla_path, dtype=dtype, attn_implementation=cfg.attn_implementation, low_cpu_mem_usage=True
    )
    vla.set_num_images_in_input(cfg.num_images_in_input)
    vla.config.set_platform(platform)
    num_patches = vla.vision_backbone.get_num_patches() * vla.vision_backbone.get_num_images_in_input()
    llm_dim = vla.config.text_config.hidden_size
    vla = quantize_base(vla, cfg.quantize_base, ctx.device, dtype)  # "none": only moves it to the device
    if cfg.use_lora:
        vla = apply_lora(vla, cfg.lora_rank, cfg.lora_dropout, fp32_adapters=cfg.lora_fp32)
    if cfg.use_film:  # as upstream, after LoRA: the new FiLM layers (fp32) are trained in full, without adapters
        ckpt.unwrap_peft(vla).enable_film()
        vla.to(ctx.device)  # the new FiLM layers
    prepare_for_training(vla, cfg)

    policy_config = training_policy_config(cfg, platform)
    heads = build_heads(policy_config, llm_dim)
    heads = {name: module.to(ctx.device) for name, module in heads.items()}
    if "action_head" in heads:  # upstream keeps the action head in bf16 on GPU, the projectors in fp32
        heads["action_head"] = heads["action_head"].to(dtype)
    heads = {name: distribute(module, ctx, cfg.strategy) for name, module in heads.items()}

    aligner = teacher = None
    if isinstance(cfg, AlignFinetuneConfig):
        aligner, teacher = build_alignment(
            cfg, llm_dim, ctx.device, image_size=processor.image_processor.input_sizes[0][-1]
        )
        aligner.projector = distribute(aligner.projector, ctx, cfg.strategy)
        policy_config.spatial_forcing = spatial_forcing_record(cfg, aligner.config)

    return Model(
        vla=distribute(vla, ctx, cfg.strategy),
        action_head=heads.get("action_head"),
        proprio_projector=heads.get("proprio_projector"),
        noisy_action_projector=heads.get("noisy_action_projector"),
        aligner=aligner,
        teacher=teacher,
        processor=processor,
        num_patches=num_patches,
        policy_config=policy_config,
    )


def build_pi0_training_model(cfg: FinetuneConfig, platform: PlatformConstants, ctx: DistributedContext) -> Model:
    """``--model_family pi0``: the base pi0 trained in full (its state projection and action heads are inside it),
    with the aligner and the frozen teacher of Spatial Forcing."""
    vla, processor = build_pi0(cfg, ctx.device)
    llm_dim, num_patches = pi0_token_counts(vla)
    policy_config = as_pi0_policy_config(training_policy_config(cfg, platform), cfg)
    aligner = teacher = None
    if isinstance(cfg, AlignFinetuneConfig):
        aligner, teacher = build_alignment(cfg, llm_dim, ctx.device, image_size=processor.config.image_size)
        aligner.projector = distribute(aligner.projector, ctx, cfg.strategy)
        policy_config.spatial_forcing = spatial_forcing_record(cfg, aligner.config)
    return Model(
        vla=distribute(vla, ctx, cfg.strategy),
        action_head=None,
        proprio_projector=None,
        noisy_action_projector=None,
        aligner=aligner,
        teacher=teacher,
        processor=processor,
        num_patches=num_patches,
        policy_config=policy_config,
    )


def fixed_teacher(cfg: AlignFinetuneConfig, image_size: int) -> nn.Module:
    """The frozen ``geometry`` or ``rgb`` teacher of ``cfg`` on the CPU (``image_size``: the side of the VLA's
    square input images, which the rgb control reads at their own size in [0, 1])."""
    from prismatic.spatial_forcing import GeometryTeacher, RGBTeacher
    from vggt.utils.load_fn import vla_pixels_to_vggt_images

    if cfg.teacher == "geometry":
        return GeometryTeacher(
            cfg.teacher_width,
            cfg.teacher_patch_size,
            cfg.geometry_workspace_min,
            cfg.geometry_workspace_max,
            cfg.teacher_seed,
        )
    prepare_images = None  # pi0 passes its teacher images
    if cfg.model_family != PI0_FAMILY:
        prepare_images = partial(vla_pixels_to_vggt_images, num_images=cfg.num_images_in_input, target_size=image_size)
    return RGBTeacher(cfg.teacher_width, cfg.teacher_patch_size, prepare_images, cfg.teacher_seed)


def build_alignment(
    cfg: AlignFinetuneConfig, llm_dim: int, device: torch.device, image_size: int
) -> tuple[nn.Module, nn.Module]:
    """Spatial Forcing: the trainable aligner (AlignProjector inside) and the frozen teacher of ``--teacher``
    (``image_size``: the side of the VLA's square input images)."""
    from prismatic.spatial_forcing import SpatialForcingAligner, VGGTTeacher
    from vggt.models.vggt import VGGT
    from vggt.utils.load_fn import vla_pixels_to_vggt_images

    if cfg.teacher != "vggt":
        align_config = cfg.align_config(llm_dim, cfg.teacher_width // 2, cfg.teacher_patch_size)
        return SpatialForcingAligner(align_config).to(device), fixed_teacher(cfg, image_size).to(device)

    vggt = VGGT.from_checkpoint(cfg.vggt_path).to(device)
    prepare_images = partial(
        vla_pixels_to_vggt_images, num_images=cfg.num_images_in_input, target_size=cfg.vggt_image_size
    )
    teacher = VGGTTeacher(
        vggt,
        weights_dtype=getattr(torch, cfg.vggt_dtype),
        prepare_images=None if cfg.model_family == PI0_FAMILY else prepare_images,  # pi0 passes teacher images
        layer=cfg.vggt_layers_align,
    )
    align_config = cfg.align_config(llm_dim, vggt.embed_dim, vggt.patch_size)
    return SpatialForcingAligner(align_config).to(device), teacher


def build_dataloader(cfg: FinetuneConfig, model: Model, ctx: DistributedContext, train: bool, skip_samples: int = 0):
    """The RLDS stream of this rank, collated into upstream's batches; returns (loader, dataset).

    Training data is sharded over the ranks; the validation split is not (every rank reads all of it, so no rank
    can run out of batches and the ranks need not synchronise during validation).
    """
    from prismatic.models.pi0.processing_pi0 import Pi0BatchTransform
    from prismatic.vla.action_tokenizer import ActionTokenizer
    from prismatic.vla.datasets import PaddedCollatorForActionPrediction, RLDSBatchTransform, RLDSConfig, RLDSDataset
    from prismatic.vla.datasets.config import ImageAugConfig
    from prismatic.vla.datasets.lerobot import is_lerobot_dataset
    from prismatic.vla.datasets.lerobot_dataset import LeRobotConfig, LeRobotDataset, mapping_from_flags

    rank, world_size = (ctx.rank, ctx.world_size) if train else (0, 1)
    if cfg.model_family == PI0_FAMILY:  # --image_aug: pi0's own augmentation, in its collator
        batch_transform = Pi0BatchTransform(model.processor, cfg.num_images_in_input)
        resize_resolution = (model.processor.config.image_size,) * 2
        collator = pi0_collator(cfg, model.processor.config, rank, train, skip_samples)
    else:
        tokenizer = model.processor.tokenizer
        batch_transform = RLDSBatchTransform(
            ActionTokenizer(tokenizer),
            tokenizer,
            image_transform=model.processor.image_processor.apply_transform,
            use_wrist_image=cfg.num_images_in_input > 1,
            use_proprio=cfg.use_proprio,
        )
        resize_resolution = tuple(model.processor.image_processor.input_sizes[0][1:])
        collator = PaddedCollatorForActionPrediction(
            tokenizer.model_max_length, tokenizer.pad_token_id, padding_side="right"
        )
    shared = dict(  # the fields both data sources take from the training flags
        resize_resolution=resize_resolution,
        train=train,
        image_aug=cfg.image_aug and train and cfg.model_family != PI0_FAMILY,
        image_aug_config=ImageAugConfig(crop_independent_draws=cfg.crop_independent_draws),
        val_fraction=cfg.val_set_fraction if cfg.use_val_set else 0.0,
        num_images_in_input=cfg.num_images_in_input,
        use_proprio=cfg.use_proprio,
        seed=cfg.seed,
        with_camera_points=isinstance(cfg, AlignFinetuneConfig) and cfg.needs_camera_points,
        skip_samples=skip_samples,
        rank=rank,
        world_size=world_size,
    )
    if is_lerobot_dataset(cfg.data_root_dir, cfg.dataset_name):
        config = LeRobotConfig(
            data_root_dir=Path(cfg.data_root_dir),
            dataset_name=cfg.dataset_name,
            mapping=mapping_from_flags(cfg),
            num_actions_chunk=cfg.num_actions_chunk,
            **shared,
        )
        dataset = LeRobotDataset(config, batch_transform)
    else:
        config = RLDSConfig(
            data_root_dir=cfg.data_root_dir,
            data_mix=cfg.dataset_name,
            shuffle_buffer_size=cfg.shuffle_buffer_size,
            **shared,
        )
        dataset = RLDSDataset(config, batch_transform)
    return DataLoader(dataset, batch_size=cfg.batch_size, collate_fn=collator, num_workers=0), dataset


def _action_head_input(model: Model, output, labels: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Final-layer hidden states of the action slots [B, chunk * action_dim, D], in the head's dtype."""
    from prismatic.models.action_masks import gather_action_hidden_states

    actions_hidden = gather_action_hidden_states(output.hidden_states[-1], labels, num_prefix_tokens)
    return actions_hidden.to(next(ckpt.unwrap(model.action_head).parameters()).dtype)


def compute_losses(
    cfg: FinetuneConfig, model: Model, batch: dict, platform: PlatformConstants, device: torch.device
) -> dict[str, torch.Tensor]:
    """One forward pass. Returns ``loss`` (to back-propagate) and the logged parts (all scalars)."""
    if cfg.model_family == PI0_FAMILY:
        return pi0_losses(cfg, model, batch, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    labels = batch["labels"].to(device)
    actions = batch["actions"].to(device)  # [B, chunk, action_dim], normalised
    proprio = batch["proprio"].to(device) if cfg.use_proprio else None
    # A continuous head owns its loss (and the extra VLA inputs it trains on); without one, the LM's next-token loss
    # on the action ids is OpenVLA's discrete action tokens.
    head = ckpt.unwrap(model.action_head) if model.action_head is not None else None
    head_inputs = head.training_inputs(actions) if head is not None else {}

    with autocast:
        output = model.vla(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            pixel_values=batch["pixel_values"].to(device),
            labels=labels,
            output_hidden_states=True,
            proprio=proprio,
            proprio_projector=model.proprio_projector,
            noisy_actions=head_inputs.get("noisy_actions"),
            noisy_action_projector=model.noisy_action_projector,
            diffusion_timestep_embeddings=head_inputs.get("diffusion_timestep_embeddings"),
            use_film=cfg.use_film,
            return_lm_logits=head is None,
        )
        num_prefix_tokens = output.projector_features.shape[1]
        if head is None:
            losses = {"action_loss": output.loss}
        else:
            predicted = model.action_head(_action_head_input(model, output, labels, num_prefix_tokens))
            losses = head.loss(predicted, head_inputs["target"])
    loss = losses["action_loss"]

    # --- Spatial Forcing: align the visual tokens of layer vla_layers_align with frozen-VGGT features ---
    if model.aligner is not None:
        visual_hidden = model.aligner.select_vision_tokens(
            output.hidden_states, num_prefix_tokens=1, num_vision_tokens=model.num_patches
        )  # [B, num_patches, D]; position 0 is BOS
        camera_points = batch.get("camera_points")  # [B, S, H, W, 3] with --teacher geometry
        teacher_features = model.teacher(
            batch["pixel_values"].to(device), None if camera_points is None else camera_points.to(device)
        )
        with autocast:
            align_loss = model.aligner(visual_hidden, *teacher_features)
        losses["align_loss"] = align_loss
        loss = loss + cfg.align_loss_coeff * align_loss
    losses["loss"] = loss
    return losses


def train(cfg: FinetuneConfig) -> Path:
    """Runs fine-tuning to ``cfg.max_steps`` optimizer steps; returns the last checkpoint folder."""
    with user_errors():
        platform = validate_config(cfg)
    run_dir = Path(cfg.run_root_dir) / run_id(cfg)
    with user_errors():
        content = content_digests(cfg)
    resume_changes = check_run_folder(cfg, run_dir, content)
    check_strategy_flags(cfg)
    check_quantization_flags(cfg)
    ctx = init_distributed()
    try:
        return _train(cfg, platform, ctx, run_dir, resume_changes, content)
    finally:
        shutdown_distributed()


def _train(
    cfg: FinetuneConfig,
    platform: PlatformConstants,
    ctx: DistributedContext,
    run_dir: Path,
    resume_changes: list[str],
    content: dict[str, str],
) -> Path | None:
    """Upstream's step accounting: update k (0-based) is logged as step k, the checkpoint of step k (k > 0,
    k % save_freq == 0) holds k + 1 updates, and training stops after update ``max_steps`` (max_steps + 1 updates;
    ``--max_steps 150005 --save_freq 10000`` ends with the step-150000 checkpoint, holding 150,001 updates)."""
    seed_everything(cfg.seed + ctx.rank)
    model = build_model(cfg, platform, ctx)
    trainable = [p for module in model.trainable_modules() for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate)
    scheduler = build_scheduler(optimizer, cfg)

    start_update, resume_rng = 0, None
    if cfg.resume:
        saved_step, resume_rng = load_training_state(cfg, run_dir, model, optimizer, scheduler, ctx)
        start_update = saved_step + 1
        if ctx.is_main:
            print(
                f"--resume: run {run_dir.name!r} continues from its checkpoint of step {saved_step}: training steps "
                f"{start_update}..{cfg.max_steps}",
                flush=True,
            )
    samples_per_step = cfg.batch_size * cfg.grad_accumulation_steps
    loader, dataset = build_dataloader(cfg, model, ctx, train=True, skip_samples=start_update * samples_per_step)
    if cfg.resume:
        check_same_statistics(run_dir, dataset.dataset_statistics)
    if ctx.is_main:
        prepare_run_folder(cfg, run_dir, resume_changes, content)
        save_dataset_statistics(dataset.dataset_statistics, run_dir / DATASET_STATISTICS_NAME)
    # The checkpoint describes the data it was trained on: embodiment (dims, cameras, gripper) and source.
    episode_counts = dataset.episode_counts()
    model.policy_config.embodiment = dataset.embodiment()
    model.policy_config.data = {**dataset.policy_data(), "episodes": episode_counts}
    if ctx.is_main:
        for name, counts in episode_counts.items():
            print(f"{name}: {counts['train']} training episodes, {counts['val']} validation episodes", flush=True)
    if cfg.dataset_name not in dataset.dataset_statistics:  # a mixture: evaluation picks the suite's statistics
        model.policy_config.unnorm_key = ""
    ctx.barrier()
    batches = iter(loader)  # draws the loader's base seed: before the RNG restore, as in the uninterrupted run
    if resume_rng is not None:
        ckpt.set_rng_state(resume_rng)

    wandb_run = _init_wandb(cfg, run_dir) if (cfg.use_wandb and ctx.is_main) else None
    logger = MetricsLogger(run_dir, ctx.is_main, cfg.wandb_log_freq, start_update, cfg.max_steps + 1, wandb_run)
    for module in model.trainable_modules():
        module.train()

    last_checkpoint = None
    for step in range(start_update, cfg.max_steps + 1):  # step = index of the optimizer update (upstream's log_step)
        step_start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        learning_rate = optimizer.param_groups[0]["lr"]  # the rate of this update
        step_losses: dict[str, float] = {}
        first_bad_batch = None
        for micro_batch in range(cfg.grad_accumulation_steps):
            losses = compute_losses(cfg, model, next(batches), platform, ctx.device)
            (losses["loss"] / cfg.grad_accumulation_steps).backward()
            values = {name: value.item() for name, value in losses.items()}
            if first_bad_batch is None and not all(math.isfinite(value) for value in values.values()):
                first = step * samples_per_step + micro_batch * cfg.batch_size
                last = first + cfg.batch_size - 1
                first_bad_batch = f"micro-batch {micro_batch} (samples {first}..{last} of rank {ctx.rank}'s stream)"
            for name, value in values.items():
                step_losses[name] = step_losses.get(name, 0.0) + value / cfg.grad_accumulation_steps

        names = sorted(step_losses)  # one all-reduce for all metrics, on the device (nccl needs CUDA tensors)
        means = all_reduce_mean(torch.tensor([step_losses[n] for n in names], device=ctx.device)).tolist()
        metrics = dict(zip(names, means, strict=True))
        check_finite_losses(step, metrics, first_bad_batch)  # every rank sees the same means, so all stop
        optimizer.step()
        scheduler.step()
        step_time = time.perf_counter() - step_start
        metrics.update(
            lr=learning_rate,
            step_time=step_time,
            samples_per_s=samples_per_step * ctx.world_size / step_time,
        )
        logger.update(step, metrics)

        if step > 0 and step % cfg.save_freq == 0:
            with writing(f"the checkpoint of step {step} in {run_dir.parent}"):
                last_checkpoint = save_checkpoint(cfg, run_dir, step, model, optimizer, scheduler, dataset, ctx)
            if ctx.is_main:
                print(f"step {step}: checkpoint saved to {last_checkpoint}", flush=True)
        if cfg.use_val_set and step > 0 and step % cfg.val_freq == 0:
            logger.write(step, run_validation(cfg, model, platform, ctx))
    logger.close()
    if ctx.is_main:
        print(_final_message(cfg, run_dir, last_checkpoint), flush=True)
    return last_checkpoint


def check_finite_losses(step: int, losses: dict[str, float], first_bad_batch: str | None) -> None:
    """Stops training at a NaN or infinite loss, before the update it would poison, naming the step and the batch
    (``first_bad_batch``: this rank's first such batch; None when another rank's loss was the one)."""
    bad = {name: value for name, value in losses.items() if not math.isfinite(value)}
    if bad:
        raise UserError(
            f"step {step}: non-finite loss {bad} in {first_bad_batch or 'a batch of another rank'}: expected finite "
            "losses; training stopped before this update (the last checkpoint is intact): check that batch's data, "
            "or lower --learning_rate"
        )


def _final_message(cfg: FinetuneConfig, run_dir: Path, last_checkpoint: Path | None) -> str:
    """Where the run's results are: the checkpoint folder to merge, evaluate or serve, and the run folder's metrics."""
    if last_checkpoint is None:
        return (
            f"Training finished without a checkpoint (--max_steps {cfg.max_steps} < --save_freq {cfg.save_freq}); "
            f"metrics are in {run_dir}"
        )
    return (
        f"Training finished. Checkpoint to merge, evaluate or serve: {last_checkpoint} "
        f"(metrics and logs: {run_dir / 'metrics.jsonl'})"
    )


@torch.no_grad()
def run_validation(cfg: FinetuneConfig, model: Model, platform: PlatformConstants, ctx: DistributedContext) -> dict:
    """Mean losses on the val split, within ``val_time_limit`` seconds and ``val_batches`` batches (rank 0's are
    logged; the ranks do not synchronise here)."""
    loader, _ = build_dataloader(cfg, model, ctx, train=False)
    for module in model.trainable_modules():
        module.eval()
    totals: dict[str, float] = {}
    num_batches, deadline = 0, time.monotonic() + cfg.val_time_limit
    for batch in loader:
        for name, value in compute_losses(cfg, model, batch, platform, ctx.device).items():
            totals[name] = totals.get(name, 0.0) + value.item()
        num_batches += 1
        if num_batches >= cfg.val_batches or time.monotonic() > deadline:
            break
    for module in model.trainable_modules():
        module.train()
    if num_batches == 0:
        raise RuntimeError(f"--use_val_set: the val split of {cfg.dataset_name!r} yielded no batch.")
    return {f"val_{name}": value / num_batches for name, value in totals.items()}


def _init_wandb(cfg: FinetuneConfig, run_dir: Path):
    import wandb

    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    return wandb.init(
        entity=cfg.wandb_entity, project=cfg.wandb_project, name=run_dir.name, dir=str(run_dir), mode=mode
    )


def save_checkpoint(
    cfg: FinetuneConfig,
    run_dir: Path,
    step: int,
    model: Model,
    optimizer: torch.optim.Optimizer,
    scheduler,
    dataset,
    ctx: DistributedContext,
) -> Path:
    """Writes the checkpoint of step ``step`` (``step + 1`` updates) atomically (rank 0) after gathering every
    rank's RNG state: ``{run_dir}--{step}_chkpt/``, or the run folder itself with ``save_latest_checkpoint_only``."""
    file_step = None if cfg.save_latest_checkpoint_only else step
    rng_states = gather_objects(ckpt.rng_state())
    final_dir = ckpt.checkpoint_dir(run_dir, file_step)
    components = model.components()
    states = gather_full_states({"vla": model.vla, **components}, optimizer)  # collectives under FSDP
    if ctx.is_main:
        writer = ckpt.CheckpointWriter(final_dir, in_place=cfg.save_latest_checkpoint_only)
        folder = writer.tmp_dir
        vla = ckpt.unwrap(model.vla)
        model.processor.save_pretrained(folder)
        save_dataset_statistics(dataset.dataset_statistics, folder / DATASET_STATISTICS_NAME)
        write_policy_config(folder, model.policy_config)
        write_base_model_record(folder, model.policy_config.base_model)
        if cfg.use_lora:
            vla.save_pretrained(folder / LORA_ADAPTER_DIR, state_dict=states.model["vla"])
        save_components(folder, components, file_step, state_dicts=states.model)
        if cfg.model_family == PI0_FAMILY:
            save_pi0_model(vla, folder, states.model["vla"])
        elif not cfg.use_lora:
            vla.save_pretrained(folder, state_dict=states.model["vla"])
        elif cfg.merge_lora_during_training:
            merged = merge_lora(cfg.vla_path, folder / LORA_ADAPTER_DIR, next(ckpt.unwrap_peft(vla).parameters()).dtype)
            merged.save_pretrained(folder)
            del merged
        torch.save(
            {
                "step": step,
                "optimizer": states.optimizer,
                "scheduler": scheduler.state_dict(),
                "rng_states": rng_states,
                "samples_per_rank": (step + 1) * cfg.batch_size * cfg.grad_accumulation_steps,
                "world_size": ctx.world_size,
            },
            component_path(folder, ckpt.TRAINING_STATE, file_step),
        )
        writer.commit()
    ctx.barrier()
    return final_dir


def load_training_state(
    cfg: FinetuneConfig,
    run_dir: Path,
    model: Model,
    optimizer: torch.optim.Optimizer,
    scheduler,
    ctx: DistributedContext,
) -> tuple[int, dict]:
    """Restores the trained weights (the LoRA adapter, or the whole VLA of a full fine-tune), every component (FiLM
    backbone included), optimizer and scheduler from the checkpoint to resume; returns (its step, this rank's RNG
    state)."""
    from safetensors.torch import load_file

    folder, file_step = ckpt.find_resume_checkpoint(run_dir, cfg.resume_step)
    state = torch.load(component_path(folder, ckpt.TRAINING_STATE, file_step), map_location="cpu", weights_only=True)
    if state["world_size"] != ctx.world_size:
        raise ValueError(
            f"--resume: {folder} was trained on {state['world_size']} processes, this run has {ctx.world_size}; "
            f"exact resumption needs the same number."
        )
    vla = ckpt.unwrap(model.vla)
    if cfg.use_lora:
        adapter = load_file(str(folder / LORA_ADAPTER_DIR / ADAPTER_WEIGHTS_NAME), device=str(ctx.device))
        load_adapter(vla, adapter)
    elif cfg.model_family == PI0_FAMILY:
        restore_pi0_weights(vla, folder)
    else:  # a full fine-tune: the whole VLA as saved_pretrained wrote it
        load_full_state_dict(model.vla, ckpt.read_saved_weights(folder), strict=True)
    components = model.components()
    for name, module in components.items():
        state_dict = load_component_state_dict(component_path(folder, name, file_step))
        load_full_state_dict(module, state_dict, strict=True)
    load_optimizer_state_dict({"vla": model.vla, **components}, optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if ctx.is_main:
        _truncate_metrics(run_dir, state["step"])
    return state["step"], state["rng_states"][ctx.rank]


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """Drops metrics logged after ``step`` by the interrupted run, so the resumed run continues the file cleanly."""
    from prismatic.training.metrics import read_metrics

    if not (run_dir / "metrics.jsonl").exists():
        return
    kept = [m for m in read_metrics(run_dir) if m["step"] <= step]
    with atomic_output(run_dir / "metrics.jsonl") as temporary:
        temporary.write_text("".join(json.dumps(m) + "\n" for m in kept))
