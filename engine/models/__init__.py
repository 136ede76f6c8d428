"""Model adapters behind one interface, and ``load_model`` to resolve a model spec."""

from engine.models.base import MODEL_DTYPES, ModelAdapter, ModelBatch
from engine.models.digits_zoo import prune_zoo, train_zoo
from engine.models.registry import cached_model, load_model
from engine.models.tokens import Vocab, load_vocab

__all__ = ["prune_zoo", "train_zoo", "Vocab", "load_vocab", "MODEL_DTYPES", "cached_model", "ModelAdapter", "ModelBatch", "load_model"]
