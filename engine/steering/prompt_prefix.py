"""Reuse of a prompt's leading transformer blocks across generations.

Steering a model at block k changes nothing that blocks 0..k compute over the prompt: their
outputs and their KV-cache entries are those of any earlier run of the same prompt. A slider
move regenerates the same prompt with a new strength, so its prefill replays those blocks
from the previous run (outputs and KV entries recorded once) and computes only the blocks
after the first steered site. The replayed values are the very tensors the model computed,
so the generation is the same, bit for bit, as without reuse."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import _global_forward_hooks, _global_forward_pre_hooks

from engine.hooks import is_read_only, reads_only
from engine.lru import LockedLRU
from engine.models.base import ModelAdapter

PREFIX_ENTRIES = 4  # prompts kept (a slider session moves over one prompt)
PREFIX_BYTES = 128 * 2**20  # a prompt whose recorded blocks would take more is neither recorded nor kept


@dataclass
class _Block:
    """What one block did over the prompt: its output and its KV-cache updates in order."""

    output: Any
    updates: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)


@dataclass
class _Prefix:
    module: weakref.ref
    blocks: list[_Block]


_prefixes = LockedLRU(PREFIX_ENTRIES)  # _key(adapter, prompt ids) -> _Prefix


def _changes_values(module: nn.Module) -> bool:
    return any(not is_read_only(fn) for fn in (*module._forward_pre_hooks.values(), *module._forward_hooks.values()))


@dataclass(frozen=True)
class _Layout:
    """A model's blocks, each block's inner modules, the modules outside every block, and
    its weights: walked once per adapter, as checking them at every generation needs."""

    blocks: list[nn.Module]
    inner: list[list[nn.Module]]
    outside: list[nn.Module]
    params: list[torch.Tensor]


def _layout(adapter: ModelAdapter) -> _Layout:
    found = adapter.__dict__.get("_prefix_layout")
    if found is None:
        blocks = adapter.blocks()
        inner = [[m for m in block.modules() if m is not block] for block in blocks]
        inside = {id(m) for block, mods in zip(blocks, inner, strict=True) for m in (block, *mods)}
        found = _Layout(blocks, inner, [m for m in adapter.module.modules() if id(m) not in inside],
                        list(adapter.module.parameters()))
        adapter.__dict__["_prefix_layout"] = found
    return found


def untouched_blocks(adapter: ModelAdapter) -> int:
    """How many leading blocks compute over a prompt exactly what the bare model computes,
    given the hooks attached now: those before the first block where a hook that may change
    values sits (on the block's input, or on a module inside it), and that block too when
    the hook is on its own output. A value-changing hook outside the blocks, or a global
    one, leaves none (hooks that declare ``reads_only`` do not count)."""
    layout = _layout(adapter)
    if any(not is_read_only(fn) for fn in (*_global_forward_hooks.values(), *_global_forward_pre_hooks.values())):
        return 0
    if any(_changes_values(m) for m in layout.outside):
        return 0
    for b, (block, inner) in enumerate(zip(layout.blocks, layout.inner, strict=True)):
        if any(not is_read_only(fn) for fn in block._forward_pre_hooks.values()) \
                or any(_changes_values(m) for m in inner):
            return b
        if _changes_values(block):
            return b + 1
    return len(layout.blocks)


def _key(adapter: ModelAdapter, ids: torch.Tensor) -> tuple:
    """The prompt and the model as it is now: its device, dtype and the version counters of
    its weights (an in-place edit of any weight makes an earlier record stale)."""
    params = _layout(adapter).params
    return (id(adapter.module), str(params[0].device), params[0].dtype, sum(p._version for p in params),
            tuple(ids[0].tolist()))


def _cache_of(args: tuple, kwargs: dict) -> Any:
    """The KV cache a module was handed, under whatever name (``past_key_values``, ``cache``,
    ``layer_past``) or position, when it is a plain DynamicCache, whose ``update`` per layer
    is all a block does to it; None otherwise."""
    try:
        from transformers.cache_utils import Cache, DynamicCache
    except ImportError:  # pragma: no cover - HF models only generate with transformers
        return None
    found = next((v for v in (*kwargs.values(), *args) if isinstance(v, Cache)), None)
    return found if type(found) is DynamicCache else None


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_clone(v) for v in value)
    return value


class _Prefill:
    """Hooks for one generation: at its prefill forward (the whole prompt, nothing cached
    yet) the first ``len(replay)`` blocks return recorded values, and the blocks after them
    up to ``upto`` are recorded."""

    def __init__(self, blocks: list[nn.Module], replay: list[_Block], upto: int, n_prompt: int) -> None:
        self.blocks, self.replay, self.upto, self.n_prompt = blocks, replay, upto, n_prompt
        self.recorded: dict[int, _Block] = {}
        self.complete = False
        self._stack: ExitStack | None = ExitStack()
        self._current: int | None = None
        self._wrapped: Any = None

    @reads_only
    def pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Model pre-hook: at the prefill, put the replaying and recording hooks in place
        (only the first forward pass can be it: the model hook closes the stack after it)."""
        if self._stack is None:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        past = _cache_of(args, kwargs)
        if ids is None or ids.shape[-1] != self.n_prompt or (past is not None and past.get_seq_length() != 0):
            return
        for block, done in zip(self.blocks, self.replay, strict=False):
            self._replace_forward(block, done)
        for b in range(len(self.replay), self.upto):
            self._record(b, self.blocks[b])

    @reads_only
    def post_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        """Model hook: the prefill is over; take the hooks away, keep what was recorded."""
        if self._stack is None:
            return
        self.complete = all(b in self.recorded and self.recorded[b].output is not None
                            for b in range(len(self.replay), self.upto))
        self.close()

    def _replace_forward(self, block: nn.Module, done: _Block) -> None:
        own = block.forward

        def replayed(*args: Any, **kwargs: Any) -> Any:
            cache = _cache_of(args, kwargs)
            if cache is None:  # not a cache this module knows how to fill: run the block
                return own(*args, **kwargs)
            for layer_idx, key, value in done.updates:
                cache.update(key.clone(), value.clone(), layer_idx)
            return _clone(done.output)
        block.forward = replayed
        self._stack.callback(vars(block).pop, "forward", None)

    def _record(self, b: int, block: nn.Module) -> None:
        def before(module: nn.Module, args: tuple, kwargs: dict) -> None:
            cache = _cache_of(args, kwargs)
            if cache is None:
                return
            if self._wrapped is not cache:
                self._wrap_update(cache)
            self._current = b
            self.recorded[b] = _Block(None)

        def after(module: nn.Module, args: tuple, output: Any) -> None:
            if self._current == b:
                self.recorded[b].output = _clone(output)
            self._current = None
        # first among the block's hooks, so a steering hook on its output is not recorded
        for handle in (block.register_forward_pre_hook(before, prepend=True, with_kwargs=True),
                       block.register_forward_hook(after, prepend=True)):
            self._stack.callback(handle.remove)

    def _wrap_update(self, cache: Any) -> None:
        """Record the cache's updates made while a recorded block runs."""
        update = cache.update

        def recording_update(key: torch.Tensor, value: torch.Tensor, layer_idx: int, *rest: Any, **kw: Any) -> Any:
            if self._current is not None:
                self.recorded[self._current].updates.append((layer_idx, key.clone(), value.clone()))
            return update(key, value, layer_idx, *rest, **kw)
        cache.update = recording_update
        self._wrapped = cache
        self._stack.callback(vars(cache).pop, "update", None)

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None


@contextmanager
def reusing_prompt(adapter: ModelAdapter, input_ids: torch.Tensor) -> Iterator[None]:
    """Around one ``generate`` of the prompt ``input_ids`` (batch 1) with whatever hooks
    (steering) are attached: its prefill replays the blocks those hooks leave untouched from
    an earlier run of the prompt, and records the ones not seen yet for the next run."""
    layout = _layout(adapter)
    upto = untouched_blocks(adapter) if layout.blocks and input_ids.shape[0] == 1 else 0
    width = getattr(getattr(adapter.module, "config", None), "hidden_size", None)
    if width:  # an output and at most as wide a key and value, per token and block
        upto = min(upto, PREFIX_BYTES // (3 * width * layout.params[0].element_size() * input_ids.shape[-1]))
    if upto == 0:
        yield
        return
    key = _key(adapter, input_ids)
    found = _prefixes.get(key)
    have = found.blocks if found is not None and found.module() is adapter.module else []
    prefill = _Prefill(layout.blocks, have[:upto], upto, input_ids.shape[-1])
    handles = [adapter.module.register_forward_pre_hook(prefill.pre_forward, with_kwargs=True),
               adapter.module.register_forward_hook(prefill.post_forward)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        prefill.close()
    if prefill.complete and len(have) < upto:
        kept = have[:upto] + [prefill.recorded[b] for b in range(len(have[:upto]), upto)]
        if sum(_nbytes(b.output) + sum(_nbytes(k) + _nbytes(v) for _, k, v in b.updates) for b in kept) \
                <= PREFIX_BYTES:
            _prefixes.put(key, _Prefix(weakref.ref(adapter.module), kept))
