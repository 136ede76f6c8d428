"""HDF5 activation stores: one file per capture (rows of activations at hook points, their
tokens, samples and labels), written in committed chunks, joined across ranks by shards;
and the derived files computed from a store, keyed by its content hash and written atomically."""

from engine.store.activations import (
    COSINE_ATTR,
    FORMAT_VERSION,
    ActivationStore,
    StoreMeta,
    recover,
    validate,
)
from engine.store.derived import open_derived, store_key, write_derived
from engine.store.shards import join_shards

__all__ = ["COSINE_ATTR", "FORMAT_VERSION", "ActivationStore", "StoreMeta", "join_shards", "open_derived",
           "recover", "store_key", "validate", "write_derived"]
