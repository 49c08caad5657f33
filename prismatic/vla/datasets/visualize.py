"""A PNG grid of pipeline frames: every camera with and without augmentation, captioned with the instruction
and the (normalised) action chunk."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def camera_keys(frame: dict[str, Any]) -> list[str]:
    """The image keys of a frame's observation, primary first."""
    return sorted((key for key in frame["observation"] if key.startswith("image_")), key=lambda k: k != "image_primary")


def save_frame_grid(
    frames: Sequence[dict[str, Any]], augmented_frames: Sequence[dict[str, Any]], out_path: str | Path
) -> Path:
    """One row per frame: each camera plain, each camera augmented, then the instruction and action chunk."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cameras = camera_keys(frames[0])
    num_columns = 2 * len(cameras) + 1
    figure, axes = plt.subplots(
        len(frames), num_columns, figsize=(2.6 * num_columns + 1.5, 2.8 * len(frames)), squeeze=False
    )
    for row, (frame, augmented) in enumerate(zip(frames, augmented_frames, strict=True)):
        panels = [(frame, key, "") for key in cameras] + [(augmented, key, " (aug)") for key in cameras]
        for column, (source, key, suffix) in enumerate(panels):
            axes[row, column].imshow(source["observation"][key][0])
            axes[row, column].set_title(f"{key.removeprefix('image_')}{suffix}", fontsize=9)
            axes[row, column].axis("off")
        instruction = frame["task"]["language_instruction"].decode()
        chunk = "\n".join(" ".join(f"{value:+.2f}" for value in step) for step in np.asarray(frame["action"]))
        text_axis = axes[row, -1]
        text_axis.axis("off")
        text_axis.text(0.0, 1.0, f"{instruction}\n\naction chunk:\n{chunk}", va="top", family="monospace", fontsize=7)
    figure.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=80)
    plt.close(figure)
    return out_path
