"""The sparse encoder gradient against dense autograd (the reference)."""

from __future__ import annotations

import torch

from engine.sae.base import SAEConfig, TrainState, build_sae, mse
from engine.sae.sparse_grad import gather_pre
from engine.sae.topk import sparse_decode, topk_relu


def test_gather_pre_gradients_equal_autograd():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 12, generator=g, dtype=torch.float64)
    W = torch.randn(12, 40, generator=g, dtype=torch.float64, requires_grad=True)
    b_enc = torch.randn(40, generator=g, dtype=torch.float64, requires_grad=True)
    b_dec = torch.randn(12, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 40, (64, 5), generator=g)
    weights = torch.randn(64, 5, generator=g, dtype=torch.float64)
    dense = ((x - b_dec) @ W + b_enc).gather(1, idx)
    ref = torch.autograd.grad((dense * weights).sum(), (W, b_enc, b_dec))
    with torch.no_grad():
        pre = (x - b_dec) @ W + b_enc
    got = torch.autograd.grad((gather_pre(pre, x, W, b_enc, b_dec, idx) * weights).sum(), (W, b_enc, b_dec))
    for a, b in zip(ref, got, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_topk_training_step_matches_dense_autograd():
    torch.manual_seed(0)
    sae = build_sae(SAEConfig(arch="topk", d_in=16, d_sae=64, k=4, dead_after_tokens=10)).double()
    x = torch.randn(128, 16, dtype=torch.float64)
    state = TrainState(tokens_since_fired=torch.where(torch.arange(64) < 20, 100, 0))  # 20 dead latents
    step = sae.training_step(x, state)
    got = torch.autograd.grad(step.loss, list(sae.parameters()))
    # the reference: everything through dense autograd
    pre = sae.pre_acts(x)
    values, idx = topk_relu(pre, 4)
    x_hat = sparse_decode(values, idx, sae.W_dec) + sae.b_dec
    dead = state.tokens_since_fired > 10
    aux_v, aux_i = topk_relu(pre.masked_fill(~dead, float("-inf")), 8)
    aux = sae.cfg.aux_coeff * mse(sparse_decode(aux_v, aux_i, sae.W_dec), (x - x_hat).detach())
    loss = mse(x_hat, x) + aux
    ref = torch.autograd.grad(loss, list(sae.parameters()))
    torch.testing.assert_close(step.loss, loss)
    for a, b in zip(ref, got, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
