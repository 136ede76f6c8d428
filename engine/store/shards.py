"""Joining per-rank shard stores (distributed capture) into one store whose row datasets
are HDF5 virtual datasets over the shards."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from engine.errors import StoreError
from engine.store.activations import ActivationStore, add_committed, row_datasets


def join_shards(path: str | os.PathLike, shards: Sequence[str | os.PathLike]) -> ActivationStore:
    """Join per-rank shard stores into one store whose row datasets are HDF5 virtual
    datasets over the shards (rank order); documents and images are copied in.

    Shard paths are stored relative to the joined file, so the folder can move as a whole."""
    path = Path(path)
    opened = [ActivationStore.open(s) for s in shards]
    try:
        first = opened[0]
        for other in opened[1:]:
            why = first.meta.mismatch(other.meta)
            if why and not why.startswith("capture setting rank"):
                raise StoreError(f"{other.path}: shard does not match {first.path}: {why}")
        counts = [s.n_rows for s in opened]
        total = sum(counts)
        tmp = path.with_name(path.name + ".joining")
        with h5py.File(tmp, "w", libver="latest") as f:
            attrs = dict(first.attrs)
            params = dict(first.meta.params)
            params.pop("rank", None)
            params["shards"] = [os.path.relpath(Path(s.path).resolve(), path.parent.resolve()) for s in opened]
            attrs.update(n_committed=np.int64(total), params=json.dumps(params, sort_keys=True))
            f.attrs.update(attrs)
            add_committed(f, total)
            for name in row_datasets(first._f):
                src0 = first._f[name]
                layout = h5py.VirtualLayout(shape=(total, *src0.shape[1:]), dtype=src0.dtype)
                at = 0
                for shard, n in zip(opened, counts, strict=True):
                    rel = os.path.relpath(Path(shard.path).resolve(), path.parent.resolve())
                    layout[at:at + n] = h5py.VirtualSource(rel, name, shape=shard._f[name].shape)[:n]
                    at += n
                f.create_virtual_dataset(name, layout)
            _join_samples(f, opened, "text")
            if "images" in first._f:
                _join_samples(f, opened, "images")
    finally:
        for s in opened:
            s.close()
    os.replace(tmp, path)
    return ActivationStore.open(path)


def _join_samples(f: h5py.File, shards: Sequence[ActivationStore], name: str) -> None:
    """Merge per-sample datasets whose shards each fill the entries of their own samples."""
    n = max(s._f[name].shape[0] for s in shards)
    src0 = shards[0]._f[name]
    out = f.create_dataset(name, (n, *src0.shape[1:]), maxshape=(None, *src0.shape[1:]),
                           dtype=src0.dtype, chunks=src0.chunks)
    for shard in shards:
        used = np.unique(shard._f["sample"][:shard.n_rows])
        if used.size:
            out[used] = shard._f[name][used]
