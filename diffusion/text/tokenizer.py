"""A word-level tokenizer built from the captions themselves: nothing to download.

Text is lower-cased and split into words ``[a-z0-9]+`` (hyphenated words such as ``t-shirt`` or
``right-slanted`` stay one word; commas and other punctuation are dropped). Ids 0, 1 and 2 are
the padding, unknown-word and end tokens; every encoded prompt is its words' ids, the end token,
then padding up to ``max_length`` (CLIP pools its text tower at the end token, Radford et al. 2021).

Documented behaviour at the edges:
  * an unknown word maps to the unknown id (``strict=True`` refuses it instead, naming it);
  * the empty prompt encodes as the end token alone: the null caption of classifier-free guidance
    (GLIDE's empty caption, Nichol et al. 2022);
  * a prompt whose words and end token exceed ``max_length`` is refused (nothing is truncated),
    with its length and the limit said.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

TOKENIZER_FILE = "tokenizer.json"    # where a run that reads text keeps its tokenizer, beside its checkpoints
PAD, UNKNOWN, END = "<pad>", "<unk>", "<end>"
PAD_ID, UNKNOWN_ID, END_ID = 0, 1, 2
_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def null_caption(length: int) -> np.ndarray:
    """The null caption int32 [length]: the end token, then padding (what ``encode([""])`` gives): the
    null condition of classifier-free guidance and of caption dropout (GLIDE, Nichol et al. 2022, §3.2)."""
    return np.where(np.arange(length) == 0, END_ID, PAD_ID).astype(np.int32)


def split_words(text: str) -> list[str]:
    """The words of ``text``: lower-cased ``[a-z0-9]+`` runs, hyphenated ones kept whole."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Tokenizer:
    """``words[i]`` is the word of id i (the first three: pad, unknown, end); ``max_length`` counts
    the end token."""
    words: tuple[str, ...]
    max_length: int

    def __post_init__(self):
        if tuple(self.words[:3]) != (PAD, UNKNOWN, END) or len(self.words) < 4:
            raise ValueError(f"a tokenizer's words start with {PAD}, {UNKNOWN}, {END} and hold at least one word; "
                             f"got {list(self.words[:4])}{'…' if len(self.words) > 4 else ''}")
        if self.max_length < 2:
            raise ValueError(f"max_length={self.max_length} leaves no room for a word and the end token")

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def _ids(self) -> dict:
        return {w: i for i, w in enumerate(self.words)}

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` outside the vocabulary (each mapped to the unknown id by ``encode``)."""
        ids = self._ids()
        return [w for w in split_words(text) if w not in ids]

    def encode(self, texts: Sequence[str], *, strict: bool = False) -> np.ndarray:
        """int32 [N, max_length]: each text's word ids, the end id, padding. ``strict`` refuses
        unknown words rather than mapping them to the unknown id; a text longer than
        ``max_length`` − 1 words is refused."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts; wrap one prompt in a list")
        ids = self._ids()
        out = np.full((len(texts), self.max_length), PAD_ID, np.int32)
        for row, text in enumerate(texts):
            words = split_words(text)
            if len(words) + 1 > self.max_length:
                raise ValueError(f"prompt {text!r} has {len(words)} words; with the end token that exceeds the "
                                 f"model's context of {self.max_length} tokens: shorten it to at most "
                                 f"{self.max_length - 1} words")
            unknown = [w for w in words if w not in ids]
            if strict and unknown:
                raise ValueError(f"prompt {text!r} has words outside the vocabulary: {unknown}")
            out[row, :len(words) + 1] = [ids.get(w, UNKNOWN_ID) for w in words] + [END_ID]
        return out

    def decode(self, tokens) -> list[str]:
        """Each row's words up to its end token, joined by spaces (unknown words as ``<unk>``)."""
        texts = []
        for row in np.asarray(tokens):
            words = []
            for i in row:
                if i in (END_ID, PAD_ID):
                    break
                words.append(self.words[i])
            texts.append(" ".join(words))
        return texts

    def save(self, path):
        Path(path).write_text(json.dumps({"words": list(self.words), "max_length": self.max_length}, indent=1))

    @classmethod
    def load(cls, path) -> "Tokenizer":
        d = json.loads(Path(path).read_text())
        return cls(tuple(d["words"]), int(d["max_length"]))


def build_tokenizer(texts: Iterable[str], max_length: int = 0) -> Tokenizer:
    """The vocabulary of ``texts`` (words sorted, after the three special tokens); ``max_length``
    0 takes the longest text's words plus the end token."""
    texts = list(texts)
    vocab = sorted({w for t in texts for w in split_words(t)})
    if not vocab:
        raise ValueError(f"no words in the {len(texts)} captions given: a vocabulary needs at least one")
    longest = max(len(split_words(t)) for t in texts) + 1
    return Tokenizer((PAD, UNKNOWN, END) + tuple(vocab), max_length or longest)
