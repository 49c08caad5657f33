"""Fine-tuning configs: the single source of flags and defaults for finetune.py and finetune_align.py.

Field names are upstream's (OpenVLA-OFT ``FinetuneConfig`` and Spatial Forcing's additions), so the paper's command
runs unchanged. Fields marked "ours" are additions. Defaults are upstream's except three kinds: the alignment is the
paper's (``AlignConfig``), the paths are this README's layout (``ckpts/``, ``data/libero``) and the dataset is
LIBERO-Spatial (upstream: the hub id ``openvla/openvla-7b`` and ALOHA's ``aloha_scoop_x_into_bowl``). Named presets
(``prismatic/training/presets.py``, ``--preset``) fill the flags a command leaves out; ``upstream_script`` restores
upstream's bare defaults. ``FLAG_GROUPS`` orders ``--help``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prismatic.spatial_forcing.config import AlignConfig

SCHEDULERS = ("MultiStepLR", "CosineAnnealingLR")
STRATEGIES = ("ddp", "fsdp")
QUANTIZATIONS = ("none", "int8", "nf4")
TEACHER_DTYPES = ("float32", "bfloat16")


@dataclass
class FinetuneConfig:
    """OpenVLA-OFT fine-tuning (vla-scripts/finetune.py)."""

    # fmt: off
    preset: str = ""                                 # Ours: named values for the flags left out (listed below)
    model_family: str = "openvla-oft"                # Ours: openvla-oft | pi0 (the base model family of --vla_path)
    vla_path: str = "ckpts/openvla-7b"               # Base VLA: a local folder in the released layout
    data_root_dir: Path = Path("data/libero")        # Folder holding the RLDS (or LeRobot) datasets
    dataset_name: str = "libero_spatial_no_noops"    # Dataset or mixture name, or a LeRobot folder's name
    run_root_dir: Path = Path("runs")                # Where run folders (logs, checkpoints) are created
    shuffle_buffer_size: int = 100_000               # tf.data shuffle buffer (host RAM grows with it)
    use_l1_regression: bool = True                   # L1 regression action head
    use_diffusion: bool = False                      # DDIM diffusion action head instead
    num_diffusion_steps_train: int = 50              # Diffusion steps in training
    use_film: bool = False                           # FiLM language conditioning of the vision backbone
    num_images_in_input: int = 1                     # 1 = third-person camera; 2 = + wrist camera
    use_proprio: bool = False                        # Append a proprio token
    batch_size: int = 8                              # Per-device batch size
    learning_rate: float = 5e-4                      # AdamW learning rate
    lr_warmup_steps: int = 0                         # Linear warm-up from 0.1x to 1x the learning rate
    num_steps_before_decay: int = 100_000            # MultiStepLR milestone (x0.1 after it)
    grad_accumulation_steps: int = 1                 # Batches per optimizer update
    max_steps: int = 200_000                         # Training ends after update max_steps (max_steps + 1 updates)
    use_val_set: bool = False                        # Validate on the held-out split every val_freq steps
    val_freq: int = 10_000                           # Validation every val_freq steps (with --use_val_set)
    val_time_limit: int = 180                        # Seconds per validation round
    save_freq: int = 10_000                          # Checkpoint every save_freq steps
    save_latest_checkpoint_only: bool = False        # Overwrite one "latest" checkpoint instead of one per save
    scheduler: str = "MultiStepLR"                   # MultiStepLR | CosineAnnealingLR
    resume: bool = False                             # Continue from the run folder's latest checkpoint
    resume_step: int | None = None                   # With --resume: continue from this step's checkpoint
    overwrite_run: bool = False                      # Ours: replace an earlier run of the same run id (deletes it)
    image_aug: bool = True                           # Training image augmentation (pi0: openpi's; colour only with SF)
    diffusion_sample_freq: int = 50                  # Log sampled-action L1 every N steps (diffusion)
    use_lora: bool = True                            # Train LoRA adapters (False: the whole VLA)
    lora_rank: int = 32                              # LoRA rank (alpha = min(rank, 16))
    lora_dropout: float = 0.0                        # Dropout on the LoRA inputs
    merge_lora_during_training: bool = True          # Also save the merged model with each checkpoint
    wandb_entity: str = "your-wandb-entity"          # wandb entity (a placeholder, as upstream)
    wandb_project: str = "your-wandb-project"        # wandb project (a placeholder, as upstream)
    run_id_note: str | None = None                   # Appended to the run id
    run_id_override: str | None = None               # Replaces the run id
    wandb_log_freq: int = 10                         # Log metrics every N steps
    seed: int = 7                                    # Seeds torch/numpy/python and the data order
    use_wandb: bool = True                           # Log to wandb (offline unless WANDB_API_KEY is set)
    attn_implementation: str = "sdpa"                # sdpa | eager (flash_attention_2 cannot honour the mask)
    val_batches: int = 16                            # Upper bound on batches per validation round
    val_set_fraction: float = 0.05                   # --use_val_set: share of episodes held out (the last ones)
    crop_independent_draws: bool = False             # Crop box from 4 independent draws (upstream: one; docs)
    lora_fp32: bool = False                          # LoRA adapters in fp32 (upstream: the base model's dtype)
    lerobot_camera_keys: str = ""                    # LeRobot: image features, comma-separated, primary first ("": all)
    lerobot_state_key: str = "observation.state"     # LeRobot: feature fed as proprio
    lerobot_action_key: str = "action"               # LeRobot: feature predicted as actions
    lerobot_frame_cache_mb: int = 1024               # LeRobot: decoded, resized frames kept in memory (0: none)
    lerobot_gripper: str = "none"                    # LeRobot: none | libero (last action dim: LIBERO's gripper)
    num_actions_chunk: int = 8                       # Actions per predicted chunk
    strategy: str = "ddp"                            # ddp (replicas) | fsdp (sharded params, grads, optimizer)
    gradient_checkpointing: bool = False             # Recompute LLM layer activations in backward
    gradient_checkpointing_vision: bool = False      # ... and the vision towers' blocks (needs the flag above)
    quantize_base: str = "none"                      # none | int8 | nf4: LLM decoder Linears via bitsandbytes (QLoRA)
    # fmt: on

    @property
    def align_enabled(self) -> bool:
        return False


@dataclass
class AlignFinetuneConfig(FinetuneConfig):
    """Spatial Forcing fine-tuning (vla-scripts/finetune_align.py): OFT plus the alignment to VGGT."""

    # fmt: off
    vggt_path: str = "ckpts/model.pt"                # VGGT-1B model.pt (or .safetensors)
    align_loss_type: str = AlignConfig.align_loss_type       # cosine (upstream) | smooth_l1 (Huber on raw features)
    align_loss_coeff: float = AlignConfig.align_loss_coeff   # loss = action loss + coeff * align loss
    pooling_func: str = AlignConfig.pooling_func     # How VGGT's patch grid is resampled to the VLA's
    vla_layers_align: int = AlignConfig.vla_layers_align     # hidden_states index (0 = embeddings, k = after k layers)
    vggt_layers_align: int = AlignConfig.vggt_layers_align   # Aggregator layer (-1 = last)
    use_vlm_norm: bool = AlignConfig.use_vlm_norm    # LayerNorm before the align projector
    use_vggt_pe: bool = AlignConfig.use_vggt_pe      # Add 0.1 x fixed 2D sin-cos embedding to the targets
    gain_feat_1move: bool = AlignConfig.gain_feat_1move      # Upstream's one-token shift of the VLA slice (docs)
    vggt_image_size: int = 518                       # Ours: side of the teacher's input images (518 = VGGT's)
    vggt_dtype: str = "float32"                      # Ours: teacher weights float32 (upstream) | bfloat16 (CUDA)
    # geometry: true 3D structure from the data's depth and intrinsics; rgb: a fixed random network on the pixels
    teacher: str = "vggt"                            # Ours: the teacher: vggt (the paper) | geometry | rgb (control)
    teacher_width: int = 2048                        # geometry | rgb: feature width (VGGT-1B's targets: 2048)
    teacher_patch_size: int = 14                     # geometry | rgb: pixels per patch of the VLA's images
    teacher_seed: int = 0                            # geometry | rgb: seed of the fixed random map
    geometry_workspace_min: tuple[float, float, float] = (-1.5, -1.5, 0.0)  # geometry: lower x, y, z bounds (m)
    geometry_workspace_max: tuple[float, float, float] = (1.5, 1.5, 3.0)    # ... upper; camera frame, normalise
    lerobot_depth_keys: str = ""                     # LeRobot + geometry: depth feature per camera, camera order
    lerobot_intrinsics_keys: str = ""                # LeRobot + geometry: intrinsics [3, 3] feature per camera
    # fmt: on

    @property
    def needs_camera_points(self) -> bool:
        """Whether the batches must carry point maps from the data's depth (``--teacher geometry``)."""
        return self.teacher == "geometry"

    def align_config(self, vla_dim: int, vggt_dim: int, vggt_patch_size: int) -> AlignConfig:
        """The plug-and-play alignment module's config for these flags."""
        return AlignConfig(
            vla_dim=vla_dim,
            vggt_dim=vggt_dim,
            use_vlm_norm=self.use_vlm_norm,
            use_vggt_pe=self.use_vggt_pe,
            pooling_func=self.pooling_func,
            align_loss_type=self.align_loss_type,
            vla_layers_align=self.vla_layers_align,
            vggt_layers_align=self.vggt_layers_align,
            gain_feat_1move=self.gain_feat_1move,
            align_loss_coeff=self.align_loss_coeff,
            vggt_patch_size=vggt_patch_size,
        )

    @property
    def align_enabled(self) -> bool:
        return True


@dataclass
class MemoryEstimateConfig(AlignFinetuneConfig):
    """vla-scripts/estimate_memory.py: finetune_align.py's flags plus the hardware to check them against."""

    # fmt: off
    spatial_forcing: bool = True                     # False estimates finetune.py (no VGGT teacher)
    gpu_memory_gb: float = 80.0                      # Memory of one GPU (decimal GB, as nvidia-smi and vendors)
    num_gpus: int = 1                                # GPUs in the run (FSDP shards over them)
    prompt_tokens: int = 40                          # Longest prompt of a batch in tokens (LIBERO's: 25-40)
    upstream_script: bool = False                    # Model upstream's script (fp32 LM logits, unfrozen VGGT, ...)
    # fmt: on


# The sections of --help (prismatic.util.cli.print_grouped_help): every flag of the configs above, once.
FLAG_GROUPS: dict[str, tuple[str, ...]] = {
    "preset": ("preset",),
    "model": (
        "model_family", "vla_path", "use_l1_regression", "use_diffusion", "num_diffusion_steps_train", "use_film",
        "num_images_in_input", "use_proprio", "num_actions_chunk", "attn_implementation", "use_lora", "lora_rank",
        "lora_dropout", "lora_fp32", "quantize_base",
    ),
    "data": (
        "data_root_dir", "dataset_name", "shuffle_buffer_size", "image_aug", "crop_independent_draws",
        "lerobot_camera_keys", "lerobot_state_key", "lerobot_action_key", "lerobot_gripper", "lerobot_frame_cache_mb",
        "lerobot_depth_keys", "lerobot_intrinsics_keys", "use_val_set", "val_set_fraction",
    ),
    "spatial forcing": (
        "vggt_path", "align_loss_type", "align_loss_coeff", "pooling_func", "vla_layers_align", "vggt_layers_align",
        "use_vlm_norm", "use_vggt_pe", "gain_feat_1move", "vggt_image_size", "vggt_dtype", "teacher",
        "teacher_width", "teacher_patch_size", "teacher_seed", "geometry_workspace_min", "geometry_workspace_max",
    ),
    "optimisation": (
        "batch_size", "learning_rate", "lr_warmup_steps", "num_steps_before_decay", "scheduler",
        "grad_accumulation_steps", "max_steps", "seed", "strategy", "gradient_checkpointing",
        "gradient_checkpointing_vision",
    ),
    "checkpoints": (
        "run_root_dir", "save_freq", "save_latest_checkpoint_only", "merge_lora_during_training", "resume",
        "resume_step", "overwrite_run",
    ),
    "logging": (
        "run_id_note", "run_id_override", "use_wandb", "wandb_entity", "wandb_project", "wandb_log_freq",
        "diffusion_sample_freq", "val_freq", "val_time_limit", "val_batches",
    ),
    "hardware (estimate_memory.py)": (
        "spatial_forcing", "gpu_memory_gb", "num_gpus", "prompt_tokens", "upstream_script",
    ),
}  # fmt: skip
