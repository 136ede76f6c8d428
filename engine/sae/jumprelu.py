"""JumpReLU SAE (Rajamanoharan et al. 2024): f = pre * H(pre - theta) with a learnt per-latent
threshold theta = exp(log_threshold), trained with mse + l0_coeff * L0, where the gradients
wrt theta come from straight-through estimators with a rectangle kernel of width
cfg.jumprelu_bandwidth (the pre-activations themselves get no gradient from the L0 term).

Initialisation: the base class ties W_enc = W_dec.T (unit directions) and this class keeps
b_enc = 0, so once b_dec sits at the data's centre (the trainer's ``b_dec_init``) each
pre-activation is positive for about half of the rows and almost all of those exceed the
small initial threshold: every latent fires and gets gradient at the start, and the L0
penalty then raises the thresholds. The threshold and bandwidth are in the data's units.

Once few codes are active (a trained JumpReLU keeps tens per row), training decodes and
backpropagates sparsely like TopK: the active entries and those within half a bandwidth of
the threshold (the only ones the STEs reach) are taken from the one dense encoder GEMM."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from engine.sae import base
from engine.sae.saelens import SAELensFile
from engine.sae.sparse_grad import Active, sampled_dot, sparse_decode_train

SPARSE_BELOW = 0.05  # decode sparsely while active + band entries are under this share of all codes
SPARSE_NOTE = "jumprelu_sparse"  # in TrainState.scratch: whether the last step looked that sparse
SAELENS_KNOBS = {"jumprelu_init_threshold": "jumprelu_init_threshold", "jumprelu_bandwidth": "jumprelu_bandwidth",
                 "l0_coefficient": "l0_coeff"}  # SAELens's training_architecture_details -> SAEConfig


def rectangle(z: torch.Tensor) -> torch.Tensor:
    """The kernel K(z) = 1 on (-1/2, 1/2), else 0."""
    return ((z > -0.5) & (z < 0.5)).to(z.dtype)


class JumpReLUFn(torch.autograd.Function):
    """pre * H(pre - theta); d/dtheta by the STE -(theta / eps) * K((pre - theta) / eps)."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad_out * (pre > threshold)
        grad_thr = -(threshold / eps) * rectangle((pre - threshold) / eps) * grad_out
        return grad_pre, grad_thr.sum_to_size(threshold.shape), None


class StepFn(torch.autograd.Function):
    """H(pre - theta); no gradient to pre, d/dtheta by the STE -(1 / eps) * K((pre - theta) / eps)."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_thr = -(1.0 / eps) * rectangle((pre - threshold) / eps) * grad_out
        return None, grad_thr.sum_to_size(threshold.shape), None  # no gradient to pre: none computed


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """(batch, d_sae) JumpReLU with its straight-through threshold gradient."""
    return JumpReLUFn.apply(pre, threshold, bandwidth)


def heaviside(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """(batch, d_sae) 0/1 step with its straight-through threshold gradient."""
    return StepFn.apply(pre, threshold, bandwidth)


@base.register("jumprelu", summary="learnt thresholds, L0 penalty", order=3, saelens="jumprelu")
class JumpReLUSAE(base.SparseAutoencoder):
    """codes = ReLU(pre) * (pre > theta); loss = mse + l0_coeff * mean L0."""

    elementwise = True
    options = ("l0_coeff",)
    file_threshold = True  # theta = exp(log_threshold)

    def __init__(self, cfg: base.SAEConfig) -> None:
        super().__init__(cfg)
        init = torch.full((cfg.d_sae,), math.log(cfg.jumprelu_init_threshold))
        self.log_threshold = nn.Parameter(init)  # (d_sae,)

    @property
    def threshold(self) -> torch.Tensor:
        """(d_sae,) per-latent threshold theta = exp(log_threshold)."""
        return self.log_threshold.exp()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, d_sae) codes: pre-activations above their latent's threshold, else 0."""
        return self.activation(self.pre_acts(x))

    def activation(self, pre: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
        """ReLU(pre) where it exceeds its latent's threshold, else 0."""
        pre = torch.relu(pre)
        return pre * (pre > (self.threshold if cols is None else self.threshold[cols]))

    def training_step(self, x: torch.Tensor, state: base.TrainState) -> base.TrainStep:
        """mse plus l0_coeff * mean L0, both reaching theta through the STEs. Decoded sparsely
        (``sparse_step``) when the previous step's codes were few (``SPARSE_NOTE`` in
        ``state.scratch``); both paths give the same result, the note only decides whether the
        dense pre-activations need autograd."""
        if state.scratch.get(SPARSE_NOTE, False):
            with torch.no_grad():
                acts = self.pre_acts(x, state.buffer("pre", (len(x), self.d_sae), self.W_enc)).relu_()
                theta, half = self.threshold, self.cfg.jumprelu_bandwidth / 2
                on = acts > theta
                band = (acts > theta - half) & (acts < theta + half)  # where the STEs reach theta
                state.scratch[SPARSE_NOTE] = int(on.sum() + band.sum()) < SPARSE_BELOW * acts.numel()
                active, band = Active.from_mask(acts, on), Active.from_mask(acts, band)
            return self.sparse_step(x, active, band)
        step = self.dense_step(x, torch.relu(self.pre_acts(x)))
        # the band is not counted here (another pass): if it is wide, the next step notes it
        state.scratch[SPARSE_NOTE] = float(step.parts["l0"]) < SPARSE_BELOW * self.d_sae
        return step

    def dense_step(self, x: torch.Tensor, acts: torch.Tensor) -> base.TrainStep:
        """The step with dense codes; ``acts`` = ReLU(pre-activations) (batch, d_sae), with autograd."""
        theta, eps = self.threshold, self.cfg.jumprelu_bandwidth
        codes = jumprelu(acts, theta, eps)
        x_hat = self.decode(codes)  # (batch, d_in)
        rec, l0 = base.mse(x_hat, x), heaviside(acts, theta, eps).sum(-1).mean()
        penalty = self.cfg.l0_coeff * l0
        parts = {"mse": rec.detach(), "l0": l0.detach(), "l0_penalty": penalty.detach()}
        return base.TrainStep(rec + penalty, x_hat.detach(), base.Codes.of_dense(codes), parts)

    def sparse_step(self, x: torch.Tensor, active: Active, band: Active) -> base.TrainStep:
        """The same step from the entries above the threshold (``active``) and within half a
        bandwidth of it (``band``): sparse decode and backward as in TopK, and theta's
        gradients from the band alone (the STEs vanish elsewhere)."""
        x_hat = sparse_decode_train(self.W_enc, self.b_enc, self.W_dec, self.b_dec, x, active)
        x_hat, l0 = _ThresholdSTE.apply(x_hat, self.log_threshold, self.W_dec.detach(), band,
                                        self.cfg.jumprelu_bandwidth, len(active.cols) / len(x))
        rec = base.mse(x_hat, x)
        penalty = self.cfg.l0_coeff * l0
        codes = base.Codes(active.rows, active.cols, active.pre.to(x_hat.dtype), len(x), self.d_sae)
        parts = {"mse": rec.detach(), "l0": l0.detach(), "l0_penalty": penalty.detach()}
        return base.TrainStep(rec + penalty, x_hat.detach(), codes, parts)


    # ------------------------------------------------------------ files
    def threshold_for_file(self) -> torch.Tensor:
        """theta = exp(log_threshold), computed in float64."""
        log_thr = self.log_threshold.detach().to("cpu").contiguous()
        return log_thr.double().exp().to(log_thr.dtype)

    @classmethod
    def threshold_from_file(cls, threshold: torch.Tensor, where: Path) -> dict[str, torch.Tensor]:
        tiny = torch.finfo(torch.float32).tiny  # SAELens allows 0 (= ReLU): keep log finite
        return {"log_threshold": threshold.double().clamp_min(tiny).log().to(threshold.dtype)}

    @classmethod
    def from_saelens(cls, file: SAELensFile) -> tuple[base.SAEConfig, dict[str, torch.Tensor]]:
        """SAELens's "jumprelu" SAE, with the training knobs its metadata records."""
        tensors = file.centred()
        file.require("threshold")
        details = file.meta.get("training_architecture_details")
        details = details if isinstance(details, dict) else {}
        trained = {ours: float(details[theirs]) for theirs, ours in SAELENS_KNOBS.items()
                   if isinstance(details.get(theirs), (int, float))}
        return base.SAEConfig(arch=cls.architecture, **trained, **file.common), tensors


class _ThresholdSTE(torch.autograd.Function):
    """Passes x_hat through and returns the mean L0; backward adds theta's STE gradients at
    the band entries: from the mse, -(theta / eps) * dLoss/dcode with dLoss/dcode the
    sampled product dLoss/dx_hat . W_dec[latent]; from the L0, -(1 / eps) per entry / batch."""

    @staticmethod
    def forward(ctx, x_hat, log_threshold, W_dec, band, eps, l0):  # noqa: N803
        ctx.band, ctx.eps = band, eps
        ctx.save_for_backward(log_threshold, W_dec)
        return x_hat.clone(), log_threshold.new_tensor(l0)

    @staticmethod
    def backward(ctx, g, g_l0):
        log_threshold, W_dec = ctx.saved_tensors  # noqa: N806
        band, eps, theta = ctx.band, ctx.eps, log_threshold.exp()
        per_latent = torch.zeros_like(theta).index_add_(0, band.cols, sampled_dot(g.contiguous(), W_dec, band))
        count = torch.bincount(band.cols, minlength=len(theta)).to(theta.dtype)
        grad_theta = -(theta / eps) * per_latent - g_l0 * count / (eps * len(g))
        return g, grad_theta * theta, None, None, None, None
