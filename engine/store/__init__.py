"""HDF5 activation stores: one file per capture (rows of activations at hook points, their
tokens, samples and labels), written in committed chunks, joined across ranks by shards."""

from engine.store.activations import (
    COSINE_ATTR,
    FORMAT_VERSION,
    ActivationStore,
    StoreMeta,
    recover,
    validate,
)
from engine.store.shards import join_shards

__all__ = ["COSINE_ATTR", "FORMAT_VERSION", "ActivationStore", "StoreMeta", "join_shards", "recover",
           "validate"]
