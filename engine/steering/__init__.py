"""Steering a model: interventions at hook points (added directions, clamped or ablated SAE
latents), steered generation beside the baseline, sweeps, concept injection, recipes,
delta vectors from two groups of store rows, and prediction steering for classifiers."""

from engine.steering.delta import (
    REST,
    DeltaVector,
    LabelValue,
    StoreGroups,
    delta_item,
    delta_vector,
    store_groups,
)
from engine.steering.injection import (
    DEFAULT_QUESTIONS,
    InjectionResult,
    InjectionTrial,
    inject_concept,
    naming_rates,
)
from engine.steering.predict import PredictionShift, classifier_spec, steer_predictions
from engine.steering.recipe import (
    LATENT_MODES,
    OCEAN_TEXTS,
    OCEAN_WORDS,
    OTHER_TEXTS,
    Generation,
    check_item,
    generate_stream,
    inject_item,
    latent_item,
    latent_items,
    latent_means,
    recipe_interventions,
    steerable_hooks,
    sweep_item,
    sweep_trails,
)
from engine.steering.steer import (
    AblateLatents,
    AddDirection,
    ClampLatents,
    GenerationComparison,
    compare_generation,
    first_divergence,
    shift_text,
    steered,
)
from engine.steering.sweep import NEUTRAL_PROMPTS, SweepResult, load_concept_sets
from engine.steering.trails import (
    LatentChanges,
    Trail,
    latent_changes,
    rank_latent_changes,
    sink_positions,
)

__all__ = ["NEUTRAL_PROMPTS", "load_concept_sets", "first_divergence", "shift_text", "LATENT_MODES", "OCEAN_TEXTS", "OCEAN_WORDS", "OTHER_TEXTS", "latent_means", "recipe_interventions", "DEFAULT_QUESTIONS", "InjectionTrial", "naming_rates", "AblateLatents", "AddDirection", "ClampLatents", "Generation", "GenerationComparison",
           "InjectionResult", "SweepResult", "check_item", "compare_generation", "generate_stream",
           "inject_concept", "inject_item", "latent_item", "steerable_hooks", "steered",
           "sweep_item", "REST", "DeltaVector", "LabelValue", "delta_item", "delta_vector", "store_groups", "StoreGroups",
           "latent_items", "PredictionShift", "classifier_spec", "steer_predictions",
           "Trail", "LatentChanges", "latent_changes", "rank_latent_changes", "sweep_trails",
           "sink_positions"]
