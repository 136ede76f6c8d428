"""The TopK family's training decode with a hand-written backward that is sparse both ways.

A TopK-style SAE uses k of d_sae pre-activations per row, so after the one dense encoder
GEMM (computed without autograd) everything is O(batch * k * d_in):

- decode: ``embedding_bag`` over the chosen decoder rows (JumpReLU's active entries too);
- dLoss/dpre only at the chosen entries: dL/dx_hat . W_dec[i], a sampled dense-dense
  product (the per-sample-weight gradient of ``embedding_bag``);
- dW_enc, dW_dec as sparse products: the entries sorted by latent, each latent's gradient
  row is an ``embedding_bag`` (a weighted sum of x rows, or of dL/dx_hat rows).

AuxK (Gao et al. 2024) reuses the same pre-activations: only the dead latents' columns,
where a row keeps its aux_k largest; it is dense over those columns, which is cheaper than
a gather as long as aux_k is more than a few percent of them.

Shapes: x (batch, d_in); W_enc (d_in, d_sae); W_dec (d_sae, d_in); n chosen entries."""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F


class Active(NamedTuple):
    """The chosen (row, latent) entries, sorted by row: each (n,); ``offsets`` (batch,) is
    where each row's entries start (embedding_bag's bags)."""

    rows: torch.Tensor
    cols: torch.Tensor
    pre: torch.Tensor  # pre-activations at the entries (ReLU'd in the loss)
    offsets: torch.Tensor

    @classmethod
    def per_row(cls, pre: torch.Tensor, idx: torch.Tensor) -> Active:
        """From (batch, k) latent indices, the same count per row; ``pre`` (batch, d_sae)."""
        batch, k = idx.shape
        rows = torch.arange(batch, device=idx.device).repeat_interleave(k)
        offsets = torch.arange(0, batch * k, k, device=idx.device)
        return cls(rows, idx.reshape(-1), pre.gather(1, idx).reshape(-1), offsets)

    @classmethod
    def from_mask(cls, pre: torch.Tensor, mask: torch.Tensor) -> Active:
        """The entries where ``mask`` (batch, d_sae) is set, with their ``pre`` values."""
        rows, cols = mask.nonzero(as_tuple=True)  # row-major: sorted by row, then latent
        counts = torch.bincount(rows, minlength=mask.shape[0])
        return cls(rows, cols, pre[rows, cols], torch.cumsum(counts, 0) - counts)

    @classmethod
    def from_entries(cls, rows: torch.Tensor, cols: torch.Tensor, pre: torch.Tensor, batch: int,
                     d_sae: int) -> Active:
        """From unordered entries (a variable count per row): sorted by row, then latent."""
        order = torch.sort(rows * d_sae + cols, stable=True).indices
        rows, cols, pre = rows[order], cols[order], pre[order]
        counts = torch.bincount(rows, minlength=batch)
        return cls(rows, cols, pre, torch.cumsum(counts, 0) - counts)


class AuxSet(NamedTuple):
    """AuxK's selection: the dead latents (nd,), their pre-activations (batch, nd) and the
    mask (batch, nd) of each row's aux_k largest among them."""

    dead: torch.Tensor
    pre: torch.Tensor
    mask: torch.Tensor


def aux_selection(pre: torch.Tensor, dead: torch.Tensor | None, aux_k: int) -> AuxSet | None:
    """Each row's top aux_k dead latents (``dead`` a (d_sae,) bool mask), or None when none is dead."""
    if dead is None or not bool(dead.any()):
        return None
    cols = dead.nonzero().squeeze(1)
    p = pre.index_select(1, cols)  # (batch, nd)
    if aux_k >= len(cols):
        return AuxSet(cols, p, torch.ones_like(p, dtype=torch.bool))
    mask = torch.zeros_like(p, dtype=torch.bool).scatter_(1, p.topk(aux_k, dim=1, sorted=False).indices, True)
    return AuxSet(cols, p, mask)


def sparse_decode_train(W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor,  # noqa: N803
                        b_dec: torch.Tensor, x: torch.Tensor, active: Active) -> torch.Tensor:
    """(batch, d_in) x_hat = sum over each row's entries of ReLU(pre) * W_dec[latent] + b_dec,
    differentiable in the four weights as if pre = (x - b_dec) @ W_enc + b_enc had been
    computed with autograd (the caller computed it without and chose the entries from it)."""
    return _SparseDecode.apply(W_enc, b_enc, W_dec, b_dec, x, active)


def dead_decode_train(W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor,  # noqa: N803
                      b_dec: torch.Tensor, x: torch.Tensor, aux: AuxSet) -> torch.Tensor:
    """(batch, d_in) AuxK's reconstruction (no bias) from each row's aux_k dead latents,
    differentiable like ``sparse_decode_train``, dense over the dead columns only."""
    return _DeadDecode.apply(W_enc, b_enc, W_dec, b_dec, x, aux)


def sampled_dot(g: torch.Tensor, W_dec: torch.Tensor, active: Active) -> torch.Tensor:  # noqa: N803
    """(n,) g[row] . W_dec[latent] at each entry: (g @ W_dec.T) sampled at the entries (the
    per-sample-weight gradient of ``embedding_bag``)."""
    return torch.ops.aten._embedding_bag_per_sample_weights_backward(
        g, W_dec, active.cols, active.offsets, active.rows, 0, -1)


def _by_latent(active: Active, d_sae: int, rhs: tuple[torch.Tensor, ...], *weights: torch.Tensor) -> list[torch.Tensor]:
    """For each (r, w): the (d_sae, d) matrix whose row i sums w * r[row] over the entries at
    latent i, i.e. S.T @ r for the sparse S (batch, d_sae) holding w, by ``embedding_bag``
    over the entries sorted by latent."""
    order = torch.sort(active.cols, stable=True).indices
    counts = torch.bincount(active.cols, minlength=d_sae)
    starts, rows = torch.cumsum(counts, 0) - counts, active.rows[order]
    return [F.embedding_bag(rows, r, starts, mode="sum", per_sample_weights=w[order])
            for r, w in zip(rhs, weights, strict=True)]


def _encoder_grads(W_enc: torch.Tensor, b_dec: torch.Tensor, grad_enc_t: torch.Tensor,  # noqa: N803
                   grad_b_enc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dW_enc (d_in, d_sae) from sum_b dpre * x (given transposed) and db_enc, since pre uses
    x - b_dec; and b_dec's share through every pre-activation, -W_enc @ db_enc."""
    grad_enc = torch.empty_like(W_enc)
    torch.addr(grad_enc_t.t(), b_dec, grad_b_enc, alpha=-1, out=grad_enc)  # transposed in the same pass
    return grad_enc, -(W_enc @ grad_b_enc)


def _weights_dtype(forward):
    """Run a Function's forward without autocast: it computes in the weights' dtype, so its
    output and the gradients its backward receives are in that dtype too."""
    @functools.wraps(forward)
    def wrapped(ctx, *args):
        with torch.autocast(args[2].device.type, enabled=False):  # args[2] is W_dec
            return forward(ctx, *args)
    return wrapped


class _SparseDecode(torch.autograd.Function):
    """Forward: the sparse decode; backward: the four weight gradients from the entries only."""

    @staticmethod
    @_weights_dtype
    def forward(ctx, W_enc, b_enc, W_dec, b_dec, x, active):  # noqa: N803
        active = active._replace(pre=active.pre.to(W_dec.dtype))
        values = torch.relu(active.pre)
        ctx.active = active
        ctx.save_for_backward(W_enc, W_dec, b_dec, x.to(W_dec.dtype), values)
        return F.embedding_bag(active.cols, W_dec, active.offsets, mode="sum", per_sample_weights=values) + b_dec

    @staticmethod
    def backward(ctx, g):
        W_enc, W_dec, b_dec, x, values = ctx.saved_tensors  # noqa: N806
        active, d_sae = ctx.active, W_dec.shape[0]
        g = g.contiguous()
        d_pre = sampled_dot(g, W_dec, active) * (active.pre > 0)  # (n,) dLoss/dpre at the entries
        grad_enc_t, grad_dec = _by_latent(active, d_sae, (x, g), d_pre, values)  # (d_sae, d_in) each
        grad_b_enc = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(0, active.cols, d_pre)
        grad_enc, grad_b_dec = _encoder_grads(W_enc, b_dec, grad_enc_t, grad_b_enc)
        return grad_enc, grad_b_enc, grad_dec, grad_b_dec + g.sum(0), None, None


class _DeadDecode(torch.autograd.Function):
    """Forward: AuxK's decode, dense over the dead columns; backward: its weight gradients."""

    @staticmethod
    @_weights_dtype
    def forward(ctx, W_enc, b_enc, W_dec, b_dec, x, aux):  # noqa: N803
        acts = torch.relu(aux.pre.to(W_dec.dtype)) * aux.mask  # (batch, nd)
        w_dead = W_dec.index_select(0, aux.dead)  # (nd, d_in)
        ctx.aux = aux
        ctx.save_for_backward(W_enc, W_dec, b_dec, x.to(W_dec.dtype), acts, w_dead)
        return acts @ w_dead

    @staticmethod
    def backward(ctx, g):
        W_enc, W_dec, b_dec, x, acts, w_dead = ctx.saved_tensors  # noqa: N806
        aux = ctx.aux
        d_pre = (g @ w_dead.t()) * (aux.mask & (aux.pre > 0))  # (batch, nd)
        # the dead latents are distinct: their rows are copied in (index_add_ along rows is slow)
        grad_dec = torch.zeros_like(W_dec).index_copy_(0, aux.dead, acts.t() @ g)
        grad_enc_t = torch.zeros_like(W_dec).index_copy_(0, aux.dead, d_pre.t() @ x)
        grad_b_enc = torch.zeros_like(W_dec[:, 0]).index_copy_(0, aux.dead, d_pre.sum(0))
        grad_enc, grad_b_dec = _encoder_grads(W_enc, b_dec, grad_enc_t, grad_b_enc)
        return grad_enc, grad_b_enc, grad_dec, grad_b_dec, None, None
