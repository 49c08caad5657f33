"""Spatial Forcing as a plug-in for any VLA training loop (torch only; see README.md in this folder).

A frozen teacher (VGGT; or, from depth, ``GeometryTeacher``; or the ``RGBTeacher`` control) supplies per-patch
targets; an ``AlignProjector`` maps the VLA's intermediate visual hidden states onto them; the alignment loss is
added to the task loss.
"""

from prismatic.spatial_forcing.aligner import SpatialForcingAligner, vision_token_slice
from prismatic.spatial_forcing.config import AlignConfig
from prismatic.spatial_forcing.losses import ALIGN_LOSS_TYPES, align_loss
from prismatic.spatial_forcing.projector import AlignProjector
from prismatic.spatial_forcing.targets import (
    POOLING_FUNCS,
    camera_token_mask,
    grid_position_embedding,
    resample_patch_grid,
    target_grid_from_token_count,
    teacher_targets,
    uv_grid,
)
from prismatic.spatial_forcing.teacher import FrozenTeacher, TeacherFeatures, VGGTTeacher
from prismatic.spatial_forcing.teachers import TEACHERS, GeometryTeacher, RGBTeacher, check_teacher

__all__ = [
    "ALIGN_LOSS_TYPES",
    "POOLING_FUNCS",
    "AlignConfig",
    "AlignProjector",
    "FrozenTeacher",
    "GeometryTeacher",
    "RGBTeacher",
    "SpatialForcingAligner",
    "TEACHERS",
    "TeacherFeatures",
    "VGGTTeacher",
    "align_loss",
    "camera_token_mask",
    "check_teacher",
    "grid_position_embedding",
    "resample_patch_grid",
    "target_grid_from_token_count",
    "teacher_targets",
    "uv_grid",
    "vision_token_slice",
]
