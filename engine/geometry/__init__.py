"""Representation geometry: similarity measures (CKA, CCA family, Procrustes, RSA, mutual
k-NN), streamed over stores; neuron and SAE-dictionary matching; stitching; pruned models."""

from engine.geometry.dictionary import LatentContexts, latent_contexts
from engine.geometry.matching import METHODS as MATCH_METHODS
from engine.geometry.matching import NeuronMatch, SAEMatch, match
from engine.geometry.measures import DISTANCES, MEASURES, GeometryNote, KernelCurve, check_measures
from engine.geometry.pruning import (
    DEFAULT_CORRUPTIONS,
    PruningComparison,
    compare_pruned,
    load_comparison,
    save_comparison,
)
from engine.geometry.stitching import StitchResult, stitch
from engine.geometry.store_stitching import StoreStitchResult, stitch_stores
from engine.geometry.streams import (
    Comparison,
    KernelCurves,
    LayerMatrix,
    compare,
    kernel_curves,
    layer_matrix,
    parse_spec,
    store_kernel_analysis,
)

__all__ = ["DEFAULT_CORRUPTIONS", "DISTANCES", "MATCH_METHODS", "MEASURES", "Comparison", "GeometryNote", "KernelCurve",
           "KernelCurves", "LatentContexts", "LayerMatrix", "NeuronMatch", "PruningComparison", "SAEMatch", "StitchResult",
           "StoreStitchResult", "check_measures", "compare", "compare_pruned", "kernel_curves",
           "latent_contexts", "layer_matrix", "load_comparison", "match", "parse_spec", "save_comparison", "stitch",
           "stitch_stores", "store_kernel_analysis"]
