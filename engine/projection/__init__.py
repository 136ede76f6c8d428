"""2-D layouts (PCA, progressive UMAP) of store rows and SAE latents, the fast kNN behind
UMAP, and the start-up warming of its numba kernels."""

from engine.projection.layout import Layout
from engine.projection.layouts import METHODS, UMAP_ROWS, project
from engine.projection.placement import Placer, layout_placer, place_in_layout, place_rows
from engine.projection.umap_warm import warm_in_background

__all__ = ["METHODS", "UMAP_ROWS", "Layout", "project", "warm_in_background", "Placer", "layout_placer",
           "place_in_layout", "place_rows"]
