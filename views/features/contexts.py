"""The feature browser's contexts as HTML: a context's tokens shaded by a latent's
activation, and the examples of each quantile interval of its activations under a heading
with the interval's share of the firing rows and activation range (as sae-dashboard and
Neuronpedia show them)."""

from __future__ import annotations

import html
from typing import NamedTuple

import numpy as np

from engine.api import Context, FeatureStats, Vocab

SHADE = (255, 140, 0)  # context shading colour; its alpha follows the activation
N_TOP = 12  # top activating contexts shown


def _token_html(vocab: Vocab | None, token_id: int) -> str:
    if token_id < 0:
        return "\u25a3"  # an image row
    return token_html(vocab.token(token_id) if vocab is not None else f" #{token_id}")


def token_html(text: str) -> str:
    """A token's text as HTML: spaces kept (so lines break between words), control
    characters and newlines as visible symbols, an empty token as \u2205."""
    text = "".join(Vocab.visible(c) if c < " " or c == "\x7f" else c for c in text)
    return html.escape(text) or "\u2205"


def context_html(contexts: list[Context], vocab: Vocab | None, vmax: float) -> str:
    """One paragraph per context: each token's background alpha follows the activation
    (relative to ``vmax``), the top token bold and outlined (under- and overlined)."""
    if not contexts:
        return "<p><i>never fires</i></p>"
    r, g, b = SHADE
    parts = []
    for c in contexts:
        values = c.values if c.values is not None else np.where(np.arange(len(c.tokens)) == c.at, c.value, 0)
        spans = []
        for i, (tok, v) in enumerate(zip(c.tokens, values, strict=True)):
            alpha = float(np.clip(v / vmax, 0, 1)) if vmax > 0 else 0.0
            style = f"background-color: rgba({r},{g},{b},{alpha:.2f});"
            if i == c.at:
                style += " font-weight: bold; text-decoration: underline overline;"
            spans.append(f'<span style="{style}">{_token_html(vocab, int(tok))}</span>')
        parts.append(f'<p style="white-space: pre-wrap; margin: 2px 0;"><span style="color: gray;">'
                     f'{c.value:8.3g} </span>{"".join(spans)}</p>')
    return "".join(parts)


class Interval(NamedTuple):
    """One quantile interval of a latent's activations and its example contexts."""

    index: int  # 0 = the lowest activations
    levels: tuple[float, float]  # the share of firing rows below its ends
    lo: float  # activation range
    hi: float
    contexts: list[Context]


def detail_rows(stats: FeatureStats, latent: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows whose contexts the detail pane shows, in one list: the first N_TOP top rows,
    then each quantile interval's examples; their activations and group (-1 top, else
    the interval), rows without an example (-1) left out."""
    rows, values = [stats.top_rows[latent, :N_TOP]], [stats.top_values[latent, :N_TOP]]
    group = [np.full(len(rows[0]), -1)]
    if stats.interval_rows is not None and stats.interval_values is not None:
        cells = stats.interval_rows[latent]  # (intervals, n)
        rows.append(cells.ravel())
        values.append(stats.interval_values[latent].ravel())
        group.append(np.repeat(np.arange(len(cells)), cells.shape[1]))
    rows_, values_, group_ = (np.concatenate(a) for a in (rows, values, group))
    keep = rows_ >= 0
    return rows_[keep], values_[keep], group_[keep]


def split_intervals(stats: FeatureStats, latent: int,
                    contexts: list[Context]) -> tuple[list[Context], list[Interval]]:
    """The top contexts and the non-empty quantile intervals (highest first) of the contexts
    of ``detail_rows``, in its order."""
    _, _, group = detail_rows(stats, latent)
    top = [c for c, g in zip(contexts, group, strict=True) if g < 0]
    if stats.interval_rows is None:
        return top, []
    q, levels = stats.quantiles[latent], stats.quantile_levels
    intervals = []
    for i in range(stats.interval_rows.shape[1] - 1, -1, -1):
        found = [c for c, g in zip(contexts, group, strict=True) if g == i]
        if found:
            intervals.append(Interval(i, (float(levels[i]), float(levels[i + 1])), float(q[i]),
                                      float(q[i + 1]), found))
    return top, intervals


def intervals_html(intervals: list[Interval] | None, vocab: Vocab | None, vmax: float) -> str:
    """One section per quantile interval, highest first: a heading with its share of the
    firing rows and its activation range, then its example contexts as ``context_html``
    draws them (shaded relative to ``vmax``, the latent's maximum, as the top contexts are).
    None: the statistics hold no interval examples."""
    if intervals is None:
        return ("<p><i>these statistics hold no quantile-interval examples (computed before "
                "they were kept, or with too many codes to keep); run feature-stats again</i></p>")
    if not intervals:
        return "<p><i>never fires</i></p>"
    parts = []
    for iv in intervals:
        a, b = iv.levels
        parts.append(f'<p style="margin: 8px 0 2px 0;"><b>{a:.0%}\u2013{b:.0%} of firing rows</b>'
                     f'<span style="color: gray;"> \u00b7 activation {iv.lo:.3g}\u2013{iv.hi:.3g} '
                     f'\u00b7 {len(iv.contexts)} examples</span></p>')
        parts.append(context_html(iv.contexts, vocab, vmax))
    return "".join(parts)
