"""TopK SAE training throughput: LatentLab's trainer against SAELens's ``SAETrainer`` on the
same rows of the same store, same architecture (d_sae = 8 x d_in, k = 32), batch size,
learning rate and device (CPU here), one run.

The rows are read once from the store into a .npy file; both trainers iterate the same
batches from memory (LatentLab in this process, SAELens in its own environment, since
installing it pulls other pins: see ../shared/BENCHMARKS.md). Each trainer is timed over
the same number of steps after a warm-up. A second LatentLab figure streams from the
store itself (the train-sae job's path).

    python benchmarks/sae_train.py --store STORE.h5 [--hook blocks.15.hook_resid_post]
        [--steps 20] [--saelens-python /work/saelens-venv/bin/python]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.sae.base import SAEConfig, build_sae  # noqa: E402
from engine.sae.train_job import store_batches  # noqa: E402
from engine.sae.trainer import TrainConfig, fit  # noqa: E402
from engine.store import ActivationStore  # noqa: E402

SAELENS_SCRIPT = r"""
import json, os, sys, time
os.environ.setdefault("WANDB_MODE", "disabled")
import numpy as np, torch
from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.config import SAETrainerConfig, LoggingConfig
rows, batch, warm, steps, k, d_sae, lr = sys.argv[1], *map(int, sys.argv[2:7]), float(sys.argv[7])
data = torch.from_numpy(np.load(rows))
n_batches = len(data) // batch
marks = []
def provider():
    i = 0
    while True:
        marks.append(time.perf_counter())
        yield data[(i % n_batches) * batch:(i % n_batches + 1) * batch]
        i += 1
sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=data.shape[1], d_sae=d_sae, k=k, dtype="float32", device="cpu",
                      apply_b_dec_to_input=True, normalize_activations="none"))
cfg = SAETrainerConfig(total_training_samples=(warm + steps) * batch, train_batch_size_samples=batch, lr=lr,
                       lr_end=lr, lr_scheduler_name="constant", lr_warm_up_steps=0, adam_beta1=0.9, adam_beta2=0.999,
                       device="cpu", autocast=False, dead_feature_window=1000, feature_sampling_window=2000,
                       logger=LoggingConfig(log_to_wandb=False))
start = time.perf_counter()
SAETrainer(cfg=cfg, sae=sae, data_provider=provider()).fit()
end = time.perf_counter()
print(json.dumps({"timed_s": end - marks[warm], "total_s": end - start, "threads": torch.get_num_threads()}))
"""


def latentlab_run(batches, d_in: int, d_sae: int, k: int, lr: float, warm: int) -> float:
    """Seconds for len(batches) - warm steps of LatentLab's TopK trainer (after warm-up)."""
    torch.manual_seed(0)
    sae = build_sae(SAEConfig(arch="topk", d_in=d_in, d_sae=d_sae, k=k))
    cfg = TrainConfig(lr=lr, batch_size=len(batches[0]), total_steps=len(batches), warmup_steps=1,
                      decay_start=1.0, log_every=10**9)
    marks = []

    def timed():
        for b in batches:
            marks.append(time.perf_counter())
            yield b
    fit(sae, timed(), cfg)
    return time.perf_counter() - marks[warm]


def latentlab_store_run(store: ActivationStore, hook: str, d_sae: int, k: int, batch: int, steps: int,
                        lr: float, warm: int) -> float:
    """Seconds for ``steps`` steps streaming shuffled batches from the store (the job's path)."""
    torch.manual_seed(0)
    sae = build_sae(SAEConfig(arch="topk", d_in=store.dim(hook), d_sae=d_sae, k=k))
    cfg = TrainConfig(lr=lr, batch_size=batch, total_steps=warm + steps, warmup_steps=1, decay_start=1.0,
                      log_every=10**9)
    marks = []

    def timed():
        for b in store_batches(store, hook, batch, store.n_rows, seed=0):
            marks.append(time.perf_counter())
            yield b
    fit(sae, timed(), cfg)
    return time.perf_counter() - marks[warm]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True)
    p.add_argument("--hook", default="blocks.15.hook_resid_post")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--saelens-python", default=os.environ.get("LATENTLAB_SAELENS_PYTHON", "/work/saelens-venv/bin/python"))
    args = p.parse_args()
    with ActivationStore.open(args.store) as store:
        d_in = store.dim(args.hook)
        d_sae = args.expansion * d_in
        n = (args.warmup + args.steps) * args.batch_size
        rows = next(store.iter_batches(args.hook, min(n, store.n_rows), shuffle=True, seed=0))
        batches = [torch.from_numpy(rows[i:i + args.batch_size]).contiguous()
                   for i in range(0, len(rows) - args.batch_size + 1, args.batch_size)]
        while len(batches) < args.warmup + args.steps:
            batches += batches[: args.warmup + args.steps - len(batches)]
        steps_timed = len(batches) - args.warmup
        tokens = steps_timed * args.batch_size
        ours = latentlab_run(batches, d_in, d_sae, args.k, args.lr, args.warmup)
        streamed = latentlab_store_run(store, args.hook, d_sae, args.k, args.batch_size, steps_timed, args.lr,
                                       args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "rows.npy"
        np.save(npy, torch.cat(batches).numpy())
        proc = subprocess.run([args.saelens_python, "-c", SAELENS_SCRIPT, str(npy), str(args.batch_size),
                               str(args.warmup), str(steps_timed), str(args.k), str(d_sae), str(args.lr)],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"SAELens run failed:\n{proc.stderr[-3000:]}")
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"TopK SAE d_in {d_in}, d_sae {d_sae}, k {args.k}, batch {args.batch_size}, {steps_timed} timed steps "
          f"after {args.warmup} warm-up, CPU, {torch.get_num_threads()} threads (SAELens: {theirs['threads']})")
    print(f"SAELens SAETrainer (same batches, in memory): {tokens / theirs['timed_s']:8.0f} tokens/s")
    print(f"LatentLab fit        (same batches, in memory): {tokens / ours:8.0f} tokens/s")
    print(f"LatentLab fit        (streamed from the store): {tokens / streamed:8.0f} tokens/s")
    print(f"ratio LatentLab / SAELens: {theirs['timed_s'] / ours:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
