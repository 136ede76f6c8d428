"""Sparse autoencoders: architectures, trainer, metrics, SAELens-compatible files."""

from engine.sae.base import (
           SAEConfig,
           SparseAutoencoder,
           architecture,
           architectures,
           build_sae,
           takes_k,
)
from engine.sae.formats import detect_sae_format, sae_info
from engine.sae.io import load_sae
from engine.sae.quality import SAEQuality, sae_quality
from engine.sae.train_job import (
           load_training_curves,
           sae_provenance,
           train_sae,
           train_sae_distributed,
)
from engine.sae.trainer import TrainingPoint

__all__ = ["SAEQuality", "sae_quality", "train_sae", "train_sae_distributed", "TrainingPoint", "load_training_curves", "load_sae", "SAEConfig", "SparseAutoencoder", "build_sae",
           "architecture", "architectures", "takes_k", "detect_sae_format", "sae_info", "sae_provenance"]
