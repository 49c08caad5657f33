"""The fine-tuning loop shared by finetune.py and finetune_align.py (+ Spatial Forcing), for every model family.

Reads top to bottom: validate the config, build the model and data, then loop over optimizer steps. What differs
between families (OpenVLA-OFT, pi0) goes through ``--model_family``'s
:class:`prismatic.training.training_family.TrainingFamily` (registry ``prismatic.training.families``): the base,
heads, aligner and teacher it builds, its batch format, the losses of a batch (heads own their loss; Spatial
Forcing's alignment is added there when the config is an ``AlignFinetuneConfig``) and its model files in a
checkpoint. The loop itself (optimizer, schedule, distribution, data position, checkpoint folder, resume) never
branches on the family or the head.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from prismatic.policy.base_model_record import write_base_model_record
from prismatic.policy.components import component_path, load_component_state_dict, save_components
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
from prismatic.training.families import training_family
from prismatic.training.metrics import MetricsLogger
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
)
from prismatic.training.training_family import TrainingModel
from prismatic.util.checkpoint_files import ADAPTER_WEIGHTS_NAME, DATASET_STATISTICS_NAME, LORA_ADAPTER_DIR
from prismatic.util.cli import UserError, user_errors, writing
from prismatic.util.io import atomic_output
from prismatic.vla.constants import PlatformConstants
from prismatic.vla.datasets.statistics import save_dataset_statistics
from prismatic.vla.policy_config import write_policy_config


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


def build_model(cfg: FinetuneConfig, platform: PlatformConstants, ctx: DistributedContext) -> TrainingModel:
    """The trainable model of ``cfg``'s family (base, heads, aligner, frozen teacher) on this rank's device, the
    trained modules distributed as ``--strategy`` says."""
    model = training_family(cfg.model_family).build(cfg, platform, ctx.device)
    model.heads = {name: distribute(module, ctx, cfg.strategy) for name, module in model.heads.items()}
    if model.aligner is not None:
        model.aligner.projector = distribute(model.aligner.projector, ctx, cfg.strategy)
    model.vla = distribute(model.vla, ctx, cfg.strategy)
    return model


def build_dataloader(
    cfg: FinetuneConfig, model: TrainingModel, ctx: DistributedContext, train: bool, skip_samples: int = 0
):
    """The RLDS stream of this rank, collated into upstream's batches; returns (loader, dataset).

    Training data is sharded over the ranks; the validation split is not (every rank reads all of it, so no rank
    can run out of batches and the ranks need not synchronise during validation).
    """
    from prismatic.vla.datasets import RLDSConfig, RLDSDataset
    from prismatic.vla.datasets.config import ImageAugConfig
    from prismatic.vla.datasets.lerobot import is_lerobot_dataset
    from prismatic.vla.datasets.lerobot_dataset import LeRobotConfig, LeRobotDataset, mapping_from_flags

    rank, world_size = (ctx.rank, ctx.world_size) if train else (0, 1)
    batch_format = training_family(cfg.model_family).batch_format(
        cfg, model, rank=rank, train=train, skip_samples=skip_samples
    )
    shared = dict(  # the fields both data sources take from the training flags
        resize_resolution=batch_format.resize_resolution,
        train=train,
        image_aug=batch_format.pipeline_image_aug,
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
            frame_cache_mb=cfg.lerobot_frame_cache_mb,
            **shared,
        )
        dataset = LeRobotDataset(config, batch_format.transform)
    else:
        config = RLDSConfig(
            data_root_dir=cfg.data_root_dir,
            data_mix=cfg.dataset_name,
            shuffle_buffer_size=cfg.shuffle_buffer_size,
            **shared,
        )
        dataset = RLDSDataset(config, batch_format.transform)
    return DataLoader(dataset, batch_size=cfg.batch_size, collate_fn=batch_format.collate, num_workers=0), dataset


def compute_losses(
    cfg: FinetuneConfig, model: TrainingModel, batch: dict, platform: PlatformConstants, device: torch.device
) -> dict[str, torch.Tensor]:
    """One forward pass by ``cfg``'s family (its heads own their loss). Returns ``loss`` (to back-propagate) and the
    logged parts (all scalars)."""
    return training_family(cfg.model_family).losses(cfg, model, batch, device)


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
def run_validation(
    cfg: FinetuneConfig, model: TrainingModel, platform: PlatformConstants, ctx: DistributedContext
) -> dict:
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
    model: TrainingModel,
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
        training_family(cfg.model_family).save_model_files(cfg, model, folder, states.model["vla"])
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
    model: TrainingModel,
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
    if cfg.use_lora:
        adapter = load_file(str(folder / LORA_ADAPTER_DIR / ADAPTER_WEIGHTS_NAME), device=str(ctx.device))
        load_adapter(ckpt.unwrap(model.vla), adapter)
    else:  # a full fine-tune: the family's model files
        training_family(cfg.model_family).restore_full_weights(model, folder)
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
