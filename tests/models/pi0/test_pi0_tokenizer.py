"""pi0's prompt tokenizer on a tiny SentencePiece model trained by a fixture (Gemma's special ids)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece
import torch

from prismatic.models.pi0.tokenization_pi0 import Pi0Tokenizer
from prismatic.util.cli import UserError

BOS, PAD = 2, 0


def test_openpi_format_cleans_adds_bos_and_a_separate_newline(sentencepiece_model: Path):
    tokenizer = Pi0Tokenizer(sentencepiece_model, max_length=48)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model))
    tokens, masks = tokenizer(["  open_the top drawer\n", "move the gripper to the red block"])
    expected = [BOS, *processor.encode("open the top drawer"), *processor.encode("\n")]
    assert tokens.dtype == torch.long and masks.dtype == torch.bool and tokens.shape == masks.shape == (2, 48)
    assert tokens[0, : len(expected)].tolist() == expected
    assert masks[0].tolist() == [True] * len(expected) + [False] * (48 - len(expected))
    assert (tokens[0, len(expected) :] == PAD).all()
    newline = len(processor.encode("\n"))
    assert (
        processor.decode(tokens[1, 1 : int(masks[1].sum()) - newline].tolist()) == "move the gripper to the red block"
    )


def test_lerobot_format_encodes_the_prompt_with_its_newline(sentencepiece_model: Path):
    tokenizer = Pi0Tokenizer(sentencepiece_model, max_length=24, prompt_format="lerobot")
    processor = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model))
    assert tokenizer.encode("turn on the stove") == processor.encode("turn on the stove\n", add_bos=True)


def test_long_prompts_are_truncated(sentencepiece_model: Path):
    tokenizer = Pi0Tokenizer(sentencepiece_model, max_length=5)
    prompt = "put the white mug on the left plate and put the yellow and white mug on the right plate"
    tokens, masks = tokenizer([prompt])
    assert masks.all() and tokens[0].tolist() == tokenizer.encode(prompt)[:5]


def test_missing_or_foreign_tokenizer_is_one_line(tmp_path: Path, sentencepiece_model: Path):
    with pytest.raises(UserError, match="no such tokenizer file"):
        Pi0Tokenizer(tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(UserError, match="not a SentencePiece model"):
        Pi0Tokenizer(tmp_path / "tokenizer.json")
    with pytest.raises(UserError, match="50 pieces but the model embeds only 20"):
        Pi0Tokenizer(sentencepiece_model).check_vocab(20)
    Pi0Tokenizer(sentencepiece_model).check_vocab(257152)
