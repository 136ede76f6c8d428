"""Work split over a few threads, with torch and BLAS on one thread each: the libraries' own
pools stall on a busy two-core machine (docs/architecture.md, "Threads on a busy two-core machine")."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
WORKERS = max(2, _CORES)  # threads taking blocks in turn: one a core, two at least
BLOCK = 4096  # rows per block


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Torch and BLAS on one thread each inside (restored after)."""
    import torch
    from threadpoolctl import threadpool_limits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def workers() -> Iterator[ThreadPoolExecutor]:
    """A pool of WORKERS threads, each library single-threaded while it lives."""
    with single_threaded(), ThreadPoolExecutor(WORKERS) as pool:
        yield pool


def row_blocks(pool: ThreadPoolExecutor, n: int, fn: Callable[[int, int], Any],
               block: int = BLOCK) -> Iterator[Any]:
    """``fn(lo, hi)`` for the blocks of ``block`` rows of 0..n, on the pool, in order."""
    return pool.map(lambda lo: fn(lo, min(n, lo + block)), range(0, n, block))


def concat_blocks(pool: ThreadPoolExecutor, n: int, fn: Callable[[int, int], Any]) -> np.ndarray:
    """The arrays ``fn(lo, hi)`` of all row blocks, concatenated along rows."""
    return np.concatenate([np.asarray(part) for part in row_blocks(pool, n, fn)])
