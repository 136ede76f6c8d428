"""The TopK family's sparse training path (one dense GEMM, sparse decode, hand-written sparse
backward, AuxK over dead columns, firing statistics from indices) and MP's Gram-tracked
pursuit, each against the straightforward dense computation with autograd."""

from __future__ import annotations

import pytest
import torch

from engine.sae.base import Codes, SAEConfig, SparseAutoencoder, TrainState, build_sae, mse
from engine.sae.batchtopk import batch_topk
from engine.sae.mp import pursue
from engine.sae.trainer import TrainConfig, fit

D_IN, D_SAE, K, BATCH = 24, 96, 4, 64


def make(arch: str, dtype=torch.float32, **kw) -> SparseAutoencoder:
    """A small seeded SAE whose biases are non-zero (so every gradient term shows)."""
    torch.manual_seed(0)
    sae = build_sae(SAEConfig(arch=arch, **{"d_in": D_IN, "d_sae": D_SAE, "k": K, **kw})).to(dtype)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.3)
    return sae


def rows(seed: int, dtype=torch.float32, n: int = BATCH) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)).to(dtype)


def with_dead(n_dead: int, dtype=torch.float32) -> TrainState:
    """State whose first n_dead latents have not fired for long (dead_after_tokens is 1000)."""
    fired = torch.where(torch.arange(D_SAE) < n_dead, 10**6, 0)
    return TrainState(tokens_since_fired=fired, grad=rows(7, dtype))


def dense_loss(sae: SparseAutoencoder, x: torch.Tensor, state: TrainState) -> tuple[torch.Tensor, torch.Tensor]:
    """The straightforward loss and dense codes: dense pre-activations with autograd, dense
    codes, a dense decode, AuxK by masking the alive latents out of the whole matrix."""
    pre = sae.pre_acts(x)  # (batch, d_sae)
    if sae.architecture == "batchtopk":
        acts = torch.relu(pre).flatten()
        keep = acts.topk(K * len(x)).indices
        codes = torch.zeros_like(acts).scatter(0, keep, acts[keep]).view_as(pre)
    else:
        score = pre
        if sae.architecture == "gtopk":
            score = torch.relu(pre) * (state.grad @ sae.W_dec.t()).abs()
        idx = score.topk(K, dim=1).indices
        codes = torch.zeros_like(pre).scatter(1, idx, torch.relu(pre.gather(1, idx)))
    x_hat = codes @ sae.W_dec + sae.b_dec
    loss = mse(x_hat, x)
    dead = state.tokens_since_fired > sae.cfg.dead_after_tokens
    if dead.any():
        aux_k = min(sae.cfg.aux_k or D_IN // 2, int(dead.sum()))
        v, i = pre.masked_fill(~dead, float("-inf")).topk(aux_k, dim=1)
        aux_codes = torch.zeros_like(pre).scatter(1, i, torch.relu(v))
        loss = loss + sae.cfg.aux_coeff * mse(aux_codes @ sae.W_dec, (x - x_hat).detach())
    return loss, codes.detach()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "gtopk"])
@pytest.mark.parametrize("n_dead", [0, 30, D_SAE])  # no AuxK; aux_k (12) < dead; every latent dead
def test_every_gradient_equals_dense_autograd(arch, n_dead):
    sae = make(arch, dead_after_tokens=1000)
    x, state = rows(1), with_dead(n_dead)
    step = sae.training_step(x, state)
    got = torch.autograd.grad(step.loss, list(sae.parameters()))
    loss, codes = dense_loss(sae, x, state)
    want = torch.autograd.grad(loss, list(sae.parameters()))
    assert step.loss.item() == pytest.approx(loss.item(), rel=1e-6)
    assert (float(step.parts["auxk"]) > 0) == (n_dead > 0)
    torch.testing.assert_close(step.codes, codes)
    torch.testing.assert_close(step.x_hat, codes @ sae.W_dec + sae.b_dec, rtol=1e-5, atol=1e-5)
    for (name, _), g, w in zip(sae.named_parameters(), got, want, strict=True):
        assert relative_error(g, w) < 1e-5, name


def test_gradients_scale_with_the_loss_and_in_float64():
    sae = make("topk", torch.float64, dead_after_tokens=1000)
    x, state = rows(1, torch.float64), with_dead(30, torch.float64)
    got = torch.autograd.grad(3.0 * sae.training_step(x, state).loss, list(sae.parameters()))
    want = torch.autograd.grad(3.0 * dense_loss(sae, x, state)[0], list(sae.parameters()))
    for g, w in zip(got, want, strict=True):
        assert relative_error(g, w) < 1e-12


def reference_fit(sae: SparseAutoencoder, batches: list[torch.Tensor], cfg: TrainConfig) -> None:
    """The straightforward training loop: dense loss, plain Adam, firing from dense codes."""
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.betas, foreach=False)
    state = TrainState(tokens_since_fired=torch.zeros(D_SAE, dtype=torch.long))
    for step, x in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(step)
        loss, codes = dense_loss(sae, x, state)
        opt.zero_grad()
        loss.backward()
        sae.remove_parallel_grad()
        opt.step()
        sae.normalize_decoder()
        if sae.architecture == "batchtopk":
            smallest = codes[codes > 0].min()
            first = float(sae.threshold) <= 0
            sae.threshold.copy_(smallest if first else torch.lerp(sae.threshold, smallest, sae.threshold_lr))
        fired = (codes != 0).any(0)
        state.tokens_since_fired += len(x)
        state.tokens_since_fired[fired] = 0


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_training_steps_give_the_reference_parameters(arch):
    # dead after one unfired batch: AuxK turns on and off as latents fire, so every path runs
    cfg = TrainConfig(lr=1e-2, total_steps=6, warmup_steps=2, log_every=1)
    batches = [rows(10 + i, torch.float64) * 3 for i in range(6)]
    fast, slow = make(arch, torch.float64, dead_after_tokens=BATCH), make(arch, torch.float64, dead_after_tokens=BATCH)
    history = fit(fast, iter(batches), cfg)
    reference_fit(slow, batches, cfg)
    assert any(p["auxk"] > 0 for p in history) and any(p["auxk"] == 0 for p in history)
    for (name, a), b in zip(fast.state_dict().items(), slow.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("per_row", [2 * K, 1, D_SAE])
def test_batch_topk_selection_is_exact(per_row):
    g = torch.Generator().manual_seed(3)
    pre = torch.randn(BATCH, D_SAE, generator=g)
    pre[:3] += 4.0  # three rows hold far more than per_row of the winners: they join whole
    r, c, v = batch_topk(pre, K * BATCH, per_row)
    want = torch.zeros(BATCH * D_SAE, dtype=torch.bool)
    want[pre.flatten().topk(K * BATCH).indices] = True
    got = torch.zeros_like(want)
    got[r * D_SAE + c] = True
    assert len(r) == K * BATCH and torch.equal(got, want)
    torch.testing.assert_close(v, pre[r, c])


def test_sparse_codes_match_their_dense_form():
    sae = make("batchtopk")
    step = sae.training_step(rows(1), TrainState())
    dense = step.codes
    assert step.latents.cols is not None
    assert torch.equal(step.latents.fired(), (dense != 0).any(0))
    assert float(step.latents.l0()) == float((dense != 0).sum(1).float().mean())
    assert torch.equal(step.latents.nonzero_values().sort().values, dense[dense != 0].sort().values)
    wrapped = Codes.of_dense(dense)
    assert torch.equal(wrapped.dense(), dense) and torch.equal(wrapped.fired(), step.latents.fired())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mp_gram_pursuit_equals_direct(monkeypatch, dtype):
    import engine.sae.mp as mp
    monkeypatch.setattr(mp, "CHUNK", 24)  # several chunks, the last one short
    torch.manual_seed(0)
    W = torch.nn.functional.normalize(torch.randn(D_SAE, D_IN, dtype=dtype), dim=1) * 1.3  # not unit rows
    W.requires_grad_(True)
    b = (0.1 * torch.randn(D_IN, dtype=dtype)).requires_grad_(True)
    x = rows(1, dtype)
    direct, gram = pursue(x, W, b, 12, gram=False), pursue(x, W, b, 12, gram=True)
    assert torch.equal(direct.indices, gram.indices)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(gram.coefs, direct.coefs, **tol)
    got = torch.autograd.grad(mse(x - gram.residual, x), (W, b))
    want = torch.autograd.grad(mse(x - direct.residual, x), (W, b))
    for a, w in zip(got, want, strict=True):
        torch.testing.assert_close(a, w, **tol)
    with torch.no_grad():  # inference keeps the selection pass's own coefficients
        plain = pursue(x, W, b, 12)
    assert torch.equal(plain.indices, gram.indices)
    torch.testing.assert_close(plain.coefs, gram.coefs, **tol)
    torch.testing.assert_close(plain.residual, gram.residual, **tol)


def test_mp_training_step_codes_and_l0():
    sae = make("mp", k=10)
    step = sae.training_step(rows(1), TrainState())
    dense = step.codes
    torch.testing.assert_close(dense, sae.encode(rows(1)))
    assert float(step.parts["l0"]) == float((dense != 0).sum(1).float().mean())


@pytest.mark.parametrize("force", ["sparse", "dense"])
def test_jumprelu_sparse_step_equals_dense(monkeypatch, force):
    import engine.sae.jumprelu as jr
    sae = make("jumprelu", jumprelu_bandwidth=0.2, l0_coeff=0.3)
    x = rows(1)
    with torch.no_grad():  # thresholds near the pre-activations' upper tail: a few active, a few in the band
        sae.log_threshold.copy_(torch.relu(sae.pre_acts(x)).quantile(0.9, dim=0).clamp_min(0.05).log())
    monkeypatch.setattr(jr, "SPARSE_BELOW", 1.0)
    state = TrainState(scratch={jr.SPARSE_NOTE: force == "sparse"})  # the path is the last step's note
    step = sae.training_step(x, state)
    assert (step.latents.cols is not None) == (force == "sparse")
    assert state.scratch[jr.SPARSE_NOTE]  # few entries: the next step goes sparse
    got = torch.autograd.grad(step.loss, list(sae.parameters()))
    ref = sae.dense_step(x, torch.relu(sae.pre_acts(x)))
    want = torch.autograd.grad(ref.loss, list(sae.parameters()))
    assert step.loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)
    torch.testing.assert_close(step.codes, ref.codes)
    for key in ("mse", "l0", "l0_penalty"):
        assert float(step.parts[key]) == pytest.approx(float(ref.parts[key]), rel=1e-6)
    for (name, _), g, w in zip(sae.named_parameters(), got, want, strict=True):
        assert relative_error(g, w) < 1e-5, name
    assert want[-1].abs().sum() > 0  # the band is not empty: theta's STE gradients are checked


def test_jumprelu_sparse_step_with_nothing_active():
    from engine.sae.jumprelu import SPARSE_NOTE
    sae = make("jumprelu", jumprelu_init_threshold=1e3)
    sae.training_step(rows(1), state := TrainState())  # dense, and notes that codes are few
    step = sae.training_step(rows(1), state)
    assert state.scratch[SPARSE_NOTE] and step.latents.cols is not None and float(step.parts["l0"]) == 0
    step.loss.backward()
    assert torch.isfinite(sae.b_dec.grad).all() and sae.W_enc.grad.abs().max() == 0


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "mp"])
def test_sparse_paths_train_under_bf16_autocast(arch):
    from engine.sae.jumprelu import SPARSE_NOTE
    sae = make(arch, dead_after_tokens=0, jumprelu_init_threshold=1.0)
    cfg = TrainConfig(lr=1e-3, total_steps=3, warmup_steps=1, log_every=1, autocast="bf16")
    state = TrainState(scratch={SPARSE_NOTE: True})  # jumprelu: sparse from the first step
    history = fit(sae, iter([rows(i) for i in range(3)]), cfg, state=state)
    assert all(torch.isfinite(torch.tensor(p["loss"])) for p in history)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in sae.parameters())
    if arch in ("topk", "batchtopk"):
        assert history[-1]["auxk"] > 0  # dead after one unfired batch: AuxK ran under autocast too
