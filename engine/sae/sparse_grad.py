"""Encoder gradients that touch only the chosen latents.

A TopK-style SAE uses k of d_sae pre-activations per row, so dLoss/dpre is zero almost
everywhere; autograd through the dense encoder GEMM still costs a second (batch x d_in x
d_sae) GEMM for dW_enc. ``gather_pre`` returns pre[b, idx[b, j]] from a pre-activation
matrix computed without autograd and, in backward, builds the weight gradients from the
(batch x m) non-zeros with sparse products: O(batch * m * d_in) instead of
O(batch * d_sae * d_in)."""

from __future__ import annotations

import warnings

import torch


class _GatherPre(torch.autograd.Function):
    """values (batch, m) = pre.gather(1, idx), differentiable in W_enc, b_enc and b_dec."""

    @staticmethod
    def forward(ctx, pre, x, W_enc, b_enc, b_dec, idx):  # noqa: N803 (field names)
        ctx.save_for_backward(x, W_enc, b_dec, idx)
        return pre.gather(1, idx)

    @staticmethod
    def backward(ctx, grad_values):
        x, W_enc, b_dec, idx = ctx.saved_tensors
        d_sae = W_enc.shape[1]
        flat_idx = idx.reshape(-1)
        g = grad_values.reshape(-1).to(W_enc.dtype)
        grad_b_enc = torch.zeros(d_sae, dtype=W_enc.dtype, device=W_enc.device).index_add_(0, flat_idx, g)
        grad_W_enc = grad_b_dec = None
        if ctx.needs_input_grad[2]:
            grad_W_enc = _latent_major(flat_idx, g, idx.shape[1], d_sae, len(x)).matmul(x - b_dec).t()
        if ctx.needs_input_grad[4]:
            grad_b_dec = -(W_enc @ grad_b_enc)  # d pre[b, i] / d b_dec = -W_enc[:, i] for every row
        return None, None, grad_W_enc, grad_b_enc if ctx.needs_input_grad[3] else None, grad_b_dec, None


def _latent_major(flat_idx: torch.Tensor, g: torch.Tensor, m: int, d_sae: int, batch: int) -> torch.Tensor:
    """The (d_sae, batch) CSR matrix G^T with G[b, idx[b, j]] = g[b * m + j]: rows by latent,
    so ``G^T @ xc`` takes the fast CSR-times-dense path."""
    order = torch.argsort(flat_idx, stable=True)
    rows = torch.div(order, m, rounding_mode="floor")  # the batch row of each sorted entry
    crow = torch.zeros(d_sae + 1, dtype=torch.int64, device=g.device)
    crow[1:] = torch.cumsum(torch.bincount(flat_idx, minlength=d_sae), 0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": it is exact here
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, rows, g[order], (d_sae, batch), check_invariants=False)


def gather_pre(pre: torch.Tensor, x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,  # noqa: N803
               b_dec: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """pre[b, idx[b, j]] with sparse gradients; ``pre`` = (x - b_dec) @ W_enc + b_enc, computed
    by the caller without autograd (it also chose ``idx`` from it)."""
    return _GatherPre.apply(pre.detach(), x, W_enc, b_enc, b_dec, idx)
