"""A persistent numba cache under LatentLab's cache folder, and umap's kernels compiled into it."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

from engine.cache import cache_root


def configure_numba_cache() -> Path:
    """Point numba's on-disk cache at ``<latentlab cache>/numba`` (unless NUMBA_CACHE_DIR is
    set) so umap's compiled functions survive the process; call before importing umap."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    folder = cache_root() / "numba"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = str(folder)
    config = getattr(sys.modules.get("numba.core.config"), "CACHE_DIR", None)
    if config == "":  # numba already imported: its config read the environment before
        sys.modules["numba.core.config"].CACHE_DIR = str(folder)
    return folder


@functools.cache
def cached_jit(dispatcher: Any) -> Any:
    """A numba function of umap's compiled again with ``cache=True``: umap compiles these
    (parallel) kernels in every process, about 10 s; from NUMBA_CACHE_DIR they load in 0.1 s."""
    import numba
    options = {k: v for k, v in dispatcher.targetoptions.items() if k != "nopython"}
    options["nogil"] = True  # the GUI thread keeps running while a layout is computed
    return numba.njit(dispatcher.py_func, cache=True, locals=dict(dispatcher.locals), **options)
