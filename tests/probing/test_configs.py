"""The probing CLIs' configs: --help lists every flag, and the documented commands parse as documented."""

from __future__ import annotations

import shlex
from pathlib import Path

import draccus
import pytest

from experiments.robot.libero.depth_probe_data import DepthProbeDataConfig
from prismatic.probing.alignment_maps import AlignmentMapConfig
from prismatic.probing.depth_probe import ProbeDepthConfig
from prismatic.probing.features import PAPER_LAYERS, resolve_layers

DEPTH_PROBING_DOC = Path(__file__).resolve().parents[2] / "docs" / "reference" / "depth-probing.md"


@pytest.mark.parametrize("config_class", [DepthProbeDataConfig, ProbeDepthConfig, AlignmentMapConfig])
def test_help_lists_every_flag(config_class, capsys):
    with pytest.raises(SystemExit) as exit_info:
        draccus.parse(config_class=config_class, args=["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert not [name for name in config_class.__dataclass_fields__ if f"--{name}" not in help_text]


def documented_command(script: str, occurrence: int) -> list[str]:
    text = DEPTH_PROBING_DOC.read_text()
    start = -1
    for _ in range(occurrence + 1):
        start = text.index(f"python vla-scripts/{script}", start + 1)
    end = min(text.index("\n#", start) if "\n#" in text[start:] else len(text), text.index("```", start))
    arguments = shlex.split(text[start:end].replace("\\\n", " "))
    return arguments[2:]


def test_documented_commands_parse_as_documented():
    tiny = draccus.parse(config_class=ProbeDepthConfig, args=documented_command("probe_depth.py", 1))
    assert [str(path) for path in tiny.checkpoint] == ["ckpts/tiny-a/tiny-openvla", "ckpts/tiny-b/tiny-openvla"]
    sf_vs_oft = draccus.parse(config_class=ProbeDepthConfig, args=documented_command("probe_depth.py", 2))
    assert [path.name for path in sf_vs_oft.checkpoint] == [
        "spatial-forcing-7b-finetuned-libero-spatial",
        "openvla-7b-oft-finetuned-libero-spatial",
    ]
    assert sf_vs_oft.layers == [6, 12, 18, 24] and sf_vs_oft.probe.seed == 0
    data = draccus.parse(config_class=DepthProbeDataConfig, args=documented_command("make_depth_probe_data.py", 0))
    assert data.suites == ["libero_spatial", "libero_object"] and data.num_perturbations == 2
    maps = draccus.parse(config_class=AlignmentMapConfig, args=documented_command("alignment_maps.py", 0))
    assert maps.vggt_path == Path("ckpts/model.pt")


def test_paper_layers_are_kept_on_a_32_layer_llm_and_scaled_on_a_tiny_one():
    assert resolve_layers(PAPER_LAYERS, 32) == ([6, 12, 18, 24], None)
    layers, note = resolve_layers(PAPER_LAYERS, 2)
    assert layers == [0, 1, 1, 2] and "scaled" in note
