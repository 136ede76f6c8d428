"""Steering: sliders over interventions with the steered generation beside the baseline, sweeps, injection."""

from views.steering.view import SteeringView

__all__ = ["SteeringView"]
