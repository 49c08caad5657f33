"""scripts/closed_loop.py without the simulator: which stages a cache skips, the commands of the others, the report
and bad flags (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from experiments.robot.libero import closed_loop
from experiments.robot.libero.closed_loop import ClosedLoopConfig, run_stages, stage_done
from experiments.robot.results import EpisodeResult, EpisodeStore, wilson_interval
from prismatic.training import checkpointing as ckpt
from prismatic.util.cli import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
SAVE = closed_loop.SAVE_FREQ  # the preset's checkpoint interval: --max_steps must be a multiple of it


def _episodes(cfg: ClosedLoopConfig, stage: str, successes: list[bool]) -> None:
    store = EpisodeStore(cfg.eval_dir / f"{closed_loop.eval_run_id(cfg, stage)}.jsonl")
    for episode, success in enumerate(successes):
        store.append(EpisodeResult("libero_spatial", 0, "pick up the bowl", episode, success, 50 + episode, 1.0))


def _cache(tmp_path: Path, kept: int, step: int | None) -> ClosedLoopConfig:
    """A cache holding ``kept`` demonstrations and (with ``step``) a latest-only checkpoint of that step."""
    cfg = ClosedLoopConfig(cache=tmp_path / "cache", num_demos=2, max_steps=2 * SAVE, episodes=3)
    work = cfg.data_dir / "libero_spatial_oracle_work"
    work.mkdir(parents=True)
    (work / "outcomes.json").write_text(json.dumps({"tasks": [{"kept": [f"attempt{i}" for i in range(kept)]}]}))
    (cfg.data_dir / "libero_spatial_no_noops" / "1.0.0").mkdir(parents=True)
    (cfg.data_dir / "libero_spatial_no_noops" / "1.0.0" / "dataset_info.json").write_text("{}")
    cfg.run_dir.mkdir(parents=True)
    if step is not None:
        torch.save({"step": step}, ckpt.component_path(cfg.run_dir, ckpt.TRAINING_STATE, None))
    return cfg


def test_finished_stages_are_skipped_and_the_others_resume(tmp_path: Path, monkeypatch) -> None:
    cfg = _cache(tmp_path, kept=2, step=SAVE)
    _episodes(cfg, "eval", [True, False, True])
    _episodes(cfg, "serve_eval", [True])
    assert stage_done(cfg, "demos") and not stage_done(ClosedLoopConfig(cache=cfg.cache, num_demos=3), "demos")
    assert not stage_done(cfg, "base") and not stage_done(cfg, "train")
    assert stage_done(ClosedLoopConfig(cache=cfg.cache, max_steps=SAVE), "train")
    assert stage_done(cfg, "eval") and not stage_done(cfg, "serve_eval")
    longer_training = ClosedLoopConfig(cache=cfg.cache, max_steps=4 * SAVE, episodes=3)
    assert not stage_done(longer_training, "eval")
    commands: list[list[str]] = []
    monkeypatch.setattr(closed_loop, "run", lambda command: commands.append([str(part) for part in command]))
    run_stages(ClosedLoopConfig(**{**vars(cfg), "stages": ["demos", "base", "train", "eval"]}))
    assert [Path(command[1]).name for command in commands] == ["make_tiny_checkpoints.py", "finetune.py"]
    train = commands[1]
    assert "--preset=closed_loop_cpu" in train and "--resume=True" in train and f"--max_steps={2 * SAVE}" in train
    assert f"--vla_path={cfg.vla_dir}" in train and f"--data_root_dir={cfg.data_dir}" in train
    assert not any(flag.startswith("--lerobot_gripper") for flag in train)  # the RLDS copy's reader knows LIBERO


def test_a_fresh_cache_generates_and_trains_without_resume(tmp_path: Path, monkeypatch) -> None:
    cfg = _cache(tmp_path, kept=1, step=None)
    commands: list[list[str]] = []
    monkeypatch.setattr(closed_loop, "run", lambda command: commands.append([str(part) for part in command]))
    run_stages(ClosedLoopConfig(**{**vars(cfg), "stages": ["demos", "train"]}))
    assert Path(commands[0][1]).name == "generate_libero_demos.py" and "--num_demos=2" in commands[0]
    assert "--format=rlds" in commands[0] and "--resume=False" in commands[1]


def test_the_lerobot_copy_has_its_own_dataset_run_evaluations_and_report(tmp_path: Path, monkeypatch) -> None:
    rlds = _cache(tmp_path, kept=2, step=2 * SAVE)
    cfg = ClosedLoopConfig(**{**vars(rlds), "data_format": "lerobot"})
    assert stage_done(rlds, "demos") and stage_done(rlds, "train") and not stage_done(cfg, "demos")
    info = cfg.data_dir / "libero_spatial_oracle_lerobot" / "meta" / "info.json"
    info.parent.mkdir(parents=True)
    info.write_text(json.dumps({"total_episodes": 1}))
    assert not stage_done(cfg, "demos")  # a copy of fewer episodes than asked for is written anew
    info.write_text(json.dumps({"total_episodes": 2}))
    assert stage_done(cfg, "demos") and not stage_done(cfg, "train")
    assert closed_loop.eval_run_id(cfg, "serve_eval") == f"server-lerobot-step{2 * SAVE}"
    commands: list[list[str]] = []
    monkeypatch.setattr(closed_loop, "run", lambda command: commands.append([str(part) for part in command]))
    run_stages(ClosedLoopConfig(**{**vars(cfg), "num_demos": 3, "stages": ["demos", "train"]}))
    assert "--format=lerobot" in commands[0]
    assert "--dataset_name=libero_spatial_oracle_lerobot" in commands[1] and "--resume=False" in commands[1]
    assert "--run_id_override=closed-loop-lerobot" in commands[1]
    assert "--lerobot_gripper=libero" in commands[1]  # trained as the RLDS copy trains LIBERO's gripper
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5}) + "\n")
    _episodes(cfg, "eval", [True])
    run_stages(ClosedLoopConfig(**{**vars(cfg), "stages": ["report"]}))
    report = json.loads((cfg.cache / "results-lerobot.json").read_text())
    assert report["data_format"] == "lerobot" and report["in-process"]["successes"] == 1
    assert (cfg.cache / "loss-lerobot.png").is_file() and not (cfg.cache / "results.json").exists()


def test_another_seed_has_its_own_run_evaluations_and_report(tmp_path: Path, monkeypatch) -> None:
    default_seed = _cache(tmp_path, kept=2, step=2 * SAVE)
    cfg = ClosedLoopConfig(**{**vars(default_seed), "data_format": "lerobot", "seed": 1})
    assert stage_done(default_seed, "train") and not stage_done(cfg, "train")
    assert cfg.run_dir.name == "closed-loop-lerobot-seed1"
    assert closed_loop.eval_run_id(cfg, "eval") == f"in-process-lerobot-seed1-step{2 * SAVE}"
    commands: list[list[str]] = []
    monkeypatch.setattr(closed_loop, "run", lambda command: commands.append([str(part) for part in command]))
    run_stages(ClosedLoopConfig(**{**vars(cfg), "stages": ["train"]}))
    assert "--seed=1" in commands[0] and "--run_id_override=closed-loop-lerobot-seed1" in commands[0]
    run_stages(ClosedLoopConfig(**{**vars(default_seed), "max_steps": 4 * SAVE, "stages": ["train"]}))
    assert f"--seed={closed_loop.SEED}" in commands[1] and "--run_id_override=closed-loop" in commands[1]
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5}) + "\n")
    run_stages(ClosedLoopConfig(**{**vars(cfg), "stages": ["report"]}))
    assert json.loads((cfg.cache / "results-lerobot-seed1.json").read_text())["seed"] == 1


def test_report_has_per_episode_results_agreement_and_wilson_interval(tmp_path: Path) -> None:
    cfg = _cache(tmp_path, kept=2, step=9)
    (cfg.run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1.0 / (s + 1)}) + "\n" for s in range(10))
    )
    _episodes(cfg, "eval", [True, False, True])
    _episodes(cfg, "serve_eval", [True, False, True])
    run_stages(ClosedLoopConfig(**{**vars(cfg), "stages": ["report"]}))
    report = json.loads((cfg.cache / "results.json").read_text())
    assert report["demonstrations"] == 2
    assert report["training"] == {
        "checkpoint_step": 9,
        "last_logged_step": 9,
        "evaluated_step": 2 * SAVE,
        "first_loss": 1.0,
        "last_loss": 0.1,
    }
    assert report["in-process"]["successes"] == 2 and report["in-process"]["episodes"] == 3
    assert [row["success"] for row in report["server"]["per_episode"]] == [True, False, True]
    assert report["same_per_episode"] is True
    assert report["in-process"]["wilson_95"] == pytest.approx(list(wilson_interval(2, 3)))
    assert (cfg.cache / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_wilson_interval_matches_the_textbook_values() -> None:
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"episodes": 51}, "--episodes 51: expected 1..50"),
        ({"stages": ["fly"]}, "--stages ['fly']: expected a non-empty list of"),
        ({"max_steps": SAVE + 5}, f"--max_steps {SAVE + 5}: expected a positive multiple of {SAVE}"),
        ({"data_format": "hdf5"}, "--data_format 'hdf5': expected one of ['rlds', 'lerobot']"),
        ({"model_family": "octo"}, "--model_family 'octo': expected one of ['openvla', 'pi0']"),
    ],
)
def test_bad_flags_are_refused_before_writing(flags: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        run_stages(ClosedLoopConfig(cache=tmp_path / "cache", **flags))
    assert not (tmp_path / "cache").exists()


def test_report_without_training_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="holds no training metrics: expected the train stage first"):
        run_stages(ClosedLoopConfig(cache=tmp_path / "cache", stages=["report"]))


def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "scripts/closed_loop.py", "--cache", str(tmp_path / "cache"), "--episodes", "0"]
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert completed.returncode == 2
    assert (
        completed.stderr.strip().splitlines()[-1]
        == "error: --episodes 0: expected 1..50 (the benchmark's initial states)"
    )
    assert not (tmp_path / "cache").exists()


def test_rollout_strip_shows_the_first_successful_episode(tmp_path: Path) -> None:
    cfg = _cache(tmp_path, kept=2, step=SAVE)
    (cfg.run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5}) + "\n")
    store = EpisodeStore(cfg.eval_dir / f"{closed_loop.eval_run_id(cfg, 'eval')}.jsonl")
    for episode, success in enumerate([False, True]):
        video = tmp_path / f"episode{episode}.mp4"
        frames = [np.full((16, 16, 3), 10 * episode + frame, np.uint8) for frame in range(12)]
        imageio.mimwrite(video, frames, fps=10, format="FFMPEG", macro_block_size=1)
        store.append(EpisodeResult("libero_spatial", 0, "pick", episode, success, 9, 1.0, video=str(video)))
    run_stages(ClosedLoopConfig(**{**vars(cfg), "stages": ["report"]}))
    assert json.loads((cfg.cache / "results.json").read_text())["rollout_strip"]["episode"] == 1
    strip = imageio.imread(cfg.cache / "rollout.png")
    assert strip.shape == (16, 16 * closed_loop.ROLLOUT_STRIP_FRAMES, 3)
    first, last = strip[8, 8].astype(int), strip[8, -8].astype(int)  # episode 1's frames 0 and 11: grey 10 and 21
    assert abs(first.mean() - 10) < 3 and abs(last.mean() - 21) < 3


def test_pi0_has_its_own_base_preset_run_evaluations_and_report(tmp_path: Path, monkeypatch) -> None:
    oft = _cache(tmp_path, kept=2, step=2 * SAVE)
    cfg = ClosedLoopConfig(**{**vars(oft), "model_family": "pi0"})
    assert stage_done(cfg, "demos") and not stage_done(cfg, "train")  # the same demonstrations, its own run
    assert cfg.vla_dir == cfg.cache / "base" / "tiny-pi0" and cfg.run_dir == cfg.cache / "runs" / "closed-loop-pi0"
    assert closed_loop.eval_run_id(cfg, "eval") == f"in-process-pi0-step{2 * SAVE}"
    lerobot = ClosedLoopConfig(**{**vars(cfg), "data_format": "lerobot"})
    assert closed_loop.eval_run_id(lerobot, "serve_eval") == f"server-pi0-lerobot-step{2 * SAVE}"
    preset = closed_loop.get_preset("closed_loop_pi0_cpu").settings
    assert preset["model_family"] == "pi0" and preset["save_freq"] == SAVE and not preset["use_l1_regression"]
    assert closed_loop.last_step(ClosedLoopConfig(model_family="pi0", max_steps=None)) == preset["max_steps"]

    written: list[tuple[Path, dict]] = []

    def fake_writer(out_dir: Path, **sizes: object) -> Path:  # the real writer takes seconds (a SentencePiece model)
        written.append((out_dir, sizes))
        folder = out_dir / "tiny-pi0"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        return folder

    commands: list[list[str]] = []
    monkeypatch.setattr(closed_loop, "write_tiny_pi0_checkpoint", fake_writer)
    monkeypatch.setattr(closed_loop, "run", lambda command: commands.append([str(part) for part in command]))
    run_stages(ClosedLoopConfig(**{**vars(cfg), "stages": ["base", "train", "eval"]}))
    assert written[0][1] == closed_loop.PI0_BASE_SIZES and stage_done(cfg, "base")
    assert sorted(path.name for path in cfg.vla_dir.parent.iterdir()) == ["tiny-pi0"]  # no temporary left
    train, evaluation = commands
    assert Path(train[1]).name == "finetune.py" and "--preset=closed_loop_pi0_cpu" in train
    assert f"--vla_path={cfg.vla_dir}" in train and "--run_id_override=closed-loop-pi0" in train
    assert "--resume=False" in train
    assert "--model_family=pi0" in evaluation and f"--pretrained_checkpoint={cfg.run_dir}" in evaluation
    assert f"--run_id=in-process-pi0-step{2 * SAVE}" in evaluation

    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.2}) + "\n")
    _episodes(cfg, "eval", [False, True])
    run_stages(ClosedLoopConfig(**{**vars(cfg), "stages": ["report"]}))
    report = json.loads((cfg.cache / "results-pi0.json").read_text())
    assert report["model_family"] == "pi0" and report["in-process"]["successes"] == 1
    assert (cfg.cache / "loss-pi0.png").is_file() and not (cfg.cache / "results.json").exists()


def test_the_pi0_base_loads_as_the_trainer_loads_it(tmp_path: Path) -> None:
    from prismatic.models.pi0.loading_pi0 import load_pi0_folder
    from prismatic.models.pi0.processing_pi0 import TOKENIZER_NAME

    folder = tmp_path / "base" / "tiny-pi0"
    closed_loop.write_pi0_base(folder)
    model, _ = load_pi0_folder(folder)
    assert model.config.image_keys == ["base_0_rgb"] and model.config.image_size == 112
    assert model.config.vlm_width == 64 and model.config.action_loss_dims == "real"
    assert (folder / TOKENIZER_NAME).is_file() and sorted(path.name for path in folder.parent.iterdir()) == ["tiny-pi0"]
