"""Numpy geometry for the embedding scatter (private to views/scatter/view.py): the vectorised
point-in-polygon test of a brush, the count image of the level-of-detail path, and the
mapping from selected ids to a per-point mask. No Qt here, so all of it is testable and
fast on its own."""

from __future__ import annotations

import numpy as np

EXACT_BELOW = 4096  # candidates under this get the exact even-odd test straight away


def _clean_polygon(poly: np.ndarray) -> np.ndarray:
    """(m, 2) float64 vertices without NaN rows or a repeated closing vertex."""
    poly = np.asarray(poly, np.float64).reshape(-1, 2)
    poly = poly[np.isfinite(poly).all(1)]
    if len(poly) > 1 and np.array_equal(poly[0], poly[-1]):
        poly = poly[:-1]
    return poly


def even_odd(px: np.ndarray, py: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Exact even-odd test of points against a polygon (ray to the right).

    Points are sorted by y once; each edge then flips only the contiguous run of points
    whose y lies in its half-open y-range, so short lasso edges cost little each."""
    px = np.asarray(px, np.float64)
    py = np.asarray(py, np.float64)
    order = np.argsort(py, kind="stable")
    xs, ys = px[order], py[order]
    a, b = poly, np.roll(poly, 1, axis=0)
    ylo, yhi = np.minimum(a[:, 1], b[:, 1]), np.maximum(a[:, 1], b[:, 1])
    starts = np.searchsorted(ys, ylo, side="left")
    stops = np.searchsorted(ys, yhi, side="left")
    flips = np.zeros(len(px), bool)
    for k in np.flatnonzero(stops > starts):
        s, e = starts[k], stops[k]
        (xi, yi), (xj, yj) = a[k], b[k]
        xint = (xj - xi) * (ys[s:e] - yi) / (yj - yi) + xi
        flips[s:e] ^= xs[s:e] < xint
    inside = np.empty(len(px), bool)
    inside[order] = flips
    return inside


def _edge_cells(poly: np.ndarray, origin: np.ndarray, cell: np.ndarray, g: int) -> np.ndarray:
    """(g, g) bool: every grid cell an edge may touch (sampled at half-cell steps, dilated)."""
    a, b = poly, np.roll(poly, -1, axis=0)
    steps = np.ceil(np.abs((b - a) / cell).max(1) * 2).astype(np.int64) + 1
    edge = np.repeat(np.arange(len(poly)), steps)
    first = np.repeat(np.cumsum(steps) - steps, steps)
    t = (np.arange(len(edge)) - first) / np.repeat(np.maximum(steps - 1, 1), steps)
    pts = a[edge] + (b - a)[edge] * t[:, None]
    ij = np.clip(((pts - origin) / cell).astype(np.int64), 0, g - 1)
    hit = np.zeros((g + 2, g + 2), bool)
    hit[ij[:, 1] + 1, ij[:, 0] + 1] = True
    out = np.zeros((g, g), bool)
    for dy in range(3):  # dilate by one cell: a sub-segment shorter than a cell
        for dx in range(3):  # never leaves the 3x3 block around its sample
            out |= hit[dy:dy + g, dx:dx + g]
    return out


def _centre_parity(poly: np.ndarray, origin: np.ndarray, cell: np.ndarray, g: int) -> np.ndarray:
    """(g, g) bool: whether each cell's centre lies inside (scanline crossings, even-odd)."""
    yc = origin[1] + (np.arange(g) + 0.5) * cell[1]  # (g,) row centres
    a, b = poly, np.roll(poly, -1, axis=0)
    cross = (a[:, 1:2] > yc) != (b[:, 1:2] > yc)  # (edges, rows)
    e, r = np.nonzero(cross)
    xa, ya, xb, yb = a[e, 0], a[e, 1], b[e, 0], b[e, 1]
    xint = xa + (yc[r] - ya) * (xb - xa) / (yb - ya)
    col = np.clip(np.floor((xint - origin[0]) / cell[0] - 0.5).astype(np.int64) + 1, 0, g)
    counts = np.bincount(r * (g + 1) + col, minlength=g * (g + 1)).reshape(g, g + 1)
    return (np.cumsum(counts, axis=1)[:, :g] & 1).astype(bool)


def points_in_polygon(xy: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """(n,) bool: which points lie inside the polygon (even-odd rule; NaN points never).

    A bounding-box prefilter, then a grid over the box: cells no edge touches take the
    inside/outside answer of their centre, and only points in cells an edge crosses get
    the exact test, so a 1M-point lasso costs a few passes over the candidates."""
    xy = np.asarray(xy)
    out = np.zeros(len(xy), bool)
    poly = _clean_polygon(poly)
    if len(poly) < 3 or not len(xy):
        return out
    lo, hi = poly.min(0), poly.max(0)
    x, y = xy[:, 0], xy[:, 1]
    keep = x >= lo[0]
    keep &= x <= hi[0]
    keep &= y >= lo[1]
    keep &= y <= hi[1]
    cand = np.flatnonzero(keep)
    if cand.size < EXACT_BELOW or len(poly) <= 4:
        out[cand] = even_odd(x[cand], y[cand], poly)
        return out
    px, py = x[cand], y[cand]
    g = int(np.clip(np.sqrt(cand.size) / 2, 32, 1024))
    cell = np.maximum((hi - lo) / g, 1e-300)
    ix = ((px - np.float32(lo[0])) * np.float32(1 / cell[0])).astype(np.int32)
    iy = ((py - np.float32(lo[1])) * np.float32(1 / cell[1])).astype(np.int32)
    np.clip(ix, 0, g - 1, out=ix)
    np.clip(iy, 0, g - 1, out=iy)
    iy *= g
    iy += ix
    result = _centre_parity(poly, lo, cell, g).ravel()[iy]
    edge = np.flatnonzero(_edge_cells(poly, lo, cell, g).ravel()[iy])
    result[edge] = even_odd(px[edge], py[edge], poly)
    out[cand] = result
    return out


def box_polygon(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """The four corners of an axis-aligned box as a polygon."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def extend_brush(path: list[tuple[float, float]], x: float, y: float, box: bool) -> np.ndarray:
    """Add the pointer (x, y) to a drag's ``path`` (in place) and return the polygon it
    outlines: a lasso keeps every point, a box its first corner and the pointer."""
    point = (float(x), float(y))
    if box:
        path[1:] = [point]
        return box_polygon(*path[0], *point)
    path.append(point)
    return np.array(path)


def brush_polygon(path: list[tuple[float, float]], box: bool) -> np.ndarray:
    """The polygon a finished drag selects with: the lasso's points, or the box's corners."""
    return box_polygon(*path[0], *path[-1]) if box else np.array(path, np.float64)


def fit_rect(target: tuple[float, float, float, float], w: float, h: float
             ) -> tuple[float, float, float, float]:
    """(x, y, width, height) of a w x h picture scaled into ``target`` (x, y, width,
    height), aspect kept and centred."""
    x, y, tw, th = target
    scale = min(tw / max(w, 1e-9), th / max(h, 1e-9))
    return x + (tw - w * scale) / 2, y + (th - h * scale) / 2, w * scale, h * scale


def ids_mask(ids: np.ndarray, selected: np.ndarray, full_mask: np.ndarray | None = None) -> np.ndarray:
    """(n,) bool: which of ``ids`` are in the sorted array ``selected``.

    A lookup table when ids are dense (one gather), binary search otherwise; a mask over
    all ids of the kind (Selection.mask) is used as the table directly."""
    ids = np.asarray(ids, np.int64)
    if not len(ids) or (not len(selected) and full_mask is None):
        return np.zeros(len(ids), bool)
    top = int(ids.max())
    if full_mask is not None and len(full_mask) > top and ids.min() >= 0:
        return full_mask[ids]
    if ids.min() >= 0 and top < 4 * len(ids) + 1024:
        table = np.zeros(top + 1, bool)
        table[selected[(selected >= 0) & (selected <= top)]] = True
        return table[ids]
    pos = np.clip(np.searchsorted(selected, ids), 0, len(selected) - 1)
    return selected[pos] == ids


class CountImage:
    """The level-of-detail image: points binned on a pixel grid of the visible rectangle,
    each bin coloured by the mean colour of its points (alpha-weighted) and opaque in
    proportion to how many points overlap there (as markers of that alpha would be).

    The per-bin sums (count, alpha, premultiplied RGB) are kept for the current grid, so a
    colour change that touches few points (a brush moving) updates only their bins."""

    DELTA_BELOW = 0.25  # update the sums in place when fewer than this share of points changed

    def __init__(self, xy: np.ndarray) -> None:
        self.x = np.ascontiguousarray(xy[:, 0], np.float32)
        self.y = np.ascontiguousarray(xy[:, 1], np.float32)
        self._flat_key: tuple | None = None
        self._flat = np.zeros(0, np.intp)
        self._sums: np.ndarray | None = None  # (5, (h+2)*(w+2)): count, alpha, r, g, b
        self._visible: tuple[tuple, int] | None = None
        self.codes = np.zeros(len(xy), np.int64)
        self.palette = np.full((1, 4), 255, np.uint8)
        self.set_colors(self.codes, self.palette)

    def set_colors(self, codes: np.ndarray, palette: np.ndarray) -> None:
        """Per-point codes into a (K, 4) uint8 palette, as the markers would be drawn."""
        codes = np.asarray(codes)
        palette = np.asarray(palette, np.uint8).reshape(-1, 4)
        if (self._sums is not None and len(codes) == len(self.codes) and palette.shape == self.palette.shape
                and np.array_equal(palette, self.palette)):
            changed = np.flatnonzero(codes != self.codes)
            if changed.size < self.DELTA_BELOW * max(len(codes), 1):
                self._add(self._flat[changed], self._tables(), codes[changed], self.codes[changed])
                self.codes = codes
                return
        self.codes, self.palette, self._sums = codes, palette, None

    def _tables(self) -> np.ndarray:
        """(4, K) per-code weights: alpha and the premultiplied RGB."""
        alpha = self.palette[:, 3].astype(np.float64) / 255.0
        return np.vstack([alpha, self.palette[:, :3].T * alpha])

    def _add(self, bins: np.ndarray, tables: np.ndarray, new: np.ndarray, old: np.ndarray) -> None:
        """Move points from their ``old`` codes to their ``new`` ones in the kept sums."""
        if not bins.size:
            return
        nb = self._sums.shape[1]
        for k in range(4):
            self._sums[1 + k] += np.bincount(bins, tables[k][new] - tables[k][old], nb)

    def count_visible(self, rect: tuple[float, float, float, float]) -> int:
        """How many points lie inside ``rect`` = (x0, x1, y0, y1) (remembered per rect)."""
        key = tuple(float(v) for v in rect)
        if self._visible is not None and self._visible[0] == key:
            return self._visible[1]
        x0, x1, y0, y1 = rect
        inside = self.x >= x0
        inside &= self.x < x1
        inside &= self.y >= y0
        inside &= self.y < y1
        self._visible = (key, int(np.count_nonzero(inside)))
        return self._visible[1]

    def _bins(self, rect: tuple[float, float, float, float], w: int, h: int) -> np.ndarray:
        """Flat bin of every point on a grid padded by one bin each side (the padding
        collects the points outside ``rect``, so no mask is needed)."""
        x0, x1, y0, y1 = rect
        fx = np.subtract(self.x, np.float32(x0))
        fx *= np.float32(w / max(x1 - x0, 1e-30))
        fx += 1
        np.clip(fx, 0, w + 1, out=fx)
        fy = np.subtract(self.y, np.float32(y0))
        fy *= np.float32(h / max(y1 - y0, 1e-30))
        fy += 1
        np.clip(fy, 0, h + 1, out=fy)
        flat = fy.astype(np.intp)
        flat *= w + 2
        flat += fx.astype(np.intp)
        return flat

    def render(self, rect: tuple[float, float, float, float], shape: tuple[int, int],
               overlap: float = 3.0) -> np.ndarray:
        """(h, w, 4) uint8 image of the points inside ``rect`` = (x0, x1, y0, y1); row 0 is y0."""
        w, h = shape
        key = (tuple(float(v) for v in rect), w, h)
        if key != self._flat_key:
            self._flat, self._flat_key, self._sums = self._bins(rect, w, h), key, None
        if self._sums is None:
            self._sums = self._full_sums((w + 2) * (h + 2))
        count, sum_a, *sum_rgb = (g.reshape(h + 2, w + 2)[1:-1, 1:-1] for g in self._sums)
        img = np.zeros((h, w, 4), np.uint8)
        hit = sum_a > 1e-9
        inv = np.divide(1.0, sum_a, out=np.zeros(sum_a.shape), where=hit)
        for c in range(3):
            img[..., c] = np.minimum(sum_rgb[c] * inv, 255.0)
        mean_a = np.minimum(np.divide(sum_a, count, out=np.zeros(count.shape), where=hit), 0.999)
        img[..., 3] = 255.0 * -np.expm1(np.log1p(-mean_a) * (count * overlap))
        return img

    def _full_sums(self, nb: int) -> np.ndarray:
        """The five sums over all points; a colour every used code shares costs no bincount."""
        tables = self._tables()
        used = np.bincount(self.codes, minlength=tables.shape[1]) > 0 if len(self.codes) else None
        sums = np.empty((5, nb))
        sums[0] = np.bincount(self._flat, None, nb)
        for k in range(4):
            row = tables[k][used] if used is not None else tables[k][:1]
            if np.all(row == row[0]):
                np.multiply(sums[0], row[0], out=sums[1 + k])
            else:
                sums[1 + k] = np.bincount(self._flat, tables[k][self.codes], nb)
        return sums

