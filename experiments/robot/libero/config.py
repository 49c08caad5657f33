"""``GenerateConfig``: the flags of ``run_libero_eval.py`` (upstream's names and defaults, plus ours at the end)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.robot.action_ensembling import ENSEMBLING_MODES

# The task suites and their episode length limits (policy steps after the wait), each a little above the suite's
# longest training demo.
TASK_MAX_STEPS = {
    "libero_spatial": 220,  # longest demo 193 steps
    "libero_object": 280,  # 254
    "libero_goal": 300,  # 270
    "libero_10": 520,  # 505
    "libero_90": 400,  # 373
}

DEFAULT_INITIAL_STATES = "DEFAULT"
MODEL_FAMILIES = ("openvla", "svla", "pi0")  # OpenVLA-OFT / Spatial Forcing; SpatialVLA; pi0 (policy/families.py)
SVLA_PROMPTS = ("instruction", "openvla")


@dataclass
class GenerateConfig:
    # fmt: off
    # Model (upstream). None = take it from the checkpoint's policy_config.json (upstream's defaults for a released
    # checkpoint without one); a given flag that contradicts the file is honoured with a warning.
    model_family: str = "openvla"                 # Model family: "openvla" or "svla" (SpatialVLA)
    pretrained_checkpoint: str = ""               # Checkpoint folder (merged model + heads + dataset_statistics.json)
    use_l1_regression: bool | None = None         # Continuous action head trained with L1 regression
    use_diffusion: bool | None = None             # Continuous action head trained with diffusion (DDIM)
    num_diffusion_steps_train: int | None = None  # (diffusion) steps used in training
    num_diffusion_steps_inference: int | None = None  # (diffusion) steps used at inference
    use_film: bool | None = None                  # FiLM language conditioning of the vision backbone
    num_images_in_input: int | None = None        # Images per query: third-person (+ wrist)
    use_proprio: bool | None = None               # Feed the proprio state
    center_crop: bool | None = None               # Center crop (0.9 area); must be True if trained with image_aug
    num_open_loop_steps: int = 8                  # Actions executed per policy query (the chunk is 8 for LIBERO)
    lora_rank: int = 32                           # LoRA rank (upstream flag; lora_adapter/adapter_config.json rules)
    unnorm_key: str = ""                          # Action un-normalization key; "" = checkpoint's, else task suite
    load_in_8bit: bool = False                    # 8-bit quantization
    load_in_4bit: bool = False                    # 4-bit quantization

    # LIBERO environment (upstream)
    task_suite_name: str = "libero_spatial"       # A key of TASK_MAX_STEPS
    num_steps_wait: int = 10                      # No-op steps at the start while objects settle
    num_trials_per_task: int = 50                 # Episodes per task (one per benchmark initial state)
    initial_states_path: str = DEFAULT_INITIAL_STATES  # "DEFAULT" (benchmark init states) or a JSON of initial states
    env_img_res: int = 256                        # Rendered camera resolution (the policy input is always 224)

    # Logging (upstream)
    run_id_note: str | None = None                # Suffix of the run id
    local_log_dir: str = "./experiments/logs"     # Folder of the text log, JSONL, summary, chart and videos
    use_wandb: bool = False                       # Also log to Weights & Biases
    wandb_entity: str = "your-wandb-entity"
    wandb_project: str = "your-wandb-project"
    seed: int = 7                                 # Global seed of the policy process

    # Ours
    num_workers: int = 1                          # Simulator worker processes evaluating episodes in parallel
    task_ids: list[int] | None = None             # Evaluate only these task ids (default: every task of the suite)
    max_steps: int | None = None                  # Cap on the suite's max episode steps, for quick checks
    save_videos: bool = False                     # Write one MP4 per episode (third-person camera, 30 fps)
    video_episodes: int | None = None             # --save_videos: only episodes 0..N-1 of each task (None: all);
                                                  #   the others render at query steps only
    run_id: str | None = None                     # Reuse an earlier run id to resume it (finished episodes are skipped)
    policy_server: str | None = None              # ws://host:port of serve_policy.py: workers query it (no local model)
    action_ensembling: str = "none"               # none | fork | simpler | adaptive (else: --num_open_loop_steps 1)
    svla_prompt: str = "instruction"              # (svla) "instruction": the lower-cased task, as in training;
                                                  #   "openvla": the LIBERO fork's "In: What action should ...?\nOut:"
    ignore_base_model_check: bool = False         # Load a LoRA-only checkpoint on a base other than the recorded one
    # fmt: on


# Flags that may change between the sessions of one run id; every other flag must match to resume.
RESUMABLE_FLAGS = frozenset(
    {
        "num_trials_per_task",
        "task_ids",
        "run_id_note",
        "local_log_dir",
        "use_wandb",
        "wandb_entity",
        "wandb_project",
        "num_workers",
        "save_videos",
        "video_episodes",
        "run_id",
        "policy_server",
        "ignore_base_model_check",
    }
)


def validate_config(cfg: GenerateConfig) -> None:
    """Raise ``ValueError`` naming the flag for settings that cannot work or contradict each other."""
    if cfg.model_family not in MODEL_FAMILIES:
        raise ValueError(f"--model_family {cfg.model_family!r} is not supported; expected one of {MODEL_FAMILIES}")
    if cfg.action_ensembling not in ENSEMBLING_MODES:
        raise ValueError(
            f"--action_ensembling {cfg.action_ensembling!r} is unknown; expected one of {ENSEMBLING_MODES}"
        )
    if cfg.action_ensembling != "none" and cfg.num_open_loop_steps != 1:
        raise ValueError(
            f"--action_ensembling {cfg.action_ensembling} queries the policy at every step: set --num_open_loop_steps 1"
        )
    if cfg.svla_prompt not in SVLA_PROMPTS:
        raise ValueError(f"--svla_prompt {cfg.svla_prompt!r} is unknown; expected one of {SVLA_PROMPTS}")
    if cfg.task_suite_name not in TASK_MAX_STEPS:
        raise ValueError(
            f"--task_suite_name {cfg.task_suite_name!r} is unknown; expected one of {list(TASK_MAX_STEPS)}"
        )
    if "image_aug" in str(cfg.pretrained_checkpoint) and cfg.center_crop is False:
        raise ValueError(
            "--center_crop must be True: the checkpoint name says it was trained with image_aug (random crops)"
        )
    if cfg.load_in_8bit and cfg.load_in_4bit:
        raise ValueError("--load_in_8bit and --load_in_4bit are exclusive; choose one")
    if cfg.use_l1_regression and cfg.use_diffusion:
        raise ValueError("--use_l1_regression and --use_diffusion are exclusive; choose one action head")
    if cfg.initial_states_path != DEFAULT_INITIAL_STATES and not Path(cfg.initial_states_path).is_file():
        raise ValueError(f"--initial_states_path {cfg.initial_states_path!r} is not a file (or pass 'DEFAULT')")
    for flag in ("num_workers", "num_trials_per_task", "num_open_loop_steps", "env_img_res"):
        if getattr(cfg, flag) < 1:
            raise ValueError(f"--{flag} must be at least 1, got {getattr(cfg, flag)}")
    if cfg.num_steps_wait < 0:
        raise ValueError(f"--num_steps_wait must be non-negative, got {cfg.num_steps_wait}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ValueError(f"--max_steps must be at least 1 (or unset), got {cfg.max_steps}")
    if cfg.video_episodes is not None and (cfg.video_episodes < 0 or not cfg.save_videos):
        raise ValueError(
            f"--video_episodes {cfg.video_episodes}: expected a count of episodes >= 0 together with --save_videos True"
        )


def episode_max_steps(cfg: GenerateConfig) -> int:
    """Policy steps per episode: the suite's limit, capped by ``--max_steps``."""
    suite_limit = TASK_MAX_STEPS[cfg.task_suite_name]
    return suite_limit if cfg.max_steps is None else min(suite_limit, cfg.max_steps)


def config_as_dict(cfg: GenerateConfig) -> dict[str, Any]:
    """All flags as a JSON-ready dict, in declaration order."""
    return {field.name: getattr(cfg, field.name) for field in dataclasses.fields(cfg)}


def check_resumable(saved: dict[str, Any], cfg: GenerateConfig) -> None:
    """Raise if ``cfg`` changes a flag that affects results relative to the run's saved flags."""
    current = config_as_dict(cfg)
    changed = [
        f"--{name}: run has {saved.get(name)!r}, now {value!r}"
        for name, value in current.items()
        if name not in RESUMABLE_FLAGS and saved.get(name) != value
    ]
    if changed:
        details = "\n  ".join(changed)
        raise ValueError(
            f"Cannot resume with different result-affecting settings (or use a new --run_id):\n  {details}"
        )
