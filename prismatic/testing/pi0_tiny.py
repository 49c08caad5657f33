"""The tiny pi0 of the ``pi0_tiny`` golden fixtures and pi0 weights written in each released layout.

Sizes come from the fixture's JSON (``tests/golden/pi0_tiny.json``, key ``config``); weights from rule
``pi0-golden-v1`` (``prismatic.testing.golden``).
"""

from __future__ import annotations

import torch

from prismatic.models.pi0 import Pi0Config, Pi0Model, Pi0Observation, Pi0Output
from prismatic.models.pi0.loading_pi0 import EMBED_KEY, LEGACY_RENAMES, LEROBOT_PREFIX, LM_HEAD_KEY
from prismatic.testing.golden import apply_pi0_golden_weights

RELEASED_LAYOUTS = ("openpi", "lerobot", "lerobot033")


def pi0_config_from_golden(config: dict, **overrides) -> Pi0Config:
    """The Pi0Config of a golden set's ``config`` (every size read from it), float32, with ``overrides``."""
    vlm, expert, vision = config["vlm"], config["expert"], config["vision"]
    shared = ("depth", "num_heads", "num_kv_heads", "head_dim")
    if any(vlm[name] != expert[name] for name in shared):
        raise ValueError(f"pi0's towers share {shared}; the golden config has {vlm} and {expert}")
    fields = dict(
        vocab_size=config["vocab"],
        vision_hidden_size=vision["hidden_size"],
        vision_num_layers=vision["num_hidden_layers"],
        vision_num_heads=vision["num_attention_heads"],
        vision_intermediate_size=vision["intermediate_size"],
        image_size=vision["image_size"],
        patch_size=vision["patch_size"],
        vlm_width=vlm["width"],
        vlm_mlp_dim=vlm["mlp_dim"],
        expert_width=expert["width"],
        expert_mlp_dim=expert["mlp_dim"],
        depth=vlm["depth"],
        num_heads=vlm["num_heads"],
        num_kv_heads=vlm["num_kv_heads"],
        head_dim=vlm["head_dim"],
        image_keys=[f"camera_{index}" for index in range(config["cameras"])],
        tokenizer_max_length=config["lang_len"],
        chunk_size=config["chunk"],
        max_state_dim=config["max_state_dim"],
        max_action_dim=config["max_action_dim"],
        action_dim=config["action_dim"],
        num_inference_steps=config["num_steps"],
        param_dtype="float32",
    )
    return Pi0Config(**{**fields, **overrides})


def golden_pi0(config: Pi0Config) -> Pi0Model:
    """A pi0 in eval mode with every weight set by rule ``pi0-golden-v1`` (the tied LM head drawn as the embedding)."""
    return apply_pi0_golden_weights(Pi0Model(config), {LM_HEAD_KEY: EMBED_KEY}).eval()


def golden_observation(golden: dict[str, torch.Tensor]) -> Pi0Observation:
    """The golden inputs batch first, images in [-1, 1] with every empty camera set to -1 (as the official run)."""
    camera_present = golden["in.img_masks"].bool().T  # [B, N]
    images = (golden["in.images_u8"].float() / 255 * 2 - 1).transpose(0, 1)  # [B, N, 3, H, W]
    images = torch.where(camera_present[:, :, None, None, None], images, -1.0)
    return Pi0Observation(
        images, camera_present, golden["in.lang_tokens"], golden["in.lang_masks"].bool(), golden["in.state"]
    )


def golden_training_output(
    model: Pi0Model, golden: dict[str, torch.Tensor], observation: Pi0Observation, **kwargs
) -> Pi0Output:
    """The training forward on the golden set's actions, noise and times (no gradient)."""
    with torch.no_grad():
        return model(observation, golden["in.actions"], noise=golden["in.noise"], time=golden["in.time"], **kwargs)


def released_state_dict(model: Pi0Model, layout: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``model``'s weights as a release stores them, without the tied embedding (``save_model`` keeps lm_head):
    bare keys ("openpi"), ``model.``-prefixed ("lerobot"), or prefixed with lerobot 0.3.3's PaliGemma nesting
    ("lerobot033")."""
    if layout not in RELEASED_LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {list(RELEASED_LAYOUTS)}")
    state = {key: value.detach().to(dtype).clone() for key, value in model.state_dict().items() if key != EMBED_KEY}
    if layout == "openpi":
        return state
    if layout == "lerobot033":
        state = {_legacy_name(key): value for key, value in state.items()}
    return {LEROBOT_PREFIX + key: value for key, value in state.items()}


def _legacy_name(key: str) -> str:
    for old, new in LEGACY_RENAMES:
        if key.startswith(new):
            return old + key[len(new) :]
    return key
