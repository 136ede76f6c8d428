"""Projection speed on real SmolLM2 rows, in one run:

- PCA of 200k x 576 (the store's rows repeated with noise): ours against scikit-learn's PCA;
- the cell kNN of the 50k rows (UMAP's neighbour graph): time, and recall against the exact
  15 nearest of 2,000 sampled rows (exact distances to all rows);
- a 50k-row UMAP request (``project``: read the rows, principal axes, kNN, fuzzy graph, the
  first epochs), each in a fresh process: with an empty numba cache (a first launch, the
  request compiling), with the cache kept but umap not yet imported (a request at start-up),
  and after the start-up warm-up (``preload_kernels``: the app's state seconds after launch);
  request to first progressive frame, with the time of each stage;
- the peer: umap-learn's ``UMAP(random_state=0).fit_transform`` in a fresh process.

    python benchmarks/projections.py [--store STORE] [--hook HOOK] [--rows 50000] [--skip-peer]
                                     [--only pca|knn|umap|peer]
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


def _rows(store: str, hook: str, n: int | None):
    import numpy as np

    from engine.projection.layouts import row_matrix
    from engine.store.activations import ActivationStore
    with ActivationStore.open(store) as st:
        x, ids, _ = row_matrix(st, hook, max_rows=n, seed=0)
    return np.ascontiguousarray(x, np.float32), ids


def child_request(store: str, hook: str, n: int, warm: bool) -> dict:
    """In a fresh process: optionally the start-up warm-up, then one UMAP request; seconds
    from the request to the first frame and to each stage (its first progress message)."""
    from engine.jobs import JobContext
    from engine.projection import layouts as P
    from engine.projection.umap_warm import preload_kernels
    out: dict = {"stages": {}}
    if warm:
        t = time.perf_counter()
        preload_kernels(None)
        out["warm_up_s"] = time.perf_counter() - t
    start = time.perf_counter()

    def progress(done: int, total: int, message: str) -> None:
        out["stages"].setdefault(message, time.perf_counter() - start)

    def partial(layout: object) -> None:
        out.setdefault("first_frame_s", time.perf_counter() - start)
    P.project(JobContext(on_progress=progress, on_partial=partial), store, hook, method="umap", max_rows=n)
    out["total_s"] = time.perf_counter() - start
    return out


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

    from engine.projection.layouts import pca_layout
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


def knn_recall(args: argparse.Namespace, sample: int = 2000) -> None:
    """The cell kNN of the rows: its time, and its recall of the exact 15 nearest."""
    import numpy as np
    import torch

    from engine.projection import knn_kernel
    from engine.projection.knn import cell_knn
    from engine.projection.layouts import configure_numba_cache, umap_moments
    configure_numba_cache()
    knn_kernel.warm()
    x, _ = _rows(args.store, args.hook, args.rows)
    t = time.perf_counter()
    moments = umap_moments(x)
    idx, dist = cell_knn(x, *moments, 15, np.random.RandomState(0))
    took = time.perf_counter() - t
    rows = np.random.default_rng(1).choice(len(x), sample, replace=False)
    xt = torch.from_numpy(x)
    d2 = (xt * xt).sum(1)[None, :] - 2.0 * xt[rows] @ xt.T
    want = d2.topk(15, largest=False).indices.numpy()
    found = np.mean([len(np.intersect1d(a, b)) / 15 for a, b in zip(idx[rows], want, strict=True)])
    exact = np.sqrt(((x[idx[rows]] - x[rows, None, :]) ** 2).sum(-1))
    print(f"cell kNN of {len(x):,} x {x.shape[1]} rows (k 15): {took:.2f} s with the axes; recall "
          f"{found:.4f} of the exact 15 nearest of {sample:,} sampled rows; distance error "
          f"{np.abs(exact - dist[rows]).max():.1e}")


def _stages(res: dict) -> str:
    return ", ".join(f"{name} {t:.2f}" for name, t in res["stages"].items())


def umap_requests(args: argparse.Namespace) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as cache:
        first = _run_child("cold", args, cache)
        cold = _run_child("cold", args, cache)
        warm = _run_child("warm", args, cache)
    print(f"UMAP of {args.rows:,} rows, request to first frame (stage starts, s after the request):")
    print(f"  first launch, empty numba cache (the request compiles): {first['first_frame_s']:.1f} s, "
          f"done {first['total_s']:.1f} s")
    print(f"  cache kept, umap not imported yet: {cold['first_frame_s']:.2f} s, done {cold['total_s']:.1f} s "
          f"({_stages(cold)})")
    print(f"  after the start-up warm-up ({warm['warm_up_s']:.1f} s, off the GUI thread): "
          f"{warm['first_frame_s']:.2f} s, done {warm['total_s']:.1f} s ({_stages(warm)})")
    return warm["first_frame_s"], warm["total_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default=str(DEMO_STORE))
    p.add_argument("--hook", default=HOOK)
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--child", choices=("cold", "warm", "peer"))
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument("--only", choices=("pca", "knn", "umap", "peer"),
                   help="one part; peer: a warm request of ours against umap-learn")
    args = p.parse_args()
    if args.child:
        res = child_peer(args.store, args.hook, args.rows) if args.child == "peer" else \
            child_request(args.store, args.hook, args.rows, args.child == "warm")
        print(json.dumps(res))
        return
    if args.only in (None, "pca"):
        pca(args)
    if args.only in (None, "knn"):
        knn_recall(args)
    if args.only in (None, "umap"):
        first_frame, total = umap_requests(args)
        if not args.skip_peer:
            peer(args, first_frame, total)
    if args.only == "peer":
        with tempfile.TemporaryDirectory() as cache:
            _run_child("warm", args, cache)  # compiles into this cache
            ours = _run_child("warm", args, cache)
        print(f"ours after the warm-up: first frame {ours['first_frame_s']:.2f} s, done {ours['total_s']:.1f} s")
        peer(args, ours["first_frame_s"], ours["total_s"])


def peer(args: argparse.Namespace, first_frame: float, total: float) -> None:
    """umap-learn in fresh processes, with an empty numba cache and with the cache it left
    (pynndescent caches its kernels; umap's own compile again), against our warm request."""
    with tempfile.TemporaryDirectory() as cache:
        cold = _run_child("peer", args, cache)
        kept = _run_child("peer", args, cache)
    for name, res in (("empty numba cache", cold), ("cache kept", kept)):
        print(f"umap-learn UMAP(random_state=0).fit_transform, fresh process, {name}: {res['total_s']:.1f} s "
              f"(import {res['import_s']:.1f} s); nothing to show before it ends")
    print(f"ours after the warm-up against umap-learn with its cache kept: first frame "
          f"{kept['total_s'] / first_frame:.1f}x sooner than its result; whole layout {kept['total_s'] / total:.1f}x")


if __name__ == "__main__":
    main()
