"""The tiny pi0 of the ``pi0_tiny`` golden fixtures and pi0 weights written in each released layout.

Sizes come from the fixture's JSON (``tests/golden/pi0_tiny.json``, key ``config``); weights from rule
``pi0-golden-v1`` (``prismatic.testing.golden``).
"""

from __future__ import annotations

import io
from pathlib import Path

import sentencepiece
import torch

from prismatic.models.pi0 import Pi0Config, Pi0Model, Pi0Observation, Pi0Output
from prismatic.models.pi0.loading_pi0 import EMBED_KEY, LEGACY_RENAMES, LEROBOT_PREFIX, LM_HEAD_KEY, save_pi0_weights
from prismatic.models.pi0.processing_pi0 import TOKENIZER_NAME
from prismatic.testing.golden import apply_pi0_golden_weights
from prismatic.vla.datasets.statistics import save_dataset_statistics
from prismatic.vla.policy_config import ImagePreprocessingConfig, PolicyConfig, write_policy_config

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


TINY_PI0_DIRNAME = "tiny-pi0"
# Prompts the tiny SentencePiece model is trained on (LIBERO-like instructions).
TOKENIZER_PROMPTS = (
    "pick up the black bowl between the plate and the ramekin and place it on the plate",
    "put both the alphabet soup and the tomato sauce in the basket",
    "open the top drawer and put the bowl inside",
    "turn on the stove and put the moka pot on it",
    "put the white mug on the left plate and put the yellow and white mug on the right plate",
    "move the gripper to the red block",
)


def train_tiny_sentencepiece(path: Path, vocab_size: int = 50) -> Path:
    """A tiny SentencePiece model with Gemma's special ids (pad 0, eos 1, bos 2, unk 3), written to ``path``."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TOKENIZER_PROMPTS * 20),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    return path


def tiny_pi0_config(**overrides) -> Pi0Config:
    """A float32 pi0 for CPU training runs: 2 layers, 56 px images (16 tokens per camera), pi0's three cameras,
    LIBERO's chunk of 8 and 7-D actions."""
    fields = dict(
        vocab_size=64,
        vision_hidden_size=16,
        vision_num_layers=1,
        vision_num_heads=2,
        vision_intermediate_size=32,
        image_size=56,
        patch_size=14,
        vlm_width=32,
        vlm_mlp_dim=48,
        expert_width=16,
        expert_mlp_dim=24,
        depth=2,
        num_heads=8,
        num_kv_heads=1,
        head_dim=8,
        tokenizer_max_length=24,
        chunk_size=8,
        action_dim=7,
        param_dtype="float32",
    )
    return Pi0Config(**{**fields, **overrides})


def write_tiny_pi0_checkpoint(out_dir: str | Path, seed: int = 0, **overrides) -> Path:
    """Writes ``{out_dir}/tiny-pi0/`` (``config.json``, ``model.safetensors``, ``tokenizer.model``), randomly
    initialised from ``seed``: a base for ``--model_family pi0``. Returns the folder."""
    folder = Path(out_dir) / TINY_PI0_DIRNAME
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    save_pi0_weights(Pi0Model(tiny_pi0_config(**overrides)), folder)
    train_tiny_sentencepiece(folder / TOKENIZER_NAME)
    return folder


def write_tiny_pi0_policy(out_dir: str | Path, statistics: dict) -> Path:
    """A tiny pi0 checkpoint as training writes it for LIBERO (2 cameras + state; ``policy_config.json``, and
    ``dataset_statistics.json`` = ``statistics`` whose first key is the ``unnorm_key``), randomly initialised."""
    folder = write_tiny_pi0_checkpoint(out_dir)
    config = PolicyConfig(
        model_family="pi0",
        action_head="flow_matching",
        use_proprio=True,
        num_images_in_input=2,
        unnorm_key=next(iter(statistics)),
        image=ImagePreprocessingConfig(center_crop=False),
    )
    write_policy_config(folder, config)
    save_dataset_statistics(statistics, folder / "dataset_statistics.json")
    return folder


def pi0_training_batch(config: Pi0Config) -> dict:
    """Two samples for ``Pi0Model.forward`` / ``pi0_spatial_forcing_loss`` (keyword arguments): an observation with
    camera 1 of sample 0 absent, actions, noise and times."""
    generator = torch.Generator().manual_seed(3)
    batch, cameras, size = 2, config.num_cameras, config.image_size
    image_masks = torch.ones(batch, cameras, dtype=torch.bool)
    image_masks[0, 1] = False
    observation = Pi0Observation(
        images=torch.rand(batch, cameras, 3, size, size, generator=generator) * 2 - 1,
        image_masks=image_masks,
        lang_tokens=torch.randint(1, config.vocab_size, (batch, config.tokenizer_max_length), generator=generator),
        lang_masks=torch.arange(config.tokenizer_max_length)[None] < torch.tensor([[3], [8]]),
        state=torch.randn(batch, config.max_state_dim, generator=generator),
    )
    return {
        "observation": observation,
        "actions": torch.randn(batch, config.chunk_size, config.max_action_dim, generator=generator),
        "noise": torch.randn(batch, config.chunk_size, config.max_action_dim, generator=generator),
        "time": torch.tensor([0.3, 0.7]),
    }
