"""A small, genuine CLIP BPE tokenizer built from the shapes world's vocabulary.

The files are the standard CLIP ones (``vocab.json`` + ``merges.txt``), so
``transformers.CLIPTokenizer.from_pretrained(folder)`` loads them offline.
The vocabulary holds the two special tokens, all 256 byte-level characters with
and without the end-of-word marker ``</w>`` (so any text still tokenizes, into
characters), and one token per world word, reached by left-to-right merges::

    "red" -> r e d</w>  --(r e)-->  re d</w>  --(re d</w>)-->  red</w>
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from ..errors import IdseditError

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
EOW = "</w>"
MERGES_HEADER = "#version: 0.2"

# CLIP's pre-tokenizer, restricted to ASCII (the world's vocabulary is lowercase ASCII).
_WORD_RE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2 byte -> printable unicode character table (256 entries)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def split_words(text: str) -> list[str]:
    """Pre-tokenize like CLIP: lowercase, then letters runs / single digits / punctuation runs."""
    return _WORD_RE.findall(text.lower())


def word_symbols(word: str) -> list[str]:
    """Initial BPE symbols of one pre-tokenized word: byte characters, the last one with ``</w>``."""
    table = bytes_to_unicode()
    chars = [table[b] for b in word.encode("utf-8")]
    return chars[:-1] + [chars[-1] + EOW]


def bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges (lowest rank first, all occurrences at once) until none applies."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), None), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        pairs = [(r, i) for r, i in pairs if r is not None]
        if not pairs:
            break
        best = min(pairs)[0]
        out, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and ranks.get((symbols[i], symbols[i + 1])) == best:
                out.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                out.append(symbols[i])
                i += 1
        symbols = out
    return symbols


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges so that every world word is ONE token.

    Returns ``(vocab, merges)``: ids 0..511 are the byte characters (plain, then
    with ``</w>``), then one id per merge result, then ``<|startoftext|>`` and
    ``<|endoftext|>`` last (as in CLIP). Merges are added until each word
    BPE-encodes to a single symbol; a merge appended later has the lowest
    priority, so it never changes a word already encoded as one token.
    """
    pieces = sorted({p for w in words for p in split_words(w)})
    if not pieces:
        raise IdseditError("tokenizer vocabulary is empty: pass the shapes world's VOCABULARY (a non-empty list of words)")
    table = bytes_to_unicode()
    base = list(table.values())
    vocab = {c: i for i, c in enumerate(base + [c + EOW for c in base])}
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in pieces:
        symbols = bpe(word_symbols(word), ranks)
        while len(symbols) > 1:  # merge the first two symbols until the word is whole
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            symbols = bpe(word_symbols(word), ranks)
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return vocab, merges


def write_tokenizer(folder: str | Path, words: list[str], max_length: int = 32) -> Path:
    """Write a CLIPTokenizer folder (vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(words)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0), encoding="utf-8")
    lines = [MERGES_HEADER] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
        "errors": "replace",
        **special,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def load_tokenizer(folder: str | Path):
    """Load the folder with ``transformers.CLIPTokenizer`` (offline)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
