"""One line per fact about an SAE on disk, whichever library wrote it: what ``main.py
sae-info`` prints."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.sae.formats.detect import detect_sae_format
from engine.sae.formats.hub import resolve_sae_path


def sae_info(source: str | Path) -> dict[str, str]:
    """format, architecture, d_in, d_sae, k and/or threshold, hook point and normalisation of
    the SAE ``source`` names (a folder, a checkpoint, or a release id ``load_sae`` resolves)."""
    from engine.sae.io import load_sae  # io dispatches to this package's readers

    folder = resolve_sae_path(source)
    fmt = detect_sae_format(folder)
    sae = load_sae(folder)
    cfg = sae.cfg
    info = {"format": fmt, "architecture": f"{cfg.arch} ({type(sae).summary})" if type(sae).summary else cfg.arch,
            "d_in": str(cfg.d_in), "d_sae": str(cfg.d_sae)}
    if type(sae).takes_k:
        info["k"] = f"{cfg.k} {type(sae).k_means}"
    threshold = getattr(sae, "threshold", None)
    if isinstance(threshold, torch.Tensor):
        info["threshold"] = _threshold_text(threshold.detach().float())
    info["hook point"] = cfg.hook_name or "not recorded"
    if cfg.model_id:
        info["model"] = cfg.model_id
    info["normalisation"] = _normalisation(cfg.extra)
    return info


def _threshold_text(threshold: torch.Tensor) -> str:
    if threshold.numel() == 1 or bool((threshold == threshold.flatten()[0]).all()):
        return f"{float(threshold.flatten()[0]):.6g} (one for all latents)"
    q = torch.quantile(threshold.flatten(), torch.tensor([0.0, 0.5, 1.0]))
    return f"per latent: min {q[0]:.6g}, median {q[1]:.6g}, max {q[2]:.6g}"


def _normalisation(extra: dict) -> str:
    """The input normalisation the file's config records ("none" when it records none)."""
    fmt = extra.get("format")
    if isinstance(fmt, dict) and fmt.get("normalisation"):
        return str(fmt["normalisation"])
    saelens = extra.get("saelens")
    if isinstance(saelens, dict):
        norm = saelens.get("normalize_activations", "none")
        return "none" if norm == "none" else f"{norm} (SAELens; an identity at inference)"
    return "none"
