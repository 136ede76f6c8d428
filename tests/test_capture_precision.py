"""Capture speed and precision: the pass stops after the deepest hook for every kind of
model (no later block, no head), and ``model_dtype`` runs the model in bfloat16/float16
with the cosine to float32 on the first batch recorded in the store."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from engine.capture import capture, row_cosines
from engine.errors import LatentLabError, StoreError
from engine.jobs import JobContext
from engine.models import load_model
from engine.store.activations import ActivationStore

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]

FACTORY = '''
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Unflatten(1, (1, 8)), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(256, 10))
    net.input_shape = (8, 8)
    return net
'''


def run(model, out, **kw):
    params = dict(source="demo", hooks=HOOKS, max_tokens=600, batch_size=4, ctx_len=64)
    params.update(kw)
    return capture(JobContext(device=torch.device("cpu")), model=model, out=out, **params)


def attrs(path: Path) -> dict:
    with h5py.File(path, "r", libver="latest", swmr=True) as f:
        return dict(f.attrs)


# ------------------------------------------------------------------ stopping early
def _never_called(modules) -> tuple[list, list]:
    calls: list = []
    handles = [m.register_forward_hook(lambda *a, m=m: calls.append(m)) for m in modules]
    return calls, handles


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_causal_capture_skips_later_blocks_and_head(tiny_models, tmp_path, family):
    model = load_model(str(tiny_models[family]))
    body = getattr(model.module, model.module.base_model_prefix)
    norm = next(m for name, m in body.named_children() if "norm" in name or name.startswith("ln_f"))
    blocks = next(m for m in body.children() if isinstance(m, torch.nn.ModuleList))
    calls, handles = _never_called([blocks[2], norm, model.module.get_output_embeddings()])
    try:
        run(model, tmp_path / "s.h5", max_tokens=300)
    finally:
        for h in handles:
            h.remove()
    assert calls == []
    calls, handles = _never_called([model.module.get_output_embeddings()])  # the hooks see a head call
    try:
        model.logits(model.example_batch())
    finally:
        for h in handles:
            h.remove()
    assert len(calls) == 1


def test_encoder_and_image_captures_skip_the_rest(tiny_models, tmp_path):
    enc = load_model(f"hf-encoder:{tiny_models['bert']}?pooling=mean")
    calls, handles = _never_called([enc.module.encoder.layer[1], enc.module.pooler])
    try:
        run(enc, tmp_path / "e.h5", hooks=["blocks.0.hook_resid_post"], max_tokens=20)
    finally:
        for h in handles:
            h.remove()
    assert calls == []
    (tmp_path / "net.py").write_text(FACTORY)
    net = load_model(f"{tmp_path / 'net.py'}:make")
    calls, handles = _never_called([net.module[2], net.module[4]])
    try:
        run(net, tmp_path / "i.h5", source="digits:test", hooks=["1"], max_tokens=50)
    finally:
        for h in handles:
            h.remove()
    assert calls == []


# ------------------------------------------------------------------ model precision
def test_set_dtype_casts_weights_keeps_hash_and_derived_buffers(tiny_llama):
    full = load_model(str(tiny_llama))
    half = load_model(str(tiny_llama), dtype="bfloat16")
    assert full.model_dtype == "float32" and half.model_dtype == "bfloat16"
    assert all(p.dtype == torch.bfloat16 for p in half.module.parameters())
    assert half.weight_hash() == full.weight_hash()  # the weights as loaded, whatever runs them
    inv_freq = half.module.model.rotary_emb.inv_freq
    assert inv_freq.dtype == torch.float32  # RoPE frequencies are not rounded to bfloat16
    assert torch.equal(inv_freq, full.module.model.rotary_emb.inv_freq)
    with pytest.raises(LatentLabError, match="dtype must be one of"):
        load_model(str(tiny_llama), dtype="int8")


def test_row_cosines_against_a_plain_loop():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(50, 16, generator=gen)
    rows = ref + 0.3 * torch.randn(50, 16, generator=gen)
    rows[3] = 0
    ref[7] = rows[7] = 0  # both zero: equal
    rows[9] = -2 * ref[9]
    want = []
    for a, b in zip(rows.double().numpy(), ref.double().numpy(), strict=True):
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        want.append(1.0 if na == nb == 0 else (0.0 if na * nb == 0 else a @ b / (na * nb)))
    got = row_cosines(rows, ref).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert got[7] == 1.0 and got[3] == 0.0 and got[9] == pytest.approx(-1.0)


def test_bfloat16_capture_records_the_cosine_to_float32(tiny_llama, tmp_path):
    out = tmp_path / "bf16.h5"
    run(str(tiny_llama), out, model_dtype="bfloat16", dtype="float32")
    cos = json.loads(attrs(out)["float32_cosine"])
    with ActivationStore.open(out) as store:
        assert store.meta.model_dtype == "bfloat16"
        summary = store.summary()  # what store-info prints
        assert summary["model_dtype"] == "bfloat16" and summary["float32_cosine"] == cos
        stored = {h: store.acts(h, 0, cos[h]["rows"]) for h in HOOKS}
    assert set(cos) == set(HOOKS)
    # recompute on the first batch (4 windows of 63 document tokens): float32 model vs the
    # bfloat16 rows the store holds
    full = load_model(str(tiny_llama))
    with ActivationStore.open(out) as store:
        sample, tokens = store.index("sample"), store.index("tokens")
    n = cos[HOOKS[0]]["rows"]
    assert n == 4 * 63
    windows = [tokens[:n][(sample[:n] == s)] for s in np.unique(sample[:n])]
    windows = [w[i:i + 63] for w in windows for i in range(0, len(w), 63)]
    ref = full.forward(full.make_batch([w.tolist() for w in windows]), HOOKS)
    for h in HOOKS:
        assert 0.9 < cos[h]["min"] <= cos[h]["mean"] <= 1.0
        a, b = stored[h].astype(np.float64), ref[h].double().numpy()
        per_row = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos[h]["mean"] == pytest.approx(per_row.mean(), abs=1e-6)
        assert cos[h]["min"] == pytest.approx(per_row.min(), abs=1e-6)
        assert not np.allclose(a, b, rtol=0, atol=1e-7)  # the rows really came from bfloat16


def test_float32_capture_records_no_cosine(tiny_llama, tmp_path):
    out = tmp_path / "f32.h5"
    run(str(tiny_llama), out)
    a = attrs(out)
    assert a["model_dtype"] == "float32" and "float32_cosine" not in a


def test_resume_keeps_the_model_dtype(tiny_llama, tmp_path):
    out = tmp_path / "s.h5"
    run(str(tiny_llama), out, model_dtype="bfloat16", max_tokens=300)
    first = attrs(out)["float32_cosine"]
    with pytest.raises(StoreError, match=rf"{out}: refusing to append.*'bfloat16', not 'float32'"):
        run(str(tiny_llama), out, max_tokens=600, resume=True)
    result = run(str(tiny_llama), out, model_dtype="bfloat16", max_tokens=600, resume=True)
    assert result.rows == 600 and result.added == 300
    assert attrs(out)["float32_cosine"] == first  # measured once, on the store's first batch
    other = tmp_path / "f.h5"
    run(str(tiny_llama), other, max_tokens=300)
    with pytest.raises(LatentLabError, match=rf"{other}: .*'float32', not 'float16'"):
        run(str(tiny_llama), other, max_tokens=600, resume=True, model_dtype="float16")


def test_store_without_model_dtype_reads_as_float32(tiny_llama, tmp_path):
    out = tmp_path / "old.h5"
    run(str(tiny_llama), out, max_tokens=300)
    with h5py.File(out, "r+", libver="latest") as f:
        del f.attrs["model_dtype"]  # as written before the option existed
    with ActivationStore.open(out) as store:
        assert store.meta.model_dtype == "float32"
    assert run(str(tiny_llama), out, max_tokens=600, resume=True).rows == 600


def test_adapter_in_another_precision_is_refused(tiny_llama, tmp_path):
    model = load_model(str(tiny_llama))
    with pytest.raises(LatentLabError, match="runs in float32, not the bfloat16 asked for"):
        run(model, tmp_path / "s.h5", model_dtype="bfloat16")
    half = load_model(str(tiny_llama), dtype="bfloat16")
    run(half, tmp_path / "h.h5")  # its own precision by default
    assert attrs(tmp_path / "h.h5")["model_dtype"] == "bfloat16"
    from engine.models.hf import HFCausalLM
    built = HFCausalLM(tiny_llama, module=half.module, tokenizer=half.tokenizer)  # no spec to reload
    with pytest.raises(LatentLabError, match="was not loaded by load_model"):
        run(built, tmp_path / "b.h5")


def test_image_model_in_bfloat16(tmp_path):
    (tmp_path / "net.py").write_text(FACTORY)
    out = tmp_path / "i.h5"
    run(f"{tmp_path / 'net.py'}:make", out, source="digits:test", hooks=["2", "4"], max_tokens=40,
        batch_size=16, model_dtype="bfloat16")
    cos = json.loads(attrs(out)["float32_cosine"])
    assert cos["2"]["rows"] == cos["4"]["rows"] == 16
    assert all(0.9 < c["min"] <= c["mean"] <= 1.0 for c in cos.values())


def test_cli_model_dtype(tiny_llama, tmp_path, capsys):
    import main
    out = tmp_path / "c.h5"
    args = ["--device", "cpu", "capture", "--model", str(tiny_llama), "--source", "demo", "--hooks",
            HOOKS[0], "--out", str(out), "--quiet"]
    assert main.main([*args, "--max-tokens", "200", "--model-dtype", "bfloat16"]) == 0
    printed = capsys.readouterr().out
    assert f"bfloat16 model, {HOOKS[0]}: cosine to float32 on the first batch mean 0.99" in printed
    assert attrs(out)["model_dtype"] == "bfloat16"
    assert main.main([*args, "--max-tokens", "400", "--resume"]) == 2  # float32 now
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}: refusing to append") and "'bfloat16', not 'float32'" in err


def test_hook_dims_probed_once_per_adapter(tiny_llama):
    model = load_model(str(tiny_llama))
    calls, handles = _never_called([model.module.model.embed_tokens])
    try:
        assert model.hook_dims(HOOKS) == {HOOKS[0]: 32, HOOKS[1]: 32}
        assert model.hook_dims(HOOKS[::-1]) == {HOOKS[1]: 32, HOOKS[0]: 32}
        assert len(calls) == 1  # the second call is answered from the first probe
        assert model.hook_dims(["blocks.2.attn.hook_z"]) == {"blocks.2.attn.hook_z": 32}
        assert len(calls) == 2  # a new hook point is probed
    finally:
        for h in handles:
            h.remove()
