"""The prompt tokenizer of pi0: the user's PaliGemma SentencePiece ``tokenizer.model``, ids right-padded with 0."""

from __future__ import annotations

from pathlib import Path

import sentencepiece
import torch
from torch import Tensor

from prismatic.util.cli import UserError

PROMPT_FORMATS = ("openpi", "lerobot")


class Pi0Tokenizer:
    """Token ids ``[B, max_length]`` (int64, padded with 0) and masks (bool, True on real tokens), truncated at
    ``max_length``.

    "openpi": the prompt is cleaned (stripped; "_" and newlines become spaces), encoded with BOS, and the separate
    encoding of "\\n" is appended. "lerobot": "\\n" is appended to the prompt and the whole string is encoded with
    BOS. The two can differ in the ids of the final newline.
    """

    def __init__(self, model_file: str | Path, max_length: int = 48, prompt_format: str = "openpi"):
        path = Path(model_file)
        if not path.is_file():
            raise UserError(f"{path}: no such tokenizer file: expected PaliGemma's SentencePiece tokenizer.model")
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format={prompt_format!r}: expected one of {list(PROMPT_FORMATS)}")
        try:
            self.processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except (RuntimeError, OSError) as error:
            raise UserError(
                f"{path}: not a SentencePiece model ({error}): expected PaliGemma's tokenizer.model"
            ) from error
        self.path = path
        self.max_length = max_length
        self.prompt_format = prompt_format

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def check_vocab(self, model_vocab_size: int) -> None:
        """Refuse a tokenizer whose ids do not fit the model's embedding."""
        if self.vocab_size > model_vocab_size:
            raise UserError(
                f"the tokenizer has {self.vocab_size} pieces but the model embeds only {model_vocab_size}: expected "
                "PaliGemma's tokenizer.model (257152 rows)"
            )

    def encode(self, prompt: str) -> list[int]:
        """The unpadded, untruncated ids of one prompt."""
        if self.prompt_format == "lerobot":
            text = prompt if prompt.endswith("\n") else prompt + "\n"
            return self.processor.encode(text, add_bos=True)
        cleaned = prompt.strip().replace("_", " ").replace("\n", " ")
        return self.processor.encode(cleaned, add_bos=True) + self.processor.encode("\n")

    def __call__(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """``(lang_tokens, lang_masks)`` for a batch of prompts."""
        tokens = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        masks = torch.zeros(len(prompts), self.max_length, dtype=torch.bool)
        for row, prompt in enumerate(prompts):
            ids = self.encode(prompt)[: self.max_length]
            tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            masks[row, : len(ids)] = True
        return tokens, masks
