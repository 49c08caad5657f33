"""probe_depth.py and alignment_maps.py on tiny checkpoints and a small rendered data set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prismatic.policy.components import load_component_state_dict
from prismatic.policy.load import find_checkpoint_file
from prismatic.probing.alignment_maps import AlignmentMapConfig, alignment_settings, make_alignment_maps
from prismatic.probing.data import load_probe_data
from prismatic.probing.features import load_probed_vla
from prismatic.spatial_forcing import SpatialForcingAligner, VGGTTeacher
from tests.probing.conftest import REPO_ROOT, TOOL_ENV, run_tool
from vggt.models.vggt import VGGT
from vggt.utils.load_fn import vla_pixels_to_vggt_images

TINY_PROBE_FLAGS = [
    "--probe.dpt_steps", "3", "--probe.batch_size", "2", "--probe.token_dim", "8",
    "--probe.dpt_features", "4", "--probe.target_size", "32", "--figure_scenes", "2",
]  # fmt: skip


def run_probe(checkpoints: list[Path], data: Path, out_dir: Path) -> dict:
    flags = ["--checkpoint", f"[{','.join(str(path) for path in checkpoints)}]", "--data", str(data)]
    completed = run_tool(["vla-scripts/probe_depth.py", *flags, "--out_dir", str(out_dir), *TINY_PROBE_FLAGS])
    assert "scaled to [0, 1, 1, 2]" in completed.stdout  # the paper's layers on the 2-layer tiny LLM
    return json.loads((out_dir / "metrics.json").read_text())


@pytest.mark.sim
def test_probe_depth_writes_metrics_and_figures_reproducibly(probe_data, tiny_checkpoints, tmp_path):
    metrics = run_probe(tiny_checkpoints, probe_data, tmp_path / "first")
    for name in ("layers.png", "predictions.png"):
        assert Image.open(tmp_path / "first" / name).size[0] > 300
    suites = ["libero_object", "libero_spatial"]
    assert metrics["data"]["suites"] == suites
    assert sorted(metrics["checkpoints"]) == ["tiny-oft", "tiny-sf"]
    for result in metrics["checkpoints"].values():
        assert result["layers"] == [0, 1, 1, 2]
        assert sorted(result["linear"]) == ["0", "1", "2"]
        for train_suite in suites:  # in-suite and cross-suite, per view and overall
            for test_suite in suites:
                for scores in (result["dpt"][train_suite][test_suite], result["linear"]["2"][train_suite][test_suite]):
                    assert sorted(scores) == ["all", "primary", "wrist"]
                    assert scores["all"]["abs_rel"] > 0 and scores["all"]["rmse"] > 0
                    assert 0 <= scores["all"]["delta1"] <= 1
    # Different checkpoints give different tokens, hence different linear-probe results.
    linear = [
        result["linear"]["2"]["libero_spatial"]["libero_spatial"]["all"] for result in metrics["checkpoints"].values()
    ]
    assert linear[0] != linear[1]
    # The same seed and budget give the same metrics.
    assert run_probe(tiny_checkpoints, probe_data, tmp_path / "second") == metrics


def test_probe_depth_names_a_missing_checkpoint_and_an_existing_result(tiny_checkpoints, tmp_path):
    env = {**os.environ, **TOOL_ENV}
    base = [sys.executable, "vla-scripts/probe_depth.py", "--data", str(tmp_path)]
    missing = subprocess.run(
        base + ["--checkpoint", f"[{tmp_path / 'nope'}]", "--out_dir", str(tmp_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "--checkpoint" in missing.stderr and "not a folder" in missing.stderr
    (tmp_path / "metrics.json").write_text("{}")
    existing = subprocess.run(
        base + ["--checkpoint", f"[{tiny_checkpoints[0]}]", "--out_dir", str(tmp_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert existing.returncode == 2 and "--overwrite" in existing.stderr


@pytest.mark.sim
def test_alignment_maps_mean_cosine_is_one_minus_the_training_alignment_loss(
    probe_data, tiny_sf_checkpoint, tiny_vggt_path, tmp_path, single_thread
):
    cfg = AlignmentMapConfig(
        checkpoint=tiny_sf_checkpoint, vggt_path=tiny_vggt_path, data=probe_data, vggt_image_size=112,
        vla_layers_align=1, out_dir=tmp_path,
    )  # fmt: skip
    summary = make_alignment_maps(cfg)
    assert Image.open(tmp_path / "alignment_maps.png").size[0] > 400
    assert json.loads((tmp_path / "alignment_maps.json").read_text()) == summary
    # Independent route: the training loss (1 - mean cosine over all visual tokens) on the same query.
    data = load_probe_data(probe_data)
    index = next(i for i, scene in enumerate(data.scenes) if scene.name == summary["scene"])
    model = load_probed_vla(tiny_sf_checkpoint, "tiny-sf", ["libero_spatial"])
    vggt = VGGT.from_checkpoint(tiny_vggt_path)
    state = load_component_state_dict(find_checkpoint_file(tiny_sf_checkpoint, "align_projector"))
    aligner = SpatialForcingAligner(alignment_settings(model, vggt, state, 1))
    aligner.projector.load_state_dict(state)
    teacher = VGGTTeacher(vggt, lambda pixels: vla_pixels_to_vggt_images(pixels, num_images=2, target_size=112))
    with torch.no_grad():
        hidden_states, pixel_values = model.query(data.rgb[index], data.scenes[index].instruction, data.state[index])
        tokens = aligner.select_vision_tokens(hidden_states, 1, 512)
        loss = aligner(tokens, *teacher(pixel_values), vla_grid_hw=(16, 16))
    assert np.mean(list(summary["mean_cosine"].values())) == pytest.approx(1 - float(loss), abs=1e-5)
