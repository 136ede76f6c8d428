"""Feature statistics of every latent of a TopK SAE in one pass, against the bare truncated
forward pass over the same batches, and against sae-dashboard's runner on the same SAE and
tokens (in its own environment, ``--dashboard-python``; see ../shared/BENCHMARKS.md).

Ours = ``engine.features.one_pass.feature_pass``: SmolLM2 run once over the tokens, stopped after
the hook's block, each batch encoded by the SAE and folded into the running statistics,
rows and codes written to a new store; "pass" is that loop, "end to end" adds the
quantile-interval examples, the weight-only tables and writing the statistics. The
weight-only tables (decoder neighbours, logit effects over the 49k-token unembedding) are
cached per SAE and model (``engine.features.weights.weight_tables``): each repeat runs ours
"cold" (an empty cache folder: the tables are computed) and then "warm" (the same SAE again,
the tables read from the cache). Bare forward = the HF model with
``num_hidden_layers`` cut after the hook's block (no hooks, no head) on exactly the same
padded batches (``benchmarks/capture.py``), run just before each of ours. Each run of ours
is divided by that bare run; the medians of these ratios are compared (``--best``: the
smallest, when other work loads the box now and then). "beyond the pass" is a run's end to
end minus its pass: the part the cache of weight-only tables removes.

sae-dashboard gets the same token ids, reflowed into full windows of 128 (no padding), and
SmolLM2 in TransformerLens built from the same local weights with the right RoPE theta
(TransformerLens does not know SmolLM2; its default theta 10,000 is wrong): its layer
activations are checked against ours to 1e-5 before timing. It runs at its defaults
(256 features per batch, one TransformerLens forward each: ``--dashboard-default-batches``
of them are timed and scaled to all) and with all features in one batch (computing, then
writing its HTML). Its runner folds decoder norms first, which SAELens refuses for TopK
SAEs; the demo SAE's decoder rows have norm 1, so that step is skipped as a no-op.

    python benchmarks/feature_stats.py [--tokens 20000] [--repeats 2] [--best]
        [--sae ~/.local/share/latentlab/demo/saes/topk]
        [--dashboard-python /work/saedash-venv/bin/python] [--dashboard-default-batches 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.capture import bare_forward  # noqa: E402
from engine.capture import iter_units, plan_units  # noqa: E402
from engine.features.one_pass import feature_pass  # noqa: E402
from engine.jobs import JobContext  # noqa: E402
from engine.models import load_model  # noqa: E402
from engine.models.smollm2 import cached_folder  # noqa: E402
from engine.sae.io import load_sae  # noqa: E402
from engine.sources import load_source  # noqa: E402

DEMO_SAE = Path.home() / ".local/share/latentlab/demo/saes/topk"

DASHBOARD_SCRIPT = r"""
import json, os, resource, shutil, sys, time
os.environ.setdefault("WANDB_MODE", "disabled")
import numpy as np, torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformer_lens import HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights
from sae_lens import SAE, HookedSAETransformer
from sae_dashboard.sae_vis_data import SaeVisConfig
from sae_dashboard.sae_vis_runner import SaeVisRunner
from sae_dashboard.data_writing_fns import save_feature_centric_vis

model_dir, sae_dir, tokens_npy, check_npz, hook, layer = sys.argv[1:7]
runs = json.loads(sys.argv[7])  # [[features per batch, number of features, html path or ""], ...]
hf = json.load(open(os.path.join(model_dir, "config.json")))
theta = hf.get("rope_theta") or hf["rope_parameters"]["rope_theta"]
hf_cfg = LlamaConfig(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                     intermediate_size=hf["intermediate_size"], num_hidden_layers=hf["num_hidden_layers"],
                     num_attention_heads=hf["num_attention_heads"], num_key_value_heads=hf["num_key_value_heads"],
                     max_position_embeddings=hf["max_position_embeddings"], rms_norm_eps=hf["rms_norm_eps"],
                     rope_theta=theta, tie_word_embeddings=hf["tie_word_embeddings"], hidden_act=hf["hidden_act"])
llama = LlamaForCausalLM(hf_cfg)
missing, unexpected = llama.load_state_dict(load_file(os.path.join(model_dir, "model.safetensors")), strict=False)
assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
llama.tie_weights()
d_head = hf["hidden_size"] // hf["num_attention_heads"]
cfg = HookedTransformerConfig(
    d_model=hf["hidden_size"], d_head=d_head, n_heads=hf["num_attention_heads"], d_mlp=hf["intermediate_size"],
    n_layers=hf["num_hidden_layers"], n_ctx=hf["max_position_embeddings"], eps=hf["rms_norm_eps"],
    d_vocab=hf["vocab_size"], act_fn=hf["hidden_act"], n_key_value_heads=hf["num_key_value_heads"],
    normalization_type="RMS", positional_embedding_type="rotary", rotary_adjacent_pairs=False,
    rotary_dim=d_head, rotary_base=theta, final_rms=True, gated_mlp=True,
    original_architecture="LlamaForCausalLM", device="cpu", dtype=torch.float32)
model = HookedSAETransformer(cfg)
model.load_and_process_state_dict(convert_llama_weights(llama, cfg), fold_ln=False, center_writing_weights=False,
                                  center_unembed=False, fold_value_biases=False)
model.eval()
tok_dir = os.path.join(os.path.dirname(tokens_npy), "tokenizer")  # a tokenizer folder transformers 4 reads
os.makedirs(tok_dir, exist_ok=True)
shutil.copy(os.path.join(model_dir, "tokenizer.json"), tok_dir)
special = json.load(open(os.path.join(model_dir, "tokenizer_config.json")))
json.dump({"tokenizer_class": "PreTrainedTokenizerFast",
           **{k: special[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if k in special}},
          open(os.path.join(tok_dir, "tokenizer_config.json"), "w"))
model.set_tokenizer(AutoTokenizer.from_pretrained(tok_dir))
del llama
check = np.load(check_npz)
with torch.inference_mode():
    _, cache = model.run_with_cache(torch.from_numpy(check["ids"]), names_filter=hook, stop_at_layer=int(layer) + 1)
got = cache[hook][0][torch.from_numpy(check["keep"][0])].numpy()  # special tokens are not rows
want = check["acts"]
rel = float(np.abs(got - want).max() / np.abs(want).max())
rel_rows = float((np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)).max())
print(json.dumps({"check_rel_max": rel, "check_rel_rows": rel_rows}), flush=True)
if rel > 1e-5:
    sys.exit(f"TransformerLens layer activations differ from LatentLab's by {rel:.2e} (relative): not timing")
tokens = torch.from_numpy(np.load(tokens_npy))
for per_batch, n_features, html in runs:
    sae = SAE.load_from_disk(sae_dir, device="cpu")
    # SAELens refuses to fold decoder norms into a TopK SAE; ours are 1 already, so folding is a no-op
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(sae.W_dec.shape[0]), atol=1e-5)
    sae.fold_W_dec_norm = lambda: None
    vis_cfg = SaeVisConfig(hook_point=hook, features=list(range(n_features)), minibatch_size_features=per_batch,
                           device="cpu", dtype="float32", verbose=False)
    start, cpu = time.perf_counter(), time.process_time()
    data = SaeVisRunner(vis_cfg).run(encoder=sae, model=model, tokens=tokens)
    computed, computed_cpu = time.perf_counter() - start, time.process_time() - cpu
    if html:
        save_feature_centric_vis(sae_vis_data=data, filename=html)
    total = time.perf_counter() - start
    size = os.path.getsize(html) if html else 0
    del data
    print(json.dumps({"per_batch": per_batch, "features": n_features, "compute_s": computed,
                      "compute_cpu_s": computed_cpu, "total_s": total,
                      "html_bytes": size, "threads": torch.get_num_threads(),
                      "maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}), flush=True)
"""


@contextmanager
def cache_folder(folder: Path):
    """LatentLab's cache (where weight-only tables are kept) moved to ``folder`` for a while."""
    old = os.environ.get("LATENTLAB_CACHE")
    os.environ["LATENTLAB_CACHE"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LATENTLAB_CACHE")
        else:
            os.environ["LATENTLAB_CACHE"] = old


def ours(model, source, sae, hook: str, args: argparse.Namespace, out: Path,
         want_cached: tuple[str, ...]) -> tuple[float, float, float]:
    """(pass seconds, end-to-end seconds, end-to-end CPU seconds) of one feature_pass run,
    checking which weight-only tables it read from the cache."""
    start, cpu = time.perf_counter(), time.process_time()
    result = feature_pass(JobContext(device=torch.device("cpu")), model=model, source=source, sae=sae,
                          hook=hook, sae_id="topk", out=out, max_tokens=args.tokens,
                          batch_size=args.batch_size, ctx_len=args.ctx_len)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert result.cached_tables == want_cached, (result.cached_tables, want_cached)
    return result.pass_seconds, seconds, cpu


def repeat(model, source, sae, hook: str, args: argparse.Namespace, batches, tmp: Path) -> dict[str, float]:
    """One repeat: a bare forward, ours cold (a fresh cache folder), a bare forward, ours warm
    (the same folder): each of ours right after a bare forward, its peer under the same load."""
    out: dict[str, float] = {}
    with cache_folder(tmp / "cache"):
        for name, cached in (("cold", ()), ("warm", ("neighbours", "logit effects"))):
            b, b_cpu = bare(model, batches, args.layer)
            p, e, e_cpu = ours(model, source, sae, hook, args, tmp / f"{name}.h5", cached)
            out |= {f"{name}_bare": b, f"{name}_bare_cpu": b_cpu, f"{name}_pass": p, name: e,
                    f"{name}_cpu": e_cpu, f"{name}_extra": e - p}
    return out


def bare(model, batches, layer: int) -> tuple[float, float]:
    """(seconds, CPU seconds) of the bare truncated forward over ``batches``."""
    cpu = time.process_time()
    return bare_forward(model, batches, layer), time.process_time() - cpu


def peer_tokens(model, units, ctx_len: int) -> np.ndarray:
    """The same token ids reflowed into full windows (the model's special tokens added as
    ours are), wrapping round to fill the last: (n, ctx_len) input ids, no padding."""
    stream = np.concatenate([np.asarray(u.item[u.lo:u.hi], np.int64) for u in units])
    span = ctx_len - model.n_special
    n = math.ceil(len(stream) / span)
    windows = np.resize(stream, n * span).reshape(n, span).tolist()
    return model.make_batch(windows).inputs["input_ids"].numpy().astype(np.int64)


def dashboard(args: argparse.Namespace, model, units, hook: str, d_sae: int, tmp: Path) -> list[dict]:
    """Run sae-dashboard in its environment: the activation check, then each setting."""
    tokens = peer_tokens(model, units, args.ctx_len)
    np.save(tmp / "tokens.npy", tokens)
    first = model.make_batch([units[0].item])
    acts = model.forward(first, [hook])[hook].numpy()
    np.savez(tmp / "check.npz", ids=first.inputs["input_ids"].numpy(), keep=first.keep.numpy(), acts=acts)
    n_default = d_sae if args.dashboard_default_batches <= 0 else min(d_sae, 256 * args.dashboard_default_batches)
    runs = [[256, n_default, ""], [d_sae, d_sae, str(tmp / "dashboard.html")]]
    proc = subprocess.run([args.dashboard_python, "-c", DASHBOARD_SCRIPT, str(cached_folder()), str(args.sae),
                           str(tmp / "tokens.npy"), str(tmp / "check.npz"), hook, str(args.layer),
                           json.dumps(runs)], capture_output=True, text=True)
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0:
        sys.exit(f"sae-dashboard run failed ({lines}):\n{proc.stderr[-3000:]}")
    print(f"sae-dashboard input: the same token ids as {tokens.shape[0]} full windows of {tokens.shape[1]}; "
          f"TransformerLens {hook} vs ours: max |diff| / max |ours| {lines[0]['check_rel_max']:.1e}, "
          f"worst row {lines[0]['check_rel_rows']:.1e}")
    return lines[1:]


def report_dashboard(runs: list[dict], d_sae: int, ours_e2e: float, ours_cpu: float) -> None:
    """sae-dashboard's times and their ratios to ours end to end (wall, and CPU time)."""
    defaults, one_batch = runs
    scale = math.ceil(d_sae / 256) / math.ceil(defaults["features"] / 256)
    est, est_cpu = defaults["compute_s"] * scale, defaults["compute_cpu_s"] * scale
    print(f"sae-dashboard defaults (256 features a batch): {defaults['compute_s']:.1f} s for "
          f"{defaults['features']} features -> {est:.0f} s for all {d_sae} (x{scale:.1f}); "
          f"ratio to ours end to end: {est / ours_e2e:.1f}x (CPU time {est_cpu / ours_cpu:.1f}x; target >= 25x)")
    print(f"sae-dashboard all features in one batch: {one_batch['compute_s']:.1f} s compute "
          f"(ratio {one_batch['compute_s'] / ours_e2e:.1f}x, CPU time {one_batch['compute_cpu_s'] / ours_cpu:.1f}x), "
          f"{one_batch['total_s']:.1f} s with its HTML "
          f"({one_batch['html_bytes'] / 2**20:.0f} MB; ratio {one_batch['total_s'] / ours_e2e:.1f}x); "
          f"peak RSS {max(r['maxrss_gb'] for r in runs):.2f} GB; {one_batch['threads']} threads")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--sae", type=Path, default=DEMO_SAE)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--tokens", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--ctx-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--best", action="store_true",
                   help="compare the fastest runs, not the medians (for a box others load now and then)")
    p.add_argument("--dashboard-python", default=None, help="python of an environment with sae-dashboard")
    p.add_argument("--dashboard-default-batches", type=int, default=1,
                   help="feature batches of 256 timed at sae-dashboard's defaults (0: all)")
    args = p.parse_args()
    model = load_model(args.model)
    hook = f"blocks.{args.layer}.hook_resid_post"
    source = load_source("demo")
    sae = load_sae(args.sae)
    units = [u for u, _, _ in plan_units(iter_units(model, source, args.ctx_len), 0, args.tokens)]
    batches = [model.make_batch([u.item for u in units[i:i + args.batch_size]])
               for i in range(0, len(units), args.batch_size)]
    model.weight_hash()  # computed once per model in any session; not a per-run cost
    bare_forward(model, batches[:1], args.layer)  # warm-up
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            folder = Path(tmp) / f"run{r}"
            folder.mkdir()
            runs.append(repeat(model, source, sae, hook, args, batches, folder))
        te, te_cpu = report(runs, args, hook, sae)
        if args.dashboard_python:
            report_dashboard(dashboard(args, model, units, hook, sae.d_sae, Path(tmp)), sae.d_sae, te, te_cpu)


def report(runs: list[dict[str, float]], args: argparse.Namespace, hook: str, sae) -> tuple[float, float]:
    """Print the times and the ratios to the bare forward run just before; return ours cold
    end to end (seconds, CPU seconds), the figure sae-dashboard is compared with."""
    pick = min if args.best else statistics.median
    col = {k: [r[k] for r in runs] for k in runs[0]}
    print(f"model {args.model}, {hook}, {args.tokens} tokens, batch {args.batch_size} x {args.ctx_len}, "
          f"SAE {args.sae.name} (d_sae {sae.d_sae}, k {sae.cfg.k}), {torch.get_num_threads()} threads")
    for key, name in (("cold_bare", "bare truncated forward"), ("cold_pass", "ours cold, the pass"),
                      ("cold", "ours cold, end to end"), ("warm_bare", "bare truncated forward"),
                      ("warm_pass", "ours warm, the pass"), ("warm", "ours warm, end to end")):
        print(f"{name + ':':32s} {pick(col[key]):6.1f} s  (runs: {', '.join(f'{t:.1f}' for t in col[key])})")
    ratio = {}
    for name in ("cold", "warm"):
        per_run = [(r[f"{name}_pass"] / r[f"{name}_bare"], r[name] / r[f"{name}_bare"],
                    r[f"{name}_cpu"] / r[f"{name}_bare_cpu"]) for r in runs]
        ratio[name] = pick(e for _, e, _ in per_run)
        print(f"{name}: ratio per run to the bare forward just before it: " + ", ".join(
            f"pass {p:.3f} / e2e {e:.3f} (CPU {c:.3f})" for p, e, c in per_run)
            + f"; beyond the pass: {', '.join(f'{t:.2f}' for t in col[f'{name}_extra'])} s")
    print(f"ratio ({'fastest' if args.best else 'median'} of the per-run ratios) to the bare forward, "
          f"end to end: cold (tables computed) {ratio['cold']:.3f}, warm (tables cached) "
          f"{ratio['warm']:.3f} (target <= 1.1); peak RSS of this process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")
    return pick(col["cold"]), pick(col["cold_cpu"])

if __name__ == "__main__":
    main()
