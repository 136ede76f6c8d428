"""Sparse autoencoders: architectures, trainer, metrics, SAELens-compatible files."""

from engine.sae.base import SAEConfig, SparseAutoencoder, build_sae

__all__ = ["SAEConfig", "SparseAutoencoder", "build_sae"]
