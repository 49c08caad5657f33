"""Checks of a fine-tuning config that run before any model is loaded; each error names the flag at fault."""

from __future__ import annotations

import pickle
from pathlib import Path

from prismatic.spatial_forcing.teachers import check_teacher
from prismatic.training.config import QUANTIZATIONS, SCHEDULERS, AlignFinetuneConfig, FinetuneConfig
from prismatic.util.cli import UserError
from prismatic.util.file_checks import check_weights_file, refused_pickle_message
from prismatic.vla.constants import PlatformConstants
from prismatic.vla.datasets.lerobot import is_lerobot_dataset
from prismatic.vla.datasets.lerobot_dataset import lerobot_platform, mapping_from_flags, missing_depth_message
from prismatic.vla.datasets.rlds import check_rlds_files
from vggt.loading import infer_vggt_kwargs, read_state_dict


def _positive(cfg: FinetuneConfig, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}.")


def check_vggt(cfg: AlignFinetuneConfig) -> None:
    """The VGGT file is an intact checkpoint and --vggt_layers_align / --vggt_image_size fit it (read memory-mapped)."""
    check_weights_file(cfg.vggt_path, "--vggt_path")
    try:
        kwargs = infer_vggt_kwargs(read_state_dict(cfg.vggt_path), source=str(cfg.vggt_path))
    except pickle.UnpicklingError as error:
        raise UserError(refused_pickle_message(f"--vggt_path {cfg.vggt_path}", error, "VGGT-1B's model.pt")) from None
    except (ValueError, RuntimeError) as error:
        raise UserError(
            f"--vggt_path {cfg.vggt_path} is not a VGGT checkpoint ({error}): expected VGGT-1B's model.pt"
        ) from None
    depth, patch_size = kwargs["depth"], kwargs["patch_size"]
    if not -depth <= cfg.vggt_layers_align < depth:
        raise UserError(
            f"--vggt_layers_align {cfg.vggt_layers_align} is out of range: {cfg.vggt_path} has {depth} aggregator "
            f"layers: expected {-depth}..{depth - 1}"
        )
    if cfg.vggt_image_size < patch_size or cfg.vggt_image_size % patch_size:
        raise UserError(
            f"--vggt_image_size {cfg.vggt_image_size}: expected a positive multiple of VGGT's patch size {patch_size} "
            "(518 as VGGT)"
        )


def validate_config(cfg: FinetuneConfig) -> PlatformConstants:
    """Validates ``cfg`` against the files it names; returns the platform constants of its dataset."""
    from prismatic.models.attention import check_attn_implementation
    from prismatic.training.families import training_family
    from prismatic.vla.datasets.registry import resolve_data_mix

    family = training_family(cfg.model_family)
    _positive(cfg, "batch_size", "grad_accumulation_steps", "max_steps", "save_freq", "wandb_log_freq")
    _positive(cfg, "shuffle_buffer_size", "num_steps_before_decay")
    if not cfg.learning_rate > 0:
        raise ValueError(f"--learning_rate {cfg.learning_rate}: expected a value > 0")
    if cfg.lerobot_frame_cache_mb < 0:
        raise ValueError(f"--lerobot_frame_cache_mb {cfg.lerobot_frame_cache_mb}: expected a size in MB >= 0")
    if cfg.lr_warmup_steps < 0:
        raise ValueError(f"--lr_warmup_steps {cfg.lr_warmup_steps}: expected a value >= 0")
    if not 0 <= cfg.lora_dropout < 1:
        raise ValueError(f"--lora_dropout {cfg.lora_dropout}: expected a probability in [0, 1)")
    if cfg.resume_step is not None and not cfg.resume:
        raise ValueError(f"--resume_step {cfg.resume_step} without --resume: expected --resume True with it")
    if cfg.use_val_set:
        _positive(cfg, "val_freq", "val_batches")
        if not 0.0 < cfg.val_set_fraction < 1.0:
            raise ValueError(
                f"--val_set_fraction must be in (0, 1) with --use_val_set True, got {cfg.val_set_fraction}."
            )
    if cfg.use_l1_regression and cfg.use_diffusion:
        raise ValueError(
            "--use_l1_regression and --use_diffusion are both True; choose one action head "
            "(or neither, for OpenVLA's discrete action tokens)."
        )
    if cfg.scheduler not in SCHEDULERS:
        raise ValueError(f"--scheduler {cfg.scheduler!r} is not supported; expected one of {SCHEDULERS}.")
    if cfg.use_lora and cfg.lora_rank < 1:
        raise ValueError(f"--lora_rank must be >= 1 with --use_lora True, got {cfg.lora_rank}.")
    check_attn_implementation(cfg.attn_implementation)
    if isinstance(cfg, AlignFinetuneConfig):
        check_teacher(cfg.teacher)  # a flag: checked before the files

    if is_lerobot_dataset(cfg.data_root_dir, cfg.dataset_name):
        platform = lerobot_platform(cfg)
        specs = []
    else:
        specs = resolve_data_mix(cfg.dataset_name)
        platform = specs[0][0].platform
    for spec, _ in specs:
        num_cameras = len(spec.image_obs_keys)
        if not 1 <= cfg.num_images_in_input <= num_cameras:
            raise ValueError(
                f"--num_images_in_input {cfg.num_images_in_input} does not match dataset {spec.name!r}, "
                f"which has {num_cameras} cameras ({', '.join(spec.image_obs_keys)}): expected 1..{num_cameras}."
            )
        dataset_dir = Path(cfg.data_root_dir) / spec.name
        if not dataset_dir.is_dir():
            raise FileNotFoundError(
                f"--data_root_dir {cfg.data_root_dir}: dataset folder {dataset_dir} does not exist "
                f"(expected {spec.name}/<version>/*.tfrecord* as in openvla/modified_libero_rlds)."
            )
        check_rlds_files(Path(cfg.data_root_dir), spec.name)

    num_layers = family.check_base_model(cfg, platform)
    if isinstance(cfg, AlignFinetuneConfig):
        from prismatic.spatial_forcing.losses import check_align_loss_type
        from prismatic.spatial_forcing.targets import check_pooling_func

        check_align_loss_type(cfg.align_loss_type)
        check_pooling_func(cfg.pooling_func)
        if not -(num_layers + 1) <= cfg.vla_layers_align <= num_layers:
            raise ValueError(
                f"--vla_layers_align {cfg.vla_layers_align} is out of range: the VLA's LLM has {num_layers} layers, "
                f"so hidden_states has {num_layers + 1} entries (0 = embeddings, k = after layer k, -1 = last); "
                f"expected {-(num_layers + 1)}..{num_layers}."
            )
        if cfg.teacher == "vggt":
            if not Path(cfg.vggt_path).is_file():
                raise FileNotFoundError(
                    f"--vggt_path {cfg.vggt_path} does not exist (expected facebook/VGGT-1B's model.pt, or "
                    ".safetensors)."
                )
            check_vggt(cfg)
        else:
            check_fixed_teacher(cfg, specs)
    return platform


def check_fixed_teacher(cfg: AlignFinetuneConfig, specs: list) -> None:
    """The flags of ``--teacher geometry|rgb`` and, for geometry, the data's depth (before any model loads)."""
    if cfg.teacher_width < 2 or cfg.teacher_width % 2:
        raise ValueError(f"--teacher_width {cfg.teacher_width}: expected a positive even number")
    _positive(cfg, "teacher_patch_size")
    if not cfg.needs_camera_points:
        return
    if is_lerobot_dataset(cfg.data_root_dir, cfg.dataset_name):
        if not mapping_from_flags(cfg).depth_keys:
            raise UserError(missing_depth_message(cfg.dataset_name))
        return  # lerobot_platform opened the data with the depth features and checked them
    from prismatic.vla.datasets.config import RLDSConfig
    from prismatic.vla.datasets.rlds import find_builder_dir, open_builder

    views = RLDSConfig(num_images_in_input=cfg.num_images_in_input).camera_views
    for spec, _ in specs:
        try:
            open_builder(find_builder_dir(cfg.data_root_dir, spec.name), spec, views, with_camera_points=True)
        except KeyError as error:
            raise UserError(f"--teacher geometry needs each camera's depth and intrinsics: {error.args[0]}") from None


def check_quantization_flags(cfg) -> None:
    """Rejects ``--quantize_base`` values and combinations that cannot work, before anything is loaded."""
    if cfg.quantize_base not in QUANTIZATIONS:
        raise UserError(f"--quantize_base {cfg.quantize_base!r} is not supported; expected one of {QUANTIZATIONS}.")
    if cfg.quantize_base == "none":
        return
    if not cfg.use_lora:
        raise UserError(f"--quantize_base {cfg.quantize_base} needs --use_lora True (quantised weights stay frozen).")
    if cfg.strategy == "fsdp":
        raise UserError(f"--quantize_base {cfg.quantize_base} with --strategy fsdp is not supported; use ddp.")
