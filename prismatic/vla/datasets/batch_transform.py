"""``RLDSBatchTransform``: one RLDS frame -> the tensors of one training sample (upstream's keys and label rule)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from prismatic.vla.action_tokenizer import ActionTokenizer
from prismatic.vla.constants import IGNORE_INDEX, STOP_INDEX
from prismatic.vla.prompt import build_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class RLDSBatchTransform:
    """Builds the prompt with the action chunk as action tokens, the labels, the images and the proprio.

    Output: ``pixel_values`` [6, 224, 224] (primary camera), ``pixel_values_wrist`` [6, 224, 224] (with
    ``use_wrist_image``), ``input_ids``/``labels`` [L] int64, ``actions`` [C, A] float32 (normalised),
    ``proprio`` [1, P] float32 (with ``use_proprio``), ``dataset_name`` str, and ``camera_points`` [S, H, W, 3]
    float32 (the cameras' point maps in image order) when the frame carries ``points_<view>``. Labels are
    IGNORE_INDEX except for the last ``len(action_string) + 1`` tokens: the C*A action tokens and the stop token
    ``</s>``.
    """

    action_tokenizer: ActionTokenizer
    base_tokenizer: PreTrainedTokenizerBase  # the Llama tokenizer (base vocabulary 32,000 + <PAD>)
    image_transform: Callable[[Image.Image], torch.Tensor]  # e.g. PrismaticImageProcessor.apply_transform
    predict_stop_token: bool = True
    use_wrist_image: bool = False
    use_proprio: bool = False

    def __call__(self, rlds_batch: dict[str, Any]) -> dict[str, Any]:
        observation = rlds_batch["observation"]
        actions = rlds_batch["action"]  # [C, A]
        instruction = rlds_batch["task"]["language_instruction"].decode()
        action_string = "".join(self.action_tokenizer(actions))
        prompt = build_prompt(instruction, action_string)
        input_ids = torch.tensor(self.base_tokenizer(prompt, add_special_tokens=True).input_ids)
        labels = input_ids.clone()
        num_target_tokens = len(action_string) + 1
        self._check_target_tokens(input_ids[-num_target_tokens:], prompt)
        labels[:-num_target_tokens] = IGNORE_INDEX
        if not self.predict_stop_token:
            labels[-1] = IGNORE_INDEX

        sample = {
            "pixel_values": self.image_transform(Image.fromarray(observation["image_primary"][0])),
            "input_ids": input_ids,
            "labels": labels,
            "dataset_name": rlds_batch["dataset_name"].decode(),
            "actions": actions,
        }
        image_keys = ["image_primary"]
        if self.use_wrist_image:
            wrist_keys = sorted(key for key in observation if key.startswith("image_") and "wrist" in key)
            if not wrist_keys:
                raise KeyError(
                    f"use_wrist_image is set but the frame has no wrist camera (keys {sorted(observation)})."
                )
            wrist_pixels = [self.image_transform(Image.fromarray(observation[key][0])) for key in wrist_keys]
            sample["pixel_values_wrist"] = torch.cat(wrist_pixels, dim=0)
            image_keys += wrist_keys
        if "points_primary" in observation:
            points = [observation[key.replace("image_", "points_", 1)][0] for key in image_keys]
            sample["camera_points"] = torch.from_numpy(np.stack(points).astype(np.float32))  # [S, H, W, 3]
        if self.use_proprio:
            if "proprio" not in observation:
                raise KeyError("use_proprio is set but the frame has no observation/proprio (RLDSConfig.use_proprio).")
            sample["proprio"] = observation["proprio"]  # [1, P]
        return sample

    def _check_target_tokens(self, target_ids: torch.Tensor, prompt: str) -> None:
        """Upstream's label rule assumes one token per action character followed by ``</s>``; verify it."""
        is_action = target_ids[:-1] > self.action_tokenizer.action_token_begin_idx
        if not bool(is_action.all()) or int(target_ids[-1]) != STOP_INDEX:
            raise ValueError(
                f"The tokenizer does not encode the action string as one action token per character followed by "
                f"</s> (got ids {target_ids.tolist()} for prompt {prompt!r}); the label mask would be wrong."
            )
