"""Steering a model: interventions at hook points (added directions, clamped or ablated SAE
latents), steered generation beside the baseline, sweeps, concept injection, and recipes."""

from engine.steering.injection import InjectionResult, inject_concept
from engine.steering.recipe import (
    Generation,
    check_item,
    generate_stream,
    inject_item,
    latent_item,
    steerable_hooks,
    sweep_item,
)
from engine.steering.steer import (
    AblateLatents,
    AddDirection,
    ClampLatents,
    GenerationComparison,
    compare_generation,
    steered,
)
from engine.steering.sweep import SweepResult

__all__ = ["AblateLatents", "AddDirection", "ClampLatents", "Generation", "GenerationComparison",
           "InjectionResult", "SweepResult", "check_item", "compare_generation", "generate_stream",
           "inject_concept", "inject_item", "latent_item", "steerable_hooks", "steered",
           "sweep_item"]
