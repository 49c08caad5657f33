"""The fine-tuning loop shared by finetune.py (OpenVLA-OFT) and finetune_align.py (+ Spatial Forcing).

Reads top to bottom: validate the config, build the model, heads and data, then loop over optimizer steps; the
Spatial Forcing alignment is one clearly marked addition to the step (``compute_losses``), present only when the
config is an ``AlignFinetuneConfig``.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from prismatic.models.load import load_component_state_dict, save_component_state_dict
from prismatic.training import checkpointing as ckpt
from prismatic.training.config import AlignFinetuneConfig, FinetuneConfig
from prismatic.training.config_checks import validate_config
from prismatic.training.distributed import (
    DistributedContext,
    all_reduce_mean,
    gather_objects,
    init_distributed,
    shutdown_distributed,
)
from prismatic.training.lora import apply_lora, merge_lora
from prismatic.training.metrics import MetricsLogger
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
from prismatic.util.io import atomic_output
from prismatic.vla.constants import PlatformConstants
from prismatic.vla.datasets.statistics import save_dataset_statistics


@dataclass
class Model:
    """Everything trained (and the frozen teacher), as built for one rank."""

    vla: nn.Module  # PeftModel (or the bare VLA without LoRA), DDP-wrapped or FSDP-sharded when distributed
    action_head: nn.Module | None  # L1 regression or diffusion head; None for discrete action tokens
    proprio_projector: nn.Module | None
    noisy_action_projector: nn.Module | None
    aligner: nn.Module | None  # SpatialForcingAligner; its .projector is wrapped like the VLA when distributed
    teacher: nn.Module | None  # VGGTTeacher (frozen)
    processor: object
    num_patches: int  # visual tokens of all cameras

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


def build_model(cfg: FinetuneConfig, platform: PlatformConstants, ctx: DistributedContext) -> Model:
    """Loads the base VLA (+ LoRA), creates the heads, the aligner and the frozen teacher, on this rank's device."""
    from transformers import AutoModelForVision2Seq, AutoProcessor

    from prismatic.models import (
        DiffusionActionHead,
        L1RegressionActionHead,
        NoisyActionProjector,
        ProprioProjector,
    )

    dtype = torch.bfloat16 if ctx.device.type == "cuda" else torch.float32
    processor = AutoProcessor.from_pretrained(cfg.vla_path)
    vla = AutoModelForVision2Seq.from_pretrained(
        cfg.vla_path, dtype=dtype, attn_implementation=cfg.attn_implementation, low_cpu_mem_usage=True
    )
    vla.set_num_images_in_input(cfg.num_images_in_input)
    vla.config.set_platform(platform)
    num_patches = vla.vision_backbone.get_num_patches() * vla.vision_backbone.get_num_images_in_input()
    llm_dim = vla.config.text_config.hidden_size
    vla = vla.to(ctx.device)
    if cfg.use_lora:
        vla = apply_lora(vla, cfg.lora_rank, cfg.lora_dropout)
    if cfg.use_film:  # as upstream, after LoRA: the new FiLM layers are trained in full, without adapters
        ckpt.unwrap_peft(vla).enable_film()
        vla.to(ctx.device)
    prepare_for_training(vla, cfg)

    action_head = None  # neither head: OpenVLA's discrete action tokens
    if cfg.use_diffusion:
        action_head = DiffusionActionHead(
            llm_dim, llm_dim, platform.action_dim, platform.num_actions_chunk, cfg.num_diffusion_steps_train
        )
    elif cfg.use_l1_regression:
        action_head = L1RegressionActionHead(llm_dim, llm_dim, platform.action_dim, platform.num_actions_chunk)
    if action_head is not None:  # upstream keeps the head in bf16 on GPU, the projectors in fp32
        action_head = distribute(action_head.to(ctx.device, dtype), ctx, cfg.strategy)
    proprio_projector = ProprioProjector(llm_dim, platform.proprio_dim).to(ctx.device) if cfg.use_proprio else None
    noisy_action_projector = NoisyActionProjector(llm_dim).to(ctx.device) if cfg.use_diffusion else None

    aligner = teacher = None
    if isinstance(cfg, AlignFinetuneConfig):
        aligner, teacher = build_alignment(cfg, llm_dim, ctx.device)
        aligner.projector = distribute(aligner.projector, ctx, cfg.strategy)

    return Model(
        vla=distribute(vla, ctx, cfg.strategy),
        action_head=action_head,
        proprio_projector=distribute(proprio_projector, ctx, cfg.strategy),
        noisy_action_projector=distribute(noisy_action_projector, ctx, cfg.strategy),
        aligner=aligner,
        teacher=teacher,
        processor=processor,
        num_patches=num_patches,
    )


def build_alignment(cfg: AlignFinetuneConfig, llm_dim: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """Spatial Forcing: the trainable aligner (AlignProjector inside) and the frozen VGGT teacher."""
    from prismatic.spatial_forcing import AlignConfig, SpatialForcingAligner, VGGTTeacher
    from vggt.models.vggt import VGGT
    from vggt.utils.load_fn import vla_pixels_to_vggt_images

    vggt = VGGT.from_checkpoint(cfg.vggt_path).to(device)
    teacher = VGGTTeacher(
        vggt,
        weights_dtype=getattr(torch, cfg.vggt_dtype),
        prepare_images=partial(
            vla_pixels_to_vggt_images, num_images=cfg.num_images_in_input, target_size=cfg.vggt_image_size
        ),
        layer=cfg.vggt_layers_align,
    )
    align_config = AlignConfig(
        vla_dim=llm_dim,
        vggt_dim=vggt.embed_dim,
        use_vlm_norm=cfg.use_vlm_norm,
        use_vggt_pe=cfg.use_vggt_pe,
        pooling_func=cfg.pooling_func,
        align_loss_type=cfg.align_loss_type,
        vla_layers_align=cfg.vla_layers_align,
        vggt_layers_align=cfg.vggt_layers_align,
        gain_feat_1move=cfg.gain_feat_1move,
        align_loss_coeff=cfg.align_loss_coeff,
        vggt_patch_size=vggt.patch_size,
    )
    return SpatialForcingAligner(align_config).to(device), teacher


def build_dataloader(cfg: FinetuneConfig, model: Model, ctx: DistributedContext, train: bool, skip_samples: int = 0):
    """The RLDS stream of this rank, collated into upstream's batches; returns (loader, dataset).

    Training data is sharded over the ranks; the validation split is not (every rank reads all of it, so no rank
    can run out of batches and the ranks need not synchronise during validation).
    """
    from prismatic.vla.action_tokenizer import ActionTokenizer
    from prismatic.vla.datasets import PaddedCollatorForActionPrediction, RLDSBatchTransform, RLDSConfig, RLDSDataset

    tokenizer = model.processor.tokenizer
    batch_transform = RLDSBatchTransform(
        ActionTokenizer(tokenizer),
        tokenizer,
        image_transform=model.processor.image_processor.apply_transform,
        use_wrist_image=cfg.num_images_in_input > 1,
        use_proprio=cfg.use_proprio,
    )
    dataset = RLDSDataset(
        RLDSConfig(
            data_root_dir=cfg.data_root_dir,
            data_mix=cfg.dataset_name,
            resize_resolution=tuple(model.processor.image_processor.input_sizes[0][1:]),
            shuffle_buffer_size=cfg.shuffle_buffer_size,
            train=train,
            image_aug=cfg.image_aug and train,
            num_images_in_input=cfg.num_images_in_input,
            use_proprio=cfg.use_proprio,
            seed=cfg.seed,
            skip_samples=skip_samples,
            rank=ctx.rank if train else 0,
            world_size=ctx.world_size if train else 1,
        ),
        batch_transform,
    )
    collator = PaddedCollatorForActionPrediction(
        tokenizer.model_max_length, tokenizer.pad_token_id, padding_side="right"
    )
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
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    labels = batch["labels"].to(device)
    actions = batch["actions"].to(device)  # [B, chunk, action_dim], normalised
    proprio = batch["proprio"].to(device) if cfg.use_proprio else None
    diffusion = None
    if cfg.use_diffusion:
        diffusion = ckpt.unwrap(model.action_head).sample_noisy_actions(actions)

    with autocast:
        output = model.vla(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            pixel_values=batch["pixel_values"].to(device),
            labels=labels,
            output_hidden_states=True,
            proprio=proprio,
            proprio_projector=model.proprio_projector,
            noisy_actions=diffusion["noisy_actions"] if diffusion else None,
            noisy_action_projector=model.noisy_action_projector,
            diffusion_timestep_embeddings=diffusion["diffusion_timestep_embeddings"] if diffusion else None,
            use_film=cfg.use_film,
            return_lm_logits=not (cfg.use_l1_regression or cfg.use_diffusion),
        )
        num_prefix_tokens = output.projector_features.shape[1]
        predicted = None
        if cfg.use_diffusion:
            predicted_noise = model.action_head(_action_head_input(model, output, labels, num_prefix_tokens))
            action_loss = nn.functional.mse_loss(predicted_noise.float(), diffusion["noise"].float())
        elif cfg.use_l1_regression:
            predicted = model.action_head(_action_head_input(model, output, labels, num_prefix_tokens)).float()
            action_loss = nn.functional.l1_loss(predicted, actions.float())  # predicted: [B, chunk, action_dim]
        else:  # OpenVLA's discrete action tokens: next-token prediction on the action ids
            action_loss = output.loss

    losses = {"action_loss": action_loss}
    if predicted is not None:
        losses["curr_action_l1_loss"] = nn.functional.l1_loss(predicted[:, 0], actions[:, 0].float()).detach()
        losses["next_actions_l1_loss"] = nn.functional.l1_loss(predicted[:, 1:], actions[:, 1:].float()).detach()
    loss = action_loss

    # --- Spatial Forcing: align the visual tokens of layer vla_layers_align with frozen-VGGT features ---
    if model.aligner is not None:
        visual_hidden = model.aligner.select_vision_tokens(
            output.hidden_states, num_prefix_tokens=1, num_vision_tokens=model.num_patches
        )  # [B, num_patches, D]; position 0 is BOS
        teacher_features = model.teacher(batch["pixel_values"].to(device))
        with autocast:
            align_loss = model.aligner(visual_hidden, *teacher_features)
        losses["align_loss"] = align_loss
        loss = loss + cfg.align_loss_coeff * align_loss
    losses["loss"] = loss
    return losses


def train(cfg: FinetuneConfig) -> Path:
    """Runs fine-tuning to ``cfg.max_steps`` optimizer steps; returns the last checkpoint folder."""
    platform = validate_config(cfg)
    check_strategy_flags(cfg)
    ctx = init_distributed()
    try:
        return _train(cfg, platform, ctx)
    finally:
        shutdown_distributed()


def _train(cfg: FinetuneConfig, platform: PlatformConstants, ctx: DistributedContext) -> Path:
    seed_everything(cfg.seed + ctx.rank)
    run_dir = Path(cfg.run_root_dir) / run_id(cfg)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(cfg, platform, ctx)
    trainable = [p for module in model.trainable_modules() for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate)
    scheduler = build_scheduler(optimizer, cfg)

    start_step, resume_rng = 0, None
    if cfg.resume:
        start_step, resume_rng = load_training_state(cfg, run_dir, model, optimizer, scheduler, ctx)
    samples_per_step = cfg.batch_size * cfg.grad_accumulation_steps
    loader, dataset = build_dataloader(cfg, model, ctx, train=True, skip_samples=start_step * samples_per_step)
    if ctx.is_main:
        save_dataset_statistics(dataset.dataset_statistics, run_dir / "dataset_statistics.json")
    ctx.barrier()
    if resume_rng is not None:
        ckpt.set_rng_state(resume_rng)

    wandb_run = _init_wandb(cfg, run_dir) if (cfg.use_wandb and ctx.is_main) else None
    logger = MetricsLogger(run_dir, ctx.is_main, cfg.wandb_log_freq, start_step, cfg.max_steps, wandb_run)
    for module in model.trainable_modules():
        module.train()

    step, last_checkpoint = start_step, None
    batches = iter(loader)
    while step < cfg.max_steps:
        step_start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        step_losses: dict[str, float] = {}
        for _ in range(cfg.grad_accumulation_steps):
            losses = compute_losses(cfg, model, next(batches), platform, ctx.device)
            (losses["loss"] / cfg.grad_accumulation_steps).backward()
            for name, value in losses.items():
                step_losses[name] = step_losses.get(name, 0.0) + value.item() / cfg.grad_accumulation_steps
        optimizer.step()
        scheduler.step()
        step += 1

        names = sorted(step_losses)  # one all-reduce for all metrics, on the device (nccl needs CUDA tensors)
        means = all_reduce_mean(torch.tensor([step_losses[n] for n in names], device=ctx.device)).tolist()
        metrics = dict(zip(names, means, strict=True))
        step_time = time.perf_counter() - step_start
        metrics.update(
            lr=scheduler.get_last_lr()[0],
            step_time=step_time,
            samples_per_s=samples_per_step * ctx.world_size / step_time,
        )
        logger.update(step, metrics)

        if cfg.use_val_set and step % cfg.val_freq == 0:
            logger.write(step, run_validation(cfg, model, platform, ctx))
        if step % cfg.save_freq == 0 or step == cfg.max_steps:
            last_checkpoint = save_checkpoint(cfg, run_dir, step, model, optimizer, scheduler, dataset, ctx)
    logger.close()
    return last_checkpoint


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


def _component_modules(model: Model) -> dict[str, nn.Module]:
    """Released component-file names -> modules (only those this run trains)."""
    components = {}
    if model.action_head is not None:
        components["action_head"] = model.action_head
    if model.proprio_projector is not None:
        components["proprio_projector"] = model.proprio_projector
    if model.noisy_action_projector is not None:
        components["noisy_action_projector"] = model.noisy_action_projector
    if model.aligner is not None:
        components["align_projector"] = model.aligner.projector
    return components


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
    """Writes one checkpoint folder atomically (rank 0) after gathering every rank's RNG state."""
    file_step = None if cfg.save_latest_checkpoint_only else step
    rng_states = gather_objects(ckpt.rng_state())
    final_dir = ckpt.checkpoint_dir(run_dir, file_step)
    components = _component_modules(model)
    states = gather_full_states({"vla": model.vla, **components}, optimizer)  # collectives under FSDP
    if ctx.is_main:
        writer = ckpt.CheckpointWriter(final_dir)
        folder = writer.tmp_dir
        vla = ckpt.unwrap(model.vla)
        model.processor.save_pretrained(folder)
        save_dataset_statistics(dataset.dataset_statistics, folder / "dataset_statistics.json")
        if cfg.use_lora:
            vla.save_pretrained(folder / "lora_adapter", state_dict=states.model["vla"])
        for name, module in components.items():
            save_component_state_dict(
                ckpt.unwrap(module), ckpt.component_path(folder, name, file_step), state_dict=states.model[name]
            )
        if cfg.use_film:
            torch.save(vla.vision_backbone.state_dict(), ckpt.component_path(folder, "vision_backbone", file_step))
        if not cfg.use_lora:
            vla.save_pretrained(folder, state_dict=states.model["vla"])
        elif cfg.merge_lora_during_training:
            merged = merge_lora(cfg.vla_path, folder / "lora_adapter", next(vla.parameters()).dtype)
            merged.save_pretrained(folder)
            del merged
        torch.save(
            {
                "step": step,
                "optimizer": states.optimizer,
                "scheduler": scheduler.state_dict(),
                "rng_states": rng_states,
                "samples_per_rank": step * cfg.batch_size * cfg.grad_accumulation_steps,
                "world_size": ctx.world_size,
            },
            ckpt.component_path(folder, ckpt.TRAINING_STATE, file_step),
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
    """Restores weights, optimizer, scheduler from the checkpoint to resume; returns (step, this rank's RNG)."""
    from safetensors.torch import load_file

    folder, file_step = ckpt.find_resume_checkpoint(run_dir, cfg.resume_step)
    state_path = ckpt.component_path(folder, ckpt.TRAINING_STATE, file_step)
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    if state["world_size"] != ctx.world_size:
        raise ValueError(
            f"--resume: {folder} was trained on {state['world_size']} processes, this run has {ctx.world_size}; "
            f"exact resumption needs the same number."
        )
    vla = ckpt.unwrap(model.vla)
    if cfg.use_lora:
        adapter = load_file(str(folder / "lora_adapter" / "adapter_model.safetensors"), device=str(ctx.device))
        load_adapter(vla, adapter)
    components = _component_modules(model)
    for name, module in components.items():
        state_dict = load_component_state_dict(ckpt.component_path(folder, name, file_step))
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
