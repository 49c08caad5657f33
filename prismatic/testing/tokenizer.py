"""A small Llama-style tokenizer built offline, for tiny models in tests and the demo.

The real tokenizer ships inside the openvla-7b checkpoint. This one keeps every id that upstream code relies on:
a base vocabulary of exactly 32,000 entries with ``<unk>``/``<s>``/``</s>`` at 0/1/2, byte-fallback tokens
``<0x00>``..``<0xFF>`` at 3..258, the lone ``"▁"`` at 29871, one single-character token per action bin at the top
256 ids (31744..31999) and ``<PAD>`` added as id 32000. Its merges are learned from LIBERO-style instructions, so
prompts split into word pieces much as with the real one; the remaining ids hold placeholders no text produces.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import LlamaTokenizerFast

from prismatic.vla.constants import NUM_ACTION_BINS

LLAMA_VOCAB_SIZE = 32_000
SPIECE_UNDERLINE = "▁"
SPIECE_UNDERLINE_ID = 29871
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
PAD_TOKEN = "<PAD>"
NUM_LEARNED_TOKENS = 600
# Action bin d (1..256) is token id 32000 - d; each is a single CJK character that the corpus never contains.
ACTION_CHARACTERS = tuple(chr(0x4E00 + i) for i in range(NUM_ACTION_BINS))

_CORPUS = """\
In: What action should the robot take to pick up the object?
Out:
pick up the black bowl between the plate and the ramekin and place it on the plate
pick up the black bowl next to the ramekin and place it on the plate
pick up the black bowl from table center and place it on the plate
pick up the black bowl on the cookie box and place it on the plate
pick up the black bowl in the top drawer of the wooden cabinet and place it on the plate
pick up the black bowl on the stove and place it on the plate
pick up the alphabet soup and place it in the basket
pick up the cream cheese and place it in the basket
pick up the salad dressing and place it in the basket
pick up the bbq sauce and place it in the basket
pick up the ketchup and place it in the basket
pick up the tomato sauce and place it in the basket
pick up the butter and place it in the basket
pick up the milk and place it in the basket
pick up the chocolate pudding and place it in the basket
pick up the orange juice and place it in the basket
open the middle drawer of the cabinet
put the bowl on the stove
put the wine bottle on top of the cabinet
open the top drawer and put the bowl inside
put the bowl on top of the cabinet
push the plate to the front of the stove
put the cream cheese in the bowl
turn on the stove
put the bowl on the plate
put the wine bottle on the rack
put both the alphabet soup and the tomato sauce in the basket
put both the cream cheese box and the butter in the basket
turn on the stove and put the moka pot on it
put the black bowl in the bottom drawer of the cabinet and close it
put the white mug on the left plate and put the yellow and white mug on the right plate
pick up the book and place it in the back compartment of the caddy
put the white mug on the plate and put the chocolate pudding to the right of the plate
put both moka pots on the stove
put the yellow and white mug in the microwave and close it
move the gripper to the red block
move the gripper to the green block
move the gripper to the blue block on the left or the right of the table
reach for the yellow cube in front of the robot
"""


def _learn_bpe(lines: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Learns a small BPE vocabulary on Llama-normalised text; returns its tokens (in id order) and merges."""
    tokenizer = Tokenizer(BPE())
    tokenizer.normalizer = _llama_normalizer()
    # Learn merges within words only, as sentencepiece does; pieces then never contain an inner "▁".
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPIECE_UNDERLINE, prepend_scheme="never")
    tokenizer.train_from_iterator(lines, trainer=BpeTrainer(vocab_size=NUM_LEARNED_TOKENS, show_progress=False))
    model = json.loads(tokenizer.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return tokens, merges


def _llama_normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence([normalizers.Prepend(SPIECE_UNDERLINE), normalizers.Replace(" ", SPIECE_UNDERLINE)])


def _build_vocab(learned_tokens: list[str]) -> dict[str, int]:
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"<0x{byte:02X}>": len(SPECIAL_TOKENS) + byte for byte in range(256)})
    vocab[SPIECE_UNDERLINE] = SPIECE_UNDERLINE_ID
    for bin_index, character in enumerate(ACTION_CHARACTERS):
        vocab[character] = LLAMA_VOCAB_SIZE - 1 - bin_index
    taken = set(vocab.values())
    free_ids = iter(i for i in range(LLAMA_VOCAB_SIZE) if i not in taken)
    for token in learned_tokens:
        if token not in vocab:
            vocab[token] = next(free_ids)
    vocab.update({f"<unused{i}>": i for i in free_ids})
    return vocab


def build_tiny_tokenizer(out_dir: str | Path | None = None) -> LlamaTokenizerFast:
    """Builds the tokenizer (deterministically) and, with ``out_dir``, saves it there in HF format."""
    learned_tokens, merges = _learn_bpe(_CORPUS.splitlines())
    vocab = _build_vocab(learned_tokens)
    assert len(vocab) == LLAMA_VOCAB_SIZE and sorted(vocab.values()) == list(range(LLAMA_VOCAB_SIZE))

    backend = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.normalizer = _llama_normalizer()
    backend.decoder = decoders.Sequence(
        [decoders.Replace(SPIECE_UNDERLINE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer = LlamaTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        add_bos_token=True,
        add_eos_token=False,
        padding_side="right",
        model_max_length=2048,
    )
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer
