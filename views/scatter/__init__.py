"""The embedding scatter: PCA/UMAP layouts of rows or latents, coloured, with live lasso brushing."""

from views.scatter.view import ScatterView, choose_backend, gl_renderer

__all__ = ["ScatterView", "choose_backend", "gl_renderer"]
