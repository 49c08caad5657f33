"""Alignment maps of a Spatial Forcing checkpoint: where do its projected visual tokens agree with VGGT?

For one scene (both cameras), as in a training step: the VLA's hidden states at ``vla_layers_align`` in the
alignment's token window go through the checkpoint's ``align_projector--*.pt``; the frozen VGGT's features become
targets (prismatic/spatial_forcing: special tokens dropped, positional embedding, resampled to the VLA grid). The
figure shows, per camera, the per-token cosine similarity as a heat map over the image, and a 3-component PCA of the
VLA tokens beside one of the VGGT targets (similar colour layouts = similar feature structure).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from prismatic.policy.components import load_component_state_dict
from prismatic.policy.load import find_checkpoint_file
from prismatic.probing.data import load_probe_data
from prismatic.probing.features import ProbedVLA, load_probed_vla
from prismatic.probing.figures import save_alignment_figure
from prismatic.spatial_forcing import AlignConfig, SpatialForcingAligner, VGGTTeacher
from prismatic.util.cli import UserError
from prismatic.util.io import file_sha256, write_json_atomic
from prismatic.vla.image_utils import center_crop_image, check_image_format, resize_image_for_policy
from prismatic.vla.policy_config import PolicyConfig, read_policy_config
from vggt.constants import VGGT_IMAGE_SIZE
from vggt.models.vggt import VGGT
from vggt.utils.load_fn import vla_pixels_to_vggt_images

ALIGN_PROJECTOR = "align_projector"


@dataclass
class AlignmentMapConfig:
    checkpoint: Path = Path("")  # A Spatial Forcing checkpoint folder (with align_projector--*.pt)
    vggt_path: Path = Path("ckpts/model.pt")  # The VGGT weights the checkpoint was trained against
    data: Path | None = None  # A make_depth_probe_data.py folder to take the scene from ...
    scene: str = ""  # ... its scene name (default: the first test scene)
    image: Path | None = None  # ... or a primary-camera image file (upright, any size) ...
    wrist_image: Path | None = None  # ... and a wrist-camera image file (the proprio token then gets a zero state)
    instruction: str = ""  # Task text of the prompt (default: the scene's)
    vggt_image_size: int | None = None  # Teacher input size (default: the checkpoint's recorded one, else 518)
    vla_layers_align: int | None = None  # Override of the checkpoint's alignment settings (policy_config.json)
    out_dir: Path = Path("runs/alignment_maps")


def alignment_settings(
    model: ProbedVLA, vggt: VGGT, projector_state: dict[str, Tensor], override_layer: int | None
) -> AlignConfig:
    """The checkpoint's alignment settings: ``policy_config.json``'s ``spatial_forcing`` (the training's
    ``AlignConfig``), else the paper's defaults, with the widths of the loaded models and ``use_vlm_norm`` read off
    the projector file itself."""
    recorded = model.policy_config.spatial_forcing or AlignConfig()
    config = dataclasses.replace(
        recorded,
        vla_dim=model.loaded.vla.llm_dim,
        vggt_dim=vggt.embed_dim,
        use_vlm_norm="vlm_norm.weight" in projector_state,
        vggt_patch_size=vggt.patch_size,
        vla_layers_align=recorded.vla_layers_align if override_layer is None else override_layer,
    )
    if not 0 <= config.vla_layers_align <= model.num_llm_layers:
        raise UserError(
            f"vla_layers_align {config.vla_layers_align} is outside the {model.num_llm_layers}-layer LLM of "
            f"--checkpoint {model.name}; pass --vla_layers_align (the layer the checkpoint was aligned at)"
        )
    return config


def teacher_image_size(requested: int | None, policy_config: PolicyConfig) -> int:
    """The teacher's input size: ``requested``, else the training run's ``--vggt_image_size`` as the checkpoint's
    ``policy_config.json`` records it, else VGGT's own 518."""
    if requested is not None:
        return requested
    recorded = policy_config.spatial_forcing
    return VGGT_IMAGE_SIZE if recorded is None else recorded.vggt_image_size


def pca_colors(features: Tensor, grid: tuple[int, int, int]) -> np.ndarray:
    """First three principal components of ``[N, C]`` features, each min-max scaled to [0, 1]: ``[V, h, w, 3]``."""
    centered = features.double() - features.double().mean(0)
    _, _, right = torch.linalg.svd(centered, full_matrices=False)
    components = centered @ right[:3].T  # [N, 3]
    low, high = components.min(0).values, components.max(0).values
    return ((components - low) / (high - low).clamp(min=1e-12)).reshape(*grid, 3).float().numpy()


def _policy_image(path: Path, center_crop: bool, crop_area: float) -> np.ndarray:
    from PIL import Image

    try:
        image = np.asarray(Image.open(path).convert("RGB"))
    except OSError as error:
        raise UserError(f"{path}: cannot read the image ({error})") from None
    check_image_format(image, str(path))
    image = resize_image_for_policy(image)
    return center_crop_image(image, crop_area) if center_crop else image


def _scene_inputs(cfg: AlignmentMapConfig, model: ProbedVLA) -> tuple[np.ndarray, str, np.ndarray, str]:
    """Policy images ``[V, 224, 224, 3]``, instruction, proprio state and a label."""
    if cfg.data is not None:
        data = load_probe_data(cfg.data)
        names = [scene.name for scene in data.scenes]
        if cfg.scene and cfg.scene not in names:
            raise UserError(f"--scene {cfg.scene!r} is not in --data {cfg.data} (e.g. {names[0]!r})")
        index = names.index(cfg.scene) if cfg.scene else next(i for i, s in enumerate(data.scenes) if s.split == "test")
        scene = data.scenes[index]
        return data.rgb[index], cfg.instruction or scene.instruction, data.state[index], scene.name
    if cfg.image is None or cfg.wrist_image is None:
        raise UserError("give --data (and optionally --scene), or both --image and --wrist_image")
    image_config = model.policy_config.image
    rgb = np.stack(
        [_policy_image(path, image_config.center_crop, image_config.crop_area) for path in (cfg.image, cfg.wrist_image)]
    )
    state_dim = model.policy_config.embodiment.proprio_dim
    return rgb, cfg.instruction, np.zeros(state_dim), Path(cfg.image).stem


def check_teacher(checkpoint: Path, vggt_path: Path) -> None:
    """The checkpoint was trained against VGGT (the maps compare with VGGT's features), and ``vggt_path`` holds that
    VGGT when its ``policy_config.json`` records it (checkpoints written before the record, and released ones, are
    taken as they are)."""
    try:
        policy_config = read_policy_config(checkpoint)
    except ValueError as error:
        raise UserError(f"--checkpoint {checkpoint}: {error}") from None
    recorded = policy_config.spatial_forcing if policy_config is not None else None
    teacher = "vggt" if recorded is None else recorded.teacher
    if teacher != "vggt":
        raise UserError(
            f"--checkpoint {checkpoint}: trained against the {teacher!r} teacher; alignment maps compare with VGGT "
            "features, expected a checkpoint of --teacher vggt"
        )
    if not vggt_path.is_file():
        raise UserError(f"--vggt_path {vggt_path}: no such file; expected VGGT weights (model.pt)")
    digest = recorded.vggt_sha256 if recorded is not None else None
    if digest is None:
        return
    actual = file_sha256(vggt_path)
    if actual != digest:
        raise UserError(
            f"--vggt_path {vggt_path} is not the VGGT --checkpoint {checkpoint} was trained against (SHA-256 "
            f"{actual[:12]}..., its policy_config.json records {digest[:12]}...): expected the run's --vggt_path"
        )


@torch.inference_mode()
def make_alignment_maps(cfg: AlignmentMapConfig) -> dict[str, Any]:
    """Write ``alignment_maps.png`` and ``alignment_maps.json`` (mean cosine per camera) into ``out_dir``."""
    check_teacher(cfg.checkpoint, cfg.vggt_path)
    model = load_probed_vla(cfg.checkpoint, Path(cfg.checkpoint).name, ["libero_spatial"])
    try:
        projector_state = load_component_state_dict(find_checkpoint_file(cfg.checkpoint, ALIGN_PROJECTOR))
    except FileNotFoundError as error:
        raise UserError(
            f"--checkpoint {cfg.checkpoint}: {error} (alignment maps need a Spatial Forcing checkpoint)"
        ) from None
    vggt = VGGT.from_checkpoint(cfg.vggt_path).to(model.device)
    align_config = alignment_settings(model, vggt, projector_state, cfg.vla_layers_align)
    aligner = SpatialForcingAligner(align_config)
    try:
        aligner.projector.load_state_dict(projector_state)
    except RuntimeError as error:
        raise UserError(
            f"--checkpoint {cfg.checkpoint}: {ALIGN_PROJECTOR} does not fit a VLA of width "
            f"{align_config.vla_dim} and a VGGT of width {align_config.vggt_dim}: {error}"
        ) from None
    aligner = aligner.to(model.device).eval()
    rgb, instruction, state, label = _scene_inputs(cfg, model)
    num_views = rgb.shape[0]
    hidden_states, pixel_values = model.query(rgb, instruction, state)
    num_tokens = num_views * model.patches_per_image
    tokens = aligner.select_vision_tokens(hidden_states, num_prefix_tokens=1, num_vision_tokens=num_tokens)
    image_size = teacher_image_size(cfg.vggt_image_size, model.policy_config)
    prepare = functools.partial(vla_pixels_to_vggt_images, num_images=num_views, target_size=image_size)
    teacher = VGGTTeacher(vggt, prepare_images=prepare, layer=align_config.vggt_layers_align)
    targets = aligner.targets(*teacher(pixel_values.float()), num_vla_tokens=num_tokens, vla_grid_hw=model.grid_hw)
    projected = aligner.projector(tokens).float()  # [1, N, 2C]
    similarity = F.cosine_similarity(projected, targets, dim=-1)[0]  # [N]
    grid = (num_views, *model.grid_hw)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    save_alignment_figure(
        rgb,
        similarity.reshape(grid).cpu().numpy(),
        pca_colors(tokens[0].float().cpu(), grid),
        pca_colors(targets[0].cpu(), grid),
        cfg.out_dir / "alignment_maps.png",
    )
    summary = {
        "checkpoint": str(cfg.checkpoint),
        "scene": label,
        "instruction": instruction,
        "align_settings": {
            "vla_layers_align": align_config.vla_layers_align,
            "gain_feat_1move": align_config.gain_feat_1move,
            "use_vggt_pe": align_config.use_vggt_pe,
            "pooling_func": align_config.pooling_func,
            "vggt_image_size": image_size,
        },
        "mean_cosine": {
            view: float(value)
            for view, value in zip(("primary", "wrist"), similarity.reshape(num_views, -1).mean(1).cpu(), strict=False)
        },
    }
    write_json_atomic(cfg.out_dir / "alignment_maps.json", summary)
    return summary
