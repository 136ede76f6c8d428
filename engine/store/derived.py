"""Derived data: HDF5 files computed from a store (feature statistics), kept beside it and
never inside it, keyed by the hashes of their inputs, and written atomically.

A store is an input: nothing but capture writes one. What is computed from it goes into
a file of its own, written under a temporary name and renamed into place, so a reader
sees the earlier file or the complete new one, never half of one, and a process killed
mid-write (even by SIGKILL) leaves the store and every earlier file as they were; its
temporary file is removed by the next write into the same folder.

Layout of a derived file: root attributes (JSON-able values) and one dataset per array."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from engine.errors import StoreError
from engine.store.activations import ActivationStore

KEY_TOKENS = 1024  # token ids hashed from each end of the store
TMP_SUFFIX = ".tmp"
HOLD_ENV = "LATENTLAB_HOLD_DERIVED_WRITE"  # tests: seconds to pause mid-write (to kill it there)


def store_key(store: ActivationStore) -> str:
    """A content hash (hex, 16) of a store: its identity (model and weights, source, hook
    points, widths, dtypes, capture settings, creation time), its committed row count and
    the token ids of its first and last rows. A copy of the store keeps the key; a resumed
    capture (more rows) or a new capture into the same path changes it. Cheap: it reads
    attributes and 2 x 1024 token ids, never the activation rows."""
    meta = store.meta
    ident = {"model_id": meta.model_id, "model_hash": meta.model_hash, "source_id": meta.source_id,
             "hooks": list(meta.hooks), "dims": dict(meta.dims), "dtype": meta.dtype,
             "model_dtype": meta.model_dtype, "params": dict(meta.params),
             "created": str(store.attrs.get("created", "")), "n_rows": store.n_rows}
    h = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode())
    n = store.n_rows
    h.update(np.ascontiguousarray(store.index("tokens", 0, min(n, KEY_TOKENS)), np.int32).tobytes())
    h.update(np.ascontiguousarray(store.index("tokens", max(0, n - KEY_TOKENS), n), np.int32).tobytes())
    return h.hexdigest()[:16]


def open_derived(path: str | os.PathLike) -> h5py.File:
    """Open a derived file read-only; StoreError names the file when it cannot be read."""
    path = Path(path)
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise StoreError(f"{path}: no such file") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot read it as HDF5 ({exc})") from None


def derived_attrs(path: str | os.PathLike) -> dict[str, Any] | None:
    """The root attributes of a derived file, or None when it cannot be read."""
    try:
        with open_derived(path) as f:
            return dict(f.attrs)
    except StoreError:
        return None


def write_derived(path: str | os.PathLike, arrays: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> Path:
    """Write ``arrays`` and ``attrs`` as the derived file ``path`` atomically: into a
    temporary file beside it (``.<name>~<pid>@<host>.tmp``), flushed to disk, then renamed
    over ``path``. Creates the folder; StoreError names it when it cannot be written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{path.parent}: cannot create the folder for {path.name} "
                         f"({exc.strerror or exc})") from None
    sweep_tmp(path.parent)
    tmp = path.with_name(f".{path.name}~{os.getpid()}@{socket.gethostname()}{TMP_SUFFIX}")
    try:
        with h5py.File(tmp, "w", libver="latest") as f:
            f.attrs.update(dict(attrs))
            for i, (name, value) in enumerate(arrays.items()):
                f.create_dataset(name, data=np.asarray(value))
                if i == 0:
                    _hold(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise StoreError(f"{path}: cannot write it ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def sweep_tmp(folder: Path) -> None:
    """Remove temporary files in ``folder`` left by writers on this machine that are gone."""
    host = socket.gethostname()
    for tmp in folder.glob(f".*{TMP_SUFFIX}"):
        owner = tmp.name[:-len(TMP_SUFFIX)].rpartition("~")[2]
        pid_text, _, tmp_host = owner.partition("@")
        if tmp_host != host or not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (best effort: not every platform opens folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _hold(tmp: Path) -> None:
    """With $LATENTLAB_HOLD_DERIVED_WRITE set (tests only), say so on stderr and pause that
    many seconds with the temporary file half written, so a test can kill the writer there."""
    seconds = os.environ.get(HOLD_ENV)
    if not seconds:
        return
    import sys
    print(f"holding derived write {tmp}", file=sys.stderr, flush=True)
    time.sleep(float(seconds))
