"""The Spatial Forcing mechanism experiment, declared before anything runs (issue 23).

Primary metric: closed-loop success at equal training steps on the height-dependent task (libero_spatial 3), with
Wilson 95 % intervals; a scale that runs no episodes (``reduced``, ``medium``) declares held-out action L1 at equal
steps instead (``OFFLINE_PRIMARY_METRIC``). Secondary: steps to reach the plain baseline's final held-out action L1,
as a ratio (baseline steps / variant steps; the paper reports up to 3.8x). Every variant trains with the same
learning rate and schedule (the scale's preset's, or ``run.py --learning_rate``); nothing is tuned per variant. The
rate is chosen on the plain baseline alone (docs/experiments/sf_mechanism.md records the sweep)."""

from __future__ import annotations

from dataclasses import dataclass

PRIMARY_METRIC = "closed-loop success at equal steps on the height-dependent task (Wilson 95 % interval)"
# The primary metric of a run without closed-loop episodes (the reduced scale, synthetic data), declared likewise.
OFFLINE_PRIMARY_METRIC = (
    "held-out action L1 at equal steps (the last validation round) on the height-dependent task, mean over seeds with "
    "the seeds' min-max range"
)
SECONDARY_METRIC = "steps to reach the plain baseline's final held-out action L1, as a ratio (baseline / variant)"
HEIGHT_TASK = 3  # libero_spatial 3: the bowl sits on the cookie box, so the grasp height matters
FLAT_TASK = 0  # libero_spatial 0: the flat control
SUITE = "libero_spatial"
DATASET_NAME = "libero_spatial_no_noops"
# variant -> (training script, teacher); "plain" trains without alignment.
VARIANTS: dict[str, tuple[str, str | None]] = {
    "plain": ("finetune.py", None),
    "sf_geometry": ("finetune_align.py", "geometry"),
    "sf_rgb": ("finetune_align.py", "rgb"),
}


@dataclass(frozen=True)
class Scale:
    """Sizes of one run of the experiment; the full run and --quick differ only here."""

    tasks: tuple[int, ...]
    seeds: tuple[int, ...]
    fractions: tuple[float, ...]
    num_demos: int  # demonstrations per task at 100 %
    max_steps: int
    val_freq: int
    eval_episodes: int  # closed-loop episodes per task (benchmark held-out init states); 0: the stage is not run
    eval_max_steps: int  # cap on the episode length
    probe_init_states: int  # 0: the depth-probe stages are not run
    probe_dpt_steps: int
    preset: str = "sf_mechanism_cpu"  # the training settings (prismatic/training/presets.py), learning rate included
    image_size: int = 224  # the tiny VLA's input side (make_tiny_checkpoints.py --image_size)
    decay_step: int | None = None  # the rate drops x0.1 after this step (None: constant to max_steps)


# The full run, declared 2026-12-07 before any of its units ran, sized by pilots of plain fine-tuning on this 2-core
# CPU (docs/experiments/README.md): the tiny VLA at 112 px (a step of batch 16 took 0.12 s against 0.35 s at 224 px)
# trained from scratch with closed_loop_cpu's recipe reached, on 10 held-out init states, 5/10 (2000 steps) and 6/10
# (3000 steps) on libero_spatial 3 and 6/10 (3000 steps) on libero_spatial 0, from 20 oracle demonstrations each.
# Here the trainer holds out 20 % of the demonstrations for the held-out L1 (16 train at 100 %, 3 of 4 at 20 %).
FULL = Scale(
    tasks=(HEIGHT_TASK, FLAT_TASK),
    seeds=(0, 1, 2),
    fractions=(1.0, 0.2),
    num_demos=20,
    max_steps=2000,
    val_freq=200,
    eval_episodes=10,
    eval_max_steps=220,
    probe_init_states=10,
    probe_dpt_steps=500,
    preset="sf_mechanism_full_cpu",
    image_size=112,
    decay_step=1700,
)
QUICK = Scale(
    tasks=(HEIGHT_TASK,),
    seeds=(0,),
    fractions=(1.0, 0.2),
    num_demos=5,
    max_steps=40,
    val_freq=10,
    eval_episodes=2,
    eval_max_steps=40,
    probe_init_states=2,
    probe_dpt_steps=5,
    preset=FULL.preset,
    image_size=FULL.image_size,
    decay_step=30,
)
# Sized for about an hour of a 2-core CPU shared with other jobs, demonstrations aside
# (docs/experiments/sf_mechanism.md): both tasks, two seeds, 100 % of 4 demonstrations, 100 steps; the offline
# metric only (no closed loop, no probe).
REDUCED = Scale(
    tasks=(HEIGHT_TASK, FLAT_TASK),
    seeds=(0, 1),
    fractions=(1.0,),
    num_demos=4,
    max_steps=100,
    val_freq=20,
    eval_episodes=0,
    eval_max_steps=0,
    probe_init_states=0,
    probe_dpt_steps=0,
)
# The third run (declared before it ran, docs/experiments/sf_mechanism.md): the regime where the tiny VLA leaves the
# mean-prediction plateau (full fine-tune, batch 16, lr 5e-4; it plateaus for ~500 steps), on the height task only,
# three seeds, 100 % of 6 demonstrations (5 train, 1 held out), 1000 steps; the offline metric only.
MEDIUM = Scale(
    tasks=(HEIGHT_TASK,),
    seeds=(0, 1, 2),
    fractions=(1.0,),
    num_demos=6,
    max_steps=1000,
    val_freq=100,
    eval_episodes=0,
    eval_max_steps=0,
    # The depth probe was added after the 9 training runs finished and before any probing (declared in the report):
    # 10 benchmark init states of the task, the linear probe at every layer and a DPT probe of FULL's budget.
    probe_init_states=10,
    probe_dpt_steps=500,
    preset="sf_mechanism_medium_cpu",
)
# The harness's own check (pytest, synthetic data): every stage at the smallest sizes that still produce each artefact.
SMOKE = Scale(
    tasks=(HEIGHT_TASK,),
    seeds=(0,),
    fractions=(1.0, 0.5),
    num_demos=4,
    max_steps=4,
    val_freq=2,
    eval_episodes=1,
    eval_max_steps=8,
    probe_init_states=2,
    probe_dpt_steps=2,
    image_size=112,
    decay_step=3,
)
SCALES = {"full": FULL, "quick": QUICK, "reduced": REDUCED, "medium": MEDIUM, "smoke": SMOKE}


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first step whose held-out L1 is at or below ``target``; None if the curve never gets there."""
    return next((step for step, value in curve if value <= target), None)
