"""Hover texts of the embedding scatter (private to views/scatter/view.py): a row as its token in
context (or its image and label), a latent as its id, density and promoted tokens."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from engine.api import ActivationStore

BEFORE, AFTER = 12, 4  # context tokens shown around the hovered row


def _token_text(vocab: Any, token_id: int) -> str:
    if vocab is None:
        return f"#{int(token_id)} "
    return vocab.visible(vocab.token(int(token_id)))


def context_html(tokens: np.ndarray, at: int, vocab: Any) -> str:
    """The context with the row's token bracketed and bold (whitespace made visible)."""
    parts = [html.escape(_token_text(vocab, t)) for t in tokens]
    if 0 <= at < len(parts):
        parts[at] = f"<b>[{parts[at]}]</b>"
    return "".join(parts)


def row_info(store_path: Path, row: int, info: Any, vocab: Any) -> tuple[str, np.ndarray | None]:
    """Rich text for one store row, and its image for image stores (None otherwise)."""
    lines = [f"row {row}"]
    image = None
    with ActivationStore.open(store_path) as store:
        if not 0 <= row < store.n_rows:
            return f"row {row} (not in the store)", None
        for name in store.label_names:
            value = int(store.index(name, row, row + 1)[0])
            classes = (info.label_classes if info is not None else {}).get(name) or []
            text = classes[value] if 0 <= value < len(classes) else str(value)
            lines.append(f"{html.escape(name)}: {html.escape(text)}")
        if info is not None and info.has_images:
            image = store.image(int(store.index("sample", row, row + 1)[0]))
        elif info is None or info.has_tokens:
            tokens, at = store.context(row, BEFORE, AFTER)
            lines.insert(0, context_html(tokens, at, vocab))
    return "<br>".join(lines), image


def latent_info(latent: int, stats: dict[str, Any] | None, vocab: Any) -> str:
    """Rich text for one latent: id, density and top promoted tokens when stats exist."""
    lines = [f"<b>latent {latent}</b>"]
    if stats is not None and 0 <= latent < len(stats["density"]):
        lines.append(f"density {stats['density'][latent]:.3g}")
        top = stats.get("logit_top_ids")
        if top is not None and vocab is not None:
            words = [html.escape(repr(_token_text(vocab, t))) for t in top[latent][:6]]
            lines.append("promotes " + " ".join(words))
    return "<br>".join(lines)
