"""Each SAE architecture against its definition: shapes, the decoder constraint, a working
training step, and per-architecture invariants checked against brute-force references."""

from __future__ import annotations

import math

import pytest
import torch

from engine.errors import LatentLabError
from engine.sae.base import (
    ARCHITECTURES,
    SAEConfig,
    SparseAutoencoder,
    TrainState,
    architectures,
    build_sae,
)

ARCHS = architectures()
D_IN, D_SAE, K, BATCH = 16, 64, 4, 32


def make(arch: str, seed: int = 0, **kw) -> SparseAutoencoder:
    """A small SAE of ``arch``, seeded."""
    torch.manual_seed(seed)
    kw = {"d_in": D_IN, "d_sae": D_SAE, "k": K, **kw}
    return build_sae(SAEConfig(arch=arch, **kw))


def batch(seed: int = 1, n: int = BATCH, d: int = D_IN) -> torch.Tensor:
    """(n, d) standard normal rows."""
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def state(n: int = BATCH, d: int = D_IN, dead: torch.Tensor | None = None) -> TrainState:
    """A TrainState with model gradients (for gtopk) and, optionally, some dead latents."""
    fired = torch.zeros(D_SAE, dtype=torch.long)
    if dead is not None:
        fired[dead] = 10**9
    return TrainState(tokens_since_fired=fired, grad=batch(seed=7, n=n, d=d))


# ------------------------------------------------------------------ all architectures
@pytest.mark.parametrize("arch", ARCHS)
def test_registered_and_shapes(arch):
    sae = make(arch)
    assert isinstance(sae, ARCHITECTURES[arch]) and sae.architecture == arch
    x = batch()
    codes = sae.encode(x)
    assert codes.shape == (BATCH, D_SAE)
    assert sae.decode(codes).shape == (BATCH, D_IN)
    out = sae(x)
    assert out.x_hat.shape == (BATCH, D_IN) and out.codes.shape == (BATCH, D_SAE)
    torch.testing.assert_close(out.codes, codes)


@pytest.mark.parametrize("arch", ARCHS)
def test_normalize_decoder_gives_unit_rows(arch):
    sae = make(arch)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(D_SAE, 1) * 5 + 0.1)
    sae.normalize_decoder()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE))


@pytest.mark.parametrize("arch", ARCHS)
def test_remove_parallel_grad_is_orthogonal_to_rows(arch):
    sae = make(arch)
    sae.training_step(batch(), state()).loss.backward()
    sae.remove_parallel_grad()
    dots = (sae.W_dec.grad * sae.W_dec).sum(1)
    assert dots.abs().max() < 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_training_step_finite_and_backward(arch):
    sae = make(arch)
    x = batch()
    step = sae.training_step(x, state())
    assert step.loss.ndim == 0 and torch.isfinite(step.loss)
    assert step.x_hat.shape == x.shape and step.codes.shape == (BATCH, D_SAE)
    assert "mse" in step.parts and "l0" in step.parts
    assert all(v.ndim == 0 and not v.requires_grad for v in step.parts.values())
    step.loss.backward()
    assert sae.W_dec.grad is not None and torch.isfinite(sae.W_dec.grad).all()
    assert sae.W_dec.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_round_trip(arch):
    sae, other = make(arch, seed=0), make(arch, seed=1)
    if arch == "batchtopk":
        sae.threshold.fill_(0.3)
    other.load_state_dict(sae.state_dict())
    x = batch()
    torch.testing.assert_close(other.encode(x), sae.encode(x))


# ------------------------------------------------------------------ relu
def test_relu_l1_is_decoder_norm_weighted():
    sae = make("relu", l1_coeff=0.7)
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, D_SAE)[:, None])  # rows of unequal norm
    x = batch()
    step = sae.training_step(x, state())
    with torch.no_grad():
        f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
        l1 = sum(float(f[b, i]) * float(sae.W_dec[i].norm()) for b in range(BATCH) for i in range(D_SAE)) / BATCH
    assert float(step.parts["l1"]) == pytest.approx(l1, rel=1e-5)
    assert step.loss.item() == pytest.approx(float(step.parts["mse"]) + 0.7 * l1, rel=1e-5)


# ------------------------------------------------------------------ topk
def test_topk_matches_brute_force_and_sparse_decode():
    sae = make("topk")
    x = batch()
    codes = sae.encode(x)
    assert ((codes != 0).sum(1) <= K).all()
    pre = sae.pre_acts(x)
    ref = torch.zeros_like(pre)
    for b in range(BATCH):
        idx = torch.topk(pre[b], K).indices
        ref[b, idx] = torch.relu(pre[b, idx])
    torch.testing.assert_close(codes, ref)
    values, indices = sae.encode_sparse(x)
    assert values.shape == indices.shape == (BATCH, K)
    dense = codes @ sae.W_dec + sae.b_dec
    assert (sae.decode_sparse(values, indices) - dense).abs().max() < 1e-5
    assert (sae(x).x_hat - dense).abs().max() < 1e-5
    assert (sae.training_step(x, state()).x_hat - dense).abs().max() < 1e-5


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "gtopk"])
def test_auxk_zero_without_dead_positive_with_dead(arch):
    sae = make(arch)
    x = batch()
    assert float(sae.training_step(x, state()).parts["auxk"]) == 0.0
    assert float(sae.training_step(x, TrainState(grad=state().grad)).parts["auxk"]) == 0.0
    dead = torch.arange(D_SAE) % 2 == 0
    step = sae.training_step(x, state(dead=dead))
    assert float(step.parts["auxk"]) > 0
    assert step.loss.item() == pytest.approx(float(step.parts["mse"] + step.parts["auxk"]), rel=1e-6)


def test_auxk_uses_only_dead_latents():
    sae = make("topk", aux_coeff=1.0)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[:5] = True
    with torch.no_grad():  # alive latents would win every top-k: the aux loss must still ignore them
        sae.b_enc[5:] = 100.0
    x = batch()
    with_aux = sae.training_step(x, state(dead=dead))
    assert with_aux.parts["auxk"] > 0
    aux_grad = torch.autograd.grad(with_aux.loss, sae.W_dec)[0]
    aux_grad -= torch.autograd.grad(sae.training_step(x, state()).loss, sae.W_dec)[0]
    assert aux_grad[5:].abs().max() == 0 and aux_grad[:5].abs().sum() > 0


# ------------------------------------------------------------------ batchtopk
def test_batchtopk_keeps_k_times_batch_at_training():
    sae = make("batchtopk")
    x = batch()
    step = sae.training_step(x, state())
    assert int((step.codes != 0).sum()) == K * BATCH
    acts = torch.relu(sae.pre_acts(x)).flatten()
    ref = torch.zeros_like(acts)
    idx = torch.topk(acts, K * BATCH).indices
    ref[idx] = acts[idx]
    torch.testing.assert_close(step.codes.flatten(), ref)
    dense = step.codes @ sae.W_dec + sae.b_dec
    assert (step.x_hat - dense).abs().max() < 1e-5


def test_batchtopk_threshold_ema_and_inference():
    sae = make("batchtopk")
    x = batch()
    step = sae.training_step(x, state())
    smallest = step.codes[step.codes > 0].min().item()
    sae.after_step(step.latents, state())
    assert float(sae.threshold) == pytest.approx(smallest)  # first update takes the value
    sae.after_step(step.latents._replace(values=step.latents.values * 2), state())
    lr = sae.threshold_lr
    assert float(sae.threshold) == pytest.approx((1 - lr) * smallest + lr * 2 * smallest)
    assert "threshold" in sae.state_dict()
    pre = sae.pre_acts(x)
    codes = sae.encode(x)
    torch.testing.assert_close(codes, torch.where(pre > sae.threshold, pre, torch.zeros_like(pre)))
    assert (codes[codes != 0] > float(sae.threshold)).all()


# ------------------------------------------------------------------ jumprelu
def test_jumprelu_threshold_gradient_matches_hand_computation():
    theta, eps, l0_coeff = 0.5, 0.2, 0.3
    sae = make("jumprelu", d_in=8, jumprelu_init_threshold=theta, jumprelu_bandwidth=eps, l0_coeff=l0_coeff)
    torch.testing.assert_close(sae.threshold, torch.full((D_SAE,), theta))
    with torch.no_grad():  # pre-activations spread around 0..1, a few near theta
        sae.W_enc.mul_(0.05)
        sae.b_enc.copy_(torch.linspace(0.0, 1.0, D_SAE))
    x = batch(d=8)
    step = sae.training_step(x, state(d=8))
    step.loss.backward()
    with torch.no_grad():
        pre = torch.relu(sae.pre_acts(x))  # (batch, d_sae)
        window = ((pre - theta).abs() < eps / 2).float()
        g_codes = 2 * (step.x_hat - x) @ sae.W_dec.t() / BATCH  # d mse / d codes
        d_theta = (g_codes * -(theta / eps) * window).sum(0) + l0_coeff / BATCH * (-(1 / eps) * window).sum(0)
        expected = theta * d_theta  # chain rule through theta = exp(log_threshold)
    grad = sae.log_threshold.grad
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
    near = window.sum(0) > 0
    assert near.any() and (~near).any()
    assert (grad[~near] == 0).all() and (grad[near] != 0).all()


def test_jumprelu_encode_uses_threshold():
    sae = make("jumprelu", jumprelu_init_threshold=0.4)
    x = batch()
    pre = sae.pre_acts(x)
    torch.testing.assert_close(sae.encode(x), torch.where(pre > 0.4, pre, torch.zeros_like(pre)))
    assert float(sae.training_step(x, state()).parts["l0"]) == float((pre > 0.4).sum(1).float().mean())


# ------------------------------------------------------------------ mp
def test_mp_residual_non_increasing_and_codes_nonnegative():
    sae = make("mp", k=8)
    x = batch()
    errors = [(x - sae(x, n_steps=n).x_hat).norm(dim=1) for n in range(0, 13)]
    for before, after in zip(errors, errors[1:], strict=False):
        assert (after <= before + 1e-5).all()
    assert (errors[-1] < errors[0]).all()
    assert (sae.encode(x) >= 0).all() and (sae.encode(x, n_steps=20) >= 0).all()
    one = sae.encode(x, n_steps=1)
    assert ((one != 0).sum(1) == 1).all()
    assert ((sae.encode(x) != 0).sum(1) <= 8).all()


def test_mp_residual_is_reconstruction_error_and_reselects():
    sae = make("mp", d_in=4, d_sae=2, k=10)  # 10 steps over 2 atoms: atoms get picked again
    x = batch(d=4)
    p = sae.pursue(x)
    out = sae(x)
    torch.testing.assert_close(out.x_hat, x - p.residual, atol=1e-5, rtol=1e-5)
    dense = torch.zeros(BATCH, 2).index_put_((torch.arange(BATCH)[:, None].expand(-1, 10), p.indices),
                                             p.coefs, accumulate=True)
    torch.testing.assert_close(out.codes, dense)


def test_mp_training_reaches_w_dec_and_ties_w_enc():
    sae = make("mp")
    step = sae.training_step(batch(), state())
    step.loss.backward()
    assert sae.W_dec.grad.abs().sum() > 0 and sae.W_enc.grad is None
    with torch.no_grad():
        sae.W_dec.add_(0.1)
    sae.after_step(step.latents, state())
    torch.testing.assert_close(sae.W_enc, sae.W_dec.t())


# ------------------------------------------------------------------ gtopk
def test_gtopk_selects_brute_force_score_argmax():
    sae = make("gtopk")
    assert sae.needs_grad and not getattr(make("topk"), "needs_grad", False)
    x, st = batch(), state()
    step = sae.training_step(x, st)
    pre = sae.pre_acts(x)
    ref = torch.zeros_like(pre)
    for b in range(BATCH):
        score = torch.relu(pre[b]) * (sae.W_dec @ st.grad[b]).abs()
        idx = torch.topk(score, K).indices
        ref[b, idx] = torch.relu(pre[b, idx])
    torch.testing.assert_close(step.codes, ref)
    assert (step.x_hat - (ref @ sae.W_dec + sae.b_dec)).abs().max() < 1e-5


def test_gtopk_needs_grad_and_falls_back_to_topk():
    sae = make("gtopk")
    with pytest.raises(LatentLabError, match="gradients"):
        sae.training_step(batch(), TrainState())
    topk = make("topk")
    topk.load_state_dict(sae.state_dict())
    torch.testing.assert_close(sae.encode(batch()), topk.encode(batch()))


def test_registry_names():
    assert set(ARCHS) <= set(ARCHITECTURES)
    assert math.isclose(make("jumprelu").threshold[0].item(), 0.001, rel_tol=1e-6)
