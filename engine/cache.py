"""LatentLab's cache folder, where derived files that can be made again live: the converted
SmolLM2 weights, numba's compiled kernels, weight-only feature tables. Importing this is
cheap (no torch, no transformers)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """LatentLab's cache folder: $LATENTLAB_CACHE, else the platform's user cache dir."""
    env = os.environ.get("LATENTLAB_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir
    return Path(user_cache_dir("latentlab"))
