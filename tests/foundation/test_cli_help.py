"""Every command-line config renders its --help (draccus turns field comments into argparse help strings)."""

import shlex
from pathlib import Path

import draccus
import pytest

from experiments.robot.libero.config import GenerateConfig
from prismatic.training.config import AlignFinetuneConfig, FinetuneConfig, MemoryEstimateConfig
from prismatic.training.merge_check import ConvertConfig
from prismatic.vla.datasets.synthetic import SyntheticLiberoConfig


@pytest.mark.parametrize(
    "config_class",
    [FinetuneConfig, AlignFinetuneConfig, MemoryEstimateConfig, GenerateConfig, ConvertConfig, SyntheticLiberoConfig],
)
def test_help_lists_every_flag(config_class, capsys):
    with pytest.raises(SystemExit) as exit_info:
        draccus.parse(config_class=config_class, args=["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    missing = [name for name in config_class.__dataclass_fields__ if f"--{name}" not in help_text]
    assert not missing


def test_paper_command_in_the_readme_parses_unchanged():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    command = readme[readme.index("torchrun --standalone") : readme.index("```", readme.index("torchrun --standalone"))]
    arguments = shlex.split(command.replace("\\\n", " "))
    paper_flags = arguments[arguments.index("vla-scripts/finetune_align.py") + 1 :]
    cfg = draccus.parse(config_class=AlignFinetuneConfig, args=paper_flags)
    assert (cfg.vla_layers_align, cfg.num_images_in_input, cfg.max_steps, cfg.gain_feat_1move) == (24, 2, 150005, True)
    assert cfg.use_vlm_norm and cfg.use_vggt_pe and cfg.learning_rate == 5e-4 and cfg.vggt_path == "ckpts/model.pt"
