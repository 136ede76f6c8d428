"""Projection speed on real SmolLM2 rows: PCA of 200k x 576 against scikit-learn's PCA, and a
50k-row UMAP (time to its first progressive frame, and to the end) against umap-learn's
``UMAP().fit_transform``, each UMAP in a fresh process, first with an empty numba cache
(a first launch) and again with the cache it left (every later launch).

    python benchmarks/projections.py [--store STORE] [--hook HOOK] [--rows 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEMO_STORE = Path.home() / ".local/share/latentlab/demo/stores/demo_smollm2.h5"
HOOK = "blocks.15.hook_resid_post"


def _rows(store: str, hook: str, n: int):
    import numpy as np

    from engine.project import row_matrix
    from engine.store import ActivationStore
    with ActivationStore.open(store) as st:
        x, ids, _ = row_matrix(st, hook, max_rows=n, seed=0)
    return np.ascontiguousarray(x, np.float32), ids


def child_ours(store: str, hook: str, n: int) -> dict:
    """In a fresh process: our progressive UMAP, timing the first frame and the end."""
    t0 = time.perf_counter()
    from engine.jobs import JobContext
    from engine.project import umap_layout
    x, ids = _rows(store, hook, n)
    frames: list[float] = []
    start = time.perf_counter()
    ctx = JobContext(on_partial=lambda layout: frames.append(time.perf_counter() - start))
    umap_layout(ctx, x, ids, "rows/umap")
    return {"import_and_read_s": start - t0, "first_frame_s": frames[0] if frames else None,
            "total_s": time.perf_counter() - start}


def child_peer(store: str, hook: str, n: int) -> dict:
    """In a fresh process: umap-learn's fit_transform on the same rows."""
    x, _ = _rows(store, hook, n)
    start = time.perf_counter()
    import umap
    imported = time.perf_counter() - start
    umap.UMAP(random_state=0).fit_transform(x)
    return {"import_s": imported, "total_s": time.perf_counter() - start}


def _run_child(kind: str, args: argparse.Namespace, cache: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--store", args.store, "--hook", args.hook,
                          "--rows", str(args.rows)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def pca(args: argparse.Namespace) -> None:
    import numpy as np
    from sklearn.decomposition import PCA

    from engine.project import pca_layout
    x, _ = _rows(args.store, args.hook, None)
    rng = np.random.default_rng(0)
    reps = -(-200_000 // len(x))  # the store's rows, repeated with noise, to 200k
    big = np.concatenate([x + rng.normal(scale=0.05 * x.std(), size=x.shape).astype(np.float32)
                          for _ in range(reps)])[:200_000]
    ids = np.arange(len(big))
    t = time.perf_counter()
    ours = pca_layout(big, ids, "rows/pca")
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    ref = PCA(n_components=2, random_state=0).fit_transform(big)
    t_peer = time.perf_counter() - t
    agree = min(abs(np.corrcoef(ours.xy[:, i], ref[:, i])[0, 1]) for i in range(2))
    print(f"PCA {big.shape[0]:,} x {big.shape[1]}: ours {t_ours:.2f} s (exact, float64 covariance), "
          f"scikit-learn PCA {t_peer:.2f} s; {t_peer / t_ours:.1f}x; axes agree |r| >= {agree:.6f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--store", default=str(DEMO_STORE))
    p.add_argument("--hook", default=HOOK)
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--child", choices=("ours", "peer"))
    p.add_argument("--skip-peer", action="store_true")
    args = p.parse_args()
    if args.child:
        fn = child_ours if args.child == "ours" else child_peer
        print(json.dumps(fn(args.store, args.hook, args.rows)))
        return
    pca(args)
    with tempfile.TemporaryDirectory() as cache:
        first = _run_child("ours", args, cache)
        second = _run_child("ours", args, cache)
    print(f"UMAP of {args.rows:,} rows, ours, first launch (empty numba cache): first frame "
          f"{first['first_frame_s']:.1f} s, done {first['total_s']:.1f} s (+{first['import_and_read_s']:.1f} s "
          "imports and reading)")
    print(f"UMAP of {args.rows:,} rows, ours, later launches (cache kept): first frame "
          f"{second['first_frame_s']:.1f} s, done {second['total_s']:.1f} s (+{second['import_and_read_s']:.1f} s)")
    if not args.skip_peer:
        with tempfile.TemporaryDirectory() as cache:
            peer = _run_child("peer", args, cache)
        print(f"umap-learn UMAP(random_state=0).fit_transform: {peer['total_s']:.1f} s in a fresh process "
              f"(import {peer['import_s']:.1f} s); nothing to show before it ends")
        print(f"first frame: {peer['total_s'] / second['first_frame_s']:.1f}x sooner than umap-learn's result; "
              f"whole layout {peer['total_s'] / second['total_s']:.1f}x")


if __name__ == "__main__":
    main()
