"""The offline tiny tokenizer keeps every Llama id that OpenVLA code relies on."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from prismatic.testing.tokenizer import build_tiny_tokenizer
from prismatic.vla.action_tokenizer import ActionTokenizer
from prismatic.vla.constants import IGNORE_INDEX, STOP_INDEX
from prismatic.vla.prompt import build_prompt


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def test_llama_ids_are_preserved(tokenizer):
    assert tokenizer.vocab_size == 32_000
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token_id == 32_000 and tokenizer.convert_ids_to_tokens(29871) == "▁"
    assert tokenizer.eos_token_id == STOP_INDEX


def test_action_tokens_are_the_top_256_ids_and_round_trip(tokenizer):
    action_tokenizer = ActionTokenizer(tokenizer)
    assert action_tokenizer.action_token_begin_idx == 31743
    actions = np.linspace(-1.2, 1.2, 56)
    ids = action_tokenizer.token_ids(actions)
    assert ids.min() == 31744 and ids.max() == 31999
    prompt = build_prompt("Pick up the black bowl", action_tokenizer(actions))
    input_ids = tokenizer(prompt).input_ids
    # BOS, prompt pieces, the lone "▁" (29871), the 56 action ids, then </s>: as with the real tokenizer.
    assert input_ids[0] == 1 and input_ids[-1] == 2
    assert input_ids[-58] == 29871 and input_ids[-57:-1] == ids.tolist()
    decoded = action_tokenizer.decode_token_ids_to_actions(np.array(input_ids[-57:-1]))
    assert np.abs(decoded - np.clip(actions, -1, 1)).max() <= 1 / 255 + 1e-9
    assert IGNORE_INDEX == -100


def test_inference_prompt_tokenises_into_word_pieces(tokenizer):
    ids = tokenizer(build_prompt("Open the drawer")).input_ids
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert pieces[:4] == ["<s>", "▁In:", "▁What", "▁action"] and "▁drawer" in pieces and pieces[-1] == ":"


def test_saved_tokenizer_reloads_identically(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = build_prompt("put the bowl on the plate", ActionTokenizer(tokenizer)(np.zeros(7)))
    assert reloaded(text).input_ids == tokenizer(text).input_ids
    assert reloaded.pad_token_id == 32_000


def test_build_is_deterministic():
    assert build_tiny_tokenizer().get_vocab() == build_tiny_tokenizer().get_vocab()
