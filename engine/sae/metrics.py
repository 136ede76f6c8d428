"""How good an SAE is on held-out store rows: reconstruction (mse, fvu, l0, dead and dense
latents) in one streaming pass, and what the model loses when the SAE's reconstruction is
spliced in place of the hook point's activations (next-token loss for causal LMs, accuracy
for classifiers), against the clean model and a zero ablation.

Shapes: x (rows, d_in); codes (rows, d_sae)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from engine.errors import LatentLabError
from engine.hooks import replacing
from engine.jobs import JobContext
from engine.models.base import ModelAdapter, ModelBatch, next_token_pairs
from engine.sae.base import SparseAutoencoder
from engine.store.activations import ActivationStore

DENSE_DENSITY = 0.1  # a latent firing on more than this fraction of rows counts as dense
HOLDOUT_FRACTION = 0.1  # evaluate's default held-out rows: the last tenth of the store
Window = tuple[int, int, np.ndarray]  # (row_lo, row_hi, token ids)


def _check_sae(sae: SparseAutoencoder, store: ActivationStore, hook: str) -> None:
    if sae.d_in != store.dim(hook):
        raise LatentLabError(f"the SAE reads {sae.d_in}-wide rows, but {hook!r} in "
                             f"{store.path.name} is {store.dim(hook)} wide")


def _sae_device(sae: SparseAutoencoder) -> torch.device:
    return next(sae.parameters()).device


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den != 0 else float("nan")


# ---------------------------------------------------------------- reconstruction
@torch.inference_mode()
def reconstruction_metrics(sae: SparseAutoencoder, store: ActivationStore, hook: str,
                           start: int = 0, stop: int | None = None, batch_size: int = 4096,
                           device: torch.device | str | None = None) -> dict[str, float]:
    """mse (mean over rows of the summed squared error), fvu (total squared error over
    total squared deviation from the rows' mean), l0 (mean nonzero codes per row),
    dead_frac (latents never firing), dense_frac (firing on > 10% of rows) and n_rows,
    over rows ``start:stop`` streamed in order with float64 accumulators."""
    _check_sae(sae, store, hook)
    device = torch.device(device) if device is not None else _sae_device(sae)
    sae = sae.to(device).eval()
    n, err, sum_x2, nnz = 0, 0.0, 0.0, 0
    sum_x = torch.zeros(sae.d_in, dtype=torch.float64, device=device)
    fired = torch.zeros(sae.d_sae, dtype=torch.int64, device=device)
    for block in store.iter_batches(hook, batch_size, shuffle=False, start=start, stop=stop):
        x = torch.from_numpy(block).to(device)
        codes = sae.encode(x)
        x_hat = sae.decode(codes)
        err += float((x_hat - x).pow(2).sum(dtype=torch.float64))
        sum_x += x.sum(0, dtype=torch.float64)
        sum_x2 += float(x.pow(2).sum(dtype=torch.float64))
        on = codes != 0
        nnz += int(on.sum())
        fired += on.sum(0)
        n += len(x)
    if n == 0:
        raise LatentLabError(f"{store.path.name}: no rows in {start}:{stop} to evaluate on")
    total_var = sum_x2 - float(sum_x.pow(2).sum()) / n
    counts = fired.cpu().numpy()
    return {"mse": err / n, "fvu": _ratio(err, total_var), "l0": nnz / n,
            "dead_frac": float((counts == 0).mean()),
            "dense_frac": float((counts > DENSE_DENSITY * n).mean()), "n_rows": n}


# ---------------------------------------------------------------- windows
def store_windows(store: ActivationStore, start: int = 0, stop: int | None = None,
                  max_windows: int | None = None, n_special: int = 0) -> list[Window]:
    """The model input windows behind rows ``start:stop``, rebuilt from /tokens, /sample and
    /position: a window is a maximal run of consecutive rows of one document with
    consecutive positions in one capture window (position // (ctx_len - n_special)).
    A window cut by ``start`` or ``stop`` is returned cut."""
    ctx_len = store.meta.params.get("ctx_len")
    if ctx_len is None:
        raise LatentLabError(f"{store.path.name}: the store does not record its ctx_len")
    span = int(ctx_len) - n_special
    lo, hi = max(0, start), store.n_rows if stop is None else min(stop, store.n_rows)
    chunk = max(65536, 4 * span)
    out: list[Window] = []
    pos = lo
    while pos < hi and (max_windows is None or len(out) < max_windows):
        end = min(hi, pos + chunk)
        sample, position, tokens = (store.index(k, pos, end) for k in ("sample", "position", "tokens"))
        new = np.ones(len(sample), bool)
        new[1:] = ((sample[1:] != sample[:-1]) | (position[1:] != position[:-1] + 1)
                   | (position[1:] // span != position[:-1] // span))
        bounds = [*np.flatnonzero(new).tolist(), len(sample)]
        if end < hi:  # the last window may go on past this chunk: read it again next time
            bounds = bounds[:-1]
        for a, b in zip(bounds[:-1], bounds[1:], strict=False):
            out.append((pos + a, pos + b, tokens[a:b].astype(np.int64)))
        pos += bounds[-1]
    return out if max_windows is None else out[:max_windows]


# ---------------------------------------------------------------- splicing
def _splice(sae: SparseAutoencoder | None, keep: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A hook function putting the SAE's reconstruction (or zeros when ``sae`` is None) in
    place of the rows the store holds (``keep``; every example when None)."""
    def new_rows(x: torch.Tensor) -> torch.Tensor:
        if sae is None:
            return torch.zeros_like(x)
        w = sae.W_dec
        return sae(x.to(w.device, w.dtype)).x_hat.to(x.device, x.dtype)

    def fn(t: torch.Tensor) -> torch.Tensor:
        if keep is not None and t.ndim >= 3 and t.shape[:2] == keep.shape:
            flat = t.reshape(*t.shape[:2], -1).clone()
            flat[keep] = new_rows(flat[keep])
            return flat.reshape(t.shape)
        return new_rows(t.reshape(t.shape[0], -1)).reshape(t.shape)
    return fn


def _check_model(adapter: ModelAdapter, store: ActivationStore, hook: str, kind: str) -> None:
    if adapter.kind != kind:
        raise LatentLabError(f"{adapter.model_id} is a {adapter.kind} model, not a {kind}")
    if adapter.weight_hash() != store.meta.model_hash:
        raise LatentLabError(f"{store.path.name} was captured from {store.meta.model_id} "
                             f"(weights {store.meta.model_hash}), not from these weights of "
                             f"{adapter.model_id} ({adapter.weight_hash()})")
    if hook not in adapter.hook_sites():
        raise LatentLabError(f"{adapter.model_id} has no hook point {hook!r}")


MODES = ("clean", "sae", "zero")  # no splice; the SAE's reconstruction; zero ablation


def _run_spliced(adapter: ModelAdapter, batch: ModelBatch, hook: str,
                 sae: SparseAutoencoder, mode: str) -> Any:
    """The model's output on ``batch`` with ``hook`` treated as ``mode`` says."""
    site = adapter.hook_sites()[hook]
    splice = nullcontext() if mode == "clean" else \
        replacing(site, _splice(sae if mode == "sae" else None, batch.keep))
    with torch.inference_mode(), splice:
        return adapter.run(batch)


def _progress(ctx: JobContext | None, done: int, total: int, message: str) -> None:
    if ctx is not None:
        ctx.check_cancelled()
        ctx.progress(done, total, message)


def spliced_loss(sae: SparseAutoencoder, adapter: ModelAdapter, store: ActivationStore,
                 hook: str, start: int = 0, stop: int | None = None, max_windows: int = 64,
                 batch_size: int = 8, ctx: JobContext | None = None) -> dict[str, float]:
    """Next-token cross-entropy (nats per predicted token) of a causal LM over the first
    ``max_windows`` store windows in ``start:stop``: clean, with the SAE's reconstruction
    spliced in at ``hook``, and with ``hook`` zero-ablated. Only the stored rows' positions
    are replaced (special tokens such as BOS stay untouched); a token is predicted from
    the position before it when both lie in the window. loss_recovered =
    (ce_zero - ce_sae) / (ce_zero - ce_clean). A window cut by ``start`` runs from its
    first held-out token (a shorter context than at capture). The SAE is moved to the
    model's device."""
    _check_model(adapter, store, hook, "causal-lm")
    _check_sae(sae, store, hook)
    sae = sae.to(adapter.device).eval()
    windows = [w for w in store_windows(store, start, stop, max_windows, adapter.n_special)
               if w[1] - w[0] >= 2]
    if not windows:
        raise LatentLabError(f"{store.path.name}: no window of 2+ tokens in rows {start}:{stop}")
    sums = dict.fromkeys(MODES, 0.0)
    count = 0
    for i in range(0, len(windows), batch_size):
        _progress(ctx, i, len(windows), "spliced loss")
        batch = adapter.make_batch([w[2].tolist() for w in windows[i:i + batch_size]]).to(adapter.device)
        pred, target = next_token_pairs(batch)  # pred (batch, seq - 1): position t predicts t + 1
        count += int(pred.sum())
        for mode in MODES:
            logits = _run_spliced(adapter, batch, hook, sae, mode).logits[:, :-1][pred]
            sums[mode] += float(torch.nn.functional.cross_entropy(
                logits.double(), target, reduction="sum"))
    _progress(ctx, len(windows), len(windows), "spliced loss")
    ce = {f"ce_{k}": v / count for k, v in sums.items()}
    ce["loss_recovered"] = _ratio(ce["ce_zero"] - ce["ce_sae"], ce["ce_zero"] - ce["ce_clean"])
    ce["n_tokens"] = count
    return ce


def accuracy_recovered(sae: SparseAutoencoder, adapter: ModelAdapter, store: ActivationStore,
                       hook: str, start: int = 0, stop: int | None = None, label: str = "digit",
                       batch_size: int = 256, ctx: JobContext | None = None) -> dict[str, float]:
    """A classifier's accuracy on the store's images of rows ``start:stop`` (labels from
    /labels/<label>): clean, with the SAE's reconstruction spliced in at ``hook``, and
    zero-ablated; acc_recovered = (acc_sae - acc_zero) / (acc_clean - acc_zero)."""
    _check_model(adapter, store, hook, "classifier")
    _check_sae(sae, store, hook)
    sae = sae.to(adapter.device).eval()
    samples = store.index("sample", start, stop)
    labels = torch.from_numpy(store.index(label, start, stop).astype(np.int64))
    if len(samples) == 0:
        raise LatentLabError(f"{store.path.name}: no rows in {start}:{stop} to evaluate on")
    right = dict.fromkeys(MODES, 0)
    for i in range(0, len(samples), batch_size):
        _progress(ctx, i, len(samples), "spliced accuracy")
        images = [store.image(s) for s in samples[i:i + batch_size]]
        batch = adapter.make_batch(images).to(adapter.device)
        y = labels[i:i + batch_size]
        for mode in MODES:
            out = _run_spliced(adapter, batch, hook, sae, mode)
            right[mode] += int((out.argmax(-1).cpu() == y).sum())
    _progress(ctx, len(samples), len(samples), "spliced accuracy")
    acc = {f"acc_{k}": v / len(samples) for k, v in right.items()}
    acc["acc_recovered"] = _ratio(acc["acc_sae"] - acc["acc_zero"], acc["acc_clean"] - acc["acc_zero"])
    acc["n_examples"] = len(samples)
    return acc


# ---------------------------------------------------------------- all together
def default_holdout_start(store: ActivationStore, fraction: float = HOLDOUT_FRACTION) -> int:
    """First row of the default held-out part: the store's last ``fraction`` of rows."""
    return int(store.n_rows * (1.0 - fraction))


def evaluate(sae: SparseAutoencoder, store: ActivationStore, hook: str,
             adapter: ModelAdapter | None = None, holdout_start: int | None = None,
             holdout_stop: int | None = None, batch_size: int = 4096, max_windows: int = 64,
             ctx: JobContext | None = None) -> dict[str, float]:
    """Reconstruction metrics on held-out rows (default: the last 10%), plus the spliced
    next-token loss (causal LM) or spliced accuracy (classifier) when ``adapter`` is given."""
    start = default_holdout_start(store) if holdout_start is None else holdout_start
    out: dict[str, float] = reconstruction_metrics(sae, store, hook, start, holdout_stop, batch_size)
    if adapter is not None and adapter.kind == "causal-lm":
        out.update(spliced_loss(sae, adapter, store, hook, start, holdout_stop, max_windows, ctx=ctx))
    elif adapter is not None and adapter.kind == "classifier":
        out.update(accuracy_recovered(sae, adapter, store, hook, start, holdout_stop, ctx=ctx))
    return out
