"""SAE training throughput: LatentLab's trainer against SAELens's ``SAETrainer`` on the same
rows of the same store, same architecture (d_sae = 8 x d_in, k = 32), the same initial
weights, batch size, learning rate and device (CPU here), one run.

The rows are read once from the store into a .npy file; both trainers iterate the same
batches from memory (LatentLab in this process, SAELens in its own environment, since
installing it pulls other pins: see ../shared/BENCHMARKS.md). Each trainer is timed over
the same steps after a warm-up; tokens/s come from the median step (the box is shared and
single steps stall). The two sides run alternately --repeats times (ours, SAELens, ours,
...), each from the same initial weights, and each side's best run counts, so a burst of
load from other users does not decide the ratio; every run's figure is printed.

Configurations per architecture:
- topk, batchtopk: "plain", and "AuxK active": a share (--dead-frac) of the latents start
  with an encoder bias of -1000 on both sides, so they never fire, and with their
  unfired-steps counters already past the dead window (1000 steps on both sides), so they
  are dead from the first step and AuxK runs on every step, on both sides.
  topk also times LatentLab streaming from the store (the train-sae job's path).
- jumprelu: "init" (threshold 0.001: about half the latents fire, dense work) and
  "L0 ~ k" (both start with the threshold at the batch's k * batch-th largest
  pre-activation, the density of a trained JumpReLU, where LatentLab decodes sparsely).
- mp: SAELens's matching pursuit with the same maths (k steps, no early stop).

    python benchmarks/sae_train.py --store STORE.h5 [--arch topk] [--hook blocks.15.hook_resid_post]
        [--steps 10] [--warmup 3] [--repeats 2] [--dead-frac 0.25] [--saelens-python ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.sae.base import SAEConfig, SparseAutoencoder, TrainState, build_sae  # noqa: E402
from engine.sae.train_job import store_batches  # noqa: E402
from engine.sae.trainer import TrainConfig, fit  # noqa: E402
from engine.store.activations import ActivationStore  # noqa: E402

SAELENS_SCRIPT = r"""
import json, os, sys, time
os.environ.setdefault("WANDB_MODE", "disabled")
import numpy as np, torch
import sae_lens as sl
from sae_lens.config import SAETrainerConfig, LoggingConfig
a = json.loads(sys.argv[1])
data = torch.from_numpy(np.load(a["rows"]))
batch, warm, steps = a["batch"], a["warm"], a["steps"]
n_batches = len(data) // batch
marks = []
def provider():
    i = 0
    while True:
        marks.append(time.perf_counter())
        yield data[(i % n_batches) * batch:(i % n_batches + 1) * batch]
        i += 1
common = dict(d_in=data.shape[1], d_sae=a["d_sae"], dtype="float32", device="cpu", apply_b_dec_to_input=True,
              normalize_activations="none")
arch = a["arch"]
if arch == "topk":
    sae = sl.TopKTrainingSAE(sl.TopKTrainingSAEConfig(k=a["k"], **common))
elif arch == "batchtopk":
    sae = sl.BatchTopKTrainingSAE(sl.BatchTopKTrainingSAEConfig(k=a["k"], **common))
elif arch == "jumprelu":
    sae = sl.JumpReLUTrainingSAE(sl.JumpReLUTrainingSAEConfig(jumprelu_init_threshold=0.001,
                                 jumprelu_bandwidth=0.001, l0_coefficient=1.0, **common))
else:
    sae = sl.MatchingPursuitTrainingSAE(sl.MatchingPursuitTrainingSAEConfig(residual_threshold=0.0,
                                        max_iterations=a["k"], stop_on_duplicate_support=False, **common))
init = np.load(a["init"])
params = dict(sae.named_parameters())
with torch.no_grad():
    for name in init.files:
        if name in params:
            params[name].copy_(torch.from_numpy(init[name]))
cfg = SAETrainerConfig(total_training_samples=(warm + steps) * batch, train_batch_size_samples=batch, lr=a["lr"],
                       lr_end=a["lr"], lr_scheduler_name="constant", lr_warm_up_steps=0, adam_beta1=0.9,
                       adam_beta2=0.999, device="cpu", autocast=False, dead_feature_window=a["dead_window"],
                       feature_sampling_window=2000, logger=LoggingConfig(log_to_wandb=False))
trainer = sl.SAETrainer(cfg=cfg, sae=sae, data_provider=provider())
if a["dead"]:
    trainer.n_forward_passes_since_fired[torch.tensor(a["dead"])] = a["dead_window"] + 10**6
start = time.perf_counter()
trainer.fit()
end = time.perf_counter()
print(json.dumps({"marks": marks[:warm + steps] + [end], "threads": torch.get_num_threads()}))
"""


def step_times(marks: list[float], warm: int) -> list[float]:
    """Durations of the timed steps from the times each step asked for its batch (and the end)."""
    return [b - a for a, b in zip(marks[warm:], marks[warm + 1:], strict=False)]


DEAD_WINDOW = 1000  # steps unfired before a latent counts as dead, both sides


def make_sae(arch: str, d_in: int, d_sae: int, k: int, dead: torch.Tensor | None, threshold: float | None,
             dead_after: int) -> SparseAutoencoder:
    """The seeded initial SAE both sides start from."""
    torch.manual_seed(0)
    kw = {"jumprelu_init_threshold": threshold} if threshold else {}
    sae = build_sae(SAEConfig(arch=arch, d_in=d_in, d_sae=d_sae, k=k, dead_after_tokens=dead_after, **kw))
    if dead is not None:
        with torch.no_grad():
            sae.b_enc[dead] = -1000.0  # these never fire: AuxK stays active
    return sae


def init_arrays(sae: SparseAutoencoder) -> dict[str, np.ndarray]:
    """The initial weights under SAELens's names (JumpReLU: its threshold, not the log)."""
    out = {n: p.detach().numpy().copy() for n, p in sae.named_parameters() if n != "log_threshold"}
    if sae.architecture == "jumprelu":
        out["threshold"] = sae.threshold.detach().numpy().copy()
    return out


def latentlab_run(sae: SparseAutoencoder, batches, lr: float, warm: int, dead: torch.Tensor | None) -> list[float]:
    """Step durations of LatentLab's fit over ``batches`` (after ``warm`` steps); ``dead``
    latents start with their unfired-tokens counters past the dead window."""
    cfg = TrainConfig(lr=lr, batch_size=len(batches[0]), total_steps=len(batches), warmup_steps=1,
                      decay_start=1.0, log_every=10**9)
    marks = []

    def timed():
        for b in batches:
            marks.append(time.perf_counter())
            yield b
    unfired = torch.zeros(sae.d_sae, dtype=torch.long)
    if dead is not None:
        unfired[dead] = sae.cfg.dead_after_tokens + 10**6 * len(batches[0])
    fit(sae, timed(), cfg, state=TrainState(tokens_since_fired=unfired))
    return step_times([*marks, time.perf_counter()], warm)


def latentlab_store_run(sae: SparseAutoencoder, store: ActivationStore, hook: str, batch: int, steps: int,
                        lr: float, warm: int) -> list[float]:
    """Step durations streaming shuffled batches from the store (the job's path)."""
    cfg = TrainConfig(lr=lr, batch_size=batch, total_steps=warm + steps, warmup_steps=1, decay_start=1.0,
                      log_every=10**9)
    marks = []

    def timed():
        for b in store_batches(store, hook, batch, store.n_rows, seed=0):
            marks.append(time.perf_counter())
            yield b
    fit(sae, timed(), cfg)
    return step_times([*marks, time.perf_counter()], warm)


def saelens_run(args, arch: str, npy: Path, init: dict[str, np.ndarray], d_sae: int, steps: int,
                dead: torch.Tensor | None) -> tuple[list[float], int]:
    """Step durations of SAELens's SAETrainer (own process) and its thread count."""
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "init.npz", **init)
        spec = {"rows": str(npy), "init": str(Path(tmp) / "init.npz"), "arch": arch, "batch": args.batch_size,
                "warm": args.warmup, "steps": steps, "k": args.k, "d_sae": d_sae, "lr": args.lr,
                "dead_window": DEAD_WINDOW, "dead": [] if dead is None else dead.tolist()}
        proc = subprocess.run([args.saelens_python, "-c", SAELENS_SCRIPT, json.dumps(spec)],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"SAELens run failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return step_times(out["marks"], args.warmup), out["threads"]


def _rates(step_seconds: list[float], batch: int) -> str:
    return ", ".join(f"{batch / s:.0f}" for s in step_seconds)


def report(name: str, ours: list[list[float]], theirs: list[list[float]], batch: int) -> None:
    """tokens/s of both sides (each run's median step; the best run counts) and their ratio."""
    med_o, med_t = [statistics.median(r) for r in ours], [statistics.median(r) for r in theirs]
    print(f"  {name}")
    print(f"    SAELens SAETrainer: {batch / min(med_t):8.0f} tokens/s  (runs: {_rates(med_t, batch)})")
    print(f"    LatentLab fit:      {batch / min(med_o):8.0f} tokens/s  (runs: {_rates(med_o, batch)})")
    print(f"    ratio LatentLab / SAELens: {min(med_t) / min(med_o):.2f}x")


def jumprelu_threshold(batches, d_in: int, d_sae: int, k: int) -> float:
    """The first batch's k * batch-th largest pre-activation under the seeded initial SAE."""
    sae = make_sae("jumprelu", d_in, d_sae, k, None, None, 10**9)
    with torch.no_grad():
        pre = sae.pre_acts(batches[0])
    return float(pre.flatten().topk(k * len(batches[0])).values.min())


def configurations(arch: str, args, batches, d_in: int, d_sae: int) -> list[tuple[str, torch.Tensor | None, float | None]]:
    """(name, dead latents, JumpReLU threshold) of each configuration to time."""
    if arch in ("topk", "batchtopk"):
        g = torch.Generator().manual_seed(1)
        dead = torch.randperm(d_sae, generator=g)[: int(args.dead_frac * d_sae)].sort().values
        return [("plain", None, None), (f"AuxK active ({len(dead)} dead latents)", dead, None)]
    if arch == "jumprelu":
        t = jumprelu_threshold(batches, d_in, d_sae, args.k)
        return [("init (threshold 0.001)", None, None), (f"L0 ~ k (threshold {t:.3g})", None, t)]
    return [("plain", None, None)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True)
    p.add_argument("--arch", default="topk", choices=["topk", "batchtopk", "jumprelu", "mp"])
    p.add_argument("--hook", default="blocks.15.hook_resid_post")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dead-frac", type=float, default=0.25)
    p.add_argument("--saelens-python", default=os.environ.get("LATENTLAB_SAELENS_PYTHON", str(Path(__file__).resolve().parents[1] / ".venv-saelens" / "bin" / "python")))
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
        steps = len(batches) - args.warmup
        print(f"{args.arch} SAE d_in {d_in}, d_sae {d_sae}, k {args.k}, batch {args.batch_size}, {steps} timed steps "
              f"after {args.warmup} warm-up, CPU, {torch.get_num_threads()} threads, fp32")
        with tempfile.TemporaryDirectory() as tmp:
            npy = Path(tmp) / "rows.npy"
            np.save(npy, torch.cat(batches).numpy())
            for name, dead, threshold in configurations(args.arch, args, batches, d_in, d_sae):
                ours, theirs = [], []
                for _ in range(args.repeats):
                    sae = make_sae(args.arch, d_in, d_sae, args.k, dead, threshold, DEAD_WINDOW * args.batch_size)
                    init = init_arrays(sae)
                    ours.append(latentlab_run(sae, batches, args.lr, args.warmup, dead))
                    run, threads = saelens_run(args, args.arch, npy, init, d_sae, steps, dead)
                    theirs.append(run)
                report(f"{name} (SAELens threads: {threads})", ours, theirs, args.batch_size)
            if args.arch == "topk":
                sae = make_sae("topk", d_in, d_sae, args.k, None, None, DEAD_WINDOW * args.batch_size)
                streamed = latentlab_store_run(sae, store, args.hook, args.batch_size, steps, args.lr, args.warmup)
                print(f"  LatentLab fit streamed from the store: {args.batch_size / statistics.median(streamed):8.0f} "
                      "tokens/s (median step)")


if __name__ == "__main__":
    main()
