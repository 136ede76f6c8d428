"""The 2-D layout type every projection returns and the scatter draws."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class Layout(NamedTuple):
    """2-D coordinates of one point set: activation rows or SAE latents (decoder rows)."""

    name: str  # "rows/pca", "rows/umap", "latents/pca", "latents/umap"
    xy: np.ndarray  # (n, 2) float32
    ids: np.ndarray  # (n,) int64 store rows or latent indices the points stand for
    final: bool = True  # False while a progressive layout (UMAP) is still moving
    provenance: dict[str, Any] | None = None  # engine.provenance record of a final layout (project)
