"""Render a depth-probing data set in the LIBERO simulator: RGB as the policy sees it, registered metric depth.

    python vla-scripts/make_depth_probe_data.py --out_dir data/depth_probe/libero_spatial \
        --suites '[libero_spatial]' --num_init_states 10 --num_perturbations 2

Each scene is one of the suites' initial states or a seeded random perturbation of it (objects moved and turned,
arm joints offset), rendered from both cameras and passed through the evaluation's image preprocessing; the metric
depth map follows the same flip, resize and crop. Interrupted runs resume (rendered scenes are kept). Writes
``meta.json``, ``scenes/*.npz`` and ``preview.png`` (format: prismatic/probing/data.py).
"""

import os

os.environ["USE_TF"] = "0"  # a rendering process: TensorFlow next to Mesa segfaults

import draccus  # noqa: E402

from experiments.robot.libero.depth_probe_data import DepthProbeDataConfig, write_depth_probe_data  # noqa: E402
from prismatic.util.cli import run_cli  # noqa: E402


@draccus.wrap()
def main(cfg: DepthProbeDataConfig) -> None:
    out_dir = write_depth_probe_data(cfg)
    print(f"Depth-probe data in {out_dir} (preview: {out_dir / 'preview.png'})")


if __name__ == "__main__":
    run_cli(main)
