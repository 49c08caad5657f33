"""Named training settings (``--preset NAME``), looked up by name in one registry as openpi's ``get_config``.

A preset gives values to the flags a command leaves out; a flag given on the command line always wins. Without
``--preset``, a LIBERO dataset name (``libero_*_no_noops`` and their mixtures) gets ``paper_libero``, and a LeRobot
dataset gets ``--num_images_in_input`` / ``--use_proprio`` from what its ``meta/info.json`` holds. Adding a preset
is one entry in ``PRESETS``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import draccus
import yaml

from prismatic.spatial_forcing.config import AlignConfig
from prismatic.training.config import FLAG_GROUPS, FinetuneConfig
from prismatic.util.cli import UserError, is_main_process, print_grouped_help, user_errors
from prismatic.vla.datasets.lerobot import is_lerobot_dataset
from prismatic.vla.datasets.lerobot_dataset import lerobot_input_flags
from prismatic.vla.datasets.registry import DATASETS, MIXTURES

ConfigT = TypeVar("ConfigT", bound=FinetuneConfig)
HELP_FLAGS = ("-h", "--help")
# The alignment flags and their paper values (the single source: AlignConfig's defaults).
ALIGNMENT_FLAGS = ("vla_layers_align", "vggt_layers_align", "use_vlm_norm", "use_vggt_pe", "pooling_func")
ALIGNMENT_FLAGS += ("align_loss_type", "align_loss_coeff", "gain_feat_1move")
PAPER_ALIGNMENT: dict[str, object] = {name: getattr(AlignConfig, name) for name in ALIGNMENT_FLAGS}


@dataclass(frozen=True)
class Preset:
    """A named set of flag values (flag name -> value); flags a config class lacks are skipped."""

    description: str
    settings: Mapping[str, object]


# The paper's LIBERO command (README); its --save_latest_checkpoint_only True is left to the command.
PAPER_LIBERO: dict[str, object] = {
    **PAPER_ALIGNMENT,
    "use_l1_regression": True,
    "use_diffusion": False,
    "use_film": False,
    "num_images_in_input": 2,
    "use_proprio": True,
    "batch_size": 8,
    "learning_rate": 5e-4,
    "num_steps_before_decay": 100_000,
    "max_steps": 150_005,
    "save_freq": 10_000,
    "merge_lora_during_training": True,
    "image_aug": True,
    "lora_rank": 32,
}

# The paper's setting at tiny sizes for CPU (the tiny_cpu preset; experiments build on it).
TINY_CPU: dict[str, object] = {
    **PAPER_LIBERO,
    "vla_path": "ckpts/tiny/tiny-openvla",
    "vggt_path": "ckpts/tiny/tiny-vggt-model.pt",
    "vggt_image_size": 112,
    "data_root_dir": Path("data/synthetic"),
    "dataset_name": "libero_spatial_no_noops",
    "vla_layers_align": 1,
    "batch_size": 2,
    "max_steps": 4,
    "save_freq": 2,
    "merge_lora_during_training": False,
    "lora_rank": 4,
    "shuffle_buffer_size": 64,
    "use_wandb": False,
    "wandb_log_freq": 1,
}

# SF-pi0 (openpi-SF's align config): the residual stream entering LM layer 12 of 18, LayerNorm + MLP projector,
# VGGT's position embedding, bilinear pooling, cosine loss x 0.5, no one-token shift (pi0's images open the sequence).
PI0_ALIGNMENT: dict[str, object] = {
    "vla_layers_align": 12,
    "vggt_layers_align": -1,
    "use_vlm_norm": True,
    "use_vggt_pe": True,
    "pooling_func": "bilinear",
    "align_loss_type": "cosine",
    "align_loss_coeff": 0.5,
    "gain_feat_1move": False,
}
PI0_LIBERO: dict[str, object] = {
    **PI0_ALIGNMENT,
    "model_family": "pi0",
    "use_lora": False,
    "use_l1_regression": False,
    "use_diffusion": False,
    "use_film": False,
    "num_images_in_input": 2,
    "use_proprio": True,
    "image_aug": True,  # SF-pi0's: openpi's augmentation, colour only with Spatial Forcing
    "merge_lora_during_training": True,  # a pi0 LoRA checkpoint loads from its merged weights
    "learning_rate": 2.5e-5,
}

# The mechanism experiment's reduced scale (the sf_mechanism_cpu preset; its medium scale builds on it).
SF_MECHANISM_CPU: dict[str, object] = {
    **TINY_CPU,
    "shuffle_buffer_size": 500,
    "use_val_set": True,
    "val_set_fraction": 0.2,
    "val_batches": 40,
    "merge_lora_during_training": True,
    "save_latest_checkpoint_only": True,
    "teacher_width": 64,
    "batch_size": 4,
}

# The mechanism experiment in the regime where the tiny VLA leaves the mean-prediction plateau (closed_loop_cpu's
# training with sf_mechanism_cpu's validation and teacher).
SF_MECHANISM_MEDIUM_CPU: dict[str, object] = {
    **SF_MECHANISM_CPU,
    "use_lora": False,
    "merge_lora_during_training": False,
    "num_images_in_input": 1,
    "image_aug": False,
    "batch_size": 16,
    "learning_rate": 5e-4,
    "shuffle_buffer_size": 1_000,  # more than the medium scale's ~700 training frames (5 episodes)
}

# scripts/closed_loop.py's training (``make closed-loop``): the whole tiny model from scratch on oracle demonstrations.
CLOSED_LOOP_CPU: dict[str, object] = {
    "use_l1_regression": True,
    "use_diffusion": False,
    "use_film": False,
    "num_images_in_input": 1,
    "use_proprio": True,
    "use_lora": False,
    "image_aug": False,
    "batch_size": 16,
    "learning_rate": 5e-4,
    "num_steps_before_decay": 4000,
    "max_steps": 5000,
    "save_freq": 500,
    "save_latest_checkpoint_only": True,
    "merge_lora_during_training": False,
    "shuffle_buffer_size": 2_000,
    "dataset_name": "libero_spatial_no_noops",
    "use_wandb": False,
    "wandb_log_freq": 1,
}

PRESETS: dict[str, Preset] = {
    "paper_libero": Preset(
        "the paper's LIBERO setting: alignment after layer 24 with LayerNorm and positional embedding, 2 cameras + "
        "proprio, L1 head, batch 8, lr 5e-4, 150,005 steps (the default for LIBERO dataset names)",
        PAPER_LIBERO,
    ),
    "upstream_script": Preset(
        "upstream finetune_align.py's bare defaults: alignment of the last layer without LayerNorm or positional "
        "embedding (a setting the paper never used), 1 camera, no proprio, hub and ALOHA names",
        {
            "vla_layers_align": -1,
            "use_vlm_norm": False,
            "use_vggt_pe": False,
            "vla_path": "openvla/openvla-7b",
            "vggt_path": "official_ckpts/vggt_model.pt",
            "data_root_dir": Path("datasets/rlds"),
            "dataset_name": "aloha_scoop_x_into_bowl",
            "num_images_in_input": 1,
            "use_proprio": False,
            "max_steps": 200_000,
        },
    ),
    "tiny_cpu": Preset(
        "the paper's setting at tiny sizes for CPU: make_tiny_checkpoints.py --out_dir ckpts/tiny and "
        "make_synthetic_libero.py --data_root_dir data/synthetic, 112 px teacher, layer 1 of the 2-layer LLM, "
        "4 steps",
        TINY_CPU,
    ),
    "pi0_libero": Preset(
        "Spatial Forcing on pi0 (SF-pi0's alignment: entering LM layer 12, LayerNorm, VGGT PE, cosine x 0.5), pi0 "
        "trained in full, 2 cameras + state, openpi's image augmentation (colour only with Spatial Forcing), learning "
        "rate 2.5e-5 (the default for --model_family pi0 on LIBERO dataset names)",
        PI0_LIBERO,
    ),
    "pi0_tiny_cpu": Preset(
        "pi0_libero at tiny sizes for CPU: make_tiny_checkpoints.py --out_dir ckpts/tiny (tiny-pi0), "
        "make_synthetic_libero.py --data_root_dir data/synthetic, 112 px teacher, layer 1 of 2, lr 5e-4, 4 steps",
        {**TINY_CPU, **PI0_LIBERO, "vla_path": "ckpts/tiny/tiny-pi0", "vla_layers_align": 1, "learning_rate": 5e-4},
    ),
    "sf_mechanism_cpu": Preset(
        "the Spatial Forcing mechanism experiment (experiments/sf_mechanism): tiny_cpu's model sizes with a held-out "
        "split validated during training (40 batches of its ordered pass: whole held-out episodes, not their first "
        "frames), a 500-frame shuffle buffer, more than the reduced run's training frames (a 64-frame buffer streams "
        "the episodes nearly in time order; the geometry teacher's point maps make each buffered frame ~1 MB), "
        "merged checkpoints for evaluation and probing, a 64-wide geometry/rgb teacher; one learning rate and "
        "schedule for every variant",
        SF_MECHANISM_CPU,
    ),
    "sf_mechanism_medium_cpu": Preset(
        "the mechanism experiment's medium scale (experiments/sf_mechanism, --scale medium): sf_mechanism_cpu's "
        "validation and teacher in the regime where the tiny VLA leaves the mean-prediction plateau (closed_loop_cpu's "
        "training: the whole VLA, no LoRA, third-person camera + proprio, no image augmentation, batch 16, lr 5e-4)",
        SF_MECHANISM_MEDIUM_CPU,
    ),
    "sf_mechanism_full_cpu": Preset(
        "the mechanism experiment's full and quick scales (experiments/sf_mechanism, make experiment): "
        "sf_mechanism_medium_cpu's training and teacher with a 2,000-frame shuffle buffer (more than the ~1,900 "
        "training frames of 16 oracle demonstrations); its base is the tiny VLA at 112 px (run.py writes it)",
        {**SF_MECHANISM_MEDIUM_CPU, "shuffle_buffer_size": 2_000},
    ),
    "closed_loop_cpu": Preset(
        "a small VLA trained from scratch on CPU for `make closed-loop` (scripts/closed_loop.py): the whole tiny "
        "VLA (make_tiny_checkpoints.py, no LoRA), third-person camera + proprio, L1 head, no image augmentation, "
        "batch 16, lr 5e-4 (x0.1 after step 4000), 5000 steps, latest checkpoint every 500",
        CLOSED_LOOP_CPU,
    ),
    "closed_loop_pi0_cpu": Preset(
        "closed_loop_cpu's training for a tiny pi0 (scripts/closed_loop.py --model_family pi0, its base stage writes "
        "the base): flow matching, no alignment, third-person camera + state, batch 16, lr 5e-4 (x0.1 after step "
        "6500), 8000 steps, latest checkpoint every 500",
        {
            **CLOSED_LOOP_CPU,
            "model_family": "pi0",
            "use_l1_regression": False,
            "num_steps_before_decay": 6500,
            "max_steps": 8000,
        },
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a UserError names the known ones otherwise."""
    if name not in PRESETS:
        raise UserError(f"--preset {name!r} is not a preset: expected one of {sorted(PRESETS)}")
    return PRESETS[name]


def default_preset_name(cfg: FinetuneConfig) -> str:
    """``paper_libero`` (``pi0_libero`` with ``--model_family pi0``) for a LIBERO RLDS dataset name (or mixture)
    that is not a LeRobot folder, else none."""
    if is_lerobot_dataset(cfg.data_root_dir, cfg.dataset_name):
        return ""
    if cfg.dataset_name not in DATASETS and cfg.dataset_name not in MIXTURES:
        return ""
    return "pi0_libero" if cfg.model_family == "pi0" else "paper_libero"


def explicit_flags(args: Sequence[str]) -> set[str]:
    """The flag names a command gives: on its command line (``--name value`` or ``--name=value``) and in the file of
    draccus' ``--config_path`` (its top-level keys), which a preset must not override either."""
    given = {arg[2:].split("=", 1)[0] for arg in args if arg.startswith("--")}
    if "config_path" in given:
        index = next(i for i, arg in enumerate(args) if arg.split("=", 1)[0] == "--config_path")
        path = args[index].split("=", 1)[1] if "=" in args[index] else args[index + 1]
        with user_errors():
            given |= set(yaml.safe_load(Path(path).read_text()) or {})
    return given


def resolve_config(config_class: type[ConfigT], args: Sequence[str] | None = None) -> ConfigT:
    """Parses a training command: ``--help`` prints the grouped flags and exits; then the preset (``--preset``, or
    the dataset's default) fills the flags left out, and a LeRobot dataset fills the inputs still left out."""
    args = list(sys.argv[1:] if args is None else args)
    if any(arg in HELP_FLAGS for arg in args):
        presets = "\n".join(f"  {name}: {preset.description}" for name, preset in PRESETS.items())
        epilog = f"presets (--preset NAME; a flag given on the command line overrides the preset):\n{presets}"
        print_grouped_help(config_class, FLAG_GROUPS, prog=Path(sys.argv[0]).name, epilog=epilog)
        sys.exit(0)
    cfg = draccus.parse(config_class=config_class, args=args)
    given = explicit_flags(args)
    fields = {field.name for field in dataclasses.fields(config_class)}
    name = cfg.preset or default_preset_name(cfg)
    filled: dict[str, object] = {}
    if name:
        settings = get_preset(name).settings
        filled = {flag: value for flag, value in settings.items() if flag in fields and flag not in given}
        cfg = dataclasses.replace(cfg, **filled)
    if is_lerobot_dataset(cfg.data_root_dir, cfg.dataset_name):
        from_data = {flag: value for flag, value in lerobot_input_flags(cfg).items() if flag not in given | set(filled)}
        cfg = dataclasses.replace(cfg, **from_data)
        if from_data and is_main_process():
            print(f"LeRobot dataset {cfg.dataset_name!r}: {_as_flags(from_data)} (what the data holds)", flush=True)
    if filled and is_main_process():
        print(f"preset {name}: {_as_flags(filled)}", flush=True)
    return cfg


def _as_flags(values: Mapping[str, object]) -> str:
    return " ".join(f"--{flag} {value}" for flag, value in values.items())
