"""Data with a known sparse dictionary, to check that an SAE recovers the true features:
rows are sparse nonnegative combinations of random unit atoms plus a little noise."""

from __future__ import annotations

import torch


def synthetic_dictionary(d_in: int = 64, n_atoms: int = 256, k_active: int = 5, n_rows: int = 50_000,
                         noise: float = 0.01, seed: int = 0
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """X (n_rows, d_in) float32, atoms (n_atoms, d_in) unit rows, codes (n_rows, n_atoms):
    each row mixes k_active distinct atoms with coefficients uniform in [0.5, 1.5]."""
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d_in, generator=gen)
    atoms /= atoms.norm(dim=1, keepdim=True)
    active = torch.rand(n_rows, n_atoms, generator=gen).topk(k_active, dim=1).indices  # (n_rows, k)
    coefs = 0.5 + torch.rand(n_rows, k_active, generator=gen)
    codes = torch.zeros(n_rows, n_atoms).scatter(1, active, coefs)
    X = codes @ atoms + noise * torch.randn(n_rows, d_in, generator=gen)
    return X.float(), atoms, codes


def dictionary_recovery(W_dec: torch.Tensor, atoms: torch.Tensor) -> float:
    """Mean over true atoms of the best cosine similarity with any decoder row."""
    w = W_dec.detach().float()
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    a = atoms.float() / atoms.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((a @ w.t()).max(dim=1).values.mean())
