"""Geometry: similarity matrices across layers and models, neuron matching, stitching, pruned models."""

from views.geometry.view import GeometryView

__all__ = ["GeometryView"]
