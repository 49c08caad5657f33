"""Spatial Forcing's training parts, shared by every family: the trainable aligner, the frozen teacher of
``--teacher`` and their record in ``policy_config.json``. A family passes what differs: its LM width, its image
size and how its batch's pixel values become teacher frames (or None when its losses pass teacher frames)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from typing import Any

import torch
from torch import nn

from prismatic.spatial_forcing.config import AlignConfig
from prismatic.training.config import AlignFinetuneConfig, FinetuneConfig
from prismatic.util.io import file_sha256
from prismatic.vla.policy_config import PolicyConfig, SpatialForcingRecord

# A family's batch pixel values to teacher frames of side ``target_size`` (keyword).
PrepareImages = Callable[..., torch.Tensor]


def spatial_forcing_record(cfg: AlignFinetuneConfig, align_config: AlignConfig) -> SpatialForcingRecord:
    """``policy_config.json``'s Spatial Forcing settings: the aligner's ``align_config`` and the teacher's flags."""
    teacher: dict[str, Any] = {"teacher": cfg.teacher, "vggt_image_size": cfg.vggt_image_size}
    if cfg.teacher == "vggt":  # the teacher file, for tools that load it again
        teacher["vggt_sha256"] = file_sha256(cfg.vggt_path)
    else:
        teacher |= {name: getattr(cfg, name) for name in ("teacher_width", "teacher_patch_size", "teacher_seed")}
    if cfg.teacher == "geometry":
        teacher |= {name: list(getattr(cfg, name)) for name in ("geometry_workspace_min", "geometry_workspace_max")}
    return SpatialForcingRecord(**asdict(align_config), **teacher)


def fixed_teacher(cfg: AlignFinetuneConfig, image_size: int, prepare_images: PrepareImages | None) -> nn.Module:
    """The frozen ``geometry`` or ``rgb`` teacher of ``cfg`` on the CPU (``image_size``: the side of the VLA's
    square input images, which the rgb control reads at their own size in [0, 1])."""
    from prismatic.spatial_forcing import GeometryTeacher, RGBTeacher

    if cfg.teacher == "geometry":
        return GeometryTeacher(
            cfg.teacher_width,
            cfg.teacher_patch_size,
            cfg.geometry_workspace_min,
            cfg.geometry_workspace_max,
            cfg.teacher_seed,
        )
    if prepare_images is not None:
        prepare_images = partial(prepare_images, target_size=image_size)
    return RGBTeacher(cfg.teacher_width, cfg.teacher_patch_size, prepare_images, cfg.teacher_seed)


def build_alignment(
    cfg: FinetuneConfig,
    policy_config: PolicyConfig,
    llm_dim: int,
    device: torch.device,
    image_size: int,
    prepare_images: PrepareImages | None,
) -> tuple[nn.Module | None, nn.Module | None]:
    """Spatial Forcing of an ``AlignFinetuneConfig`` (else ``(None, None)``): the trainable aligner (AlignProjector
    inside) and the frozen teacher of ``--teacher`` on ``device``, their settings recorded in ``policy_config``
    (``image_size``: the side of the VLA's square input images)."""
    from prismatic.spatial_forcing import SpatialForcingAligner, VGGTTeacher
    from vggt.models.vggt import VGGT

    if not isinstance(cfg, AlignFinetuneConfig):
        return None, None
    if cfg.teacher != "vggt":
        align_config = cfg.align_config(llm_dim, cfg.teacher_width // 2, cfg.teacher_patch_size)
        aligner = SpatialForcingAligner(align_config).to(device)
        teacher = fixed_teacher(cfg, image_size, prepare_images).to(device)
    else:
        vggt = VGGT.from_checkpoint(cfg.vggt_path).to(device)
        teacher = VGGTTeacher(
            vggt,
            weights_dtype=getattr(torch, cfg.vggt_dtype),
            prepare_images=None if prepare_images is None else partial(prepare_images, target_size=cfg.vggt_image_size),
            layer=cfg.vggt_layers_align,
        )
        aligner = SpatialForcingAligner(cfg.align_config(llm_dim, vggt.embed_dim, vggt.patch_size)).to(device)
    policy_config.spatial_forcing = spatial_forcing_record(cfg, aligner.config)
    return aligner, teacher
