"""SAE quality per architecture on one store: held-out FVU, L0, dead latents and, for a
language model, the spliced-in cross-entropy and loss recovered (against zero-ablation).

    python benchmarks/sae_quality.py --store STORE.h5 --model smollm2 [--archs topk,relu,...]
        [--out DIR] [--epochs 4]

Prints a markdown table for benchmarks/RESULTS.md. Each architecture trains with the
train-sae job (the same code as `python main.py train-sae`)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.jobs import JobContext  # noqa: E402
from engine.sae.train_job import train_sae  # noqa: E402

# Per-architecture settings: the sparsity knob of each, and how much data it sees
# (matching pursuit runs k greedy GEMMs a batch; g-SAE runs the model forward and back).
SETTINGS = {
    "topk": dict(k=32),
    "batchtopk": dict(k=32),
    "relu": dict(l1_coeff=30.0),
    "jumprelu": dict(l0_coeff=20.0, jumprelu_init_threshold=10.0, jumprelu_bandwidth=2.0),
    "mp": dict(k=32, epochs_scale=0.1),
    "gtopk": dict(k=32, epochs_scale=0.25),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True)
    p.add_argument("--hook", default="blocks.15.hook_resid_post")
    p.add_argument("--model", default="smollm2", help="model for the spliced-in loss")
    p.add_argument("--archs", default="topk,batchtopk,relu,jumprelu,mp,gtopk")
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--epochs", type=float, default=4.0)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--out", default=None, help="keep the SAEs here (default: a temporary folder)")
    args = p.parse_args()
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp())
    rows = []
    for arch in args.archs.split(","):
        opts = dict(SETTINGS.get(arch, {}))
        epochs = args.epochs * opts.pop("epochs_scale", 1.0)
        start = time.perf_counter()
        result = train_sae(JobContext(device=torch.device("cpu")), store=args.store, hook=args.hook,
                           out=root / arch, arch=arch, expansion=args.expansion, batch_size=args.batch_size,
                           epochs=epochs, lr=args.lr, eval_model=args.model, resume=True, **opts)
        m = result.metrics
        rows.append((arch, epochs, m, time.perf_counter() - start))
        print(f"{arch}: {m}", flush=True)
    print("\n| arch | epochs | held-out FVU | L0 | dead | CE clean | CE spliced | CE zero-abl. | loss recovered | time (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for arch, epochs, m, secs in rows:
        print(f"| {arch} | {epochs:g} | {m['fvu']:.3f} | {m['l0']:.1f} | {m['dead_frac']:.3f} | {m.get('ce_clean', float('nan')):.3f} "
              f"| {m.get('ce_sae', float('nan')):.3f} | {m.get('ce_zero', float('nan')):.3f} "
              f"| {m.get('loss_recovered', float('nan')):.3f} | {secs:.0f} |")


if __name__ == "__main__":
    main()
