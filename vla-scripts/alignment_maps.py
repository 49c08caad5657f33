"""Alignment maps of a Spatial Forcing checkpoint: per-token cosine similarity to the VGGT targets, and PCAs.

    python vla-scripts/alignment_maps.py --checkpoint ckpts/sf-libero-spatial --vggt_path ckpts/model.pt \
        --data data/depth_probe/libero_spatial --out_dir runs/alignment_maps

Takes a scene of a make_depth_probe_data.py folder (--scene NAME, default the first test scene) or two image files
(--image, --wrist_image, --instruction). Writes alignment_maps.png and alignment_maps.json.
"""

import os

os.environ.setdefault("USE_TF", "0")  # keep transformers from importing TensorFlow on its own

import draccus  # noqa: E402

from prismatic.probing.alignment_maps import AlignmentMapConfig, make_alignment_maps  # noqa: E402
from prismatic.util.cli import run_cli  # noqa: E402


@draccus.wrap()
def main(cfg: AlignmentMapConfig) -> None:
    summary = make_alignment_maps(cfg)
    cosines = ", ".join(f"{view} {value:.3f}" for view, value in summary["mean_cosine"].items())
    print(f"{summary['scene']}: mean cosine (projected VLA tokens vs VGGT targets): {cosines}; figure in {cfg.out_dir}")


if __name__ == "__main__":
    run_cli(main)
