"""Matching-pursuit SAE (MP-SAE, Costa et al. 2025): the encoder is k greedy steps of
matching pursuit over the decoder's rows, so sparsity can be changed at inference
(``encode(x, n_steps)``) and more steps never worsen the reconstruction.

Each step picks the row with the largest normalised correlation with the residual, adds
ReLU(<r, W_dec_i>) / ||W_dec_i||^2 to its coefficient (an atom may be picked again) and
removes that projection from r, so ||r||^2 drops by ReLU(<r, w_i>)^2 / ||w_i||^2 >= 0.
Training backpropagates the mse through the unrolled steps: the selections are constants,
the coefficients and residuals depend on W_dec and b_dec. The selections need each row's
correlation with every atom at every step; for training-sized batches they are tracked
through the atoms' Gram matrix (one d_sae x d_sae GEMM, then a gathered row per step) instead
of a GEMM per step, and the decode is sparse (``embedding_bag`` over the picked atoms). W_enc is unused by the encoder
and kept equal to W_dec.T (in ``after_step``) so the common interface stays meaningful."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from engine.sae import base
from engine.sae.saelens import SAEFileError, SAELensFile
from engine.sae.topk import sparse_decode


class Pursuit(NamedTuple):
    indices: torch.Tensor  # (batch, n_steps) atom picked at each step
    coefs: torch.Tensor  # (batch, n_steps) coefficient added at each step, >= 0
    residual: torch.Tensor  # (batch, d_in) x - b_dec - sum of the picked atoms' parts


CHUNK = 512  # rows pursued together: their correlations stay in cache across the steps


def use_gram(batch: int, d_sae: int, n_steps: int) -> bool:
    """Whether tracking correlations through the Gram matrix beats a GEMM per step: the Gram
    GEMM (d_sae^2 d_in) is paid once and must cost less than the per-step GEMMs it replaces
    (batch d_sae d_in each), and it must not hold more than 4x the correlations' memory."""
    return d_sae <= batch * (n_steps - 1) and d_sae <= 4 * batch


def pursue(x: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor, n_steps: int,  # noqa: N803
           gram: bool | None = None, state: base.TrainState | None = None) -> Pursuit:
    """n_steps of matching pursuit of x - b_dec over W_dec's rows: the atoms are chosen
    without autograd (``choose_atoms``, its Gram matrix in a buffer of ``state`` if given),
    then, when gradients are wanted, the coefficients and residuals are recomputed
    differentiably from them (``unroll``)."""
    with torch.no_grad():
        chosen = choose_atoms(x - b_dec, W_dec, n_steps, gram, state)
    if torch.is_grad_enabled() and (W_dec.requires_grad or b_dec.requires_grad or x.requires_grad):
        return unroll(x, W_dec, b_dec, chosen.indices)
    return chosen


def choose_atoms(r0: torch.Tensor, W_dec: torch.Tensor, n_steps: int, gram: bool | None = None,  # noqa: N803
                 state: base.TrainState | None = None) -> Pursuit:
    """The greedy steps for residuals r0 (batch, d_in), CHUNK rows at a time. Each step needs
    every row's normalised correlation with every atom; with ``gram`` (default: ``use_gram``)
    they are computed once and then updated with rows of the atoms' Gram matrix, a gather per
    step instead of a (rows x d_in x d_sae) GEMM."""
    gram = use_gram(len(r0), W_dec.shape[0], n_steps) if gram is None else gram
    sq_norms = W_dec.pow(2).sum(1).clamp_min(1e-12)  # (d_sae,)
    norms = sq_norms.sqrt()
    gram_n = None
    if gram and n_steps > 1:  # <w_j, w_i> / ||w_i||
        d_sae = W_dec.shape[0]
        out = state.buffer("gram", (d_sae, d_sae), W_dec) if state is not None else None
        gram_n = torch.mm(W_dec, W_dec.t(), out=out).div_(norms)
    parts = [_choose_chunk(r0[lo:lo + CHUNK].clone(), W_dec, sq_norms, norms, gram_n, n_steps)
             for lo in range(0, len(r0), CHUNK)]
    if not parts:
        return Pursuit(r0.new_zeros(0, n_steps, dtype=torch.long), r0.new_zeros(0, n_steps), r0.clone())
    return Pursuit(*(torch.cat(t) for t in zip(*parts, strict=True)))


def _choose_chunk(r: torch.Tensor, W_dec: torch.Tensor, sq_norms: torch.Tensor, norms: torch.Tensor,  # noqa: N803
                  gram_n: torch.Tensor | None, n_steps: int) -> Pursuit:
    """Matching pursuit of the rows r (updated in place), tracking correlations by ``gram_n``
    when given, else recomputing them each step."""
    indices = r.new_zeros(len(r), n_steps, dtype=torch.long)
    coefs = r.new_zeros(len(r), n_steps)
    corr = None
    for t in range(n_steps):
        if corr is None or gram_n is None:
            corr = (r @ W_dec.t()) / norms  # (rows, d_sae) <r, w_i> / ||w_i||
        idx = corr.argmax(-1)  # (rows,) best normalised match
        atom = W_dec[idx]
        coef = torch.relu((r * atom).sum(-1)) / sq_norms[idx]
        r -= coef[:, None] * atom
        if gram_n is not None and t + 1 < n_steps:
            corr.addcmul_(gram_n.index_select(0, idx), coef[:, None], value=-1)
        indices[:, t], coefs[:, t] = idx, coef
    return Pursuit(indices, coefs, r)


def unroll(x: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor, indices: torch.Tensor) -> Pursuit:  # noqa: N803
    """The coefficients and residual of the pursuit that picked ``indices`` (batch, n_steps),
    differentiable in W_dec, b_dec and x: the picked atoms are gathered once (one scatter in
    backward instead of one per step)."""
    r = x - b_dec
    sq_norms = W_dec.pow(2).sum(1).clamp_min(1e-12)
    atoms, sq = W_dec[indices], sq_norms[indices]  # (batch, n_steps, d_in), (batch, n_steps)
    coefs = []
    for atom, s in zip(atoms.unbind(1), sq.unbind(1), strict=True):
        coef = torch.relu((r * atom).sum(-1)) / s
        r = r - coef[:, None] * atom
        coefs.append(coef)
    return Pursuit(indices, torch.stack(coefs, 1) if coefs else x.new_zeros(len(x), 0), r)


def distinct_l0(p: Pursuit) -> torch.Tensor:
    """Mean number of distinct latents with a positive summed coefficient per row."""
    pos = p.coefs.detach() > 0  # (batch, n)
    same = p.indices[:, :, None] == p.indices[:, None, :]  # (batch, n, n)
    earlier = torch.ones_like(same[0]).tril(-1)  # j' < j
    repeat = (same & earlier & pos[:, None, :]).any(-1)
    return (pos & ~repeat).sum(-1).float().mean()


@base.register("mp", summary="matching pursuit, k greedy steps", order=4, saelens="matching_pursuit")
class MatchingPursuitSAE(base.SparseAutoencoder):
    """codes = cfg.k (or n_steps) greedy matching-pursuit steps over W_dec; decode as usual."""

    takes_k = True
    k_means = "pursuit steps"
    tied_encoder = True  # SAELens's MatchingPursuitSAE has neither W_enc nor b_enc

    def pursue(self, x: torch.Tensor, n_steps: int | None = None) -> Pursuit:
        """The greedy steps for x (batch, d_in); cfg.k steps unless n_steps is given."""
        return pursue(x, self.W_dec, self.b_dec, self.cfg.k if n_steps is None else n_steps)

    def encode(self, x: torch.Tensor, n_steps: int | None = None) -> torch.Tensor:
        """(batch, d_sae) nonnegative codes after n_steps (default cfg.k) greedy steps."""
        return self._dense(self.pursue(x, n_steps))

    def forward(self, x: torch.Tensor, n_steps: int | None = None) -> base.ForwardOutput:
        """ForwardOutput(x_hat, codes), decoding the picked atoms sparsely."""
        p = self.pursue(x, n_steps)
        return base.ForwardOutput(sparse_decode(p.coefs, p.indices, self.W_dec) + self.b_dec, self._dense(p))

    def training_step(self, x: torch.Tensor, state: base.TrainState) -> base.TrainStep:
        """mse through the unrolled pursuit (gradients reach W_dec via coefficients and atoms)."""
        p = pursue(x, self.W_dec, self.b_dec, self.cfg.k, state=state)
        x_hat = sparse_decode(p.coefs, p.indices, self.W_dec) + self.b_dec  # (batch, d_in)
        rows = torch.arange(len(x), device=x.device).repeat_interleave(p.indices.shape[1])
        codes = base.Codes(rows, p.indices.flatten(), p.coefs.detach().flatten(), len(x), self.d_sae)
        rec = base.mse(x_hat, x)
        return base.TrainStep(rec, x_hat.detach(), codes, {"mse": rec.detach(), "l0": distinct_l0(p)})

    @torch.no_grad()
    def after_step(self, codes: base.Codes, state: base.TrainState) -> None:
        """Keep the unused encoder tied to the decoder: W_enc = W_dec.T."""
        self.W_enc.copy_(self.W_dec.t())

    def _dense(self, p: Pursuit) -> torch.Tensor:
        """(batch, d_sae) codes, summing the coefficients of atoms picked more than once."""
        codes = p.coefs.new_zeros(len(p.coefs), self.d_sae)
        return codes.scatter_add(1, p.indices, p.coefs)

    # ------------------------------------------------------------ files
    def saelens_fields(self) -> dict[str, Any]:
        return {"residual_threshold": 0.0, "max_iterations": self.cfg.k, "stop_on_duplicate_support": False}

    @classmethod
    def from_saelens(cls, file: SAELensFile) -> tuple[base.SAEConfig, dict[str, torch.Tensor]]:
        """SAELens's matching_pursuit, when it runs a fixed number of steps as this one does."""
        raw, path = file.raw, file.cfg_path
        if raw.get("stop_on_duplicate_support", True):
            raise SAEFileError(f"{path}: field 'stop_on_duplicate_support' is true, but LatentLab's mp SAE runs a "
                               f"fixed number of steps (it loads matching_pursuit SAEs saved with false)")
        if float(raw.get("residual_threshold", 1e-2) or 0.0) > 0:
            raise SAEFileError(f"{path}: field 'residual_threshold' is above 0, but LatentLab's mp SAE runs a "
                               f"fixed number of steps (it loads matching_pursuit SAEs saved with 0)")
        file.require("W_dec", "b_dec")
        tensors = dict(file.tensors)
        if not raw.get("apply_b_dec_to_input", True):  # SAELens then neither centres nor adds b_dec
            tensors["b_dec"] = torch.zeros_like(tensors["b_dec"])
        steps = raw.get("max_iterations")
        k = file.common["d_in"] if steps is None else file.k(steps)
        return base.SAEConfig(arch=cls.architecture, k=k, **file.common), tensors
