"""open_clip's CLIP BPE tokenizer without torch (open_clip's ``SimpleTokenizer`` imports torch at module level).

Same algorithm and text cleaning as ``open_clip.tokenizer.SimpleTokenizer`` with its defaults (``clean='lower'``,
no reduction mask): ftfy + html unescape, whitespace collapse, lower case, the same regex, byte-level BPE over the
merges file the exporter copies into the artifact folder. Returns int32 ids ``[n, context_length]``, truncated
prompts ending in the end-of-text id, as open_clip does. ``tests/test_onnxrt*.py`` checks it against open_clip.
"""

from __future__ import annotations

import gzip
import html
from functools import lru_cache
from pathlib import Path

import numpy as np

from cdul_rt.errors import CdulError, require

N_MERGES = 49152 - 256 - 2


@lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(word, word[1:]))


class ClipTokenizer:
    def __init__(self, merges_file: str | Path, context_length: int) -> None:
        self.regex = require("regex", "runtime")
        self.ftfy = require("ftfy", "runtime")
        try:
            lines = gzip.open(merges_file).read().decode("utf-8").split("\n")[1:N_MERGES + 1]
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise CdulError(f"cannot read the tokenizer file {merges_file} ({exc}); re-export the folder") from exc
        merges = [tuple(line.split()) for line in lines]
        vocab = list(bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        vocab += ["<start_of_text>", "<end_of_text>"]
        self.encoder = {v: i for i, v in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.sot_id, self.eot_id = self.encoder["<start_of_text>"], self.encoder["<end_of_text>"]
        self.context_length = context_length
        self.cache = {"<start_of_text>": "<start_of_text>", "<end_of_text>": "<end_of_text>"}
        self.pattern = self.regex.compile(
            r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            self.regex.IGNORECASE)

    def _clean(self, text: str) -> str:
        text = html.unescape(html.unescape(self.ftfy.fix_text(text))).strip()
        return " ".join(text.split()).strip().lower()

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        while pairs:
            first, second = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if (first, second) not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            pairs = _pairs(word) if len(word) > 1 else set()
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for token in self.pattern.findall(self._clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.context_length), dtype=np.int32)
        for row, text in enumerate(texts):
            ids = [self.sot_id, *self.encode(text), self.eot_id]
            if len(ids) > self.context_length:
                ids = ids[:self.context_length]
                ids[-1] = self.eot_id
            out[row, :len(ids)] = ids
        return out
