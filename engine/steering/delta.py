"""Delta vectors: the mean activation of one group of store rows minus that of another, at
one hook point, read streamed from the store (chunk by chunk, never the whole store). A
group is a set of row ids (a selection), the rows of one value of a label, or "the rest"
(every row not in the other group). The direction becomes a steering recipe item of kind
``direction``, for text models and classifiers alike."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from engine.errors import LatentLabError
from engine.jobs import JobContext
from engine.store.activations import ActivationStore

REST = "rest"  # group B: every row not in group A
CHUNK_ROWS = 8192  # rows read per step


class LabelValue(NamedTuple):
    """The rows whose label ``label`` equals ``value``."""

    label: str
    value: int


Group = np.ndarray | Sequence[int] | LabelValue | str  # row ids, a label value, or REST (B only)


class DeltaVector(NamedTuple):
    """mean(A) - mean(B) at ``hook``: the direction (d,) float32, the groups' sizes and the
    direction's Euclidean norm."""

    hook: str
    direction: np.ndarray  # (d,) float32
    n_a: int
    n_b: int
    norm: float


def _mask(store: ActivationStore, group: Group, lo: int, hi: int, ids_mask: np.ndarray | None) -> np.ndarray:
    """(hi - lo,) bool: which rows of ``lo:hi`` are in ``group``."""
    if isinstance(group, LabelValue):
        return store.index(group.label, lo, hi) == group.value
    return ids_mask[lo:hi]


def _ids_mask(group: Group, n: int, which: str) -> np.ndarray | None:
    """(n,) bool over the store's rows for a group of row ids; None for other groups."""
    if isinstance(group, (LabelValue, str)):
        return None
    ids = np.asarray(group, np.int64).ravel()
    bad = ids[(ids < 0) | (ids >= n)]
    if bad.size:
        raise LatentLabError(f"group {which}: row {int(bad[0])} is outside the store (0..{n - 1})")
    mask = np.zeros(n, bool)
    mask[ids] = True
    return mask


def _check_groups(store: ActivationStore, a: Group, b: Group) -> None:
    if isinstance(a, str):
        raise LatentLabError("group A must be rows or a label value, not the rest")
    if isinstance(b, str) and b != REST:
        raise LatentLabError(f"group B {b!r} is neither rows, a label value nor {REST!r}")
    for which, g in (("A", a), ("B", b)):
        if isinstance(g, LabelValue) and g.label not in store.label_names:
            known = ", ".join(store.label_names) or "none"
            raise LatentLabError(f"group {which}: the store has no label {g.label!r} (labels: {known})")


def delta_vector(ctx: JobContext, store_path: str | os.PathLike, hook: str, a: Group,
                 b: Group = REST) -> DeltaVector:
    """Job: mean activation at ``hook`` of group ``a`` minus that of ``b`` (``REST``: the
    rows not in ``a``), summed in float64 over chunks of the store. LatentLabError when a
    group is empty or names rows or a label the store lacks."""
    with ActivationStore.open(store_path) as store:
        _check_groups(store, a, b)
        n, d = store.n_rows, store.dim(hook)
        masks = (_ids_mask(a, n, "A"), _ids_mask(b, n, "B"))
        sums, counts = np.zeros((2, d)), np.zeros(2, np.int64)
        for lo in range(0, n, CHUNK_ROWS):
            ctx.check_cancelled()
            hi = min(lo + CHUNK_ROWS, n)
            in_a = _mask(store, a, lo, hi, masks[0])
            in_b = ~in_a if isinstance(b, str) else _mask(store, b, lo, hi, masks[1])
            rows = store.acts(hook, lo, hi).astype(np.float64)
            for k, m in enumerate((in_a, in_b)):
                sums[k] += rows[m].sum(0)
                counts[k] += int(m.sum())
            ctx.progress(hi, n, "mean activations of the two groups")
    for k, which in enumerate("AB"):
        if not counts[k]:
            raise LatentLabError(f"group {which} holds no rows of the store: a delta vector needs rows in both")
    direction = (sums[0] / counts[0] - sums[1] / counts[1]).astype(np.float32)
    return DeltaVector(hook, direction, int(counts[0]), int(counts[1]), float(np.linalg.norm(direction)))


def delta_item(delta: DeltaVector, name: str, a: str, b: str, strength: float = 1.0) -> dict[str, Any]:
    """A recipe item (kind ``direction``) adding ``strength`` x the delta vector at its hook;
    ``a`` and ``b`` say what the groups were (shown in the view). Strength 1 moves group B's
    mean onto group A's."""
    return {"kind": "direction", "hook": delta.hook, "name": name, "strength": float(strength),
            "range": 4.0, "vector": [float(v) for v in delta.direction], "enabled": True,
            "groups": {"a": a, "b": b, "n_a": delta.n_a, "n_b": delta.n_b, "norm": round(delta.norm, 6)}}


class StoreGroups(NamedTuple):
    """What groups of a store's rows can be made of: its hook points and, per label, its
    values as (value, class name, rows), most rows first."""

    hooks: list[str]
    labels: dict[str, list[tuple[int, str, int]]]


def store_groups(ctx: JobContext, store_path: str | os.PathLike) -> StoreGroups:
    """Job: the store's hook points and label values (the class name is the capture's where
    it kept one, else the value)."""
    with ActivationStore.open(store_path) as store:
        classes = store.meta.params.get("label_classes") or {}
        labels = {}
        for name in store.label_names:
            ctx.check_cancelled()
            values, counts = np.unique(store.index(name), return_counts=True)
            names = classes.get(name) or []
            labels[name] = [(int(v), str(names[v]) if 0 <= v < len(names) else str(int(v)), int(c))
                            for v, c in sorted(zip(values, counts, strict=True), key=lambda vc: -vc[1])]
        return StoreGroups(list(store.hooks), labels)
