"""Token display for views: a store's model spec -> a vocabulary that turns token ids into
readable strings (whitespace made visible) without loading the model's weights."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ModelError

_VISIBLE = {" ": "\u00b7", "\n": "\u21b5", "\t": "\u21e5"}  # middle dot, return, tab arrows


def _control_picture(c: str) -> str:
    """U+2400.. 'control pictures' for C0 controls, U+2421 for DEL."""
    return "\u2421" if c == "\x7f" else chr(0x2400 + ord(c))


class Vocab:
    """Token ids -> display strings, from a Hugging Face tokenizer."""

    def __init__(self, tokenizer: Any, model_id: str) -> None:
        self.tokenizer = tokenizer
        self.model_id = model_id
        self._cache: dict[int, str] = {}

    def decode(self, ids: np.ndarray | list[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def token(self, token_id: int) -> str:
        """One token as text, exactly as it reads in context (leading space included)."""
        token_id = int(token_id)
        if token_id not in self._cache:
            self._cache[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return self._cache[token_id]

    def tokens(self, ids: np.ndarray | list[int]) -> list[str]:
        return [self.token(i) for i in ids]

    @staticmethod
    def visible(text: str) -> str:
        """Whitespace and control characters shown as symbols, for tables, labels and figures
        (a raw control character would also make an exported SVG invalid XML)."""
        return "".join(_VISIBLE.get(c) or (_control_picture(c) if c < " " or c == "\x7f" else c)
                       for c in text)


def _tokenizer_path(model_id: str) -> str:
    if model_id == "smollm2":
        from engine.models.smollm2 import ensure_cached
        return str(ensure_cached())
    from engine.models.hf import resolve_hf_path
    from engine.models.registry import HF_PREFIXES, split_options
    body, _ = split_options(model_id)
    if body.startswith(HF_PREFIXES):
        body = body.split(":", 1)[1]
    return resolve_hf_path(body)


@lru_cache(maxsize=8)
def load_vocab(model_id: str) -> Vocab | None:
    """The vocabulary of a store's model, or None for models without a tokenizer (images).
    A ``tokenizer.json`` is read with ``tokenizers`` alone (0.4 s instead of the seconds
    that importing transformers takes)."""
    if not model_id:
        return None
    try:
        path = _tokenizer_path(model_id)
    except ModelError:
        return None
    fast = Path(path) / "tokenizer.json"
    if fast.is_file():
        from tokenizers import Tokenizer
        return Vocab(Tokenizer.from_file(str(fast)), model_id)
    from engine.models.hf import load_tokenizer
    try:
        return Vocab(load_tokenizer(path, model_id), model_id)
    except ModelError:
        return None
