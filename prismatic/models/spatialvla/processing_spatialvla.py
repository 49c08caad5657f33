"""SpatialVLA's processor: SigLIP image processor + Gemma tokenizer, camera intrinsics, action decoding.

``processor_config.json`` of the released folder carries the fields of ``__init__`` (dataset ``statistics``, the
adaptive ``bin_policy``, ``intrinsic_config``, ``action_config``, chunk settings). Its statistics contain bare
``Infinity`` values, which Python's ``json`` (used by transformers) parses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, ProcessorMixin

from prismatic.models.spatialvla.action_tokenizer import TOKENS_PER_STEP, SpatialActionTokenizer, unnormalize_actions

IMAGE_TOKEN = "<image>"
BOS_TOKEN = "<bos>"
FIRST_ACTION_TOKEN = "<ACTION00000>"
DEFAULT_INTRINSIC_KEY = "default"


class SpatialVLAProcessor(ProcessorMixin):
    """Turns (image(s), instruction(s)) into model inputs and generated action ids into actions.

    A prompt is ``"<image>" * image_seq_length + "<bos>" + text + "\\n"``, tokenised without added specials; images
    are resized to the model's size and scaled to [0, 1] (the model normalises them itself).
    """

    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "SiglipImageProcessor"
    tokenizer_class = ("GemmaTokenizer", "GemmaTokenizerFast")

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        statistics: Mapping[str, Any] | None = None,
        bin_policy: Mapping[str, Any] | None = None,
        intrinsic_config: Mapping[str, Any] | None = None,
        action_config: Mapping[str, Any] | None = None,
        num_obs_steps: int = 1,
        obs_delta: int = 1,
        action_chunk_size: int = 1,
        min_sigma: float = 0.0,
        **kwargs: Any,
    ):
        if statistics is None or bin_policy is None or intrinsic_config is None:
            raise ValueError("processor_config.json must provide 'statistics', 'bin_policy' and 'intrinsic_config'")
        if DEFAULT_INTRINSIC_KEY not in intrinsic_config:
            raise ValueError(f"processor_config.json: intrinsic_config needs a {DEFAULT_INTRINSIC_KEY!r} entry")
        super().__init__(image_processor, tokenizer, **kwargs)
        self.statistics = statistics
        self.bin_policy = bin_policy
        self.intrinsic_config = intrinsic_config
        self.action_config = action_config
        self.num_obs_steps = num_obs_steps
        self.obs_delta = obs_delta
        self.action_chunk_size = action_chunk_size
        self.min_sigma = min_sigma

        first_action_id = tokenizer.convert_tokens_to_ids(FIRST_ACTION_TOKEN)
        if first_action_id == tokenizer.unk_token_id:
            raise ValueError(
                f"the tokenizer has no {FIRST_ACTION_TOKEN} token; expected SpatialVLA's action vocabulary"
            )
        self.action_tokenizer = SpatialActionTokenizer(bin_policy, first_action_id)
        if len(tokenizer) != first_action_id + self.action_tokenizer.vocab_size:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} tokens; expected {first_action_id + self.action_tokenizer.vocab_size} "
                f"({FIRST_ACTION_TOKEN} at {first_action_id} + {self.action_tokenizer.vocab_size} action tokens)"
            )
        size = image_processor.size
        self.intrinsics = {
            key: self._scaled_intrinsic(entry, size["width"], size["height"]) for key, entry in intrinsic_config.items()
        }

    @staticmethod
    def _scaled_intrinsic(entry: Mapping[str, Any], width: int, height: int) -> torch.Tensor:
        """K of the camera at the model's image size: row 0 scaled by width, row 1 by height (float32)."""
        intrinsic = torch.tensor(entry["intrinsic"], dtype=torch.float32)
        intrinsic[0] *= width / entry["width"]
        intrinsic[1] *= height / entry["height"]
        return intrinsic

    def intrinsic_for(self, unnorm_key: str | None) -> torch.Tensor:
        """The camera matrix registered under ``unnorm_key``; any other key gets the ``default`` camera."""
        return self.intrinsics.get(unnorm_key, self.intrinsics[DEFAULT_INTRINSIC_KEY]).clone()

    def __call__(
        self,
        images: Image.Image | Sequence[Image.Image],
        text: str | Sequence[str],
        unnorm_key: str | None = None,
        return_tensors: str = "pt",
    ) -> BatchFeature:
        """``input_ids``, ``attention_mask``, ``pixel_values`` ``[B, 3, H, W]`` in [0, 1] and ``intrinsic`` ``[3, 3]``
        (one image per prompt; a single prompt is repeated for several images)."""
        images = [images] if isinstance(images, Image.Image) else list(images)
        texts = [text] if isinstance(text, str) else list(text)
        if len(texts) == 1 and len(images) > 1:
            texts = texts * len(images)
        if len(texts) != len(images):
            raise ValueError(f"got {len(images)} images and {len(texts)} prompts; expected one image per prompt")
        image_tokens = IMAGE_TOKEN * self.image_processor.image_seq_length
        prompts = [f"{image_tokens}{BOS_TOKEN}{prompt}\n" for prompt in texts]
        encoded = self.tokenizer(prompts, add_special_tokens=False, padding="longest", return_tensors=return_tensors)
        pixel_values = self.image_processor(images, return_tensors=return_tensors)["pixel_values"]
        return BatchFeature(
            {**encoded, "pixel_values": pixel_values, "intrinsic": self.intrinsic_for(unnorm_key)},
            tensor_type=return_tensors,
        )

    def action_statistics(self, unnorm_key: str) -> Mapping[str, Any]:
        """The ``action`` statistics of ``unnorm_key``; an unknown key is an error naming the available ones."""
        if unnorm_key not in self.statistics:
            raise KeyError(f"unnorm_key {unnorm_key!r} has no action statistics; available: {sorted(self.statistics)}")
        return self.statistics[unnorm_key]["action"]

    def decode_actions(self, generated_ids: torch.Tensor | np.ndarray, unnorm_key: str) -> dict[str, np.ndarray]:
        """Actions of batch row 0: ``actions`` ``[chunk, 7]`` (float64, un-normalised) and ``action_ids``
        ``[chunk, 3]`` (as generated; a short generation is padded with id 0, which clips to edge bins)."""
        num_ids = self.action_chunk_size * TOKENS_PER_STEP
        ids = torch.as_tensor(generated_ids).cpu().numpy().astype(np.int64).reshape(len(generated_ids), -1)[0, :num_ids]
        ids = np.pad(ids, (0, num_ids - len(ids))).reshape(self.action_chunk_size, TOKENS_PER_STEP)
        normalized = self.action_tokenizer.decode(ids)
        actions = unnormalize_actions(normalized, self.action_statistics(unnorm_key))
        return {"actions": actions, "normalized_actions": normalized, "action_ids": ids}
