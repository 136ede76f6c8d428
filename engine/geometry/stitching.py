"""Model stitching (Lenc & Vedaldi 2015; Bansal, Nakkiran & Barak 2021): map model A's
activations at ``hook_a`` into model B's space at ``hook_b`` by an affine map, run B from
``hook_b`` upward on the mapped activations, and compare B's task accuracy and loss with
its own. If B keeps its accuracy, A's representation carries what B's upper part needs in
a linearly equivalent form.

The map is fitted on training inputs by closed-form least squares (ridge, float64) from
A's activations to B's own activations at ``hook_b`` on the same inputs: the default,
cheap and deterministic. ``finetune_steps > 0`` then trains it further with Adam on B's
task loss through B's upper part, as Bansal et al. do (B stays frozen).

Layouts: token tensors (batch, seq, d) get one map on d, fitted and applied at the
document tokens only (special tokens such as BOS keep B's own activations, as the SAE
splice does). Anything else is flattened per example: for conv maps (batch, C, H, W) one
map on all C*H*W values. ``per_position=True`` instead maps each pixel's channel vector
by one shared map (a 1x1 convolution, Bansal et al.'s stitching layer). On the digits zoo
(CNN w8 d2, seed 0 -> seed 1, both blocks) the flattened least-squares map keeps seed 1's
test accuracy exactly; the 1x1 map by least squares loses 2-6 points, and 300 steps of
fine-tuning bring it back within 0.5."""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import torch

from engine.errors import LatentLabError
from engine.hooks import StopForward, check_hooks, recording, replacing
from engine.jobs import JobContext
from engine.models.base import ModelAdapter, ModelBatch, next_token_pairs
from engine.models.registry import cached_model
from engine.sources import Source, load_source

TASK_KINDS = ("classifier", "causal-lm")
_PROBE = "Stitching reads the same tokens: 123 + x_y!"


class StitchResult(NamedTuple):
    """Held-out task scores of A, B and B running on A's mapped activations."""

    accuracy_stitched: float  # B's accuracy with A's mapped activations at hook_b
    accuracy_b: float  # B on its own
    accuracy_a: float  # A on its own
    loss_stitched: float  # cross-entropy (nats per example or predicted token)
    loss_b: float
    n_train: int  # training examples (images) or tokens
    n_eval: int  # held-out examples or predicted tokens
    hook_a: str
    hook_b: str
    fit_r2: float = float("nan")  # share of B's activation variance the map explains (train)
    loss_a: float = float("nan")


class AffineMap(NamedTuple):
    """rows_b = rows_a @ weight + bias."""

    weight: torch.Tensor  # (d_a, d_b)
    bias: torch.Tensor  # (d_b,)


class StitchPair(NamedTuple):
    a: ModelAdapter
    hook_a: str
    b: ModelAdapter
    hook_b: str


class StitchBatch(NamedTuple):
    a: ModelBatch
    b: ModelBatch
    labels: torch.Tensor | None  # (batch,) class labels for classifiers


# ---------------------------------------------------------------- layouts
def _layout(ta: torch.Tensor, tb: torch.Tensor, keep: torch.Tensor | None,
            per_position: bool) -> str:
    """How to turn the two hook tensors into rows: "channel", "token" or "example"."""
    if per_position and ta.ndim == 4 and tb.ndim == 4 and ta.shape[2:] == tb.shape[2:]:
        return "channel"
    if (ta.ndim == 3 and tb.ndim == 3 and keep is not None
            and ta.shape[:2] == tb.shape[:2] == keep.shape):
        return "token"
    return "example"


def _rows(t: torch.Tensor, layout: str, keep: torch.Tensor | None) -> torch.Tensor:
    """The rows a map acts on: (pixels, C), (kept tokens, d) or (batch, features)."""
    if layout == "channel":
        return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
    if layout == "token":
        return t[keep]
    return t.reshape(t.shape[0], -1)


def _put_rows(rows: torch.Tensor, like: torch.Tensor, layout: str,
              keep: torch.Tensor | None) -> torch.Tensor:
    """``like`` with its rows (as ``_rows`` reads them) replaced by ``rows``."""
    if layout == "channel":
        n, c, h, w = like.shape
        return rows.reshape(n, h, w, c).permute(0, 3, 1, 2).contiguous()
    if layout == "token":
        out = like.clone()
        out[keep] = rows
        return out
    return rows.reshape(like.shape)


def apply_map(m: AffineMap, rows: torch.Tensor) -> torch.Tensor:
    return torch.addmm(m.bias, rows.to(m.weight.dtype), m.weight)


# ---------------------------------------------------------------- least squares
class Moments:
    """Running float64 sums for the least-squares map from rows x (n, d_a) to y (n, d_b)."""

    def __init__(self) -> None:
        self.n = 0
        self.sx = self.sy = self.xx = self.xy = None
        self.yy = 0.0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.double(), y.double()
        if self.sx is None:
            self.sx, self.sy = x.new_zeros(x.shape[1]), y.new_zeros(y.shape[1])
            self.xx, self.xy = x.new_zeros(x.shape[1], x.shape[1]), x.new_zeros(x.shape[1], y.shape[1])
        self.n += len(x)
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.xx += x.T @ x
        self.xy += x.T @ y
        self.yy += float(y.pow(2).sum())

    def solve(self, ridge: float) -> tuple[AffineMap, float]:
        """The ridge map on centred rows and its training R^2.

        The penalty is ``ridge`` times the mean variance of A's units, so it does not
        depend on the activations' scale."""
        if self.n < 2:
            raise LatentLabError("stitching needs at least 2 training rows to fit its map")
        mx, my = self.sx / self.n, self.sy / self.n
        cxx = self.xx / self.n - torch.outer(mx, mx)  # (d_a, d_a)
        cxy = self.xy / self.n - torch.outer(mx, my)  # (d_a, d_b)
        w = _ridge_solve(cxx, cxy, ridge)  # (d_a, d_b)
        total = self.yy / self.n - float(my.pow(2).sum())
        explained = float((w * cxy).sum() * 2 - (w * (cxx @ w)).sum())
        r2 = explained / total if total > 0 else float("nan")
        return AffineMap(w, my - mx @ w), r2


def _ridge_solve(cxx: torch.Tensor, cxy: torch.Tensor, ridge: float) -> torch.Tensor:
    """(cxx + lam I)^-1 cxy with lam = ``ridge`` x the mean of diag(cxx); the
    pseudo-inverse when ``ridge`` is 0 (dead units make cxx singular)."""
    if ridge <= 0:
        return torch.linalg.pinv(cxx, hermitian=True) @ cxy
    lam = ridge * float(torch.diagonal(cxx).mean().clamp_min(1e-12))
    eye = torch.eye(len(cxx), dtype=cxx.dtype, device=cxx.device)
    return torch.linalg.solve(cxx + lam * eye, cxy)


# ---------------------------------------------------------------- inputs
def _images(source: Source, skip: int, cap: int | None) -> list[tuple[Any, int]]:
    """(image, class label) pairs after the first ``skip``, at most ``cap`` of them."""
    if not source.label_names:
        raise LatentLabError(f"source {source.source_id} has no labels to score a classifier on")
    name = source.label_names[0]
    stop = None if cap is None else skip + cap
    return [(ex.image, int(ex.labels.get(name, -1))) for ex in itertools.islice(source, skip, stop)]


def _windows(source: Source, tokenize: Any, span: int, skip: int,
             cap: int | None) -> list[tuple[Any, int]]:
    """Each document cut into windows of at most ``span`` tokens, after the first ``skip``
    tokens of the source and ``cap`` tokens in all (a one-token window predicts nothing
    but still counts)."""
    out, seen, given = [], 0, 0
    for doc in (tokenize(ex.text) for ex in source):
        lo, seen = max(0, skip - seen), seen + len(doc)
        for i in range(lo, len(doc), span):
            window = doc[i:i + span] if cap is None else doc[i:i + min(span, cap - given)]
            given += len(window)
            out.append((window, -1))
            if cap is not None and given >= cap:
                return out
    return out


def _items(model: ModelAdapter, source: Source, span: int, skip: int, cap: int | None,
           what: str) -> list[tuple[Any, int]]:
    items = _images(source, skip, cap) if source.kind == "image" else \
        _windows(source, model.tokenize, span, skip, cap)
    if not items:
        raise LatentLabError(f"the {what} source {source.source_id} gives no inputs"
                             + (" after the rows used for training (pass max_tokens)" if skip else ""))
    return items


def _batches(pair: StitchPair, items: list[tuple[Any, int]], batch_size: int) -> list[StitchBatch]:
    """Each slice of ``items`` as inputs of A and of B."""
    out = []
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        inputs = [x for x, _ in chunk]
        ba, bb = pair.a.make_batch(inputs), pair.b.make_batch(inputs)
        if pair.b.kind == "causal-lm" and not torch.equal(ba.inputs["input_ids"], bb.inputs["input_ids"]):
            raise LatentLabError(f"{pair.a.model_id} and {pair.b.model_id} wrap text in different "
                                 "special tokens; stitching needs both to read the same token ids")
        labels = torch.tensor([y for _, y in chunk]) if pair.b.kind == "classifier" else None
        out.append(StitchBatch(ba.to(pair.a.device), bb.to(pair.b.device),
                          None if labels is None else labels.to(pair.b.device)))
    return out


# ---------------------------------------------------------------- running
def run_at(model: ModelAdapter, batch: ModelBatch, hook: str, stop: bool) -> tuple[torch.Tensor, Any]:
    """The raw tensor at ``hook`` and the model's output (None when stopped early)."""
    out = None
    with recording({hook: model.hook_sites()[hook]}, stop_early=stop) as got:
        try:
            out = model.run(batch)
        except StopForward:
            pass
    return got[hook], out


def task_score(model: ModelAdapter, out: Any, batch: StitchBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and number right over the scored examples or tokens."""
    logits = out if isinstance(out, torch.Tensor) else out.logits
    if model.kind == "classifier":
        target = batch.labels
    else:
        pred, target = next_token_pairs(batch.b)  # A reads the same token ids
        logits = logits[:, :-1][pred]
    loss = torch.nn.functional.cross_entropy(logits.double(), target, reduction="sum")
    return loss, (logits.argmax(-1) == target).sum()


def _n_scored(model: ModelAdapter, batch: StitchBatch) -> int:
    return len(batch.labels) if model.kind == "classifier" else int(next_token_pairs(batch.b)[0].sum())


def run_stitched(pair: StitchPair, batch: StitchBatch, mapped_rows: torch.Tensor, layout: str) -> Any:
    """B's output with the tensor at ``hook_b`` replaced by A's mapped rows."""
    def fn(t: torch.Tensor) -> torch.Tensor:
        return _put_rows(mapped_rows.to(t.dtype), t, layout, batch.b.keep)
    with replacing(pair.b.hook_sites()[pair.hook_b], fn):
        return pair.b.run(batch.b)


# ---------------------------------------------------------------- fitting and scoring
def _fit(ctx: JobContext, pair: StitchPair, batches: list[StitchBatch], ridge: float,
         per_position: bool) -> tuple[AffineMap, float, str]:
    """The least-squares map from A's rows at ``hook_a`` to B's own rows at ``hook_b``."""
    moments, layout = Moments(), ""
    for i, batch in enumerate(batches):
        ctx.check_cancelled()
        with torch.inference_mode():
            ta, _ = run_at(pair.a, batch.a, pair.hook_a, stop=True)
            tb, _ = run_at(pair.b, batch.b, pair.hook_b, stop=True)
        layout = layout or _layout(ta, tb, batch.b.keep, per_position)
        moments.add(_rows(ta, layout, batch.a.keep), _rows(tb, layout, batch.b.keep))
        ctx.progress(i + 1, len(batches), "fitting the stitching map")
    m, r2 = moments.solve(ridge)
    return m, r2, layout


def _finetune(ctx: JobContext, pair: StitchPair, batches: list[StitchBatch], m: AffineMap, layout: str,
              steps: int, lr: float) -> AffineMap:
    """Adam on the map's weight and bias to lower B's task loss through B's upper part
    (B's own weights get no gradient)."""
    w = m.weight.float().clone().requires_grad_(True)
    bias = m.bias.float().clone().requires_grad_(True)
    opt = torch.optim.Adam([w, bias], lr=lr)
    for step in range(steps):
        ctx.check_cancelled()
        batch = batches[step % len(batches)]
        with torch.inference_mode():
            ta, _ = run_at(pair.a, batch.a, pair.hook_a, stop=True)
        rows = _rows(ta.clone(), layout, batch.a.keep).to(w.device, w.dtype)
        with torch.enable_grad():
            out = run_stitched(pair, batch, torch.addmm(bias, rows, w), layout)
            loss = task_score(pair.b, out, batch)[0] / max(1, _n_scored(pair.b, batch))
            w.grad, bias.grad = torch.autograd.grad(loss, [w, bias])
        opt.step()
        ctx.progress(step + 1, steps, f"fine-tuning the map: loss {loss.item():.4f}")
    return AffineMap(w.detach().double(), bias.detach().double())


def _evaluate(ctx: JobContext, pair: StitchPair, batches: list[StitchBatch], m: AffineMap,
              layout: str) -> dict[str, float]:
    """Summed losses and hits of A, B and the stitched B over the held-out batches."""
    sums = dict.fromkeys(("loss_a", "loss_b", "loss_s", "hit_a", "hit_b", "hit_s", "n"), 0.0)
    for i, batch in enumerate(batches):
        ctx.check_cancelled()
        with torch.inference_mode():
            ta, out_a = run_at(pair.a, batch.a, pair.hook_a, stop=False)
            out_s = run_stitched(pair, batch, apply_map(m, _rows(ta, layout, batch.a.keep)), layout)
            for key, model, out in (("a", pair.a, out_a), ("b", pair.b, pair.b.run(batch.b)),
                                    ("s", pair.b, out_s)):
                loss, hits = task_score(model, out, batch)
                sums[f"loss_{key}"] += float(loss)
                sums[f"hit_{key}"] += int(hits)
        sums["n"] += _n_scored(pair.b, batch)
        ctx.progress(i + 1, len(batches), "evaluating the stitched model")
    return sums


# ---------------------------------------------------------------- the job
def _resolve(model: str | ModelAdapter, device: torch.device) -> ModelAdapter:
    adapter = cached_model(model) if isinstance(model, str) else model
    if adapter.kind not in TASK_KINDS:
        raise LatentLabError(f"stitching scores a task: {adapter.model_id} is a {adapter.kind} "
                             f"model, not one of {', '.join(TASK_KINDS)}")
    return adapter.to(device)


def _check_pair(pair: StitchPair, *sources: Source) -> None:
    """Raise LatentLabError when A and B cannot read the same inputs."""
    a, b = pair.a, pair.b
    if a.kind != b.kind:
        raise LatentLabError(f"cannot stitch a {a.kind} ({a.model_id}) into a {b.kind} ({b.model_id})")
    if b.kind == "causal-lm" and (a.tokenize(_PROBE) != b.tokenize(_PROBE)
                                  or len(a.tokenizer) != len(b.tokenizer)):
        raise LatentLabError(f"{a.model_id} and {b.model_id} use different tokenizers; "
                             "stitching needs both to read the same token ids")
    wants = "image" if b.kind == "classifier" else "text"
    for source in sources:
        if source.kind != wants:
            raise LatentLabError(f"{b.model_id} takes {wants} inputs, but source "
                                 f"{source.source_id} holds {source.kind}")


def stitch(ctx: JobContext, model_a: str | ModelAdapter, hook_a: str, model_b: str | ModelAdapter,
           hook_b: str, train_source: str = "digits:train", eval_source: str = "digits:test",
           ridge: float = 1e-3, max_tokens: int | None = None, ctx_len: int = 128,
           batch_size: int = 64, per_position: bool = False, finetune_steps: int = 0,
           lr: float = 1e-3) -> StitchResult:
    """Job: stitch A's ``hook_a`` into B's ``hook_b`` and score B, A and the stitched B on
    ``eval_source`` (accuracy and cross-entropy per example or predicted token).

    ``max_tokens`` caps training and evaluation rows each (tokens for LMs, images for
    classifiers); when both sources are the same spec, evaluation starts after the rows
    used for training (pass ``max_tokens`` then)."""
    ctx.progress(0, 0, "loading models")
    pair = StitchPair(_resolve(model_a, ctx.device), hook_a, _resolve(model_b, ctx.device), hook_b)
    check_hooks([hook_a], pair.a.hook_points(), pair.a.model_id)
    check_hooks([hook_b], pair.b.hook_points(), pair.b.model_id)
    train_src, eval_src = load_source(train_source), load_source(eval_source)
    _check_pair(pair, train_src, eval_src)
    span = max(2, min(ctx_len, pair.a.max_context, pair.b.max_context) - pair.b.n_special)
    train_items = _items(pair.b, train_src, span, 0, max_tokens, "training")
    n_train = sum(1 if train_src.kind == "image" else len(x) for x, _ in train_items)
    skip = n_train if eval_source.strip() == train_source.strip() else 0
    eval_items = _items(pair.b, eval_src, span, skip, max_tokens, "evaluation")
    train_batches = _batches(pair, train_items, batch_size)
    m, r2, layout = _fit(ctx, pair, train_batches, ridge, per_position)
    if finetune_steps > 0:
        m = _finetune(ctx, pair, train_batches, m, layout, finetune_steps, lr)
    s = _evaluate(ctx, pair, _batches(pair, eval_items, batch_size), m, layout)
    n = max(1.0, s["n"])
    return StitchResult(s["hit_s"] / n, s["hit_b"] / n, s["hit_a"] / n, s["loss_s"] / n,
                        s["loss_b"] / n, n_train, int(s["n"]), hook_a, hook_b, r2, s["loss_a"] / n)
