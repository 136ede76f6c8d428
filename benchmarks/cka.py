"""Linear CKA between two 50,000 x 576 float32 matrices: LatentLab against ckatorch in the
same run, then a 30 x 30 layer matrix in one streamed pass against 900 separate CKAs.

Part 1. The matrices (random with a shared 64-dimensional signal, or two hook points of a
real store with --store) are saved to .npy; each side runs in its own subprocess (ckatorch
in its own environment, --peer-python, as benchmarks/sae_train.py runs SAELens) that loads
them, resets the kernel's peak-RSS mark (/proc/self/clear_refs), runs the CKA and reports
wall time and peak RSS above what it held before the call (torch's allocations included,
which tracemalloc would miss). ckatorch is run as its ``CKA`` class runs it: ``cka_batch`` on
minibatches (--peer-batch rows each, Nguyen et al.'s unbiased minibatch estimator); its
exact ``cka_base`` would need two 50,000^2 float64 Gram matrices (40 GB).

Part 2. A store with 30 hook points of 20,000 x 576 float16 rows is synthesised; LatentLab's
``layer_matrix`` computes all 30 x 30 linear CKAs in one pass over it, against ``linear_cka``
called on in-memory float32 copies per pair (timed on --pairs pairs, scaled to 900).
Sides alternate run by run (best time of --repeats each): the box's load drifts.

The peer's environment (its pins differ from the project's; the CPU torch wheel is the same):
    python3 -m venv /work/cka-venv && /work/cka-venv/bin/pip install torch==2.13.0 ckatorch==1.0.3

    python benchmarks/cka.py [--store S --hook-a H --hook-b H] [--peer-python PY]
        [--repeats 3] [--layers 30 --layer-rows 20000 --pairs 30]
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.geometry.measures import linear_cka  # noqa: E402
from engine.geometry.streams import layer_matrix  # noqa: E402
from engine.jobs import JobContext  # noqa: E402
from engine.store.activations import ActivationStore, StoreMeta  # noqa: E402

RUNNER = r"""
import json, os, sys, threading, time
import numpy as np, torch
side, xpath, ypath, repeats, batch, root = sys.argv[1:7]
repeats, batch = int(repeats), int(batch)

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024

if side == "ckatorch":
    from ckatorch import cka_batch
    def run(x, y):
        m = len(x) // batch * batch
        return float(cka_batch(x[:m].reshape(-1, batch, x.shape[1]), y[:m].reshape(-1, batch, y.shape[1])))
elif side == "gemm":  # the floor: the three cross products exact CKA needs, nothing else
    def run(x, y):
        xx, yy, xy = x.T @ x, y.T @ y, x.T @ y
        return float(xy.square().sum() / (xx.square().sum().sqrt() * yy.square().sum().sqrt()))
else:
    sys.path.insert(0, root)
    from engine.geometry.measures import linear_cka
    def run(x, y):
        return linear_cka(x, y)

x, y = torch.from_numpy(np.load(xpath)), torch.from_numpy(np.load(ypath))
run(x[:2 * batch], y[:2 * batch])  # warm-up: library code paths and thread pools
times, peaks = [], []
for _ in range(repeats):
    peak = [0]
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        sampler = None
    except OSError:  # no reset: sample VmRSS every millisecond instead
        stop = threading.Event()
        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], status("VmRSS:"))
                time.sleep(0.001)
        sampler = threading.Thread(target=sample, daemon=True)
    base = status("VmRSS:")
    if sampler: sampler.start()
    t = time.perf_counter()
    value = run(x, y)
    times.append(time.perf_counter() - t)
    if sampler:
        stop.set(); sampler.join()
    peaks.append((peak[0] if sampler else status("VmHWM:")) - base)
print(json.dumps({"times": times, "peak": max(peaks), "value": value, "threads": torch.get_num_threads()}))
"""


def shared_pair(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two float32 (n, d) matrices mixing a shared 64-dimensional signal with their own noise."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 64, generator=g)
    x = z @ torch.randn(64, d, generator=g) + 2 * torch.randn(n, d, generator=g) + 1.0
    y = z @ torch.randn(64, d, generator=g) + 2 * torch.randn(n, d, generator=g) - 3.0
    return x.numpy(), y.numpy()


def store_pair(path: str, hook_a: str, hook_b: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    with ActivationStore.open(path) as s:
        return (s.acts(hook_a, 0, n).astype(np.float32), s.acts(hook_b, 0, n).astype(np.float32))


def _best(runs: list[dict]) -> dict:
    """The fastest time and the largest peak over several runs of one side."""
    return {"times": [t for r in runs for t in r["times"]], "peak": max(r["peak"] for r in runs),
            "value": runs[0]["value"], "threads": runs[0]["threads"]}


def run_side(python: str, side: str, x: Path, y: Path, batch: int, repeats: int = 1) -> dict:
    """One subprocess of ``side`` on the saved matrices: its times, peak extra RSS and value."""
    proc = subprocess.run([python, "-c", RUNNER, side, str(x), str(y), str(repeats), str(batch), str(ROOT)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{side} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def part_one(args: argparse.Namespace) -> None:
    if args.store:
        x, y = store_pair(args.store, args.hook_a, args.hook_b, args.rows)
        origin = f"{args.store}: {args.hook_a} vs {args.hook_b}"
    else:
        x, y = shared_pair(args.rows, args.dim)
        origin = "random, shared 64-d signal"
    with tempfile.TemporaryDirectory() as tmp:
        px, py = Path(tmp) / "x.npy", Path(tmp) / "y.npy"
        np.save(px, x)
        np.save(py, y)
        runs: dict[str, list[dict]] = {"latentlab": [], "ckatorch": [], "gemm": []}
        for _ in range(args.repeats):  # alternate the sides: the box's load drifts
            runs["latentlab"].append(run_side(sys.executable, "latentlab", px, py, args.peer_batch))
            runs["ckatorch"].append(run_side(args.peer_python, "ckatorch", px, py, args.peer_batch))
            runs["gemm"].append(run_side(sys.executable, "gemm", px, py, args.peer_batch))
    ours, theirs, gemm = (_best(runs[k]) for k in ("latentlab", "ckatorch", "gemm"))
    two = x.nbytes + y.nbytes
    t_ours, t_theirs = min(ours["times"]), min(theirs["times"])
    print(f"linear CKA, two {x.shape[0]:,} x {x.shape[1]} float32 matrices ({origin}; {two / 2**20:.0f} MiB "
          f"together), CPU, {ours['threads']} threads (ckatorch: {theirs['threads']}), best of {args.repeats}")
    print(f"ckatorch cka_batch (minibatches of {args.peer_batch}): {t_theirs:7.2f} s  peak extra "
          f"{theirs['peak'] / 2**20:7.0f} MiB  value {theirs['value']:.6f} (minibatch estimator)")
    print(f"LatentLab linear_cka (exact, feature form): {t_ours:7.2f} s  peak extra {ours['peak'] / 2**20:7.0f} MiB"
          f"  value {ours['value']:.6f}")
    t_gemm = min(gemm["times"])
    print(f"three plain GEMMs (X^T X, Y^T Y, X^T Y, uncentred):  {t_gemm:7.2f} s  peak extra "
          f"{gemm['peak'] / 2**20:7.0f} MiB")
    print(f"ratio time ckatorch / LatentLab: {t_theirs / t_ours:.1f}x (target >= 6x); memory ckatorch / LatentLab: "
          f"{theirs['peak'] / max(ours['peak'], 1):.1f}x (target >= 4x)")
    print(f"LatentLab / three GEMMs: {t_ours / t_gemm:.2f}x (target <= 1.5x); LatentLab extra memory "
          f"{ours['peak'] / 2**30:.3f} GB beyond the two matrices (target <= 0.5 GB)")


def synth_store(path: Path, layers: int, n: int, d: int, seed: int = 0) -> list[str]:
    """A float16 store with ``layers`` hook points drifting from one shared signal."""
    hooks = [f"blocks.{i}.hook_resid_post" for i in range(layers)]
    meta = StoreMeta("synthetic", "0", "synthetic", tuple(hooks), dict.fromkeys(hooks, d), "float16")
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 64, generator=g)
    mix = [torch.randn(64, d, generator=g) for _ in range(layers)]
    with ActivationStore.create(path, meta) as s:
        for lo in range(0, n, 4096):
            hi = min(n, lo + 4096)
            acts = {h: (z[lo:hi] @ mix[i] * (1 + i / layers) + (0.5 + i / 10) * torch.randn(hi - lo, d, generator=g)
                        ).half().numpy() for i, h in enumerate(hooks)}
            r = np.arange(lo, hi, dtype=np.int32)
            s.append(acts=acts, tokens=r, sample=r // 128, position=r % 128)
    return hooks


def part_two(args: argparse.Namespace) -> None:
    ctx = JobContext(device=torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "layers.h5"
        hooks = synth_store(path, args.layers, args.layer_rows, args.dim)
        t = time.perf_counter()
        m = layer_matrix(ctx, path, hooks, path, hooks)
        t_pass = time.perf_counter() - t
        with ActivationStore.open(path) as s:
            rows = [torch.from_numpy(s.acts(h).astype(np.float32)) for h in hooks]
    pairs = np.random.default_rng(0).choice(args.layers * args.layers, size=args.pairs, replace=False)
    t = time.perf_counter()
    diffs = [abs(linear_cka(rows[p // args.layers], rows[p % args.layers]) - m.values[p // args.layers,
                                                                                       p % args.layers])
             for p in pairs]
    t_each = (time.perf_counter() - t) / args.pairs
    total = t_each * args.layers ** 2
    print(f"{args.layers} x {args.layers} layer matrix, {args.layer_rows:,} rows x {args.dim} float16, one store")
    print(f"LatentLab layer_matrix (one streamed pass):    {t_pass:7.1f} s")
    print(f"separate in-memory linear_cka per pair:       {total:7.1f} s  ({t_each:.3f} s a pair, timed on "
          f"{args.pairs} pairs, x {args.layers ** 2}; reading not counted)")
    print(f"ratio separate / one pass: {total / t_pass:.1f}x; max |difference| over the timed pairs {max(diffs):.1e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store")
    p.add_argument("--hook-a", default="blocks.15.hook_resid_post")
    p.add_argument("--hook-b", default="blocks.15.hook_resid_post")
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=576)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peer-batch", type=int, default=1000)
    p.add_argument("--peer-python", default=os.environ.get("LATENTLAB_CKA_PYTHON", "/work/cka-venv/bin/python"))
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--layer-rows", type=int, default=20_000)
    p.add_argument("--pairs", type=int, default=30)
    p.add_argument("--skip-layers", action="store_true", help="run part 1 only")
    args = p.parse_args()
    part_one(args)
    if not args.skip_layers:
        print()
        part_two(args)


if __name__ == "__main__":
    main()
