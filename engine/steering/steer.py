"""Steering: interventions on a model's activations during forward passes and generation
(add a direction, clamp or ablate SAE latents through the error splice), concept vectors
from contrasting prompt sets, and a baseline-vs-steered generation comparison."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch

from engine.hooks import check_hooks, reads_only, replacing
from engine.models.base import ModelAdapter
from engine.sae.base import SparseAutoencoder
from engine.steering.prompt_prefix import reusing_prompt

MIN_SHIFT = 1e-6  # a next-token probability change below this is not listed as gained or lost

# ---------------------------------------------------------------------- interventions
@dataclass(frozen=True, eq=False)
class AddDirection:
    """Add ``alpha * direction`` (d,) at ``hook``, at every token or at absolute
    token positions ``positions`` (0 = the first token, BOS included). At a hook whose
    tensor is a feature map (batch, channels, h, w), ``direction`` is a stored row of it
    (channels x h x w, flattened as the store's rows are)."""

    hook: str
    direction: torch.Tensor
    alpha: float = 1.0
    positions: tuple[int, ...] | None = None


@dataclass(frozen=True, eq=False)
class ClampLatents:
    """Set SAE ``latents`` to ``values`` at ``hook``, keeping the SAE's reconstruction
    error: x' = decode(edited codes) + (x - decode(encode(x)))."""

    hook: str
    sae: SparseAutoencoder
    latents: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True, eq=False)
class AblateLatents:
    """Zero SAE ``latents`` (or set them to ``means``, one per latent) at ``hook``,
    keeping the SAE's reconstruction error as ClampLatents does."""

    hook: str
    sae: SparseAutoencoder
    latents: tuple[int, ...]
    mode: Literal["zero", "mean"] = "zero"
    means: tuple[float, ...] | None = None


Intervention = AddDirection | ClampLatents | AblateLatents


def _edit_values(iv: ClampLatents | AblateLatents) -> list[float]:
    """The code values the edited latents get."""
    if isinstance(iv, ClampLatents):
        values = list(iv.values)
    elif iv.mode == "zero":
        values = [0.0] * len(iv.latents)
    elif iv.mode == "mean" and iv.means is not None:
        values = list(iv.means)
    else:
        raise ValueError(f"ablation mode {iv.mode!r} needs mode 'zero', or 'mean' with means")
    if len(values) != len(iv.latents):
        raise ValueError(f"{len(iv.latents)} latents but {len(values)} values")
    return values


def splice_codes(sae: SparseAutoencoder, x: torch.Tensor, latents: Sequence[int],
                 values: Sequence[float]) -> torch.Tensor:
    """x (..., d_in) with SAE ``latents`` set to ``values`` and the reconstruction error kept."""
    flat = x.reshape(-1, x.shape[-1])
    sae_dtype = sae.W_dec.dtype
    with torch.no_grad():
        codes = sae.encode(flat.to(sae_dtype))
        error = flat.to(sae_dtype) - sae.decode(codes)
        idx = torch.as_tensor(list(latents), dtype=torch.long, device=codes.device)
        codes[:, idx] = torch.as_tensor(list(values), dtype=codes.dtype, device=codes.device)
        out = sae.decode(codes) + error
    return out.to(x.dtype).reshape(x.shape)


class _Offset:
    """Absolute position of the current forward pass's first token (past KV length)."""

    def __init__(self) -> None:
        self.value = 0

    @reads_only
    def pre_hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        past = kwargs.get("past_key_values", kwargs.get("cache"))
        cache_pos, pos_ids = kwargs.get("cache_position"), kwargs.get("position_ids")
        if past is not None and hasattr(past, "get_seq_length"):
            self.value = int(past.get_seq_length())
        elif cache_pos is not None and cache_pos.numel():
            self.value = int(cache_pos.reshape(-1)[0])
        elif pos_ids is not None and pos_ids.numel():
            self.value = int(pos_ids.reshape(-1)[0])
        else:
            self.value = 0


def _add_fn(iv: AddDirection, offset: _Offset):
    """The replacement function of an AddDirection (seq is dim -2 for (batch, seq, d))."""
    def fn(x: torch.Tensor) -> torch.Tensor:
        step = (iv.alpha * iv.direction).to(device=x.device, dtype=x.dtype)
        if step.shape[-1] != x.shape[-1] and step.numel() == x[0].numel():
            step = step.reshape(x.shape[1:])  # a flattened row of a (channels, h, w) map: its layout
        if iv.positions is None:
            return x + step
        seq = x.shape[-2]
        pos = torch.as_tensor(iv.positions, device=x.device) - offset.value
        pos = pos[(pos >= 0) & (pos < seq)]
        if not pos.numel():
            return x
        mask = torch.zeros(seq, 1, device=x.device, dtype=x.dtype)
        mask[pos] = 1
        return x + mask * step
    return fn


def _splice_fn(iv: ClampLatents | AblateLatents):
    values = _edit_values(iv)
    return lambda x: splice_codes(iv.sae, x, iv.latents, values)


@contextmanager
def steered(adapter: ModelAdapter, interventions: Sequence[Intervention]) -> Iterator[None]:
    """Apply ``interventions`` (in order) to every forward pass of ``adapter`` in the block,
    including each step of ``generate`` with its KV cache."""
    sites = adapter.hook_sites()
    check_hooks([iv.hook for iv in interventions], list(sites), adapter.model_id)
    for iv in interventions:
        if not isinstance(iv, AddDirection):
            _edit_values(iv)  # fail before any hook is attached
    offset = _Offset()
    with ExitStack() as stack:
        handle = adapter.module.register_forward_pre_hook(offset.pre_hook, with_kwargs=True)
        stack.callback(handle.remove)
        for iv in interventions:
            fn = _add_fn(iv, offset) if isinstance(iv, AddDirection) else _splice_fn(iv)
            stack.enter_context(replacing(sites[iv.hook], fn))
        yield


# ---------------------------------------------------------------------- directions
def concept_vector(adapter: ModelAdapter, hook: str, positive: Sequence[str],
                   negative: Sequence[str]) -> torch.Tensor:
    """Mean activation at ``hook`` over the document tokens (BOS excluded) of ``positive``
    texts minus that of ``negative`` texts: a direction (d,) for AddDirection."""
    if not positive or not negative:
        raise ValueError("concept_vector needs at least one positive and one negative text")
    return _mean_rows(adapter, hook, positive) - _mean_rows(adapter, hook, negative)


def _mean_rows(adapter: ModelAdapter, hook: str, texts: Sequence[str]) -> torch.Tensor:
    """Mean over all document-token rows of ``texts`` at ``hook`` (d,), in float32."""
    total, count = None, 0
    for text in texts:
        rows = adapter.forward(adapter.make_batch([adapter.tokenize(text)]), [hook])[hook].float()
        total = rows.sum(0) if total is None else total + rows.sum(0)
        count += rows.shape[0]
    return total / max(count, 1)


def latent_direction(sae: SparseAutoencoder, latent: int) -> torch.Tensor:
    """The decoder row (d_in,) of ``latent``: the direction that latent writes."""
    return sae.W_dec[int(latent)].detach().clone()


# ---------------------------------------------------------------------- generation
class TokenShift(NamedTuple):
    token: int
    text: str
    delta: float  # steered minus baseline probability


class GenerationComparison(NamedTuple):
    baseline_tokens: list[int]  # generated ids only (prompt excluded)
    steered_tokens: list[int]
    baseline_text: str
    steered_text: str
    first_divergence: int  # index into the generated tokens; -1 when identical
    kl: float  # KL(steered || baseline) of the next-token distribution after the prompt
    gained: list[TokenShift]  # tokens whose probability rose most, largest first
    lost: list[TokenShift]  # tokens whose probability fell most, largest fall first


def prompt_inputs(adapter: ModelAdapter, prompt: str) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask of a prompt with its BOS, without trailing specials."""
    batch = adapter.make_batch([adapter.tokenize(prompt)]).to(adapter.device)
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    end = int(batch.keep[0].nonzero().max()) + 1 if batch.keep[0].any() else ids.shape[1]
    return {"input_ids": ids[:, :end], "attention_mask": mask[:, :end]}


def generation_options(adapter: ModelAdapter, max_new_tokens: int, sample: bool,
                       temperature: float) -> dict[str, Any]:
    """HF ``generate`` options shared by every steered and unsteered run: KV cache on,
    greedy or plain sampling at ``temperature`` (no top-k / top-p), EOS as padding if needed."""
    tok = adapter.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    opts: dict[str, Any] = {"do_sample": sample, "max_new_tokens": max_new_tokens, "use_cache": True,
                            "pad_token_id": pad}
    if sample:
        opts.update(temperature=temperature, top_k=0, top_p=1.0)
    else:
        opts.update(temperature=None, top_k=None, top_p=None)
    return opts


def generate_first(adapter: ModelAdapter, inputs: dict[str, torch.Tensor], max_new_tokens: int,
                   seed: int, sample: bool, temperature: float, streamer: Any = None
                   ) -> tuple[list[int], torch.Tensor]:
    """New token ids from HF ``generate`` (seeded for sampling; each token also goes to
    ``streamer`` when given), and the next-token log-probabilities right after the prompt,
    read from the same run's first step (raw logits, before temperature) rather than from
    another forward pass. The prompt's blocks before the first steered one are replayed
    from an earlier run of it (engine.steering.prompt_prefix)."""
    torch.manual_seed(seed)
    with reusing_prompt(adapter, inputs["input_ids"]), torch.inference_mode():
        out = adapter.module.generate(**inputs, **generation_options(adapter, max_new_tokens, sample, temperature),
                                      streamer=streamer, output_logits=True, return_dict_in_generate=True)
    return out.sequences[0, inputs["input_ids"].shape[1]:].tolist(), torch.log_softmax(out.logits[0][0].float(), -1)


def generate(adapter: ModelAdapter, inputs: dict[str, torch.Tensor], max_new_tokens: int,
              seed: int, sample: bool, temperature: float) -> list[int]:
    """New token ids from HF ``generate`` (``generate_first`` without the log-probabilities)."""
    return generate_first(adapter, inputs, max_new_tokens, seed, sample, temperature)[0]


def next_token_logprobs(adapter: ModelAdapter, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        logits = adapter.module(**inputs, use_cache=False).logits[0, -1].float()
    return torch.log_softmax(logits, -1)


def kl_divergence(logprobs: torch.Tensor, base: torch.Tensor) -> float:
    """KL(p || base) of two log-probability vectors (rounding below 0 clamped)."""
    return float((logprobs.exp() * (logprobs - base)).sum().clamp_min(0))


class NextTokenShift(NamedTuple):
    kl: float  # KL(steered || baseline)
    gained: list[TokenShift]  # tokens whose probability rose most, largest first
    lost: list[TokenShift]  # tokens whose probability fell most, largest fall first


def next_token_shift(adapter: ModelAdapter, steered_lp: torch.Tensor, base_lp: torch.Tensor,
                     top: int) -> NextTokenShift:
    """How steering moved one next-token distribution: its KL and the ``top`` tokens
    gained and lost (probability differences)."""
    delta = steered_lp.exp() - base_lp.exp()
    return NextTokenShift(kl_divergence(steered_lp, base_lp), _shifts(adapter, delta, top, True),
                          _shifts(adapter, delta, top, False))


def shift_text(shifts: Sequence[TokenShift]) -> str:
    """``'tok' +0.123, ...`` (or ``none``): tokens gained or lost, as the CLI and the view show them."""
    return ", ".join(f"{t.text!r} {t.delta:+.3f}" for t in shifts) or "none"


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int:
    """First index where two token lists differ (a length difference counts); -1 if equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return -1 if len(a) == len(b) else min(len(a), len(b))


def _shifts(adapter: ModelAdapter, delta: torch.Tensor, top: int, largest: bool) -> list[TokenShift]:
    """The ``top`` tokens whose probability rose (``largest``) or fell the most; only tokens
    that moved by more than MIN_SHIFT, so an unchanged distribution lists none."""
    vals, ids = delta.topk(min(top, delta.numel()), largest=largest)
    moved = vals > MIN_SHIFT if largest else vals < -MIN_SHIFT
    vals, ids = vals[moved], ids[moved]
    texts = adapter.decode(ids.tolist())
    return [TokenShift(int(i), t, float(v)) for i, t, v in zip(ids.tolist(), texts, vals.tolist(), strict=True)]


def compare_generation(ctx: Any, adapter: ModelAdapter, prompt: str, interventions: Sequence[Intervention],
                       max_new_tokens: int = 20, seed: int = 0, sample: bool = False,
                       temperature: float = 1.0, top: int = 10) -> GenerationComparison:
    """Generate from ``prompt`` without and with ``interventions`` (same seed, so sampled runs
    share their randomness) and compare the texts and the next-token distributions."""
    inputs = prompt_inputs(adapter, prompt)
    ctx.progress(0, 2, "baseline")
    base, base_lp = generate_first(adapter, inputs, max_new_tokens, seed, sample, temperature)
    ctx.check_cancelled()
    ctx.progress(1, 2, "steered")
    with steered(adapter, interventions):
        steer, steer_lp = generate_first(adapter, inputs, max_new_tokens, seed, sample, temperature)
    ctx.progress(2, 2, "done")
    decode = adapter.tokenizer.decode
    return GenerationComparison(base, steer, decode(base), decode(steer), first_divergence(base, steer),
                                *next_token_shift(adapter, steer_lp, base_lp, top))
