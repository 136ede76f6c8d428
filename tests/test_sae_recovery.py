"""SAEs trained with the project trainer recover a known sparse dictionary, and the g-SAE
prefers latents that matter for a downstream loss (a fixed linear readout)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from engine.sae.base import SAEConfig, SparseAutoencoder, TrainState, build_sae
from engine.sae.synthetic import dictionary_recovery, synthetic_dictionary
from engine.sae.trainer import TrainConfig, fit, init_b_dec

D_IN, N_ATOMS, K_ACTIVE = 64, 256, 5
BATCH, STEPS, LR = 512, 400, 3e-3

# per architecture: SAEConfig fields beyond arch/d_in/d_sae (d_sae = 2 x n_atoms)
CASES: dict[str, dict] = {
    "topk": {"k": K_ACTIVE},
    "batchtopk": {"k": K_ACTIVE},
    "mp": {"k": K_ACTIVE},
    # thresholds in data units (coefficients 0.5..1.5 of unit atoms); the default 1e-3 also
    # recovers (0.97) but keeps L0 near 85 in this short run
    "jumprelu": {"l0_coeff": 0.03, "jumprelu_init_threshold": 0.1, "jumprelu_bandwidth": 0.05},
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """These matrices are small: one thread avoids OpenMP spin-waits on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    """(50_000, 64) rows mixing 5 of 256 unit atoms, and the atoms."""
    X, atoms, _ = synthetic_dictionary(d_in=D_IN, n_atoms=N_ATOMS, k_active=K_ACTIVE, seed=0)
    return X, atoms


def batches(X: torch.Tensor, size: int, seed: int = 0, grad: torch.Tensor | None = None) -> Iterator:
    """Shuffled batches, epoch after epoch; (x, grad) pairs when a per-row gradient is given."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(X), generator=gen)
        for lo in range(0, len(X) - size + 1, size):
            x = X[perm[lo:lo + size]]
            yield x if grad is None else (x, grad.expand(size, -1))


def train(arch: str, X: torch.Tensor, steps: int = STEPS, grad: torch.Tensor | None = None,
          **fields) -> tuple[SparseAutoencoder, list[dict[str, float]]]:
    """A fresh SAE of ``arch`` (d_sae = 2 x n_atoms) fitted by the project trainer."""
    torch.manual_seed(0)
    sae = build_sae(SAEConfig(arch=arch, d_in=X.shape[1], d_sae=2 * N_ATOMS, dead_after_tokens=50_000, **fields))
    cfg = TrainConfig(lr=LR, total_steps=steps, warmup_steps=20, decay_start=0.8, log_every=1)
    init_b_dec(sae, X[:4096], cfg.b_dec_init)
    history = fit(sae, batches(X, BATCH, grad=grad), cfg, state=TrainState())
    return sae, history


@pytest.mark.parametrize("arch", list(CASES))
def test_recovers_dictionary(arch, data):
    X, atoms = data
    sae, history = train(arch, X, **CASES[arch])
    recovery = dictionary_recovery(sae.W_dec, atoms)
    assert recovery >= 0.9, f"{arch}: dictionary recovery {recovery:.3f}"
    assert history[-1]["mse"] < history[0]["mse"]


def mean_grad_alignment(sae: SparseAutoencoder, indices: torch.Tensor, g: torch.Tensor) -> float:
    """Mean |<W_dec_i, g>| over the chosen latents (batch, k)."""
    return float((sae.W_dec.detach()[indices] @ g).abs().mean())


def readout_error(sae: SparseAutoencoder, x: torch.Tensor, w: torch.Tensor) -> tuple[float, float]:
    """(mse, mean squared error of the readout <w, x>) of the g-SAE's training reconstruction."""
    with torch.no_grad():
        step = sae.training_step(x, TrainState(grad=w.expand(len(x), -1)))
    return float(step.parts["mse"]), float(((x - step.x_hat) @ w).pow(2).mean())


def test_gtopk_prefers_latents_that_move_the_loss(data):
    X, _ = data
    X, held = X[:20_000], X[-2048:]
    w = torch.randn(D_IN, generator=torch.Generator().manual_seed(3))
    w /= w.norm()  # downstream loss L = <w, x>, so dL/dx = w for every row
    untrained, _ = train("gtopk", X, steps=0, grad=w, k=3)
    g_sae, history = train("gtopk", X, steps=200, grad=w, k=3)
    t_sae, _ = train("topk", X, steps=200, k=3)
    losses = [p["mse"] for p in history]
    assert sum(losses[-10:]) < 0.9 * sum(losses[:10])
    (mse0, readout0), (mse1, readout1) = readout_error(untrained, held, w), readout_error(g_sae, held, w)
    assert mse1 < mse0 and readout1 < 0.7 * readout0
    with torch.no_grad():
        g_idx = g_sae.select(g_sae.pre_acts(held), TrainState(grad=w.expand(len(held), -1)))
        _, t_idx = t_sae.encode_sparse(held)
    assert mean_grad_alignment(g_sae, g_idx, w) > 1.2 * mean_grad_alignment(t_sae, t_idx, w)
