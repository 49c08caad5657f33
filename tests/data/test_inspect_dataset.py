"""vla-scripts/inspect_dataset.py: statistics file, batch description and preview grid from its real flags."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import draccus
import numpy as np
from PIL import Image

from prismatic.vla.datasets import load_dataset_statistics

SCRIPT = Path(__file__).resolve().parents[2] / "vla-scripts" / "inspect_dataset.py"


def load_script():
    spec = importlib.util.spec_from_file_location("inspect_dataset_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_inspect_dataset_writes_numpy_exact_statistics_and_a_preview(
    synthetic_dataset, expected_statistics, check_statistics, tmp_path, capsys
):
    script = load_script()
    stats_out, preview_out = tmp_path / "stats" / "dataset_statistics.json", tmp_path / "preview.png"
    args = ["--data_root_dir", str(synthetic_dataset.data_root_dir), "--dataset_name", "libero_spatial_no_noops"]
    args += ["--stats_out", str(stats_out), "--num_batches", "1", "--batch_size", "2"]
    args += ["--shuffle_buffer_size", "32", "--num_preview_frames", "2", "--preview_out", str(preview_out)]
    script.inspect_dataset(draccus.parse(script.InspectConfig, args=args))

    check_statistics(load_dataset_statistics(stats_out)["libero_spatial_no_noops"], expected_statistics)
    printed = capsys.readouterr().out
    assert "libero_spatial_no_noops: 20 episodes, 280 transitions" in printed
    assert "pixel_values    (2, 12, 224, 224) torch.float32" in printed
    assert "actions         (2, 8, 7) torch.float32" in printed
    assert "attention_mask  (2, " in printed and "torch.bool" in printed
    preview = np.asarray(Image.open(preview_out).convert("RGB"))
    assert preview.shape[0] > 200 and preview.shape[1] > 600 and preview.std() > 10  # two rows of five panels
