"""``PaddedCollatorForActionPrediction``: right-pads samples into upstream's training batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from prismatic.vla.constants import IGNORE_INDEX


@dataclass
class PaddedCollatorForActionPrediction:
    """Batch keys: ``pixel_values`` [B, 6n, H, W] (primary then wrist channels), ``proprio`` [B, P] float32 or
    None, ``input_ids`` [B, L] and ``labels`` [B, L] int64 (right-padded with ``pad_token_id`` / IGNORE_INDEX,
    cut to ``model_max_length``), ``attention_mask`` [B, L] bool, ``actions`` [B, C, A] float32, and
    ``dataset_names`` (list of str) and ``camera_points`` [B, S, H, W, 3] float32 when the samples carry them.
    """

    model_max_length: int
    pad_token_id: int
    padding_side: str = "right"
    pixel_values_dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.padding_side != "right":
            raise ValueError(f"Action prediction needs right padding; got padding_side={self.padding_side!r}.")

    def __call__(self, instances: Sequence[dict[str, Any]]) -> dict[str, Any]:
        input_ids = pad_sequence([x["input_ids"] for x in instances], batch_first=True, padding_value=self.pad_token_id)
        labels = pad_sequence([x["labels"] for x in instances], batch_first=True, padding_value=IGNORE_INDEX)
        input_ids, labels = input_ids[:, : self.model_max_length], labels[:, : self.model_max_length]

        pixel_values = torch.stack([x["pixel_values"] for x in instances])  # [B, 6, H, W]
        if "pixel_values_wrist" in instances[0]:
            wrist = torch.stack([x["pixel_values_wrist"] for x in instances])  # [B, 6 * num_wrist, H, W]
            pixel_values = torch.cat([pixel_values, wrist], dim=1)  # [B, 6n, H, W]

        proprio = None
        if "proprio" in instances[0]:
            proprio = torch.from_numpy(np.stack([np.asarray(x["proprio"], np.float32) for x in instances]))
            proprio = proprio.reshape(len(instances), -1)  # [B, P]

        batch = {
            "pixel_values": pixel_values.to(self.pixel_values_dtype),
            "proprio": proprio,
            "input_ids": input_ids,
            "attention_mask": input_ids.ne(self.pad_token_id),
            "labels": labels,
            "actions": torch.stack([torch.from_numpy(np.array(x["actions"], np.float32)) for x in instances]),
        }
        if "dataset_name" in instances[0]:
            batch["dataset_names"] = [x["dataset_name"] for x in instances]
        if "camera_points" in instances[0]:
            batch["camera_points"] = torch.stack([x["camera_points"] for x in instances])  # [B, S, H, W, 3]
        return batch
