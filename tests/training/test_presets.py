"""Named presets (``--preset``), the defaults a command gets when it leaves flags out, and the grouped ``--help``."""

from __future__ import annotations

import dataclasses
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prismatic.training.config import FLAG_GROUPS, AlignFinetuneConfig, FinetuneConfig, MemoryEstimateConfig
from prismatic.training.config_checks import validate_config
from prismatic.training.presets import PAPER_ALIGNMENT, PI0_ALIGNMENT, PRESETS, resolve_config
from prismatic.training.run_guard import RESUMABLE_FLAGS
from prismatic.util.cli import UserError, flag_description

REPO_ROOT = Path(__file__).resolve().parents[2]
LEROBOT_FIXTURES = REPO_ROOT / "tests" / "data" / "lerobot_fixtures"
SCRIPT_CONFIGS = {
    "finetune_align.py": AlignFinetuneConfig,
    "finetune.py": FinetuneConfig,
    "estimate_memory.py": MemoryEstimateConfig,
}


DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs" / "reference").glob("*.md"))]


def readme_commands() -> list[tuple[str, list[str]]]:
    """Every command of the README's and docs/reference's code blocks that runs a training script: (script, args)."""
    blocks = [block for document in DOCUMENTS for block in document.read_text().split("```")[1::2]]
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if not any(f"/{script} " in line for script in SCRIPT_CONFIGS):
                continue
            words = shlex.split(line, comments=True)
            scripts = [i for i, word in enumerate(words) if Path(word).name in SCRIPT_CONFIGS]
            if scripts:
                arguments = words[scripts[0] + 1 :]
                # "...(the flags above)" stands for the command above it: the flags before it are the command's.
                cut = next((i for i, word in enumerate(arguments) if word.startswith("...")), len(arguments))
                commands.append((Path(words[scripts[0]]).name, arguments[:cut]))
    return commands


def alignment(cfg: AlignFinetuneConfig) -> dict[str, object]:
    return {name: getattr(cfg, name) for name in PAPER_ALIGNMENT}


def test_the_readme_has_the_training_commands_it_documents():
    scripts = [script for script, _ in readme_commands()]
    assert scripts.count("finetune_align.py") >= 5 and "estimate_memory.py" in scripts


@pytest.mark.parametrize("script, arguments", readme_commands(), ids=lambda value: str(value)[:60])
def test_every_readme_training_command_resolves_to_the_papers_alignment(script, arguments):
    cfg = resolve_config(SCRIPT_CONFIGS[script], arguments)
    if isinstance(cfg, AlignFinetuneConfig) and cfg.model_family == "pi0":  # SF-pi0's alignment
        expected = {**PI0_ALIGNMENT, "vla_layers_align": 1 if cfg.preset == "pi0_tiny_cpu" else 12}
        assert alignment(cfg) == expected
    elif isinstance(cfg, AlignFinetuneConfig):
        expected = {**PAPER_ALIGNMENT, "vla_layers_align": 1 if cfg.preset == "tiny_cpu" else 24}
        assert alignment(cfg) == expected
        assert (cfg.vla_layers_align, cfg.use_vlm_norm, cfg.use_vggt_pe) != (-1, False, False)


def test_the_readme_lerobot_command_no_longer_gets_upstreams_script_alignment():
    """The LeRobot command names no LIBERO dataset: it used to train layer -1 without LayerNorm or PE, silently."""
    lerobot_commands = [args for _, args in readme_commands() if "--lerobot_action_key" in args]
    assert lerobot_commands  # in the README and in docs/reference/training.md
    for arguments in lerobot_commands:
        cfg = resolve_config(AlignFinetuneConfig, arguments)
        assert (cfg.vla_layers_align, cfg.use_vlm_norm, cfg.use_vggt_pe) == (24, True, True)


def test_a_libero_name_gets_paper_libero_and_explicit_flags_win(capsys):
    cfg = resolve_config(AlignFinetuneConfig, ["--dataset_name", "libero_goal_no_noops", "--max_steps=10"])
    assert (cfg.num_images_in_input, cfg.use_proprio, cfg.max_steps, cfg.vla_layers_align) == (2, True, 10, 24)
    assert "preset paper_libero:" in capsys.readouterr().out


def test_upstream_script_gives_upstreams_bare_defaults():
    cfg = resolve_config(AlignFinetuneConfig, ["--preset", "upstream_script", "--use_vggt_pe", "True"])
    assert (cfg.vla_layers_align, cfg.use_vlm_norm, cfg.use_vggt_pe) == (-1, False, True)
    assert (cfg.vla_path, cfg.dataset_name, cfg.num_images_in_input) == (
        "openvla/openvla-7b",
        "aloha_scoop_x_into_bowl",
        1,
    )


def test_a_preset_only_sets_the_flags_its_config_has():
    plain = resolve_config(FinetuneConfig, ["--preset=tiny_cpu"])
    assert (
        not hasattr(plain, "vggt_image_size") and plain.max_steps == 4 and plain.vla_path == "ckpts/tiny/tiny-openvla"
    )


def test_an_unknown_preset_is_a_user_error_naming_the_presets():
    with pytest.raises(UserError, match="--preset 'paper'.*paper_libero"):
        resolve_config(AlignFinetuneConfig, ["--preset", "paper"])


def test_no_default_a_cpu_user_meets_is_an_upstream_hub_id_or_aloha():
    defaults = AlignFinetuneConfig()
    assert (defaults.vla_path, defaults.vggt_path) == ("ckpts/openvla-7b", "ckpts/model.pt")
    assert (defaults.data_root_dir, defaults.dataset_name) == (Path("data/libero"), "libero_spatial_no_noops")
    assert alignment(defaults) == PAPER_ALIGNMENT


def test_adding_a_preset_is_one_registry_entry(monkeypatch):
    monkeypatch.setitem(PRESETS, "wide", dataclasses.replace(PRESETS["tiny_cpu"], settings={"lora_rank": 64}))
    assert resolve_config(AlignFinetuneConfig, ["--preset", "wide"]).lora_rank == 64


def test_the_readme_tiny_cpu_recipe_trains_on_what_its_first_two_commands_wrote(tmp_path, monkeypatch):
    training_doc = (REPO_ROOT / "docs" / "reference" / "training.md").read_text()
    block = training_doc[training_doc.index("**Tiny CPU runs.**") :].split("```")[1]
    commands = [shlex.split(line) for line in block.splitlines() if line.startswith("python ")]
    assert [Path(words[1]).name for words in commands] == [
        "make_tiny_checkpoints.py",
        "make_synthetic_libero.py",
        "finetune_align.py",
    ]
    monkeypatch.chdir(tmp_path)
    fewer_episodes = {"make_synthetic_libero.py": ["--num_episodes=2", "--episode_length=10"]}  # same paths, faster
    for words in commands[:2]:
        script = str(REPO_ROOT / words[1])
        monkeypatch.setattr(sys, "argv", [script, *words[2:], *fewer_episodes.get(Path(script).name, [])])
        runpy.run_path(script, run_name="__main__")
    cfg = resolve_config(AlignFinetuneConfig, commands[2][2:])
    assert validate_config(cfg).num_actions_chunk == 8  # every file it names exists and fits the flags
    assert (cfg.vggt_image_size, cfg.vla_layers_align, cfg.max_steps, cfg.use_wandb) == (112, 1, 4, False)


def test_a_two_camera_lerobot_dataset_trains_on_what_it_holds_when_the_camera_flags_are_left_out(tmp_path, capsys):
    shutil.copytree(LEROBOT_FIXTURES / "libero_like_v30", tmp_path / "my_robot")
    cfg = resolve_config(AlignFinetuneConfig, ["--data_root_dir", str(tmp_path), "--dataset_name", "my_robot"])
    assert (cfg.num_images_in_input, cfg.use_proprio) == (2, True)
    assert "--num_images_in_input 2 --use_proprio True (what the data holds)" in capsys.readouterr().out
    one = resolve_config(AlignFinetuneConfig, ["--data_root_dir", str(tmp_path), "--dataset_name", "my_robot"] + [
        "--lerobot_camera_keys", "observation.images.image", "--use_proprio", "False"])  # fmt: skip
    assert (one.num_images_in_input, one.use_proprio) == (1, False)


def test_every_flag_is_in_one_help_group_and_has_a_description():
    for config_class in SCRIPT_CONFIGS.values():
        names = [field.name for field in dataclasses.fields(config_class)]
        grouped = [name for group in FLAG_GROUPS.values() for name in group if name in names]
        assert sorted(grouped) == sorted(names), config_class
        assert [name for name in names if not flag_description(config_class, name)] == []


def test_help_lists_the_groups_with_defaults_and_imports_no_tensorflow():
    """One process runs every training script's --help (one interpreter start for the three)."""
    probe = (
        "import contextlib, io, runpy, sys\n"
        f"for script in {sorted(SCRIPT_CONFIGS)}:\n"
        "    sys.argv, out = [script, '--help'], io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try:\n"
        "            runpy.run_path('vla-scripts/' + script, run_name='__main__')\n"
        "        except SystemExit as exit:\n"
        "            assert exit.code == 0, exit.code\n"
        "    print(out.getvalue() + '\\n@@')\n"
        "print('tensorflow loaded:', 'tensorflow' in sys.modules, 'transformers' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300, check=True
    )
    *helps, imported = result.stdout.split("\n@@\n")
    assert imported.strip() == "tensorflow loaded: False False"
    for script, help_text in zip(sorted(SCRIPT_CONFIGS), helps, strict=True):
        groups = ["model", "data", "optimisation", "checkpoints", "logging"]
        groups += ["spatial forcing"] * (script != "finetune.py")
        assert all(f"\n{group}:\n" in help_text for group in groups), script
        assert "  --learning_rate float  (default: 0.0005)\n      AdamW learning rate" in help_text
        assert "upstream_script:" in help_text


def test_values_from_a_config_file_are_explicit_too(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("max_steps: 7\nvla_layers_align: 12\n")
    cfg = resolve_config(AlignFinetuneConfig, ["--config_path", str(config_file), "--dataset_name=libero_10_no_noops"])
    assert (cfg.max_steps, cfg.vla_layers_align, cfg.num_images_in_input) == (7, 12, 2)  # the rest from paper_libero


def test_naming_the_default_preset_on_resume_changes_nothing_that_is_refused():
    first = resolve_config(AlignFinetuneConfig, [])
    named = resolve_config(AlignFinetuneConfig, ["--preset", "paper_libero"])
    differing = {f.name for f in dataclasses.fields(first) if getattr(first, f.name) != getattr(named, f.name)}
    assert differing == {"preset"} and differing <= RESUMABLE_FLAGS


def test_model_family_pi0_on_a_libero_name_gets_pi0_libero(capsys):
    cfg = resolve_config(AlignFinetuneConfig, ["--model_family", "pi0", "--dataset_name", "libero_goal_no_noops"])
    assert alignment(cfg) == PI0_ALIGNMENT
    assert (cfg.use_lora, cfg.image_aug, cfg.learning_rate) == (False, True, 2.5e-5)
    assert "preset pi0_libero:" in capsys.readouterr().out
