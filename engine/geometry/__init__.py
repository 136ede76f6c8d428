"""Representation geometry: similarity measures (CKA, CCA family, Procrustes, RSA, mutual
k-NN), streamed over stores; neuron and SAE-dictionary matching; stitching; pruned models."""

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
from engine.geometry.streams import (
    Comparison,
    LayerMatrix,
    compare,
    layer_matrix,
    parse_spec,
    store_kernel_analysis,
)

__all__ = ["DEFAULT_CORRUPTIONS", "DISTANCES", "MATCH_METHODS", "MEASURES", "Comparison", "GeometryNote", "KernelCurve",
           "LayerMatrix", "NeuronMatch", "PruningComparison", "SAEMatch", "StitchResult",
           "check_measures", "compare", "compare_pruned", "layer_matrix", "load_comparison", "match",
           "parse_spec", "save_comparison", "stitch", "store_kernel_analysis"]
