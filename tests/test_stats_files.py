"""Feature statistics as their own artefact: a file beside the store keyed by the store's
content hash and the SAE's weights, written atomically; the store itself is only read (its
bytes never change), two SAEs of the same name keep their own statistics, statistics of an
earlier state of the store are not trusted, a SIGKILL mid-write leaves the store and the
earlier statistics readable, and a store an older version wrote (statistics inside, under
/features/<sae id>) still opens and reads (tests/data/old_format_store.h5)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import StoreError
from engine.features.encode import latent_values, stored_codes
from engine.features.stats import (
    feature_stats,
    find_stats,
    load_feature_stats,
    read_stats,
    stats_folder,
    suggest_latent,
)
from engine.jobs import JobContext
from engine.models.base import weight_fingerprint
from engine.sae.base import SAEConfig, build_sae
from engine.sae.io import load_sae, save_sae
from engine.store.activations import ActivationStore, StoreMeta, validate
from engine.store.derived import HOLD_ENV, store_key
from engine.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
HOOK = "blocks.0.hook_resid_post"
D_IN, D_SAE = 16, 32
CPU = torch.device("cpu")


def make_store(path: Path, n: int = 512, seed: int = 0) -> Path:
    """A small store of random rows (8 documents of n/8 tokens, a 3-class label), no model."""
    rng = np.random.default_rng(seed)
    meta = StoreMeta(model_id="synthetic", model_hash="0" * 16, source_id=f"synthetic:{seed}",
                     hooks=(HOOK,), dims={HOOK: D_IN}, dtype="float16",
                     params={"label_classes": {"topic": ["a", "b", "c"]}})
    with ActivationStore.create(path, meta, labels=["topic"]) as store:
        store.put_documents(0, [f"document {i}" for i in range(8)])
        append_rows(store, n, rng)
    return path


def append_rows(store: ActivationStore, n: int, rng: np.random.Generator) -> None:
    rows = np.arange(store.n_rows, store.n_rows + n)
    sample, position = np.minimum(rows // 64, 7).astype(np.int32), (rows % 64).astype(np.int32)
    store.append({HOOK: rng.normal(size=(n, D_IN)).astype(np.float16)},
                 rng.integers(0, 50, n).astype(np.int32), sample, position,
                 {"topic": (sample % 3).astype(np.int32)})


def topk_sae(seed: int):
    torch.manual_seed(seed)
    sae = build_sae(SAEConfig("topk", D_IN, D_SAE, k=4, hook_name=HOOK))
    with torch.no_grad():
        sae.b_enc.normal_(-0.1, 0.3)
    return sae.eval()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stats_of(store_path: Path, sae, sae_id: str = "topk", **kw):
    return feature_stats(JobContext(device=CPU), store_path, sae, HOOK, sae_id, top_n=8, **kw)


# ---------------------------------------------------------------- the new layout
def test_statistics_go_to_their_own_file_and_the_store_is_only_read(tmp_path):
    store_path = make_store(tmp_path / "run.h5")
    before, mtime = digest(store_path), store_path.stat().st_mtime_ns
    sae = topk_sae(1)
    result = stats_of(store_path, sae)
    assert digest(store_path) == before and store_path.stat().st_mtime_ns == mtime
    written = Path(result.stats_path)
    with ActivationStore.open(store_path) as store:
        key = store_key(store)
        assert written == tmp_path / "run.features" / f"topk-{weight_fingerprint(sae)[:8]}-{key[:8]}.h5"
        assert find_stats(store, "topk").path == written and not find_stats(store, "topk").legacy
        arrays, attrs = read_stats(store, "topk")
        assert attrs["store_key"] == key and attrs["sae_fingerprint"] == weight_fingerprint(sae)
        assert attrs["store"] == "run.h5" and int(attrs["n_rows"]) == 512
        stats = load_feature_stats(store, "topk")
        np.testing.assert_array_equal(stats.count, arrays["count"])
        assert stats.label_classes == ["a", "b", "c"] and suggest_latent(store, "topk") is not None
        codes = stored_codes(store, "topk", sae, HOOK)
        x = torch.from_numpy(store.acts(HOOK).astype(np.float32))
    with torch.no_grad():
        dense = sae.encode(x).numpy()
    assert codes is not None and codes.ptr[-1] == (dense != 0).sum()
    assert sorted(p.name for p in written.parent.iterdir()) == [written.name]  # no temporary left
    again = stats_of(store_path, sae)  # the same SAE again: the same file, replaced
    assert again.stats_path == result.stats_path and len(list(written.parent.iterdir())) == 1
    assert digest(store_path) == before


def test_two_saes_with_the_same_id_keep_their_own_statistics(tmp_path):
    store_path = make_store(tmp_path / "run.h5")
    a, b = topk_sae(1), topk_sae(2)
    first, second = stats_of(store_path, a), stats_of(store_path, b)
    assert first.stats_path != second.stats_path
    with ActivationStore.open(store_path) as store:
        for sae in (a, b):
            fp = weight_fingerprint(sae)
            assert read_stats(store, "topk", fp)[1]["sae_fingerprint"] == fp
            assert stored_codes(store, "topk", sae, HOOK) is not None
        assert find_stats(store, "topk").path == Path(second.stats_path)  # no weights named: the newest
        assert find_stats(store, "topk", prefer=first.stats_path).path == Path(first.stats_path)
        assert find_stats(store, "topk", weight_fingerprint(topk_sae(3))) is None
        assert stored_codes(store, "topk", topk_sae(3), HOOK) is None
    ws = Workspace(root=tmp_path, store=store_path, hook=HOOK, sae_id="topk", stats=Path(first.stats_path))
    assert ws.has_stats() and ws.stats_file() == Path(first.stats_path)
    ws.stats = None
    assert ws.stats_file() == Path(second.stats_path)
    assert not Workspace(root=tmp_path, store=store_path, hook=HOOK, sae_id="other").has_stats()


def test_statistics_of_an_earlier_state_of_the_store_are_not_used(tmp_path):
    store_path = make_store(tmp_path / "run.h5")
    a, b = topk_sae(1), topk_sae(2)
    old_a, old_b = stats_of(store_path, a), stats_of(store_path, b)
    with ActivationStore.open_append(store_path) as store:  # a resumed capture: more rows
        append_rows(store, 256, np.random.default_rng(9))
    ws = Workspace(root=tmp_path, store=store_path, hook=HOOK, sae_id="topk", stats=Path(old_a.stats_path))
    assert not ws.has_stats()
    with ActivationStore.open(store_path) as store:
        assert find_stats(store, "topk") is None and stored_codes(store, "topk", a, HOOK) is None
        with pytest.raises(StoreError, match=r"another state of this store \(512 rows, now 768\)"):
            load_feature_stats(store, "topk")
    new_a = stats_of(store_path, a)
    assert not Path(old_a.stats_path).exists()  # superseded: the same SAE over the grown store
    assert Path(old_b.stats_path).exists()  # another SAE's: kept
    with ActivationStore.open(store_path) as store:
        assert load_feature_stats(store, "topk").n_rows == 768
        assert find_stats(store, "topk").path == Path(new_a.stats_path)
    assert ws.has_stats()


def test_statistics_beside_a_store_in_a_folder_that_cannot_be_written(tmp_path):
    store_path = make_store(tmp_path / "run.h5")
    stats_folder(store_path).write_text("a file where the statistics folder would go")
    with pytest.raises(StoreError, match=r"run\.features: cannot create the folder"):
        stats_of(store_path, topk_sae(1))
    validate(store_path)


# ---------------------------------------------------------------- a kill mid-write
def test_a_kill_during_the_write_leaves_the_store_and_earlier_statistics_readable(tmp_path):
    store_path = make_store(tmp_path / "run.h5")
    folder = save_sae(topk_sae(1), tmp_path / "topk")
    args = [sys.executable, str(ROOT / "main.py"), "feature-stats", "--store", str(store_path),
            "--sae", str(folder), "--no-logits", "--top-n", "8", "--device", "cpu"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    with ActivationStore.open(store_path) as store:
        earlier = load_feature_stats(store, "topk")
        written = find_stats(store, "topk").path
    assert f"{written}: topk: {D_SAE} latents over 512 rows" in first.stdout
    before = digest(store_path)
    for round_ in range(2):  # the same SAE again (the same file name), killed mid-write each time
        log = tmp_path / f"stderr{round_}.txt"
        with open(log, "w") as err:
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err,
                                    env={**os.environ, HOLD_ENV: "120"})
        deadline = time.time() + 120
        while "holding derived write" not in log.read_text() and time.time() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        tmp = [p for p in written.parent.iterdir() if p.name.endswith(".tmp")]
        assert len(tmp) == 1  # half written, beside the statistics it would replace
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        assert digest(store_path) == before
        validate(store_path)
        with ActivationStore.open(store_path) as store:
            assert find_stats(store, "topk").path == written
            after = load_feature_stats(store, "topk")
        for name in ("count", "density", "max", "top_rows", "top_values", "hist", "label_counts"):
            np.testing.assert_array_equal(getattr(after, name), getattr(earlier, name), err_msg=name)
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in written.parent.iterdir()) == [written.name]  # the dead ones' temporaries swept
    with ActivationStore.open(store_path) as store:
        np.testing.assert_array_equal(load_feature_stats(store, "topk").count, earlier.count)


# ---------------------------------------------------------------- the older format
def test_a_store_with_statistics_inside_from_an_older_version_still_reads(tmp_path):
    """tests/data/old_format_store.h5 and old_format_sae/ were written by the code of the
    time: a synthetic 512-row store and a TopK SAE, then ``main.py feature-stats --store
    old.h5 --sae old_sae --no-logits --top-n 8`` wrote /features/old_sae into the store (the
    SAE's folder was named old_sae); the store was repacked with gzip to stay small. They
    are opened here, never rewritten."""
    original, sae_dir = DATA / "old_format_store.h5", DATA / "old_format_sae"
    before = digest(original)
    sae = load_sae(sae_dir)
    with ActivationStore.open(original) as store:
        assert store.n_rows == 512
        found = find_stats(store, "old_sae")
        assert found.legacy and found.path == original and found.group == "features/old_sae"
        stats = load_feature_stats(store, "old_sae")
        assert stats.hook == HOOK and stats.n_rows == 512 and stats.count.shape == (D_SAE,)
        assert stats.label_name == "topic" and stats.label_classes == ["a", "b", "c"]
        assert stats.sae_cfg["arch"] == "topk" and (stats.top_rows[stats.count > 0, 0] >= 0).all()
        codes = stored_codes(store, "old_sae", sae, HOOK)
        assert codes is not None
        np.testing.assert_array_equal(np.bincount(codes.latent[codes.value != 0], minlength=D_SAE),
                                      stats.count)
        assert suggest_latent(store, "old_sae") is not None
        assert stored_codes(store, "old_sae", topk_sae(7), HOOK) is None  # other weights
    ctx = JobContext(device=CPU)
    from_codes = latent_values(ctx, original, HOOK, sae_dir, [0, 3, 9], stats_id="old_sae")
    encoded = latent_values(ctx, original, HOOK, sae_dir, [0, 3, 9])
    np.testing.assert_allclose(from_codes, encoded, rtol=1e-5, atol=1e-6)
    assert Workspace(root=DATA, store=original, hook=HOOK, sae_id="old_sae").has_stats()
    assert digest(original) == before and not stats_folder(original).exists()

    copy = tmp_path / "old.h5"  # statistics of a new run beside it take over from the old group
    shutil.copy(original, copy)
    result = stats_of(copy, sae, "old_sae")
    assert digest(copy) == before
    with ActivationStore.open(copy) as store:
        assert find_stats(store, "old_sae").path == Path(result.stats_path)
        fresh = load_feature_stats(store, "old_sae")
    for name in ("count", "density", "top_rows", "hist", "label_counts", "neighbours"):
        np.testing.assert_array_equal(getattr(fresh, name), getattr(stats, name), err_msg=name)
