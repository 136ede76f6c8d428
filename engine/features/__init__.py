"""Per-latent statistics of an SAE over a store (density, top examples, histograms, logit
effects, label associations) and the encodings the feature browser and scatter read."""

from engine.features.encode import (
           Context,
           RowLatents,
           cached_sae,
           latent_values,
           latents_on_rows,
           shaded_contexts,
)
from engine.features.one_pass import feature_pass
from engine.features.probe import TextLatents, text_latents
from engine.features.search import LatentSearch, search_latents
from engine.features.stats import (
           FeatureStats,
           FeatureStatsResult,
           LatentTable,
           feature_stats,
           latent_table,
           load_feature_stats,
           logit_model,
           sae_feature_stats,
           stats_provenance,
           suggest_latent,
)

__all__ = ["Context", "FeatureStats", "FeatureStatsResult", "LatentSearch", "LatentTable", "RowLatents",
           "TextLatents", "cached_sae", "feature_pass", "feature_stats", "latent_table",
           "latent_values", "latents_on_rows", "load_feature_stats", "logit_model", "sae_feature_stats",
           "search_latents", "shaded_contexts", "stats_provenance", "suggest_latent", "text_latents"]
