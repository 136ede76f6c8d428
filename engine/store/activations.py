"""HDF5 activation stores: one file per capture (or one shard per rank joined by a virtual
dataset). Rows are appended in chunks; ``n_committed`` is bumped only after a flush, so a
reader (SWMR) never sees a half-written row and an interrupted capture resumes from there.

Layout (format version 1):
  root attrs   format_version, model_id, model_hash, source_id, hooks (json), dims (json),
               dtype, created, n_committed, params (json: how the capture was made),
               model_dtype (the precision the model ran in; float32 when absent), and
               below float32 float32_cosine (json: per hook, mean/min/rows of the per-row
               cosine to the float32 model's rows on the first batch)
               provenance (json: where the store came from, engine.provenance)
  /acts/<hook> (n, d) float16|float32, chunked along rows
  /tokens /sample /position  (n,) int32   token id (-1 for images), document, position
  /labels/<name>             (n,) int32   per-row labels (e.g. the digit class)
  /text                      (n_docs,) UTF-8 documents, indexed by /sample
  /n_committed               (1,) int64   the committed count again, as a dataset: a SWMR
                                          reader can refresh a dataset but not a root attribute
  /images                    (n_samples, h, w) float32, indexed by /sample (image sources)

Nothing but capture writes a store. What is computed from one (feature statistics) is a
file of its own beside it (``engine.store.derived``); stores from before that may hold
``/features/<sae id>/`` groups, which readers still take as a fallback (``read_group``).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from engine.errors import StoreError
from engine.provenance import known_record, provenance_record, record_json

FORMAT_VERSION = 1
INDEX_FIELDS = ("tokens", "sample", "position")
_COMMITTED = "n_committed"  # dataset mirroring the root attribute of that name
_STR = h5py.string_dtype("utf-8")


PROVENANCE_ATTR = "provenance"  # root attribute: JSON record (engine.provenance), written at creation
COSINE_ATTR = "float32_cosine"  # root attribute: JSON {hook: {"mean", "min", "rows"}}


@dataclass(frozen=True)
class StoreMeta:
    """Identity of a capture: which model, weights, source and hook points made the rows."""

    model_id: str
    model_hash: str
    source_id: str
    hooks: tuple[str, ...]
    dims: Mapping[str, int]
    dtype: str = "float16"
    params: Mapping[str, Any] = field(default_factory=dict)
    model_dtype: str = "float32"  # the precision the model ran in (``dtype`` is the rows')

    def mismatch(self, other: StoreMeta) -> str | None:
        """Name the first identity field where ``other`` differs, or None when they agree."""
        for name in ("model_id", "model_hash", "model_dtype", "source_id", "dtype"):
            if getattr(self, name) != getattr(other, name):
                return f"{name} is {getattr(self, name)!r}, not {getattr(other, name)!r}"
        if tuple(self.hooks) != tuple(other.hooks):
            return f"hook points are {list(self.hooks)}, not {list(other.hooks)}"
        if dict(self.dims) != dict(other.dims):
            return f"widths are {dict(self.dims)}, not {dict(other.dims)}"
        for key in sorted(set(self.params) | set(other.params)):
            if self.params.get(key) != other.params.get(key):
                return f"capture setting {key} is {self.params.get(key)!r}, not {other.params.get(key)!r}"
        return None


def chunk_rows_for(row_bytes: int) -> int:
    """Rows per HDF5 chunk so a chunk holds about 1 MiB (a power of two in 256..8192)."""
    target = max(1, (1 << 20) // max(row_bytes, 1))
    return int(min(8192, max(256, 1 << int(np.round(np.log2(target))))))


def _reason(exc: OSError) -> str:
    """An OSError's reason without h5py's wrapping (e.g. "Permission denied")."""
    text = str(exc)
    found = text.find("error message = '")
    if found >= 0:
        return text[found + 17:].split("'")[0]
    return exc.strerror or text


def _not_a_folder(folder: Path) -> Path | None:
    """The first ancestor-or-self of ``folder`` that exists but is not a folder, if any."""
    for part in (*reversed(folder.parents), folder):
        if part.exists() and not part.is_dir():
            return part
    return None


def _open_h5(path: Path, mode: str) -> h5py.File:
    """Open an HDF5 file, turning h5py's errors into one StoreError naming the file."""
    if not path.exists():
        raise StoreError(f"{path}: no such file")
    if path.is_dir():
        raise StoreError(f"{path}: is a folder, not an activation store file")
    try:
        if mode == "r":
            # A plain open checks the file's length against its header (truncation); a
            # file a writer holds (live or killed) opens only as a SWMR reader.
            try:
                return h5py.File(path, "r", libver="latest")
            except OSError as exc:
                if "already open for write" not in str(exc) and "unable to lock" not in str(exc):
                    raise
            return h5py.File(path, "r", libver="latest", swmr=True)
        for attempt in range(50):  # a reader opening at this instant holds a brief lock
            try:
                return h5py.File(path, mode, libver="latest")
            except OSError as exc:
                if "unable to lock" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.1)
    except OSError as exc:
        text = str(exc)
        if "signature not found" in text:
            raise StoreError(f"{path}: not an HDF5 file (no HDF5 signature)") from None
        if "truncated file" in text:
            raise StoreError(f"{path}: truncated HDF5 file (the file is shorter than its header says)") from None
        if "consistency flags" in text:
            raise StoreError(f"{path}: left open by a writer that did not close it") from None
        raise StoreError(f"{path}: cannot open as HDF5 ({text})") from None


def _committed(f: h5py.File) -> int:
    """Committed rows. HDF5 never re-reads the root group's attributes for a SWMR reader
    (its cached copy of ``n_committed`` stays at the value it opened with), so writers also
    keep the count in the dataset /n_committed, which a reader refreshes; stores without
    it (older files) fall back to the attribute."""
    if _COMMITTED in f and isinstance(f[_COMMITTED], h5py.Dataset):
        ds = f[_COMMITTED]
        if f.mode == "r":
            ds.refresh()
        return int(ds[0])
    return int(f.attrs["n_committed"])


def add_committed(f: h5py.File, n: int) -> None:
    """Create /n_committed (before SWMR mode: no new objects after it) holding ``n``."""
    f.create_dataset(_COMMITTED, data=np.array([n], np.int64), maxshape=(1,), chunks=(1,))


def _check_layout(path: Path, f: h5py.File) -> int:
    """Validate a store's attributes and datasets; return its committed row count."""
    if "format_version" not in f.attrs:
        raise StoreError(f"{path}: not a LatentLab activation store (no format_version attribute)")
    version = int(f.attrs["format_version"])
    if version > FORMAT_VERSION:
        raise StoreError(
            f"{path}: written in store format {version}, newer than this LatentLab reads "
            f"({FORMAT_VERSION}); upgrade LatentLab to open it")
    for name in ("model_id", "model_hash", "source_id", "hooks", "dims", "dtype", "n_committed"):
        if name not in f.attrs:
            raise StoreError(f"{path}: missing root attribute {name!r}")
    if _COMMITTED in f and (not isinstance(f[_COMMITTED], h5py.Dataset)
                            or f[_COMMITTED].shape != (1,)):
        raise StoreError(f"{path}: /{_COMMITTED} is not a one-element dataset")
    n = _committed(f)
    hooks = json.loads(f.attrs["hooks"])
    dims = json.loads(f.attrs["dims"])
    for name in INDEX_FIELDS:
        if name not in f:
            raise StoreError(f"{path}: missing dataset /{name}")
        ds = f[name]
        if ds.ndim != 1 or ds.shape[0] < n:
            raise StoreError(f"{path}: dataset /{name} has shape {ds.shape}, expected ({n},) rows")
    for hook in hooks:
        key = f"acts/{hook}"
        if key not in f:
            raise StoreError(f"{path}: missing dataset /{key} for hook point {hook!r}")
        ds = f[key]
        want = int(dims.get(hook, -1))
        if ds.ndim != 2 or ds.shape[0] < n or ds.shape[1] != want:
            raise StoreError(
                f"{path}: dataset /{key} has shape {ds.shape}, expected ({n}, {want})")
    return n


def validate(path: str | os.PathLike) -> None:
    """Raise StoreError with one clear sentence if ``path`` is not a readable store."""
    ActivationStore.open(path).close()



def _store_record(meta: StoreMeta) -> dict[str, Any]:
    """A new store's provenance: the model and its weights, the source (its file when the
    source names one), hook points, widths, dtypes and capture settings."""
    named = Path(meta.source_id.split(":", 1)[-1])
    inputs = [("source", named)] if named.is_file() else []
    return provenance_record("store", inputs=inputs, model_id=meta.model_id, model_hash=meta.model_hash,
                             params={"source_id": meta.source_id, "hooks": list(meta.hooks), "dims": dict(meta.dims),
                                     "dtype": meta.dtype, "model_dtype": meta.model_dtype, **dict(meta.params)},
                             seed=meta.params.get("seed"))

class ActivationStore:
    """An HDF5 activation store, open for reading (SWMR) or appending (one writer)."""

    def __init__(self, path: Path, f: h5py.File, writable: bool) -> None:
        self.path = path
        self._f = f
        self.writable = writable
        self._n = _committed(f)
        self.meta = StoreMeta(
            model_id=str(f.attrs["model_id"]), model_hash=str(f.attrs["model_hash"]),
            source_id=str(f.attrs["source_id"]), hooks=tuple(json.loads(f.attrs["hooks"])),
            dims=json.loads(f.attrs["dims"]), dtype=str(f.attrs["dtype"]),
            params=json.loads(f.attrs.get("params", "{}")),
            model_dtype=str(f.attrs.get("model_dtype", "float32")))

    @property
    def provenance(self) -> dict[str, Any]:
        """Where the store came from (engine.provenance); a store written before records were
        kept gets one of what its attributes say (model, source, settings, time)."""
        raw = self._f.attrs.get(PROVENANCE_ATTR)
        meta = self.meta
        return known_record("store", None if raw is None else json.loads(raw),
                            model={"id": meta.model_id, "sha256": meta.model_hash},
                            params={"source_id": meta.source_id, "hooks": list(meta.hooks), **dict(meta.params)},
                            created=str(self._f.attrs.get("created", "")) or None)

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path: str | os.PathLike, meta: StoreMeta, labels: Sequence[str] = (),
               images_shape: tuple[int, ...] | None = None,
               attrs: Mapping[str, Any] | None = None) -> ActivationStore:
        """Create a new, empty store for ``meta`` and open it for appending (SWMR writer);
        ``attrs`` are further root attributes (SWMR lets a writer change, not add, them)."""
        path = Path(path)
        if meta.dtype not in ("float16", "float32"):
            raise StoreError(f"{path}: dtype must be float16 or float32, not {meta.dtype!r}")
        tmp = path.with_name(path.name + ".creating")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = h5py.File(tmp, "w", libver="latest")
        except OSError as exc:
            blocker = _not_a_folder(path.parent)
            why = f"{blocker} is a file, not a folder" if blocker else _reason(exc)
            raise StoreError(f"{path}: cannot create the store in {path.parent} ({why})") from None
        with f:
            f.attrs.update({
                "format_version": FORMAT_VERSION, "model_id": meta.model_id,
                "model_hash": meta.model_hash, "source_id": meta.source_id,
                "hooks": json.dumps(list(meta.hooks)), "dims": json.dumps(dict(meta.dims)),
                "dtype": meta.dtype, "params": json.dumps(dict(meta.params), sort_keys=True),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "n_committed": np.int64(0),
                "model_dtype": meta.model_dtype, PROVENANCE_ATTR: record_json(_store_record(meta)),
                **dict(attrs or {})})
            itemsize = np.dtype(meta.dtype).itemsize
            for hook in meta.hooks:
                d = int(meta.dims[hook])
                f.create_dataset(f"acts/{hook}", (0, d), maxshape=(None, d), dtype=meta.dtype,
                                 chunks=(chunk_rows_for(d * itemsize), d))
            for name in (*INDEX_FIELDS, *(f"labels/{lab}" for lab in labels)):
                f.create_dataset(name, (0,), maxshape=(None,), dtype="int32", chunks=(16384,))
            f.create_dataset("text", (0,), maxshape=(None,), dtype=_STR, chunks=(256,))
            add_committed(f, 0)
            if images_shape is not None:
                f.create_dataset("images", (0, *images_shape), maxshape=(None, *images_shape),
                                 dtype="float32", chunks=(256, *images_shape))
        # Enter SWMR mode before the file appears under its name: a reader that opens it
        # at once must not hold a lock that keeps the writer out.
        store = cls._open_writer(tmp)
        os.replace(tmp, path)
        _lock_path(tmp).replace(_lock_path(path))
        store.path = path
        return store

    @classmethod
    def open(cls, path: str | os.PathLike) -> ActivationStore:
        """Open a store for reading; safe while a writer appends (SWMR)."""
        path = Path(path)
        f = _open_h5(path, "r")
        try:
            _check_layout(path, f)
        except Exception:
            f.close()
            raise
        return cls(path, f, writable=False)

    @classmethod
    def open_append(cls, path: str | os.PathLike) -> ActivationStore:
        """Open an existing store to append more rows, recovering it if its writer was killed."""
        path = Path(path)
        _check_lock(path)
        try:
            f = _open_h5(path, "r+")
            f.close()
        except StoreError as exc:
            if "left open by a writer" not in str(exc):
                raise
            recover(path)
        return cls._open_writer(path)

    @classmethod
    def _open_writer(cls, path: Path) -> ActivationStore:
        f = _open_h5(path, "r+")
        try:
            n = _check_layout(path, f)
            for name in row_datasets(f):  # drop rows written after the last commit
                if f[name].shape[0] != n:
                    f[name].resize(n, axis=0)
            if _COMMITTED not in f:  # a store from before /n_committed
                add_committed(f, n)
            f.attrs["n_committed"] = np.int64(n)
            f.swmr_mode = True
        except Exception:
            f.close()
            raise
        _lock_path(path).write_text(f"{os.getpid()} {socket.gethostname()}\n")
        return cls(path, f, writable=True)

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()
        if self.writable:
            _lock_path(self.path).unlink(missing_ok=True)
            self.writable = False

    def __enter__(self) -> ActivationStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ facts
    @property
    def n_rows(self) -> int:
        """Committed rows: the only rows a reader may use."""
        return self._n

    def __len__(self) -> int:
        return self._n

    @property
    def hooks(self) -> tuple[str, ...]:
        return self.meta.hooks

    @property
    def attrs(self) -> Mapping[str, Any]:
        return self._f.attrs

    @property
    def label_names(self) -> list[str]:
        return sorted(self._f["labels"].keys()) if "labels" in self._f else []

    @property
    def n_documents(self) -> int:
        return int(self._f["text"].shape[0]) if "text" in self._f else 0

    def dim(self, hook: str) -> int:
        return int(self.meta.dims[self._hook(hook)])

    def refresh(self) -> int:
        """Re-read the committed count (a reader following a live writer); return it."""
        n = _committed(self._f)  # first: the row datasets the writer grew before committing
        for name in row_datasets(self._f):
            self._f[name].refresh()
        self._n = n
        return self._n

    @property
    def float32_cosine(self) -> dict[str, dict[str, float]]:
        """Per hook, the mean/min/rows of the per-row cosine to the float32 model's rows on
        the first batch, as a reduced-precision capture recorded it ({} for float32)."""
        return json.loads(self._f.attrs.get(COSINE_ATTR, "{}") or "{}")

    def summary(self) -> dict[str, Any]:
        """A JSON-able description: identity, rows, widths and datasets (with the model's
        precision and, below float32, its first batch's cosine to float32 per hook)."""
        cosine = self.float32_cosine
        return {"path": str(self.path), "format_version": int(self._f.attrs["format_version"]),
                "model_id": self.meta.model_id, "model_hash": self.meta.model_hash,
                "model_dtype": self.meta.model_dtype, **({COSINE_ATTR: cosine} if cosine else {}),
                "source_id": self.meta.source_id, "hooks": list(self.hooks),
                "dims": dict(self.meta.dims), "dtype": self.meta.dtype, "rows": self._n,
                "documents": self.n_documents, "labels": self.label_names,
                "params": dict(self.meta.params)}

    # ------------------------------------------------------------------ reading
    def _hook(self, hook: str) -> str:
        if hook not in self.meta.hooks:
            raise StoreError(f"{self.path}: no hook point {hook!r}; it holds {list(self.hooks)}")
        return hook

    def _bounds(self, start: int, stop: int | None) -> tuple[int, int]:
        stop = self._n if stop is None else min(stop, self._n)
        return max(0, start), max(max(0, start), stop)

    def acts(self, hook: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of one hook point, as stored (float16 or float32)."""
        lo, hi = self._bounds(start, stop)
        return self._f[f"acts/{self._hook(hook)}"][lo:hi]

    def rows(self, hook: str, index: np.ndarray) -> np.ndarray:
        """Arbitrary rows (any order, repeats allowed) of one hook point."""
        index = np.asarray(index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= self._n):
            raise IndexError(f"row index out of range 0..{self._n - 1}")
        order = np.argsort(index, kind="stable")
        uniq, inverse = np.unique(index[order], return_inverse=True)
        data = self._f[f"acts/{self._hook(hook)}"][uniq] if uniq.size else \
            np.empty((0, self.dim(hook)), self.meta.dtype)
        out = np.empty((index.size, data.shape[1]), data.dtype)
        out[order] = data[inverse]
        return out

    def index(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows of /tokens, /sample, /position or /labels/<name>."""
        lo, hi = self._bounds(start, stop)
        key = name if name in INDEX_FIELDS else f"labels/{name}"
        if key not in self._f:
            raise StoreError(f"{self.path}: no dataset /{key}")
        return self._f[key][lo:hi]

    def document(self, sample: int) -> str:
        """The source document a row came from (by its /sample id)."""
        value = self._f["text"][int(sample)]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def image(self, sample: int) -> np.ndarray:
        return self._f["images"][int(sample)]

    def context(self, row: int, before: int = 16, after: int = 8) -> tuple[np.ndarray, int]:
        """Token ids around ``row`` from the same document, and where ``row`` sits in them."""
        if not 0 <= row < self._n:
            raise IndexError(f"row {row} out of range 0..{self._n - 1}")
        lo, hi = max(0, row - before), min(self._n, row + after + 1)
        sample = self._f["sample"][lo:hi]
        position = self._f["position"][lo:hi]
        tokens = self._f["tokens"][lo:hi]
        c = row - lo
        same = (sample == sample[c]) & (position - position[c] == np.arange(lo, hi) - row)
        breaks = np.flatnonzero(~same)  # keep only the unbroken run of rows around ``row``
        first = int(breaks[breaks < c].max(initial=-1)) + 1
        last = int(breaks[breaks > c].min(initial=len(same)))
        return tokens[first:last], c - first

    def iter_batches(self, hook: str, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                     start: int = 0, stop: int | None = None, buffer_rows: int = 65536,
                     drop_last: bool = False) -> Iterator[np.ndarray]:
        """Stream float32 batches of one hook point, never loading the store whole.

        With ``shuffle`` the HDF5 chunks are visited in random order and rows are mixed
        inside a buffer of several chunks, so batches mix distant parts of the corpus."""
        ds = self._f[f"acts/{self._hook(hook)}"]
        lo, hi = self._bounds(start, stop)
        step = ds.chunks[0] if ds.chunks else chunk_rows_for(ds.shape[1] * ds.dtype.itemsize)
        starts = np.arange(lo - lo % step, hi, step)
        rng = np.random.default_rng(seed)
        if shuffle:
            rng.shuffle(starts)
        buffer: list[np.ndarray] = []
        held = 0
        carry = np.empty((0, ds.shape[1]), np.float32)
        for i, s in enumerate(starts):
            block = ds[max(s, lo):min(s + step, hi)]
            buffer.append(block.astype(np.float32, copy=False))
            held += len(block)
            if held < buffer_rows and i + 1 < len(starts):
                continue
            pool = np.concatenate([carry, *buffer])
            buffer, held = [], 0
            if shuffle:
                pool = pool[rng.permutation(len(pool))]
            n_full = len(pool) // batch_size * batch_size
            for b in range(0, n_full, batch_size):
                yield pool[b:b + batch_size]
            carry = pool[n_full:]
        if len(carry) and not drop_last:
            yield carry

    # ------------------------------------------------------------------ writing
    def _need_writer(self) -> None:
        if not self.writable:
            raise StoreError(f"{self.path}: opened read-only")

    def put_documents(self, first: int, texts: Sequence[str]) -> None:
        """Write documents at /text[first:first+len(texts)], growing it as needed."""
        self._need_writer()
        ds = self._f["text"]
        end = first + len(texts)
        if ds.shape[0] < end:
            ds.resize(end, axis=0)
        if texts:
            ds[first:end] = np.array(list(texts), dtype=object)

    def put_images(self, first: int, images: np.ndarray) -> None:
        self._need_writer()
        ds = self._f["images"]
        end = first + len(images)
        if ds.shape[0] < end:
            ds.resize(end, axis=0)
        ds[first:end] = images

    def append(self, acts: Mapping[str, np.ndarray], tokens: np.ndarray, sample: np.ndarray,
               position: np.ndarray, labels: Mapping[str, np.ndarray] | None = None) -> int:
        """Append rows to every dataset, flush, then commit them; return the new row count."""
        self._need_writer()
        n_new = len(tokens)
        if set(acts) != set(self.meta.hooks):
            raise StoreError(f"{self.path}: append got hooks {sorted(acts)}, store has {list(self.hooks)}")
        columns = {"tokens": tokens, "sample": sample, "position": position}
        columns.update({f"labels/{k}": v for k, v in (labels or {}).items()})
        columns.update({f"acts/{h}": a for h, a in acts.items()})
        for name, value in columns.items():
            if len(value) != n_new:
                raise StoreError(f"{self.path}: append got {len(value)} rows for /{name}, expected {n_new}")
        for h, a in acts.items():
            shape, d = np.shape(a), self.dim(h)
            if len(shape) != 2 or shape[1] != d:
                raise StoreError(f"{self.path}: append got shape {shape} for /acts/{h}, expected ({n_new}, {d})")
        expected = set(row_datasets(self._f))
        if set(columns) != expected:
            missing, unknown = sorted(expected - set(columns)), sorted(set(columns) - expected)
            problems = [f"is missing {missing}"] if missing else []
            problems += [f"got columns the store does not have: {unknown}"] if unknown else []
            raise StoreError(f"{self.path}: append {' and '.join(problems)}")
        lo, hi = self._n, self._n + n_new
        for name, value in columns.items():
            ds = self._f[name]
            ds.resize(hi, axis=0)
            ds[lo:hi] = value
        self._f.flush()
        self._f[_COMMITTED][0] = hi
        self._f.attrs["n_committed"] = np.int64(hi)
        self._f.flush()
        self._n = hi
        return hi

    def read_group(self, group: str, exclude: Sequence[str] = ()) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The datasets (as arrays, but not those named in ``exclude``) and attributes of a
        group of the file (e.g. ``features/<sae id>``, where older LatentLab versions wrote
        feature statistics)."""
        g = self.group(group)
        arrays = {k: v[()] for k, v in g.items() if isinstance(v, h5py.Dataset) and k not in exclude}
        return arrays, dict(g.attrs)

    def group(self, path: str) -> h5py.Group:
        """A group of the file, open while the store is; raises StoreError when it is missing."""
        obj = self._f.get(path)
        if not isinstance(obj, h5py.Group):
            raise StoreError(f"{self.path}: no group /{path}")
        return obj

    def dataset(self, path: str) -> h5py.Dataset:
        """A dataset of the file, to read in slices instead of whole; raises StoreError when
        it is missing."""
        obj = self._f.get(path)
        if not isinstance(obj, h5py.Dataset):
            raise StoreError(f"{self.path}: no dataset /{path}")
        return obj

    def set_attr(self, name: str, value: Any) -> None:
        """Update a root attribute that already exists (SWMR allows no new objects)."""
        self._need_writer()
        self._f.attrs[name] = value
        self._f.flush()


def row_datasets(f: h5py.File) -> list[str]:
    names = [*INDEX_FIELDS]
    names += [f"labels/{k}" for k in f["labels"]] if "labels" in f else []
    names += [f"acts/{k}" for k in f["acts"]] if "acts" in f else []
    return [n for n in names if n in f]


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _check_lock(path: Path) -> None:
    """Refuse to open a store that a live process on this machine is writing."""
    lock = _lock_path(path)
    if not lock.exists():
        return
    try:
        pid_text, host = lock.read_text().split()
        pid = int(pid_text)
    except ValueError:
        return
    if host != socket.gethostname() or pid == os.getpid():
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass
    raise StoreError(f"{path}: is being written by process {pid} (lock file {lock})")


def recover(path: str | os.PathLike) -> int:
    """Rewrite a store whose writer was killed: keep its committed rows, drop the rest.

    HDF5 marks a file open for writing until it is closed; after a kill only a SWMR
    reader can open it, so the committed rows are copied into a clean file that replaces it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".recovering")
    with _open_h5(path, "r") as src:
        n = _check_layout(path, src)
        with h5py.File(tmp, "w", libver="latest") as dst:
            dst.attrs.update(dict(src.attrs))
            dst.attrs["n_committed"] = np.int64(n)

            def copy(name: str, obj: Any) -> None:
                if not isinstance(obj, h5py.Dataset):
                    return
                rows = n if name in row_datasets(src) else obj.shape[0]
                d = dst.create_dataset(name, (rows, *obj.shape[1:]), maxshape=obj.maxshape,
                                       dtype=obj.dtype, chunks=obj.chunks)
                for s in range(0, rows, 65536):
                    d[s:min(rows, s + 65536)] = obj[s:min(rows, s + 65536)]

            src.visititems(copy)
            if _COMMITTED in dst:
                dst[_COMMITTED][0] = n
            else:
                add_committed(dst, n)
            for group in ("acts", "labels"):
                if group in src and group not in dst:
                    dst.create_group(group)
    os.replace(tmp, path)
    return n
