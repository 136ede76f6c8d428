"""Distributed capture: two CPU ranks under torchrun (gloo) write shards that a virtual
dataset joins into one store equal, row for row, to a single-process capture."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from engine.store.activations import ActivationStore

ROOT = Path(__file__).resolve().parents[1]


def _rows_by_key(store: ActivationStore, hook: str):
    key = store.index("sample").astype(np.int64) * 1_000_000 + store.index("position")
    order = np.argsort(key)
    return key[order], store.index("tokens")[order], store.acts(hook)[order].astype(np.float32)


def test_torchrun_two_ranks(tiny_llama, tmp_path):
    hook = "blocks.1.hook_resid_post"
    args = ["capture", "--model", str(tiny_llama), "--source", "demo", "--hooks", hook,
            "--ctx-len", "64", "--dtype", "float32", "--quiet", "--device", "cpu"]
    dist = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", "29531", str(ROOT / "main.py"), *args, "--out", str(tmp_path / "j.h5")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert dist.returncode == 0, dist.stderr[-3000:]
    single = subprocess.run([sys.executable, str(ROOT / "main.py"), *args, "--out", str(tmp_path / "s.h5")],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    shards = sorted(tmp_path.glob("j.rank*-of-2.h5"))
    assert [p.name for p in shards] == ["j.rank0-of-2.h5", "j.rank1-of-2.h5"]
    with ActivationStore.open(tmp_path / "j.h5") as joined, ActivationStore.open(tmp_path / "s.h5") as ref:
        assert joined._f[f"acts/{hook}"].is_virtual
        assert joined.n_rows == ref.n_rows
        with ActivationStore.open(shards[0]) as s0:
            assert set(s0.index("sample") % 2) == {0}  # rank 0 took the even documents
        k1, t1, a1 = _rows_by_key(joined, hook)
        k2, t2, a2 = _rows_by_key(ref, hook)
        assert np.array_equal(k1, k2) and np.array_equal(t1, t2)
        np.testing.assert_allclose(a1, a2, rtol=1e-4, atol=1e-4)
        assert all(joined.document(i) == ref.document(i) for i in range(ref.n_documents))
        batches = list(joined.iter_batches(hook, 512, shuffle=True))
        assert sum(len(b) for b in batches) == joined.n_rows
