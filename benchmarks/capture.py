"""Capture throughput against two peers on the same batches, per model precision.

Capture = LatentLab's whole capture job: tokenising, hooks, the forward pass stopped at the
deepest hook point, float16 conversion and HDF5 writes with a commit per batch; below
float32 also the float32 model's pass over the first batch for the recorded cosine.
Peers, called on exactly the same padded batches, writing nothing:
- bare forward: the same model truncated to the same layer (``num_hidden_layers`` cut, no
  hooks, no final norm, no head): what capture cannot beat (target >= 0.95 of it);
- plain call: ``model(input_ids=..., attention_mask=...)``, the whole model with its
  head and defaults, as a user would call it (target: capture >= 2.4x it at layer 15 of 30).
Each precision runs alternately (bare, plain, capture, bare, ...); ratios are printed of the
medians and of each side's best run (the least disturbed on a shared machine).

    python benchmarks/capture.py [--model smollm2] [--layer 15] [--tokens 8192] [--repeats 3]
                                 [--model-dtypes float32,bfloat16]
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

from engine.capture import capture, iter_units, plan_units  # noqa: E402
from engine.jobs import JobContext  # noqa: E402
from engine.models.registry import cached_model  # noqa: E402
from engine.sources import load_source  # noqa: E402


def bare_forward(model, batches, layer: int) -> float:
    """Seconds for the truncated HF model (blocks 0..layer, no hooks, no head) over ``batches``."""
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


def plain_call(model, batches) -> float:
    """Seconds for the whole model with its head, called as a user would: ``model(**inputs)``."""
    start = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            model.module(**b.inputs)
    return time.perf_counter() - start


def timed_capture(model, source, hook: str, out: Path, args) -> tuple[float, dict]:
    """Seconds for the capture job into ``out``, and the cosine it recorded (if any)."""
    start = time.perf_counter()
    capture(JobContext(device=torch.device("cpu")), model=model, source=source, hooks=[hook], out=out,
            max_tokens=args.tokens, batch_size=args.batch_size, ctx_len=args.ctx_len)
    seconds = time.perf_counter() - start
    from engine.store.activations import ActivationStore
    with ActivationStore.open(out) as store:
        return seconds, store.float32_cosine


def run_precision(name: str, args, source, batches, hook: str, tmp: Path) -> dict[str, float]:
    """Median seconds of bare, plain and capture for the model in precision ``name``."""
    model = cached_model(args.model, name)
    model.weight_hash()  # computed once per model in any session; not a per-capture cost
    if name != "float32":
        cached_model(args.model).weight_hash()  # the float32 model the cosine needs, loaded once
    bare_forward(model, batches[:1], args.layer)  # warm-up
    plain_call(model, batches[:1])
    times: dict[str, list[float]] = {"bare": [], "plain": [], "capture": []}
    cosine: dict = {}
    for r in range(args.repeats):
        times["bare"].append(bare_forward(model, batches, args.layer))
        times["plain"].append(plain_call(model, batches))
        seconds, cosine = timed_capture(model, source, hook, tmp / f"{name}{r}.h5", args)
        times["capture"].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"  {name} model")
    for key, label in (("bare", "bare truncated forward"), ("plain", "plain model(ids), head"),
                       ("capture", "capture to HDF5")):
        runs = ", ".join(f"{t:.2f}" for t in times[key])
        print(f"    {label + ':':25s}{args.tokens / med[key]:8.0f} tokens/s  (runs: {runs} s)")
    best = {k: min(v) for k, v in times.items()}
    for label, t in (("medians", med), ("best runs", best)):
        print(f"    {label + ':':11s}capture / bare forward {t['bare'] / t['capture']:.3f} (target >= 0.95), "
              f"capture / plain call {t['plain'] / t['capture']:.2f}x (target >= 2.4x)")
    for h, c in cosine.items():
        print(f"    cosine to float32 recorded ({h}, first batch, {c['rows']} rows): "
              f"mean {c['mean']:.6f}, min {c['min']:.6f}")
    if name != "float32":
        start = time.perf_counter()
        cached_model(args.model).forward(batches[0], [hook])
        once = time.perf_counter() - start
        print(f"    of which the float32 pass over the first batch (once per store): {once:.2f} s, "
              f"{once / med['capture']:.1%} of this capture")
    return med


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--ctx-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model-dtypes", default="float32,bfloat16", help="comma-separated precisions to run")
    args = p.parse_args()
    names = [x.strip() for x in args.model_dtypes.split(",") if x.strip()]
    base = cached_model(args.model)
    hook = f"blocks.{args.layer}.hook_resid_post"
    source = load_source("demo")
    units = [u for u, _, _ in plan_units(iter_units(base, source, args.ctx_len), 0, args.tokens)]
    batches = [base.make_batch([u.item for u in units[i:i + args.batch_size]])
               for i in range(0, len(units), args.batch_size)]
    n_layers = base.module.config.num_hidden_layers
    print(f"model {args.model}, {hook} ({args.layer + 1} of {n_layers} blocks), {args.tokens} tokens, "
          f"{len(batches)} batches of {args.batch_size} x {args.ctx_len}, {torch.get_num_threads()} threads")
    meds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            meds[name] = run_precision(name, args, source, batches, hook, Path(tmp))
    if "float32" in meds:
        for name in names:
            if name != "float32":
                print(f"  {name} against float32: capture {meds['float32']['capture'] / meds[name]['capture']:.2f}x, "
                      f"bare forward {meds['float32']['bare'] / meds[name]['bare']:.2f}x")


if __name__ == "__main__":
    main()
