"""The feature browser's latent search, over what the statistics file already holds: a
latent id; label text (the auto-label and label-association columns); a token (latents
whose top activating rows sit on it, ``top_tokens``, or whose logit effects promote or
suppress it, ``logit_top_ids``/``logit_bottom_ids``); a label association
(``topic=sports``: latents whose best class, ``label_association``, is that class).

A plain query looks for a latent id, label text and a token at once; ``token:WORD``,
``label:TEXT`` and ``FIELD=CLASS`` (or ``=CLASS``) ask for one kind only. The answer says
how many latents each kind matched, for the view to show."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from engine.features.stats import FeatureStats, LatentTable

TOKEN_PREFIX, LABEL_PREFIX = "token:", "label:"


class LatentSearch(NamedTuple):
    """Which latents a query found and what each kind of match contributed."""

    mask: np.ndarray  # (d_sae,) bool; every latent for an empty query
    parts: list[tuple[str, int]]  # (what matched, how many latents; -1: a note, no count)
    note: str  # one line for the view: what the query matched, or why nothing could

    @property
    def count(self) -> int:
        return int(self.mask.sum())


def token_ids(vocab: Any, word: str) -> list[int]:
    """The token ids ``word`` stands for: ``#123`` names id 123; else each of the word as
    typed, lower-cased and capitalised, with and without a leading space, that the
    tokenizer reads as one token (``vocab`` an engine.models.tokens.Vocab or None)."""
    word = word.strip()
    if word.startswith("#") and word[1:].isdigit():
        return [int(word[1:])]
    if vocab is None or not word:
        return []
    found: list[int] = []
    for form in dict.fromkeys(f"{space}{w}" for w in (word, word.lower(), word.capitalize())
                              for space in ("", " ")):
        encoded = vocab.tokenizer.encode(form, add_special_tokens=False)
        ids = list(getattr(encoded, "ids", encoded))  # tokenizers' Encoding, or transformers' list
        if len(ids) == 1 and ids[0] not in found:
            found.append(int(ids[0]))
    return found


def _rows_with(table: np.ndarray | None, ids: list[int], d_sae: int) -> np.ndarray:
    """(d_sae,) latents whose row of a per-latent token table holds any of ``ids``."""
    if table is None or not ids:
        return np.zeros(d_sae, bool)
    return np.isin(table, ids).any(1)


def _shown(vocab: Any, ids: list[int]) -> str:
    if vocab is None:
        return ", ".join(f"#{i}" for i in ids)
    return ", ".join(vocab.visible(vocab.token(i)) for i in ids)


def by_token(stats: FeatureStats, vocab: Any, word: str) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """Latents whose top activating rows sit on ``word``'s tokens, or whose logit effects
    promote or suppress them; with the count of each."""
    d_sae = len(stats.count)
    ids = token_ids(vocab, word)
    if not ids:
        return np.zeros(d_sae, bool), [(f"\u201c{word}\u201d is not one token", -1)]
    kinds = (("fire on it", stats.top_tokens), ("promote it", stats.logit_top_ids),
             ("suppress it", stats.logit_bottom_ids))
    masks = [(what, _rows_with(table, ids, d_sae)) for what, table in kinds if table is not None]
    parts = [(f"token {_shown(vocab, ids)}:", -1)] + [(what, int(m.sum())) for what, m in masks]
    return np.logical_or.reduce([m for _, m in masks]), parts


def by_label_text(search_text: np.ndarray, text: str) -> np.ndarray:
    """Latents whose auto-label or label association contains ``text`` (any case);
    ``search_text`` is each latent's lower-case label columns."""
    return np.char.find(search_text, text.lower()) >= 0


def by_association(stats: FeatureStats, table: LatentTable, field: str,
                   value: str) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """Latents whose best class of the counted label field is ``value`` (any case); the
    field, when named, must be the one the statistics counted."""
    d_sae = len(stats.count)
    none = np.zeros(d_sae, bool)
    if stats.label_name is None:
        return none, [("these statistics count no label field", -1)]
    if field and field.lower() != stats.label_name.lower():
        return none, [(f"no label field \u201c{field}\u201d (the statistics count {stats.label_name})", -1)]
    lower = [c.lower() for c in stats.label_classes]
    if value.lower() not in lower:
        return none, [(f"{stats.label_name} has no class \u201c{value}\u201d", -1)]
    cls = lower.index(value.lower())
    mask = table.best == cls
    return mask, [(f"{stats.label_name}={stats.label_classes[cls]}", int(mask.sum()))]


def search_latents(stats: FeatureStats, table: LatentTable, search_text: np.ndarray, vocab: Any,
                   query: str) -> LatentSearch:
    """The latents ``query`` finds (see the module's docstring) and what each part matched."""
    query = query.strip()
    d_sae = len(stats.count)
    if not query:
        return LatentSearch(np.ones(d_sae, bool), [], "")
    parts: list[tuple[str, int]] = []
    if query.lower().startswith(TOKEN_PREFIX):
        mask, parts = by_token(stats, vocab, query[len(TOKEN_PREFIX):])
    elif query.lower().startswith(LABEL_PREFIX):
        mask = by_label_text(search_text, query[len(LABEL_PREFIX):].strip())
        parts = [("label text", int(mask.sum()))]
    elif "=" in query:
        field, value = (s.strip() for s in query.split("=", 1))
        mask, parts = by_association(stats, table, field, value)
    else:
        mask = by_label_text(search_text, query)
        parts = [("label text", int(mask.sum()))]
        if query.isdigit() and int(query) < d_sae:
            mask[int(query)] = True
            parts.insert(0, (f"latent {int(query)}", -1))
        if " " not in query:
            found, token_parts = by_token(stats, vocab, query)
            mask |= found
            if len(token_parts) > 1:  # a phrase is no token: say nothing of tokens
                parts += token_parts
    return LatentSearch(mask, parts, f"{int(mask.sum())} latents \u2014 {describe(parts)}")


def describe(parts: list[tuple[str, int]]) -> str:
    """``parts`` as one line: counts after their names, a note before what it heads."""
    text = ""
    for what, n in parts:
        sep = "" if not text else (" " if text.endswith(":") else " \u00b7 ")
        text += sep + (what if n < 0 else f"{what} {n}")
    return text
