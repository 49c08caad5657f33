"""Camera geometry carried beside the images, for the geometry teacher (``--teacher geometry``).

What a dataset must hold per frame and camera (names agreed with the simulator's demonstration writer):

- RLDS (``steps/observation``): ``<image key>_depth`` float32 ``[H, W]`` metric z-depth (metres along the optical
  axis, the same pixels and orientation as the camera's image) and ``<image key>_intrinsics`` float32 ``[3, 3]``
  pinhole matrix ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in pixels of the depth image, OpenCV convention (pixel
  ``(row, col)`` centred at ``(x=col, y=row)``; camera x right, y down, z forward). LIBERO: ``image_depth``,
  ``image_intrinsics``, ``wrist_image_depth``, ``wrist_image_intrinsics``. Extrinsics, if stored, are not read.
- LeRobot: the features named by ``--lerobot_depth_keys`` (float32 ``[H, W]`` or ``[H, W, 1]``) and
  ``--lerobot_intrinsics_keys`` (float32 ``[3, 3]`` or ``[9]``, row-major), one per camera in camera order.

The pipelines turn depth and intrinsics into a camera-frame point map ``[H, W, 3]`` at the stored resolution
(``points_from_depth``), then resize it (bilinear, half-pixel centres: the geometry of the images' lanczos3 resize) and
crop it with the image's augmentation box (the same ``crop_and_resize``), so every point sits under the pixel the VLA
sees. Frames carry it as ``observation/points_<view>`` ``[1, H, W, 3]`` float32; batches as ``camera_points``
``[B, S, H, W, 3]``. The depth must have the image's aspect ratio (any resolution), else the normalised crop box
would cut a different part of the scene from the depth than from the image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DEPTH_SUFFIX = "_depth"
INTRINSICS_SUFFIX = "_intrinsics"


def points_from_depth(depth: Any, intrinsics: Any, xp: Any = np) -> Any:
    """Metric z-depth ``[H, W]`` and intrinsics ``[3, 3]`` -> camera-frame points ``[H, W, 3]`` float32.

    ``xp`` is the array namespace: numpy (LeRobot path) or ``tf.experimental.numpy`` (the tf.data graph).
    """
    depth = xp.asarray(depth, dtype=xp.float32)
    intrinsics = xp.asarray(intrinsics, dtype=xp.float32)
    rows = xp.cumsum(xp.ones_like(depth[:, :1]), axis=0) - 1  # [H, 1]: 0, 1, ... (no static shape needed)
    cols = xp.cumsum(xp.ones_like(depth[:1, :]), axis=1) - 1  # [1, W]
    x = (cols - intrinsics[0, 2]) / intrinsics[0, 0] * depth
    y = (rows - intrinsics[1, 2]) / intrinsics[1, 1] * depth
    return xp.stack([x, y, depth], axis=-1)


def check_depth_follows_crop(image_hw: tuple[int, int], depth_hw: tuple[int, int], depth_name: str) -> None:
    """Raise a ValueError naming ``depth_name`` unless the depth has the image's aspect ratio."""
    if image_hw[0] * depth_hw[1] != image_hw[1] * depth_hw[0]:
        raise ValueError(
            f"{depth_name} is {depth_hw[0]}x{depth_hw[1]} but its image is {image_hw[0]}x{image_hw[1]}: the image "
            f"crop cannot be applied to a depth map of another aspect ratio; expected depth of the image's aspect "
            f"ratio (same field of view)"
        )
