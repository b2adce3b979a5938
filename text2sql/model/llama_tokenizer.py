"""A CodeLlama-style tokenizer trained locally, for `model=tiny_codellama` (CPU tests of the real model's path).

CodeLlama's tokenizer is a SentencePiece BPE: `▁` marks a word start, a `▁` is prepended to the text, digits are
split one by one, characters outside the vocabulary (newline included) fall back to byte tokens `<0x00>`..
`<0xFF>` (ids 3..258), and the specials are `<unk>` (0), `<s>` (1), `</s>` (2), with **no pad token**.
transformers' `LlamaTokenizer` builds exactly that pipeline from a vocab and merges (BPE with `byte_fallback`,
the `Metaspace` pre-tokenizer, the ByteFallback/Fuse decoders); we only learn the vocab and merges from the
dataset's text with the `tokenizers` BPE trainer, under the same word/digit splitting SentencePiece trains with.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable

SPECIALS = ("<unk>", "<s>", "</s>")
BYTE_TOKENS = tuple(f"<0x{i:02X}>" for i in range(256))
_BYTE_FALLBACK_ONLY = ("\n", "\r", "\t")  # never in Llama's vocab: always <0x0A>, <0x0D>, <0x09>


def train_llama_tokenizer(texts: Iterable[str], vocab_size: int = 4096):
    """A `LlamaTokenizer` (fast, no pad token) whose BPE vocab of at most `vocab_size` is learned from `texts`."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    bpe = Tokenizer(models.BPE(unk_token=SPECIALS[0]))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False),
        # pieces never cross a word start, letters and punctuation stay apart (SentencePiece's split by Unicode
        # script) and every digit stands alone (its split_digits), as CodeLlama's vocab was trained
        pre_tokenizers.Split(Regex(r"▁?\p{L}+|▁?[^\p{L}\p{N}▁]+|\p{N}|▁"), behavior="isolated"),
    ])
    room = max(vocab_size - len(SPECIALS) - len(BYTE_TOKENS), 64)
    # every printable ASCII character is a piece, as in CodeLlama's vocab (digits above all); the rest of Unicode
    # enters only when the text has it, and falls back to bytes otherwise
    alphabet = [c for c in string.printable if not c.isspace()] + ["▁"]
    trainer = trainers.BpeTrainer(vocab_size=room, special_tokens=[], initial_alphabet=alphabet, show_progress=False)
    bpe.train_from_iterator(texts, trainer=trainer)
    learned = json.loads(bpe.to_str())["model"]
    dropped = lambda tok: any(c in tok for c in _BYTE_FALLBACK_ONLY)  # noqa: E731
    vocab = {tok: i for i, tok in enumerate((*SPECIALS, *BYTE_TOKENS))}
    for tok, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if tok not in vocab and not dropped(tok):
            vocab[tok] = len(vocab)
    merges = []
    for merge in learned["merges"]:
        a, b = merge if isinstance(merge, list) else merge.split(" ", 1)
        if a in vocab and b in vocab and a + b in vocab:
            merges.append((a, b))
    return LlamaTokenizer(vocab=vocab, merges=merges, unk_token=SPECIALS[0], bos_token=SPECIALS[1],
                          eos_token=SPECIALS[2], add_bos_token=True, add_eos_token=False, legacy=False)
