"""Any torch.nn.Module as a LatentLab model: a user factory (``file.py:make`` or
``package.module:make``) returns the module, and every named submodule is a hook point."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.errors import HookError, ModelError
from engine.hooks import HookSite
from engine.models.base import ModelAdapter, ModelBatch

# Containers that are never called themselves, so a hook on them would never fire.
_NOT_CALLED = (nn.ModuleList, nn.ModuleDict)


def _split_spec(spec: str) -> tuple[str, str]:
    """``where:factory`` -> (where, factory); the last colon splits (Windows drive letters)."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise ModelError(f"model spec {spec!r} must be 'path/to/file.py:factory' "
                         "or 'package.module:factory'")
    return where, name


def _is_file_spec(where: str) -> bool:
    """True when ``where`` names a Python file rather than a dotted module path."""
    return where.endswith(".py") or "/" in where or "\\" in where


def _import_file(path: str) -> ModuleType:
    """Execute a .py file as a fresh module; ModelError naming the file when that fails."""
    file = Path(path)
    if not file.is_file():
        raise ModelError(f"model file {path} does not exist")
    digest = hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:8]
    name = f"latentlab_user_{file.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ModelError(f"model file {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ModelError(f"model file {path} failed to import ({type(exc).__name__}: {exc})") from None
    return module


def _import_module(dotted: str) -> ModuleType:
    """Import a dotted module path; ModelError naming the module when that fails."""
    try:
        return importlib.import_module(dotted)
    except ImportError as exc:
        raise ModelError(f"model module {dotted!r} is not importable ({exc})") from None
    except Exception as exc:
        raise ModelError(f"model module {dotted!r} failed to import ({type(exc).__name__}: {exc})") from None


def _get_factory(module: ModuleType, name: str, where: str) -> Callable[[], Any]:
    """The callable ``name`` in ``module``; ModelError naming it and ``where`` otherwise."""
    factory = getattr(module, name, None)
    if factory is None:
        raise ModelError(f"{where} has no attribute {name!r} (the model factory)")
    if not callable(factory):
        raise ModelError(f"{where}:{name} is not callable (expected a factory function)")
    return factory


def load_factory(spec: str) -> ModelAdapter:
    """Call the factory named by ``spec`` with no arguments; a ModelAdapter it returns is
    used as is, an nn.Module is wrapped in a TorchModuleAdapter with ``model_id=spec``."""
    where, name = _split_spec(spec)
    module = _import_file(where) if _is_file_spec(where) else _import_module(where)
    factory = _get_factory(module, name, where)
    try:
        made = factory()
    except Exception as exc:
        raise ModelError(f"{where}:{name}() raised {type(exc).__name__}: {exc}") from None
    if isinstance(made, ModelAdapter):
        return made
    if isinstance(made, nn.Module):
        return TorchModuleAdapter(made, model_id=spec)
    raise ModelError(f"{where}:{name}() returned a {type(made).__name__}, "
                     "not a torch.nn.Module or ModelAdapter")


class TorchModuleAdapter(ModelAdapter):
    """A plain nn.Module: inputs are float32 arrays stacked into ``x``, one row per
    example, and each named submodule's output is a hook point (named by its path)."""

    kind = "module"

    def __init__(self, module: nn.Module, model_id: str | None = None,
                 input_shape: tuple[int, ...] | None = None) -> None:
        self.module = module.eval()
        self.model_id = model_id or type(module).__name__
        self.input_shape = input_shape  # one example's shape, without the batch axis

    def hook_sites(self) -> dict[str, HookSite]:
        """Every named submodule (ModuleList/ModuleDict containers excepted, as they are
        never called) by its ``named_modules`` path, in registration order."""
        return {name: HookSite(sub, "output") for name, sub in self.module.named_modules()
                if name and not isinstance(sub, _NOT_CALLED)}

    def make_batch(self, items: Sequence[np.ndarray]) -> ModelBatch:
        """Stack same-shaped arrays into one float32 input (batch, *shape)."""
        x = np.stack([np.asarray(item, dtype=np.float32) for item in items])
        return ModelBatch({"x": torch.from_numpy(x)}, keep=None)

    def example_batch(self) -> ModelBatch:
        """One all-zero input of ``input_shape`` (the constructor's, else the module's)."""
        shape = self.input_shape or getattr(self.module, "input_shape", None)
        if shape is None:
            raise ModelError(f"{self.model_id}: the input shape is unknown; set an attribute "
                             "`input_shape` (one example's shape, without the batch axis) "
                             "on the module, e.g. self.input_shape = (1, 28, 28)")
        return self.make_batch([np.zeros(tuple(shape), np.float32)])

    def run(self, batch: ModelBatch) -> Any:
        return self.module(batch.inputs["x"])

    def forward(self, batch: ModelBatch, hooks: Sequence[str],
                stop_early: bool = True) -> dict[str, torch.Tensor]:
        """As ModelAdapter.forward, with a HookError when a hooked submodule never ran."""
        try:
            return super().forward(batch, hooks, stop_early)
        except KeyError as exc:
            raise HookError(f"{self.model_id}: hook point {exc.args[0]!r} never fired "
                            "(its module is not called by forward())") from None
