"""Capture throughput against the bare forward pass (the peer) on the same batches.

Capture = LatentLab's whole capture job: tokenising, hooks, the forward pass stopped at the
deepest hook point, float16 conversion and HDF5 writes with a commit per batch.
Bare forward = the same model truncated to the same layer (``num_hidden_layers`` cut, no
hooks, no head), called on exactly the same padded batches, nothing written.
Runs alternate (bare, capture, bare, ...) and the ratio of medians is printed.

    python benchmarks/capture.py [--model smollm2] [--layer 15] [--tokens 8192] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.capture import _plan, capture, iter_units  # noqa: E402
from engine.jobs import JobContext  # noqa: E402
from engine.models import load_model  # noqa: E402
from engine.sources import load_source  # noqa: E402


def bare_forward(model, batches, layer: int) -> float:
    """Seconds for the truncated HF model (blocks 0..layer, no hooks) over ``batches``."""
    body = model.module.model
    full = body.config.num_hidden_layers
    body.config.num_hidden_layers = layer + 1
    try:
        start = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                body(**b.inputs, use_cache=False)
        return time.perf_counter() - start
    finally:
        body.config.num_hidden_layers = full


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--ctx-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    model = load_model(args.model)
    hook = f"blocks.{args.layer}.hook_resid_post"
    source = load_source("demo")
    units = [u for u, _, _ in _plan(iter_units(model, source, args.ctx_len), 0, args.tokens)]
    batches = [model.make_batch([u.item for u in units[i:i + args.batch_size]])
               for i in range(0, len(units), args.batch_size)]
    model.weight_hash()  # computed once per model in any session; not a per-capture cost
    bare_forward(model, batches[:1], args.layer)  # warm-up
    bare, cap = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            bare.append(bare_forward(model, batches, args.layer))
            out = Path(tmp) / f"bench{r}.h5"
            start = time.perf_counter()
            capture(JobContext(device=torch.device("cpu")), model=model, source=source, hooks=[hook],
                    out=out, max_tokens=args.tokens, batch_size=args.batch_size, ctx_len=args.ctx_len)
            cap.append(time.perf_counter() - start)
    tb, tc = statistics.median(bare), statistics.median(cap)
    print(f"model {args.model}, {hook}, {args.tokens} tokens, batch {args.batch_size} x {args.ctx_len}, "
          f"{torch.get_num_threads()} threads")
    print(f"bare truncated forward: {args.tokens / tb:8.0f} tokens/s  (runs: {', '.join(f'{t:.2f}' for t in bare)} s)")
    print(f"capture to HDF5:        {args.tokens / tc:8.0f} tokens/s  (runs: {', '.join(f'{t:.2f}' for t in cap)} s)")
    print(f"ratio capture / bare forward: {tb / tc:.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
