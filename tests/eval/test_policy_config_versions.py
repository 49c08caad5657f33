"""``policy_config.json`` files of earlier format versions load as the same policy: version 1 recorded the alignment's
training flags as a plain record, version 2 records the aligner's ``AlignConfig`` itself."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from experiments.robot.libero.config import GenerateConfig
from experiments.robot.vla_policy import VLAPolicy
from prismatic.spatial_forcing.config import AlignConfig
from prismatic.util.checkpoint_files import POLICY_CONFIG_NAME
from prismatic.vla.policy_config import (
    POLICY_CONFIG_VERSION,
    PolicyConfig,
    SpatialForcingRecord,
    load_policy_config,
    read_policy_config,
    write_policy_config,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
# The Spatial Forcing record as format 1's training wrote it (a tiny run against VGGT).
VERSION_1_RECORD = {
    "vla_layers_align": 1,
    "vggt_layers_align": -1,
    "use_vlm_norm": True,
    "use_vggt_pe": False,
    "gain_feat_1move": False,
    "pooling_func": "avg",
    "align_loss_type": "smooth_l1",
    "align_loss_coeff": 0.25,
    "vggt_image_size": 112,
    "teacher": "vggt",
    "vggt_sha256": "ab" * 32,
}


def test_the_committed_version_1_file_loads_and_is_written_back_as_the_current_version(tmp_path: Path) -> None:
    committed = REPO_ROOT / "tests" / "eval" / "data" / "closed_loop_nn"
    assert json.loads((committed / POLICY_CONFIG_NAME).read_text())["format_version"] == 1
    config = read_policy_config(committed)
    assert config.format_version == POLICY_CONFIG_VERSION == 2
    assert (config.spatial_forcing, config.unnorm_key, config.num_images_in_input) == (
        None,
        "libero_spatial_no_noops",
        2,
    )
    write_policy_config(tmp_path, config)
    assert read_policy_config(tmp_path) == config


def test_a_version_1_alignment_record_becomes_the_align_config_with_the_same_field_values(tmp_path: Path) -> None:
    payload = {**PolicyConfig().to_dict(), "spatial_forcing": VERSION_1_RECORD, "format_version": 1}
    (tmp_path / POLICY_CONFIG_NAME).write_text(json.dumps(payload))
    record = read_policy_config(tmp_path).spatial_forcing
    assert isinstance(record, SpatialForcingRecord) and isinstance(record, AlignConfig)
    assert {name: getattr(record, name) for name in VERSION_1_RECORD} == VERSION_1_RECORD
    # Format 1 recorded no widths: AlignConfig's defaults; a record older than the teacher choice was VGGT's at 518.
    assert (record.vla_dim, record.vggt_dim, record.vggt_patch_size) == (4096, 1024, 14)
    oldest = {name: VERSION_1_RECORD[name] for name in ("vla_layers_align", "use_vggt_pe")}
    (tmp_path / POLICY_CONFIG_NAME).write_text(json.dumps({**payload, "spatial_forcing": oldest}))
    record = read_policy_config(tmp_path).spatial_forcing
    assert (record.teacher, record.vggt_image_size, record.vla_layers_align) == ("vggt", 518, 1)


def test_a_version_1_checkpoint_predicts_what_its_version_2_copy_does(tiny_checkpoint: Path, tmp_path: Path) -> None:
    current = load_policy_config(tiny_checkpoint)
    old = Path(shutil.copytree(tiny_checkpoint, tmp_path / "version-1"))
    payload = {**current.to_dict(), "spatial_forcing": VERSION_1_RECORD, "format_version": 1}
    (old / POLICY_CONFIG_NAME).write_text(json.dumps(payload))
    new = Path(shutil.copytree(old, tmp_path / "version-2"))
    write_policy_config(new, read_policy_config(old))
    assert json.loads((new / POLICY_CONFIG_NAME).read_text())["format_version"] == 2
    assert read_policy_config(new) == read_policy_config(old)
    assert dataclasses.replace(read_policy_config(old), spatial_forcing=None) == current

    rng = np.random.default_rng(0)
    observation = {
        "full_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "state": rng.normal(size=8),
    }
    chunks = [
        VLAPolicy.from_config(GenerateConfig(pretrained_checkpoint=str(folder))).predict_chunk(observation, "pick")
        for folder in (old, new)
    ]
    np.testing.assert_array_equal(chunks[0], chunks[1])


def test_a_file_of_a_newer_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / POLICY_CONFIG_NAME).write_text(json.dumps({"format_version": POLICY_CONFIG_VERSION + 1}))
    with pytest.raises(ValueError, match="format_version 3: expected at most 2"):
        read_policy_config(tmp_path)
