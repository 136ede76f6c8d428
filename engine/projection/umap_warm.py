"""UMAP's numba kernels without the wait: a persistent compilation cache, compiled once per
library versions in a separate process, imported and loaded in the background at start-up.

umap-learn compiles its graph and SGD kernels in every process (~10 s, and ~40 s with
pynndescent's on a cold cache) and its import takes 2-5 s. Here those kernels are compiled
again with numba's ``cache=True`` into ``<latentlab cache>/numba``; ``warm_in_background``
fills that cache on a first launch (off the GUI process: numba holds the GIL while it
compiles) and, on every launch, imports umap and loads the kernels in a daemon thread.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from engine.jobs import JobContext
from engine.projection.numba_cache import configure_numba_cache


def _warm_marker() -> Path:
    """The file that says this cache holds the UMAP kernels for these library versions and
    this ``engine/projection/knn_kernel.py`` (numba drops a file's cached kernels when it changes)."""
    import importlib.metadata as md

    from engine.projection import knn_kernel
    versions = "-".join(md.version(p) for p in ("umap-learn", "numba", "numpy"))
    source = Path(knn_kernel.__file__).stat()
    return configure_numba_cache() / (f"warm-{versions}-py{sys.version_info[0]}{sys.version_info[1]}"
                                      f"-knn{source.st_mtime_ns:x}{source.st_size:x}.ok")


def warm_kernels() -> None:
    """Compile every numba kernel a UMAP layout uses into the persistent cache, then leave
    the marker. Run by ``warm_in_background`` in a separate process on a first launch."""
    _load_kernels()
    _warm_marker().write_text("ok\n")


def _load_kernels() -> None:
    """Call every numba kernel of a UMAP layout once on a tiny input, which loads it from
    the persistent cache (compiles it there when missing): first the cell kNN's re-ranking
    kernel (a request needs it first), then, importing umap, the graph's and the SGD's, and
    a trail placement's (umap's ``transform``: the same kernels against a fixed layout).
    It leaves torch's and BLAS's thread counts alone: a request may be running."""
    from engine.projection import knn_kernel
    knn_kernel.warm()
    from engine.projection.umap_kernels import (
        INT32_MAX,
        INT32_MIN,
        UmapSGD,
        umap_graph,
        umap_transform,
    )
    random_state = np.random.RandomState(0)
    x = random_state.normal(size=(64, 8)).astype(np.float32)
    moments = (x.mean(axis=0), np.cov(x, rowvar=False))  # the exact kNN path: no worker threads
    graph = umap_graph(JobContext(), x, moments, 15, 0.1, 2, random_state)
    xy = random_state.uniform(0, 10, size=(64, 2)).astype(np.float32)
    UmapSGD(xy, graph, random_state.randint(INT32_MIN, INT32_MAX, 3).astype(np.int64)).run_to(2)
    near = np.argsort(random_state.uniform(size=(4, 64)), axis=1)[:, :15]
    umap_transform(near, np.sort(random_state.uniform(1, 2, size=(4, 15)), axis=1), xy, 0.1, 6)


_warming: subprocess.Popen | None = None  # the first launch's compiling process, if running


def warm_in_background(after: subprocess.Popen | None = None) -> subprocess.Popen | None:
    """At start-up, off the caller's thread, so that a UMAP request pays neither umap's
    import (2-5 s) nor its kernels' compilation (~40 s) or loading (~1 s): on a first launch
    (no marker) the kernels are compiled in a separate, low-priority process (numba holds
    the GIL while compiling, which would freeze a GUI), which a request waits for rather
    than compile them again; on every launch a thread imports umap and loads the
    cached kernels, once the process ``after`` (one the first picture waits for, which
    should have the cores) has ended. Returns the compiling process, or None when the
    cache was warm."""
    global _warming
    _warming = None
    if not _warm_marker().exists():
        code = "import os; os.nice(10); from engine.projection.umap_warm import warm_kernels; warm_kernels()"
        root = Path(__file__).resolve().parents[2]
        _warming = subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(root)))
    threading.Thread(target=preload_kernels, args=(_warming, after), name="umap-preload").start()  # joined at exit
    return _warming


def preload_kernels(warming: subprocess.Popen | None, after: subprocess.Popen | None = None) -> None:
    """The start-up thread: once any compiling process is done (importing umap before would
    compile pynndescent's eagerly typed functions here, ~30 s holding the GIL), and the
    process ``after`` has ended, load the kernels, importing umap, whose compiled functions
    then load from the cache."""
    if warming is not None and warming.wait() != 0:
        return  # stopped or failed: a request compiles what it needs
    if after is not None:
        after.wait()
    _load_kernels()


def await_warming(ctx: JobContext) -> None:
    """On a first launch, wait (cancellably) for the compiling process instead of compiling
    the same kernels again on this thread."""
    while _warming is not None and _warming.poll() is None:
        ctx.progress(0, 1, "UMAP: compiling numba kernels (first launch only)")
        ctx.check_cancelled()
        time.sleep(0.2)
