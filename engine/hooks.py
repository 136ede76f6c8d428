"""Named hook points: where a canonical name attaches in a torch module, a context that
records activations there (stopping the forward pass once all are recorded), and one that
replaces them (splicing in an SAE reconstruction, ablating)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch
from torch import nn

from engine.errors import HookError


@dataclass(frozen=True)
class HookSite:
    """A module and whether the hook point is its input (first argument) or its output."""

    module: nn.Module
    where: Literal["input", "output"] = "output"


Hook = TypeVar("Hook", bound=Callable)


def reads_only(fn: Hook) -> Hook:
    """Mark a hook as one that never changes the values it sees (recording, cancellation
    checks), so the blocks it is attached to still compute what the bare model does
    (engine.steering.prompt_prefix replays such blocks)."""
    fn.reads_only = True
    return fn


def is_read_only(fn: Callable) -> bool:
    """Whether ``fn`` was marked with ``reads_only``."""
    return bool(getattr(fn, "reads_only", False))


class StopForward(Exception):
    """Raised inside a hook to end a forward pass early, once every wanted hook has fired."""


def _first_tensor(value: object) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    if hasattr(value, "last_hidden_state"):
        return value.last_hidden_state
    raise TypeError(f"hook saw a {type(value).__name__}, not a tensor")


def check_hooks(names: Sequence[str], available: Sequence[str], model_id: str) -> None:
    """Raise HookError naming the first unknown hook point and listing the valid ones."""
    known = set(available)
    for name in names:
        if name not in known:
            shown = ", ".join(available[:12]) + (f", ... ({len(available)} in all)" if len(available) > 12 else "")
            raise HookError(f"unknown hook point {name!r} for model {model_id}; valid: {shown}")


@contextmanager
def recording(sites: Mapping[str, HookSite], stop_early: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Record the tensors at ``sites`` into the yielded dict during a forward pass.

    With ``stop_early`` the pass is ended (StopForward) as soon as all sites have fired, so
    nothing after the deepest hook point runs; the caller catches StopForward."""
    out: dict[str, torch.Tensor] = {}
    handles = []
    wanted = set(sites)

    def make(name: str, where: str):
        def save(value: object) -> None:
            out[name] = _first_tensor(value).detach()
            if stop_early and wanted.issubset(out):
                raise StopForward()

        if where == "input":
            @reads_only
            def pre_hook(module, args, kwargs):
                save(args[0] if args else next(iter(kwargs.values())))
            return pre_hook

        @reads_only
        def hook(module, args, output):
            save(output)
        return hook

    try:
        for name, site in sites.items():
            fn = make(name, site.where)
            if site.where == "input":
                handles.append(site.module.register_forward_pre_hook(fn, with_kwargs=True))
            else:
                handles.append(site.module.register_forward_hook(fn))
        yield out
    finally:
        for h in handles:
            h.remove()


def _replace_first(value: object, fn: Callable[[torch.Tensor], torch.Tensor]) -> object:
    """``value`` with its tensor (or first tuple/list element) replaced by ``fn`` of it."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return type(value)([fn(value[0]), *value[1:]])
    raise TypeError(f"hook saw a {type(value).__name__}, not a tensor")


@contextmanager
def replacing(site: HookSite, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """During forward passes inside the block, the tensor at ``site`` (the module's output,
    or its first input for ``where="input"``) becomes ``fn(tensor)``; a tuple output has
    its first element replaced. ``fn`` must return a tensor of the same shape."""
    if site.where == "input":
        def pre_hook(module, args, kwargs):
            if args:
                return (_replace_first(args[0], fn), *args[1:]), kwargs
            key = next(iter(kwargs))
            return args, {**kwargs, key: _replace_first(kwargs[key], fn)}
        handle = site.module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:
        def hook(module, args, output):
            return _replace_first(output, fn)
        handle = site.module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def checking(modules: Sequence[nn.Module], check: Callable[[], None]) -> Iterator[None]:
    """During forward passes inside the block, ``check()`` runs after each of ``modules``
    (a job's ``check_cancelled``): a cancellation point at every transformer block, so a
    stale generation stops within a block rather than at the end of its next token."""
    @reads_only
    def after(module: nn.Module, args: tuple, output: object) -> None:
        check()
    handles = [m.register_forward_hook(after) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
