"""SAE metrics on real stores of a tiny random llama and a digits-zoo MLP: reconstruction
numbers against numpy over all rows, windows against the capture's own, spliced loss and
accuracy against independent computations, and the `replacing` hook context."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engine.capture import capture, iter_units
from engine.hooks import HookSite, recording, replacing
from engine.jobs import JobContext
from engine.models import load_model
from engine.models.digits_zoo import ZooConfig, save, train
from engine.sae.base import SAEConfig, SparseAutoencoder
from engine.sae.metrics import (
    accuracy_recovered,
    evaluate,
    reconstruction_metrics,
    spliced_loss,
    store_windows,
)
from engine.sources import load_source
from engine.store.activations import ActivationStore

RESID = "blocks.1.hook_resid_post"
HOOKS = [RESID, "embed"]
N_TOKENS = 2000
CPU = torch.device("cpu")


class ReluSAE(SparseAutoencoder):
    """The plainest SAE: codes = relu(pre-activations)."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pre_acts(x))


def random_sae(d_in: int, d_sae: int, seed: int = 0, bias: float = -0.3) -> ReluSAE:
    torch.manual_seed(seed)
    sae = ReluSAE(SAEConfig("test-relu", d_in, d_sae))
    with torch.no_grad():
        sae.b_enc.normal_(bias, 0.2)
        sae.b_dec.normal_(0, 0.05)
    return sae


def identity_sae(d_in: int) -> ReluSAE:
    """relu(x) - relu(-x) = x exactly: W_enc = [I, -I], W_dec = [I; -I], no biases."""
    sae = ReluSAE(SAEConfig("test-relu", d_in, 2 * d_in))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def zero_sae(d_in: int) -> ReluSAE:
    sae = random_sae(d_in, 16)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.zero_()
    return sae


@pytest.fixture(scope="module")
def llama_store(llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("metrics") / "llama.h5"
    capture(JobContext(device=CPU), model=llama, source="demo", hooks=HOOKS, out=path,
            max_tokens=N_TOKENS, ctx_len=64, batch_size=8)
    with ActivationStore.open(path) as store:
        yield store


# ---------------------------------------------------------------- replacing
class Pair(nn.Module):
    def forward(self, x):
        return x * 2, "extra"


def test_replacing_output_input_and_tuple_outputs():
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    net = nn.Sequential(lin, nn.ReLU())
    x = torch.randn(3, 4)
    with replacing(HookSite(lin, "output"), lambda t: torch.full_like(t, -1.0)):
        assert torch.equal(net(x), torch.zeros(3, 4))  # relu(-1)
    assert torch.equal(net(x), torch.relu(lin(x)))  # the hook is gone after the block
    with replacing(HookSite(lin, "input"), torch.zeros_like):
        assert torch.allclose(net(x), torch.relu(lin.bias).expand(3, 4))
    pair = Pair()
    with replacing(HookSite(pair, "output"), lambda t: t + 1):
        out, extra = pair(x)
    assert torch.equal(out, x * 2 + 1) and extra == "extra"
    with replacing(HookSite(lin, "input"), lambda t: t * 0):
        assert torch.equal(lin(input=x), lin.bias.expand(3, 4))  # passed by keyword


# ---------------------------------------------------------------- reconstruction
def brute_reconstruction(sae, x: np.ndarray) -> dict:
    with torch.no_grad():
        codes = sae.encode(torch.from_numpy(x))
        x_hat = sae.decode(codes).double().numpy()
    x64 = x.astype(np.float64)
    err = ((x_hat - x64) ** 2).sum()
    fired = (codes != 0).numpy()
    counts = fired.sum(0)
    return {"fvu": err / ((x64 - x64.mean(0)) ** 2).sum(), "mse": err / len(x),
            "l0": fired.sum(1).mean(), "dead_frac": (counts == 0).mean(),
            "dense_frac": (counts > 0.1 * len(x)).mean()}


@pytest.mark.parametrize("start,stop", [(0, None), (333, 1500)])
def test_reconstruction_metrics_match_numpy(llama_store, start, stop):
    sae = random_sae(llama_store.dim(RESID), 64)
    got = reconstruction_metrics(sae, llama_store, RESID, start, stop, batch_size=300)
    want = brute_reconstruction(sae, llama_store.acts(RESID, start, stop).astype(np.float32))
    assert got["n_rows"] == (stop or N_TOKENS) - start
    for key in ("fvu", "mse", "l0"):
        assert got[key] == pytest.approx(want[key], rel=1e-6), key
    assert got["dead_frac"] == want["dead_frac"] and got["dense_frac"] == want["dense_frac"]
    assert 0 < got["fvu"] and 0 < got["dense_frac"] < 1


def test_identity_sae_reconstructs_exactly(llama_store):
    got = reconstruction_metrics(identity_sae(32), llama_store, RESID, batch_size=512)
    assert got["fvu"] == 0 and got["mse"] == 0


# ---------------------------------------------------------------- windows
def test_store_windows_reproduce_the_captured_windows(llama, llama_store):
    expected, rows = [], 0
    for unit, _, _ in iter_units(llama, load_source("demo"), 64):
        if rows >= N_TOKENS:
            break
        n = min(unit.rows, N_TOKENS - rows)
        expected.append((rows, rows + n, list(unit.item[:n])))
        rows += n
    got = store_windows(llama_store, n_special=llama.n_special)
    assert [(a, b, t.tolist()) for a, b, t in got] == expected
    assert len(store_windows(llama_store, 0, None, 5, llama.n_special)) == 5
    tail = store_windows(llama_store, 100, 300, None, llama.n_special)
    assert tail[0][0] == 100 and tail[-1][1] == 300
    assert sum(b - a for a, b, _ in tail) == 200


# ---------------------------------------------------------------- spliced loss
def independent_ce(llama, windows, ablate_site=None) -> float:
    """Mean next-token cross-entropy inside each window, one window per forward pass; with
    ``ablate_site`` the block output is zeroed at every document position (not BOS)."""
    handle = None
    if ablate_site is not None:
        def zero_doc(module, args, output):
            t = output[0] if isinstance(output, tuple) else output
            t = t.clone()
            t[:, llama.n_special:] = 0
            return (t, *output[1:]) if isinstance(output, tuple) else t
        handle = ablate_site.module.register_forward_hook(zero_doc)
    total, count = 0.0, 0
    try:
        for _, _, ids in windows:
            logits = llama.logits(llama.make_batch([ids.tolist()]))[0].double()
            pre = llama.n_special
            lp = torch.log_softmax(logits[pre:pre + len(ids) - 1], -1)
            total -= float(lp[torch.arange(len(ids) - 1), torch.from_numpy(ids[1:])].sum())
            count += len(ids) - 1
    finally:
        if handle is not None:
            handle.remove()
    return total / count


def test_identity_sae_recovers_all_loss_and_clean_ce_is_independent(llama, llama_store):
    sae = identity_sae(32)
    got = spliced_loss(sae, llama, llama_store, RESID, max_windows=12, batch_size=5)
    assert got["ce_sae"] == got["ce_clean"] and got["loss_recovered"] == 1.0
    windows = store_windows(llama_store, 0, None, 12, llama.n_special)
    assert got["n_tokens"] == sum(len(t) - 1 for _, _, t in windows)
    assert got["ce_clean"] == pytest.approx(independent_ce(llama, windows), rel=1e-6)
    site = llama.hook_sites()[RESID]
    assert got["ce_zero"] == pytest.approx(independent_ce(llama, windows, site), rel=1e-6)
    assert got["ce_zero"] != got["ce_clean"]


def test_zero_sae_recovers_nothing_and_bos_stays(llama, llama_store):
    got = spliced_loss(zero_sae(32), llama, llama_store, "embed", start=500, max_windows=6)
    assert got["ce_sae"] == got["ce_zero"] and got["loss_recovered"] == 0.0
    # the splice leaves BOS alone: the layer-0 output at BOS matches the clean pass
    batch = llama.make_batch([store_windows(llama_store, 0, None, 1, llama.n_special)[0][2].tolist()])
    sites = llama.hook_sites()
    with torch.inference_mode(), recording({"out": sites["blocks.0.hook_resid_post"]}, stop_early=False) as clean:
        llama.run(batch)
    from engine.sae.metrics import _run_spliced
    with recording({"out": sites["blocks.0.hook_resid_post"]}, stop_early=False) as spliced:
        _run_spliced(llama, batch, "embed", zero_sae(32), "zero")
    assert torch.equal(clean["out"][0, 0], spliced["out"][0, 0])
    assert not torch.equal(clean["out"][0, 1:], spliced["out"][0, 1:])


def test_random_sae_and_evaluate(llama, llama_store):
    sae = random_sae(32, 64)
    got = evaluate(sae, llama_store, RESID, adapter=llama, max_windows=4)
    assert got["n_rows"] == N_TOKENS - int(N_TOKENS * 0.9)
    assert {"fvu", "l0", "ce_clean", "ce_sae", "ce_zero", "loss_recovered"} <= set(got)
    assert np.isfinite(got["loss_recovered"]) and got["ce_sae"] != got["ce_clean"]


# ---------------------------------------------------------------- classifiers
@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    cfg = ZooConfig(arch="mlp", width=32, depth=2, epochs=10)
    module, metrics = train(cfg)
    folder = save(module, cfg, metrics, root / cfg.name)
    model = load_model(str(folder))
    path = root / "digits.h5"
    capture(JobContext(device=CPU), model=model, source="digits:test",
            hooks=["blocks.0.hook_post"], out=path, batch_size=64)
    with ActivationStore.open(path) as store:
        yield model, store


def test_accuracy_recovered_on_a_digits_mlp(digits):
    model, store = digits
    hook = "blocks.0.hook_post"
    ident = accuracy_recovered(identity_sae(32), model, store, hook, batch_size=100)
    assert ident["acc_clean"] == pytest.approx(model.accuracy("test"))
    assert ident["acc_clean"] > 0.8 and ident["acc_zero"] < 0.3
    assert ident["acc_sae"] == ident["acc_clean"] and ident["acc_recovered"] == 1.0
    assert ident["n_examples"] == store.n_rows
    zero = accuracy_recovered(zero_sae(32), model, store, hook)
    assert zero["acc_sae"] == zero["acc_zero"] and zero["acc_recovered"] == 0.0
    both = evaluate(identity_sae(32), store, hook, adapter=model, holdout_start=0)
    assert both["fvu"] == 0 and both["acc_recovered"] == 1.0
