"""probe_depth.py checks every checkpoint before any work, and probes base models (no heads) without complaint."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from prismatic.probing import depth_probe
from prismatic.probing.alignment_maps import teacher_image_size
from prismatic.probing.data import ScenePlan, load_probe_data, write_meta, write_scene
from prismatic.probing.depth_probe import ProbeDepthConfig, run_probe_depth
from prismatic.probing.features import check_probe_checkpoint, load_probed_vla
from prismatic.testing.tiny_vla import save_tiny_vla_checkpoint
from prismatic.util.cli import UserError
from prismatic.vla.policy_config import PolicyConfig, SpatialForcingRecord


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A probe data folder in make_depth_probe_data.py's format: one suite, a train and a test scene (random)."""
    root = tmp_path_factory.mktemp("probe_data")
    rng = np.random.default_rng(0)
    scenes = [
        ScenePlan(f"libero_spatial_t00_i00{index}_v00", "libero_spatial", 0, index, 0, split, "pick up the bowl")
        for index, split in enumerate(("train", "test"))
    ]
    for scene in scenes:
        write_scene(
            root,
            scene.name,
            rgb=rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8),
            depth=rng.uniform(0.5, 2.0, (2, 224, 224)).astype(np.float32),
            state=np.zeros(8),
        )
    preprocessing = {"center_crop": True, "crop_area": 0.9}
    meta = {"format_version": 1, "settings": {"env_img_res": 224}, "preprocessing": preprocessing}
    write_meta(root, {**meta, "scenes": [dataclasses.asdict(s) for s in scenes]})
    return root


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    """A base model as released (openvla-7b's layout): weights, processor, no heads, no statistics."""
    return save_tiny_vla_checkpoint(tmp_path_factory.mktemp("ckpts") / "tiny-base", seed=0)


def test_a_broken_second_checkpoint_stops_the_run_before_the_first_is_probed(
    tiny_data, base_model, tmp_path, monkeypatch
):
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(base_model / "config.json", broken / "config.json")  # no weights
    extracted = []
    monkeypatch.setattr(depth_probe, "extract_features", lambda *args: extracted.append(args))
    cfg = ProbeDepthConfig(checkpoint=[base_model, broken], data=tiny_data, out_dir=tmp_path / "out")
    with pytest.raises(UserError, match=f"--checkpoint {broken} holds no model weights"):
        run_probe_depth(cfg)
    assert extracted == [] and not (tmp_path / "out").exists()


def test_a_base_model_without_heads_is_probed_without_a_proprio_token_or_a_warning(tiny_data, base_model, caplog):
    data = load_probe_data(tiny_data)
    checked = check_probe_checkpoint(base_model, data)
    assert checked.policy_config.use_proprio is False
    with caplog.at_level(logging.WARNING):
        model = load_probed_vla(base_model, "tiny-base", data.suites, checked)
    ours = [record.getMessage() for record in caplog.records if record.name.startswith("prismatic")]
    assert ours == []  # no "discrete_tokens" or proprio override warning
    assert model.loaded.action_head is None and model.proprio_stats is None
    hidden_states, _ = model.query(data.rgb[0], data.scenes[0].instruction, data.state[0])
    assert len(hidden_states) == model.num_llm_layers + 1
    assert model.visual_tokens(hidden_states[-1], 2).shape[:2] == (2, model.patches_per_image)


def test_alignment_maps_feed_the_teacher_the_image_size_the_checkpoint_was_trained_with():
    tiny_run = PolicyConfig(spatial_forcing=SpatialForcingRecord(teacher="vggt", vggt_image_size=112))
    assert teacher_image_size(None, tiny_run) == 112  # a 112 px tiny run, not VGGT's 518
    assert teacher_image_size(224, tiny_run) == 224  # --vggt_image_size still wins
    assert teacher_image_size(None, PolicyConfig()) == 518  # a released checkpoint records none
