"""The mini prior's tokenizer: genuine CLIP BPE files, one token per world word, characters otherwise."""

import json

import numpy as np
import pytest

from idsedit.errors import IdseditError
from idsedit.mini.tokenizer import BOS, EOS, EOW, MERGES_HEADER, bpe, build_vocab, load_tokenizer, split_words, write_tokenizer
from idsedit.shapes import VOCABULARY, caption, sample_scene


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = write_tokenizer(tmp_path_factory.mktemp("tok"), VOCABULARY, max_length=32)
    return load_tokenizer(folder)


def test_files_are_clip_bpe(tmp_path):
    write_tokenizer(tmp_path, VOCABULARY)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    merges = (tmp_path / "merges.txt").read_text().splitlines()
    assert merges[0] == MERGES_HEADER
    assert all(len(m.split(" ")) == 2 for m in merges[1:])
    assert sorted(vocab.values()) == list(range(len(vocab)))  # dense ids
    assert vocab[BOS] == len(vocab) - 2 and vocab[EOS] == len(vocab) - 1
    singles = [t for t in vocab if len(t) == 1]
    assert len(singles) == 256 and all(t + EOW in vocab for t in singles)
    for a, b in (m.split(" ") for m in merges[1:]):  # every merge result is a token
        assert a in vocab and b in vocab and a + b in vocab


def test_every_world_word_is_one_token(tok):
    for word in VOCABULARY:
        for piece in split_words(word):
            ids = tok(piece, add_special_tokens=False).input_ids
            assert tok.convert_ids_to_tokens(ids) == [piece + EOW], (piece, ids)


def test_captions_tokenize_word_by_word(tok):
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = sample_scene(rng)
        for text in (caption(p), caption(p, rng)):
            ids = tok(text).input_ids
            assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
            assert len(ids) == len(split_words(text)) + 2, text


def test_unknown_words_fall_back_to_characters(tok):
    toks = tok.convert_ids_to_tokens(tok("zebra", add_special_tokens=False).input_ids)
    assert "".join(toks) == "zebra" + EOW and len(toks) > 1
    assert tok.decode(tok("a zebra cube").input_ids, skip_special_tokens=True) == "a zebra cube"


def test_padding_is_eos_and_fixed_length(tok):
    assert tok.model_max_length == 32 and tok.pad_token_id == tok.eos_token_id
    ids = tok(["", "a red cube"], padding="max_length", max_length=32, truncation=True).input_ids
    assert all(len(x) == 32 for x in ids)
    assert ids[0][0] == tok.bos_token_id and set(ids[0][1:]) == {tok.eos_token_id}


def test_bpe_merges_lowest_rank_first():
    ranks = {("a", "b"): 1, ("b", "c</w>"): 0}
    assert bpe(["a", "b", "c</w>"], ranks) == ["a", "bc</w>"]


def test_conflicting_words_still_one_token():
    vocab, merges = build_vocab(["ed", "red", "bed", "reds"])
    ranks = {m: i for i, m in enumerate(merges)}
    from idsedit.mini.tokenizer import word_symbols

    for w in ["ed", "red", "bed", "reds"]:
        assert bpe(word_symbols(w), ranks) == [w + EOW]


def test_empty_vocabulary_is_a_user_error():
    with pytest.raises(IdseditError, match="VOCABULARY"):
        build_vocab([])
