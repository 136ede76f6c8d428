"""How good an SAE is, as its training measured it on held-out rows: ``train_sae`` writes
``metrics.json`` (METRICS_FILE) beside the weights (``engine.sae.metrics``: FVU,
L0, dead and dense fractions; loss recovered only when trained with an eval model)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import NamedTuple

METRICS_FILE = "metrics.json"


class SAEQuality(NamedTuple):
    """An SAE's held-out metrics; None where they were not measured."""

    fvu: float | None
    l0: float | None
    dead_frac: float | None
    loss_recovered: float | None  # spliced-in cross-entropy against zero ablation
    n_rows: int | None  # held-out rows measured on


def _number(raw: dict, key: str) -> float | None:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def sae_quality(sae_path: str | os.PathLike) -> SAEQuality | None:
    """The held-out metrics in the SAE folder's metrics.json; None when it has none (an SAE
    from SAELens, or one whose training did not finish) or the file is unreadable."""
    try:
        raw = json.loads((Path(sae_path) / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    n_rows = _number(raw, "n_rows")
    return SAEQuality(_number(raw, "fvu"), _number(raw, "l0"), _number(raw, "dead_frac"),
                      _number(raw, "loss_recovered"), None if n_rows is None else int(n_rows))
