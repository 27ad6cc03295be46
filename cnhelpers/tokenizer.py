"""A CLIP BPE tokenizer learned offline from the fill captions (the tiny bases' tokenizer).

Every caption word becomes one token, so nothing the course writes is unknown to it; ``tokenize_unknowns``
tells which words of a text a tokenizer would split, and ``check_tokenizer_fits`` refuses a tokenizer that
cannot feed a text encoder the captions of a data set.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from pathlib import Path


BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters (the BPE base alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def learn_bpe_merges(words: list[str]) -> list[tuple[str, str]]:
    """Learn CLIP-style BPE merges until every word of ``words`` is a single token.

    Words end in ``</w>`` as in CLIP. Ties between equally frequent pairs go to the smaller pair, so
    the result is deterministic.
    """
    corpus = Counter(tuple(word[:-1]) + (word[-1] + "</w>",) for word in words if word)
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for symbols, count in corpus.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        merged: Counter = Counter()
        for symbols, count in corpus.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] += count
        corpus = merged


def write_clip_tokenizer(folder: str | Path, words: list[str]) -> Path:
    """Write a CLIP tokenizer (vocab.json, merges.txt, configs) whose vocabulary holds ``words`` whole.

    Like CLIP's, the vocabulary starts with the 256 byte characters and their ``</w>`` forms, so any
    text tokenizes without an unknown token; ``words`` become single tokens through learned merges.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(bytes_to_unicode().values())
    vocab_list = alphabet + [c + "</w>" for c in alphabet]
    merges = learn_bpe_merges(sorted({w.lower() for w in words}))
    vocab_list += ["".join(pair) for pair in merges]
    vocab_list += [BOS, EOS]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(vocab_list))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
        "add_prefix_space": False, "errors": "replace",
        "bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS,
    }, indent=2))
    return folder


def tokenize_unknowns(tokenizer, texts: list[str]) -> list[str]:
    """Words of ``texts`` that the tokenizer cannot keep whole (split into pieces); empty when covered."""
    vocab = tokenizer.get_vocab()
    words = {w for text in texts for w in re.findall(r"[a-z]+", text.lower())}
    return sorted(w for w in words if w + "</w>" not in vocab)


def check_tokenizer_fits(tokenizer, captions: list[str], vocab_size: int, name: str = "the tokenizer",
                         max_captions: int = 2000) -> None:
    """Refuse a tokenizer that cannot feed a text encoder of ``vocab_size`` embeddings these captions; warn
    when it turns some of their words into its unknown token.

    Two refusals: a token id past the text encoder's embedding table (a tokenizer made for another text
    encoder: the lookup would fail deep inside it), and captions whose tokens are mostly (half or more) the
    unknown token (the examples' texts could not be told apart); fewer unknown tokens are a warning. Up to
    ``max_captions`` distinct captions are looked at.
    """
    texts = sorted({c for c in captions if c})[:max_captions]
    if not texts:
        return
    with_specials = tokenizer(texts + [""], truncation=True, max_length=tokenizer.model_max_length).input_ids
    largest = max(max(ids) for ids in with_specials if ids)
    if largest >= vocab_size:
        raise ValueError(f"{name} has {len(tokenizer)} tokens, but the text encoder has only {vocab_size} embeddings: "
                         f"token id {largest} would index past its table. Use the tokenizer the text encoder was "
                         "trained with (leave out --tokenizer_name to use the base model's).")
    unknown = tokenizer.unk_token_id
    if unknown is None:
        return
    content = tokenizer(texts, add_special_tokens=False).input_ids
    total = sum(len(ids) for ids in content)
    unknown_count = sum(token == unknown for ids in content for token in ids)
    if not unknown_count:
        return
    words = sorted({w for text in texts for w in re.findall(r"[a-z]+", text.lower())})[:200]
    lost = [w for w in words if unknown in tokenizer(w, add_special_tokens=False).input_ids][:5]
    examples = ", ".join(repr(w) for w in lost) or "?"
    told = (f"{name} turns {unknown_count} of the captions' {total} tokens into its unknown token (words such as "
            f"{examples})")
    if 2 * unknown_count >= total:
        raise ValueError(f"{told}: the captions would become mostly unknown tokens, which the text encoder cannot "
                         "tell apart. Use the base model's tokenizer (leave out --tokenizer_name) or one whose "
                         "vocabulary covers the captions.")
    warnings.warn(f"{told}: the text encoder cannot tell those words apart. Use a tokenizer whose vocabulary "
                  "covers the captions.", stacklevel=2)
