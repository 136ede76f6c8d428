"""Model adapters behind one interface, and ``load_model`` to resolve a model spec."""

from engine.models.base import ModelAdapter, ModelBatch
from engine.models.registry import load_model

__all__ = ["ModelAdapter", "ModelBatch", "load_model"]
