"""LatentLab's folders: the cache, where derived files that can be made again live (the
converted SmolLM2 weights, numba's compiled kernels, weight-only feature tables), and the
default workspace. Importing this is cheap (no torch, no transformers): ``main.py`` asks it
before the heavy imports."""

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


def default_workspace() -> Path:
    """$LATENTLAB_WORKSPACE, else ``demo`` in the user data folder."""
    from platformdirs import user_data_dir
    return Path(os.environ.get("LATENTLAB_WORKSPACE") or Path(user_data_dir("latentlab")) / "demo")
