"""Frozen visual tokens of a checkpoint, read from the LLM's hidden states exactly as in a rollout query.

The checkpoint is loaded with :func:`prismatic.policy.load.load_vla` as its ``policy_config.json`` describes it
(upstream's LIBERO defaults for a released folder without one). Each scene is one policy query: the task's prompt,
both camera images (already in the policy's preprocessing, see prismatic/probing/data.py), the normalised proprio
token when the policy reads proprio, and the action slots as ``predict_action`` builds them. Attention is
bidirectional, so all of these shape the visual tokens. Visual token ``k`` of a camera sits at position
``1 + camera * P + k`` (after BOS): its own patch, without the alignment's one-position shift.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from prismatic.models.family import CheckedCheckpoint
from prismatic.policy.checkpoint_checks import check_policy_checkpoint
from prismatic.policy.components import component_names
from prismatic.policy.load import LoadedVLA, load_vla
from prismatic.policy.policy import policy_device, resolve_unnorm_key
from prismatic.probing.data import ProbeData
from prismatic.util.checkpoint_install import settle_pending_install
from prismatic.util.cli import UserError
from prismatic.vla.normalization import normalize
from prismatic.vla.policy_config import PolicyConfig, load_policy_config
from prismatic.vla.prompt import build_prompt

# The paper probes the aligned layer (24) and three earlier ones of the 32-layer Llama-2-7B.
PAPER_LAYERS = (6, 12, 18, 24)
PAPER_LLM_DEPTH = 32
NUM_PREFIX_TOKENS = 1  # BOS precedes the visual tokens
PROPRIO_PROJECTOR, FILM_BACKBONE = "proprio_projector", "vision_backbone"  # the components that shape the tokens


def resolve_layers(requested: Sequence[int], num_llm_layers: int) -> tuple[list[int], str | None]:
    """The hidden-state indices to probe (0 = embeddings, k = after decoder layer k) and a note when changed.

    Layers beyond a (tiny) model's depth are scaled to it: ``round(layer * depth / 32)``, as the paper's layers sit
    in the 32-layer LLM; repeats are kept so the DPT probe still gets four inputs.
    """
    requested = list(requested)
    if any(layer < 0 for layer in requested):
        raise UserError(f"--layers {requested}: expected hidden-state indices >= 0")
    if max(requested) <= num_llm_layers:
        return requested, None
    scaled = [round(layer * num_llm_layers / PAPER_LLM_DEPTH) for layer in requested]
    note = (
        f"--layers {requested} exceed the {num_llm_layers}-layer LLM; scaled to {scaled} "
        f"(round(layer * {num_llm_layers} / {PAPER_LLM_DEPTH}))"
    )
    return scaled, note


def checkpoint_policy_config(checkpoint_dir: str | Path) -> PolicyConfig:
    """``policy_config.json`` of the folder, else upstream's LIBERO evaluation defaults (a released checkpoint)."""
    try:
        return load_policy_config(checkpoint_dir)
    except ValueError as error:
        raise UserError(str(error)) from None


def probe_policy_config(checkpoint_dir: Path) -> PolicyConfig:
    """The checkpoint's policy config as probing reads it: no action head is needed to read visual tokens, and the
    proprio token is appended only where a proprio projector was trained (a base model such as openvla-7b has none)."""
    settle_pending_install(checkpoint_dir, "--checkpoint")
    policy_config = checkpoint_policy_config(checkpoint_dir)
    if policy_config.model_family != "openvla-oft":
        raise UserError(
            f"--checkpoint {checkpoint_dir}: model_family {policy_config.model_family!r}; expected 'openvla-oft'"
        )
    has_projector = any(checkpoint_dir.glob(f"{PROPRIO_PROJECTOR}--*checkpoint*.pt"))
    return dataclasses.replace(policy_config, use_proprio=policy_config.use_proprio and has_projector)


def token_components(policy_config: PolicyConfig) -> list[str]:
    """The components that shape the visual tokens: the FiLM vision backbone and the proprio projector."""
    names = component_names(policy_config, inference_only=True)
    return [name for name in names if name in (PROPRIO_PROJECTOR, FILM_BACKBONE)]


def check_probe_checkpoint(checkpoint_dir: Path, data: ProbeData) -> CheckedCheckpoint:
    """Every file probing reads from a checkpoint (weights, token components, statistics for the proprio token) and
    its fit to the data, checked from headers before any work; returns its probing policy config and statistics,
    for :func:`load_probed_vla`."""
    if not checkpoint_dir.is_dir():
        raise UserError(f"--checkpoint {checkpoint_dir}: not a folder; expected a checkpoint in the released layout")
    policy_config = probe_policy_config(checkpoint_dir)
    components = token_components(policy_config)
    norm_stats = check_policy_checkpoint(
        checkpoint_dir, "--checkpoint", components, require_statistics=policy_config.use_proprio
    )
    check_preprocessing(policy_config, data, checkpoint_dir)
    return CheckedCheckpoint(checkpoint_dir, policy_config, norm_stats)


@dataclass
class ProbedVLA:
    """A loaded checkpoint answering "hidden states of this scene's policy query"."""

    name: str
    loaded: LoadedVLA
    policy_config: PolicyConfig
    proprio_stats: dict | None
    device: torch.device
    dtype: torch.dtype

    @property
    def num_llm_layers(self) -> int:
        return self.loaded.vla.config.text_config.num_hidden_layers

    @property
    def patches_per_image(self) -> int:
        return self.loaded.vla.vision_backbone.get_num_patches()

    @property
    def grid_hw(self) -> tuple[int, int]:
        side = int(round(self.patches_per_image**0.5))
        return side, self.patches_per_image // side

    @torch.inference_mode()
    def query(self, rgb: np.ndarray, instruction: str, state: np.ndarray) -> tuple[tuple[Tensor, ...], Tensor]:
        """All hidden states ``[1, L, D]`` of one query and its ``pixel_values``; ``rgb`` is ``[V, 224, 224, 3]``."""
        processor, vla = self.loaded.processor, self.loaded.vla
        prompt = build_prompt(instruction)
        inputs = [processor(prompt, Image.fromarray(image)).to(self.device, dtype=self.dtype) for image in rgb]
        pixel_values = torch.cat([item["pixel_values"] for item in inputs], dim=1)  # [1, 6 * V, 224, 224]
        # The query predict_action runs: prompt, "▁", empty action slots, stop (slot embeddings zeroed via labels).
        input_ids, attention_mask, labels = vla._prepare_action_query(inputs[0]["input_ids"], None)
        proprio = None
        if self.proprio_stats is not None:
            normalization = self.policy_config.embodiment.normalization_type
            proprio = normalize(state, self.proprio_stats, normalization, clip_unmasked=True)[None]  # as evaluation
        output = vla(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            labels=labels,
            output_hidden_states=True,
            proprio=proprio,
            proprio_projector=self.loaded.proprio_projector,
            use_film=self.policy_config.use_film,
            return_lm_logits=False,
        )
        return output.hidden_states, pixel_values

    def visual_tokens(self, hidden: Tensor, num_views: int) -> Tensor:
        """``[1, L, D]`` -> each camera's own visual tokens ``[V, P, D]``."""
        count = num_views * self.patches_per_image
        tokens = hidden[0, NUM_PREFIX_TOKENS : NUM_PREFIX_TOKENS + count]
        return tokens.reshape(num_views, self.patches_per_image, -1)


def load_probed_vla(
    checkpoint_dir: str | Path, name: str, data_suites: Sequence[str], checked: CheckedCheckpoint | None = None
) -> ProbedVLA:
    """Load a checkpoint for probing (no action head) on the GPU in bf16 when there is one, else CPU float32;
    ``checked``: what :func:`check_probe_checkpoint` parsed of it, used instead of reading it again."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise UserError(f"--checkpoint {checkpoint_dir}: not a folder; expected a checkpoint in the released layout")
    policy_config = checked.policy_config if checked is not None else probe_policy_config(checkpoint_dir)
    device, dtype = policy_device()
    try:
        loaded = load_vla(
            checkpoint_dir,
            platform=policy_config.embodiment.platform(),
            dtype=dtype,
            device=device,
            components=token_components(policy_config),
            checked=checked,
        )
    except (FileNotFoundError, ValueError) as error:
        raise UserError(f"--checkpoint {checkpoint_dir}: {error}") from None
    proprio_stats = None
    if policy_config.use_proprio:
        keys = list(loaded.norm_stats)
        key = policy_config.unnorm_key or (keys[0] if len(keys) == 1 else "")
        try:
            key = resolve_unnorm_key(loaded.norm_stats, key, data_suites[0])
        except ValueError as error:
            raise UserError(f"--checkpoint {checkpoint_dir}: {error}") from None
        proprio_stats = loaded.norm_stats[key].get("proprio")
        if proprio_stats is None:
            raise UserError(f"{checkpoint_dir}/dataset_statistics.json: {key!r} has no 'proprio' statistics")
    return ProbedVLA(name, loaded, policy_config, proprio_stats, device, dtype)


def check_preprocessing(policy_config: PolicyConfig, data: ProbeData, checkpoint_dir: str | Path) -> None:
    """The data's images must be what this policy sees: same crop, and at least the cameras it reads (a policy of
    fewer cameras than the data is probed on the leading ones: the primary camera first)."""
    expected = data.meta["preprocessing"]
    image = policy_config.image
    if image.center_crop != expected["center_crop"] or (
        image.center_crop and abs(image.crop_area - expected["crop_area"]) > 1e-9
    ):
        raise UserError(
            f"--checkpoint {checkpoint_dir}: the policy center-crops={image.center_crop} (area {image.crop_area}), "
            f"but --data was rendered with center_crop={expected['center_crop']} (area {expected['crop_area']}); "
            "render the data with the policy's preprocessing (make_depth_probe_data.py --center_crop ...)"
        )
    if policy_config.num_images_in_input > data.rgb.shape[1]:
        raise UserError(
            f"--checkpoint {checkpoint_dir}: the policy reads {policy_config.num_images_in_input} camera(s); "
            f"the probe data has only {data.rgb.shape[1]} views per scene"
        )


def extract_features(model: ProbedVLA, data: ProbeData, layers: Sequence[int]) -> dict[int, Tensor]:
    """``{layer: [S, V, P, D]}`` frozen visual tokens of every scene (float32 on CPU; float16 from a bf16 model)."""
    storage = torch.float32 if model.dtype == torch.float32 else torch.float16
    features: dict[int, list[Tensor]] = {layer: [] for layer in sorted(set(layers))}
    num_views = data.rgb.shape[1]
    for index in tqdm(range(len(data.scenes)), desc=f"tokens of {model.name}", unit="scene"):
        hidden_states, _ = model.query(data.rgb[index], data.scenes[index].instruction, data.state[index])
        for layer in features:
            features[layer].append(model.visual_tokens(hidden_states[layer], num_views).to("cpu", storage))
    return {layer: torch.stack(tokens) for layer, tokens in features.items()}
