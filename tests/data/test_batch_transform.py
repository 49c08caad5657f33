"""RLDSBatchTransform and PaddedCollatorForActionPrediction on hand-made frames: upstream's label rule, image
channels, padding and truncation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from prismatic.vla.action_tokenizer import ActionTokenizer
from prismatic.vla.constants import IGNORE_INDEX, STOP_INDEX
from prismatic.vla.datasets import PaddedCollatorForActionPrediction, RLDSBatchTransform

PAD_ID = 32000


def make_frame(instruction: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "observation": {
            "image_primary": rng.integers(0, 256, (1, 224, 224, 3), dtype=np.uint8),
            "image_wrist": rng.integers(0, 256, (1, 224, 224, 3), dtype=np.uint8),
            "proprio": rng.uniform(-1, 1, (1, 8)).astype(np.float32),
            "timestep": np.zeros(1, np.int32),
        },
        "task": {"language_instruction": instruction.encode()},
        "action": rng.uniform(-1, 1, (8, 7)).astype(np.float32),
        "dataset_name": b"libero_spatial_no_noops",
    }


@pytest.fixture(scope="module")
def transform(tiny_tokenizer, image_processor) -> RLDSBatchTransform:
    return RLDSBatchTransform(
        ActionTokenizer(tiny_tokenizer),
        tiny_tokenizer,
        image_processor.apply_transform,
        use_wrist_image=True,
        use_proprio=True,
    )


def test_labels_are_the_action_tokens_and_stop_token_only(transform, tiny_tokenizer):
    frame = make_frame("Put the Bowl on the plate", seed=0)
    sample = transform(frame)
    action_ids = transform.action_tokenizer.token_ids(frame["action"]).reshape(-1)  # 56 ids, step-major
    prompt_ids = tiny_tokenizer("In: What action should the robot take to put the bowl on the plate?\nOut:").input_ids
    expected_ids = prompt_ids + [29871, *action_ids.tolist(), STOP_INDEX]
    assert sample["input_ids"].tolist() == expected_ids
    assert sample["labels"].tolist() == [IGNORE_INDEX] * (len(prompt_ids) + 1) + [*action_ids.tolist(), STOP_INDEX]
    decoded = transform.action_tokenizer.decode_token_ids_to_actions(action_ids).reshape(8, 7)
    assert np.abs(decoded - frame["action"]).max() <= 1.0 / 255 + 1e-6  # within one bin of the originals


def test_stop_token_is_ignored_without_predict_stop_token(transform):
    transform_without_stop = RLDSBatchTransform(
        transform.action_tokenizer, transform.base_tokenizer, transform.image_transform, predict_stop_token=False
    )
    labels = transform_without_stop(make_frame("open the drawer", seed=1))["labels"]
    assert labels[-1] == IGNORE_INDEX and (labels != IGNORE_INDEX).sum() == 56


def test_images_go_through_the_image_transform_per_camera(transform, image_processor):
    frame = make_frame("turn on the stove", seed=2)
    sample = transform(frame)
    primary = image_processor.apply_transform(Image.fromarray(frame["observation"]["image_primary"][0]))
    wrist = image_processor.apply_transform(Image.fromarray(frame["observation"]["image_wrist"][0]))
    assert torch.equal(sample["pixel_values"], primary) and torch.equal(sample["pixel_values_wrist"], wrist)
    np.testing.assert_array_equal(sample["proprio"], frame["observation"]["proprio"])
    assert sample["dataset_name"] == "libero_spatial_no_noops"


def test_collator_right_pads_and_stacks_cameras_on_channels(transform):
    samples = [transform(make_frame("put the bowl on the plate", 3)), transform(make_frame("turn on the stove", 4))]
    lengths = [len(s["input_ids"]) for s in samples]
    batch = PaddedCollatorForActionPrediction(model_max_length=2048, pad_token_id=PAD_ID)(samples)
    longest = max(lengths)
    assert batch["input_ids"].shape == (2, longest) and batch["labels"].shape == (2, longest)
    for row, length in enumerate(lengths):
        assert batch["input_ids"][row, :length].tolist() == samples[row]["input_ids"].tolist()
        assert (batch["input_ids"][row, length:] == PAD_ID).all() and (batch["labels"][row, length:] == -100).all()
        assert batch["attention_mask"][row].tolist() == [True] * length + [False] * (longest - length)
    assert batch["pixel_values"].shape == (2, 12, 224, 224) and batch["pixel_values"].dtype == torch.float32
    assert torch.equal(batch["pixel_values"][1, :6], samples[1]["pixel_values"])
    assert torch.equal(batch["pixel_values"][1, 6:], samples[1]["pixel_values_wrist"])
    assert batch["proprio"].shape == (2, 8) and batch["actions"].shape == (2, 8, 7)
    assert batch["dataset_names"] == ["libero_spatial_no_noops"] * 2


def test_collator_truncates_to_model_max_length_and_keeps_batch_dim_for_one_sample(transform):
    batch = PaddedCollatorForActionPrediction(model_max_length=10, pad_token_id=PAD_ID)([transform(make_frame("x", 5))])
    assert batch["input_ids"].shape == (1, 10) and batch["labels"].shape == (1, 10)
    assert batch["proprio"].shape == (1, 8)


def test_collator_rejects_left_padding():
    with pytest.raises(ValueError, match="padding_side='left'"):
        PaddedCollatorForActionPrediction(model_max_length=2048, pad_token_id=PAD_ID, padding_side="left")
