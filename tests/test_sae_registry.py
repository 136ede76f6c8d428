"""The SAE architecture as an extension point: the registry finds every architecture module
of engine/sae/, each class says how it encodes, whether it takes k and how its files look
(checked here against ``encode`` for every architecture), and a toy architecture in one file
outside the package (tests/sae_plugins/toy_sae.py, named by LATENTLAB_SAE_PLUGINS) becomes a
choice of ``train-sae --arch`` and of the Train SAE dialog, and trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from desktop_app.sae_dialog import TrainSAEDialog
from desktop_app.state import AppState
from engine.errors import LatentLabError
from engine.jobs import JobContext
from engine.sae.base import (
    ARCHITECTURES,
    PLUGINS_ENV,
    Codes,
    SAEConfig,
    SparseAutoencoder,
    architecture,
    architectures,
    build_sae,
    register,
    takes_k,
)
from engine.sae.io import load_sae
from engine.sae.train_job import train_sae
from engine.store.activations import ActivationStore, StoreMeta

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "tests" / "sae_plugins" / "toy_sae.py"
TAKES_K = {"relu": False, "topk": True, "batchtopk": True, "jumprelu": False, "mp": True, "gtopk": True}
LISTED = [*TAKES_K, "toy"]  # the built-ins by list_order, then a plugin's (default order)
HOOK = "blocks.0.hook_resid_post"
D_IN, D_SAE = 16, 48


@pytest.fixture
def toy(monkeypatch):
    """The toy architecture, registered through LATENTLAB_SAE_PLUGINS; forgotten afterwards."""
    monkeypatch.setenv(PLUGINS_ENV, str(TOY))
    cls = architecture("toy")
    yield cls
    ARCHITECTURES.pop("toy", None)
    sys.modules.pop(cls.__module__, None)


@pytest.fixture
def store(tmp_path) -> Path:
    """A store of 1000 random 16-wide rows at HOOK."""
    rows = np.random.default_rng(0).standard_normal((1000, D_IN)).astype(np.float32)
    meta = StoreMeta("synthetic", "0" * 16, "synthetic:test", (HOOK,), {HOOK: D_IN}, "float32")
    path = tmp_path / "rows.h5"
    with ActivationStore.create(path, meta) as st:
        n = len(rows)
        st.append({HOOK: rows}, np.zeros(n, np.int32), np.arange(n, dtype=np.int32), np.zeros(n, np.int32))
    return path


# ---------------------------------------------------------------- the built-in architectures
def test_every_architecture_module_registers_itself(monkeypatch):
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    names = architectures()
    assert [n for n in names if n in TAKES_K] == list(TAKES_K) and "toy" not in names
    for name in TAKES_K:
        assert takes_k(name) == TAKES_K[name], name
        assert architecture(name).architecture == name and architecture(name).summary, name
    with pytest.raises(LatentLabError, match="unknown SAE architecture 'quantum'"):
        architecture("quantum")


def _fired_sae(arch: str) -> SparseAutoencoder:
    """An SAE of ``arch`` whose latents fire on some rows, not all (thresholds that bite)."""
    torch.manual_seed(0)
    sae = build_sae(SAEConfig(arch=arch, d_in=D_IN, d_sae=D_SAE, k=5))
    with torch.no_grad():
        sae.b_enc.copy_(0.3 * torch.randn(D_SAE))
        if arch == "jumprelu":
            sae.log_threshold.copy_(torch.empty(D_SAE).uniform_(0.2, 0.8).log())
        if arch == "batchtopk":
            sae.threshold.fill_(0.4)
    return sae


@pytest.mark.parametrize("arch", sorted(TAKES_K))
def test_codes_and_column_encoders_are_encode(arch):
    """``encode_codes`` is ``encode`` (sparse ones in the canonical form the statistics fold
    in), and an elementwise architecture's column encoder is ``encode``'s columns."""
    sae = _fired_sae(arch)
    x = torch.randn(40, D_IN, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense, codes = sae.encode(x), sae.encode_codes(x)
        assert (dense > 0).any() and (dense == 0).any()
        assert torch.equal(codes.dense(), dense) and codes.shape == (40, D_SAE)
        if not codes.is_dense:
            assert torch.equal(codes.rows * D_SAE + codes.cols, (codes.rows * D_SAE + codes.cols).sort().values)
            assert codes.values.dtype == torch.float32 and bool((codes.values != 0).all())
        cols = torch.tensor([3, 0, 17, 47, 17])
        encoder = sae.column_encoder(cols)
        assert (encoder is not None) == sae.elementwise == (arch in ("relu", "jumprelu", "batchtopk"))
        if encoder is not None:
            torch.testing.assert_close(encoder(x), dense[:, cols], atol=1e-6, rtol=1e-6)


def test_one_codes_type_in_both_forms():
    dense = torch.zeros(4, 6)
    dense[0, 1], dense[2, 1], dense[2, 4], dense[3, 0] = 1.0, 2.0, 0.5, 3.0
    wrapped, sparse = Codes.of_dense(dense), Codes.nonzero(dense)
    assert wrapped.is_dense and not sparse.is_dense
    assert sparse.rows.tolist() == [0, 2, 2, 3] and sparse.cols.tolist() == [1, 1, 4, 0]
    for codes in (wrapped, sparse):
        assert torch.equal(codes.dense(), dense) and codes.shape == (4, 6)
        assert codes.fired().tolist() == [True, True, False, False, True, False]
        assert float(codes.l0()) == 1.0
    picks = Codes.of_picks(torch.tensor([[2.0, 0.0], [0.5, 1.0]]), torch.tensor([[4, 1], [3, 2]]), 6)
    assert picks.rows.tolist() == [0, 1, 1] and picks.cols.tolist() == [4, 2, 3]
    assert picks.values.tolist() == [2.0, 1.0, 0.5]


def test_a_name_is_registered_once():
    with pytest.raises(LatentLabError, match="'relu' is registered twice"):
        @register("relu")
        class OtherReLU(SparseAutoencoder):
            pass
    assert architecture("relu").__name__ == "ReLUSAE"


def test_a_plugin_that_cannot_be_imported_is_named(monkeypatch, tmp_path):
    for entry in (str(tmp_path / "missing.py"), "no_such_latentlab_plugin"):
        monkeypatch.setenv(PLUGINS_ENV, entry)
        with pytest.raises(LatentLabError, match=PLUGINS_ENV) as info:
            architectures()
        assert entry in str(info.value)


# ---------------------------------------------------------------- a toy architecture as a plugin
def test_toy_is_a_train_sae_arch_choice():
    env = {**os.environ, PLUGINS_ENV: str(TOY)}
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "train-sae", "--help"], capture_output=True,
                          text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    choices = proc.stdout.split("--arch {", 1)[1].split("}", 1)[0].split(",")
    assert [n for n in choices if n in LISTED] == LISTED


def test_toy_is_in_the_dialog_and_trains(qtbot, toy, store, tmp_path):
    state = AppState()
    state.set_store(store)
    dialog = TrainSAEDialog(state)
    qtbot.addWidget(dialog)
    box = dialog.arch_box
    assert [n for n in (box.itemData(i) for i in range(box.count())) if n in LISTED] == LISTED
    assert box.currentData() == "topk"  # train_sae's default
    box.setCurrentIndex(box.findData("toy"))
    assert "a test plugin" in box.currentText()
    assert dialog.form.isRowVisible(dialog.k_box) and not dialog.form.isRowVisible(dialog.l1_edit)
    assert Path(dialog.out_edit.text()) == tmp_path / "saes" / f"toy-{HOOK}"
    dialog.k_box.setValue(4)
    dialog.expansion_box.setValue(3)
    dialog.batch_box.setValue(64)
    dialog.epochs_edit.setText("0.5")
    dialog.stats_check.setChecked(False)
    request = dialog.request()
    assert (request.arch, request.k) == ("toy", 4)
    result = train_sae(JobContext(device=torch.device("cpu")), **request.train_params())
    assert result.steps == 8  # half of 950 training rows in batches of 64
    sae = load_sae(request.out)
    assert type(sae) is toy and (sae.cfg.arch, sae.cfg.k, sae.d_sae) == ("toy", 4, 48)
    assert json.loads((request.out / "cfg.json").read_text())["architecture"] == "toy"
    log = json.loads((request.out / "training_log.json").read_text())
    assert all(np.isfinite(point["loss"]) for point in log)
    with torch.no_grad():
        assert int((sae.encode(torch.randn(5, D_IN)) != 0).sum(1).max()) <= 4
