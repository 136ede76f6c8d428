"""Colour schemes of the embedding scatter (private to views/scatter/view.py): values per
point -> palette codes, palettes, the legend they come with, and the small engine-thread
jobs that read the values (store index columns, feature statistics, the vocabulary)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

N_LEVELS = 256  # continuous maps are quantised to this many colours (one brush each)
N_TOKENS = 12  # most frequent tokens that get their own colour
GREY = np.array([175, 175, 175, 255], np.uint8)
PALE = np.array([215, 215, 215, 255], np.uint8)  # a focused latent's zero
BACKGROUND = np.array([255, 255, 255], np.float32)
HIGHLIGHT = np.array([228, 26, 28, 255], np.uint8)  # focused latents

# Tableau 20 (categorical), then viridis anchors (continuous), as 0..255 RGB
_TAB20 = np.array([
    [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
    [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
    [174, 199, 232], [255, 187, 120], [152, 223, 138], [255, 152, 150], [197, 176, 213],
    [196, 156, 148], [247, 182, 210], [199, 199, 199], [219, 219, 141], [158, 218, 229]],
    np.uint8)
_VIRIDIS = np.array([
    [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
    [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]],
    np.float64)


class Legend(NamedTuple):
    """What the legend or colour bar shows for the current scheme."""

    title: str
    entries: tuple[tuple[tuple[int, int, int, int], str], ...] = ()  # categorical swatches
    bar: np.ndarray | None = None  # (N_LEVELS, 4) uint8 colour bar, low to high
    lo: float = 0.0
    hi: float = 0.0
    log: bool = False  # the bar's values are log10 of the labels shown


class Scheme(NamedTuple):
    """Per-point palette codes, the palette (K, 4) uint8 and the legend."""

    codes: np.ndarray  # (n,) int64 in 0..K-1
    palette: np.ndarray  # (K, 4) uint8
    legend: Legend


def categorical_palette(k: int) -> np.ndarray:
    """(k, 4) uint8: Tableau 20, repeated when there are more classes."""
    rgb = _TAB20[np.arange(k) % len(_TAB20)]
    return np.concatenate([rgb, np.full((k, 1), 255, np.uint8)], 1)


def viridis(n: int = N_LEVELS) -> np.ndarray:
    """(n, 4) uint8 viridis colour map."""
    t = np.linspace(0, len(_VIRIDIS) - 1, n)
    rgb = np.stack([np.interp(t, np.arange(len(_VIRIDIS)), _VIRIDIS[:, c]) for c in range(3)], 1)
    return np.concatenate([np.round(rgb), np.full((n, 1), 255)], 1).astype(np.uint8)


def dimmed(palette: np.ndarray) -> np.ndarray:
    """The palette faded towards the white background and mostly transparent."""
    rgb = palette[:, :3].astype(np.float32) * 0.35 + BACKGROUND * 0.65
    alpha = np.minimum(palette[:, 3:4].astype(np.float32), 70)
    return np.concatenate([rgb, alpha], 1).round().astype(np.uint8)


def uniform(n: int, title: str = "") -> Scheme:
    """Every point one colour (nothing to colour by yet)."""
    colour = np.array([[31, 119, 180, 255]], np.uint8)
    return Scheme(np.zeros(n, np.int64), colour, Legend(title))


def continuous(values: np.ndarray, title: str, log: bool = False, zero: bool = False) -> Scheme:
    """Values mapped through viridis between their finite min and max; NaN drawn grey.

    All-equal values take the middle colour; ``log`` maps log10 of positive values;
    ``zero`` draws exact zeros (a latent that does not fire) in a pale grey of their own."""
    v = np.asarray(values, np.float64)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)
    finite = np.isfinite(v)
    lo, hi = (float(v[finite].min()), float(v[finite].max())) if finite.any() else (0.0, 0.0)
    span = hi - lo
    scaled = (v - lo) / span if span > 0 else np.full(len(v), 0.5)
    codes = np.clip(np.nan_to_num(scaled, nan=0.0) * (N_LEVELS - 1) + 0.5, 0, N_LEVELS - 1)
    codes = np.where(finite, codes.astype(np.int64), N_LEVELS)
    palette = np.concatenate([viridis(), GREY[None], PALE[None]])
    entries: tuple = ()
    if zero:
        codes = np.where(v == 0, N_LEVELS + 1, codes)
        entries = ((tuple(int(c) for c in PALE), "0 (not firing)"),)
    return Scheme(codes, palette, Legend(title, entries, bar=viridis(), lo=lo, hi=hi, log=log))


def labels(values: np.ndarray, title: str, names: list[str] | None = None) -> Scheme:
    """One colour per label value (first 20 distinct, the rest grey)."""
    values = np.asarray(values, np.int64)
    classes, codes = np.unique(values, return_inverse=True)
    k = len(classes)
    palette = categorical_palette(min(k, 20))
    if k > 20:
        palette = np.concatenate([palette, GREY[None]])
        codes = np.minimum(codes, 20)
    names = names or []
    text = [names[c] if 0 <= c < len(names) else str(c) for c in classes[:20]]
    entries = tuple((tuple(int(v) for v in palette[i]), text[i]) for i in range(min(k, 20)))
    if k > 20:
        entries += ((tuple(int(v) for v in GREY), f"{k - 20} more"),)
    return Scheme(codes.astype(np.int64), palette, Legend(title, entries))


def tokens(values: np.ndarray, vocab: Any = None) -> Scheme:
    """The N_TOKENS most frequent token ids in their own colours, every other token grey."""
    values = np.asarray(values, np.int64)
    ids, counts = np.unique(values, return_counts=True)
    top = ids[np.argsort(-counts, kind="stable")[:N_TOKENS]]
    k = len(top)
    order = np.argsort(top)
    pos = np.clip(np.searchsorted(top[order], values), 0, max(k - 1, 0))
    hit = top[order][pos] == values if k else np.zeros(len(values), bool)
    codes = np.where(hit, order[pos] if k else 0, k)
    palette = np.concatenate([categorical_palette(k), GREY[None]])
    names = [_token_name(t, vocab) for t in top]
    entries = tuple((tuple(int(v) for v in palette[i]), names[i]) for i in range(k))
    entries += ((tuple(int(v) for v in GREY), "other tokens"),)
    return Scheme(codes.astype(np.int64), palette, Legend("token", entries))


def _token_name(token_id: int, vocab: Any) -> str:
    if vocab is None:
        return f"#{int(token_id)}"
    return repr(vocab.visible(vocab.token(int(token_id))))
