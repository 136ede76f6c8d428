"""The one interface every model adapter offers: canonical hook points, batching of
inputs, a forward pass that returns activations as rows, and decoding where there is one."""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.errors import ModelError
from engine.hooks import HookSite, StopForward, check_hooks, recording

_BLOCK_OUTPUT = re.compile(r"blocks\.\d+\.hook_resid_post")


@dataclass
class ModelBatch:
    """Model inputs plus which positions become stored rows.

    ``keep`` (batch, seq) marks token rows to store; None means one row per example."""

    inputs: dict[str, torch.Tensor]
    keep: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> ModelBatch:
        """The batch on ``device``; with ``dtype`` its floating-point inputs (images) are
        cast too, so a reduced-precision model gets inputs of its own precision."""
        def move(v: torch.Tensor) -> torch.Tensor:
            return v.to(device, dtype) if dtype is not None and v.is_floating_point() else v.to(device)
        inputs = {k: move(v) for k, v in self.inputs.items()}
        keep = None if self.keep is None else self.keep.to(device)
        return ModelBatch(inputs, keep, self.meta)


# The precisions a model may run in (``load_model(spec, dtype=...)``, ``--model-dtype``).
MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def next_token_pairs(batch: ModelBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Where position t predicts token t + 1 with both stored rows (special tokens and
    padding excluded): the mask (batch, seq - 1) and the target ids at those places."""
    keep = batch.keep
    pred = keep[:, :-1] & keep[:, 1:]
    return pred, batch.inputs["input_ids"][:, 1:][pred]


def weight_fingerprint(module: nn.Module) -> str:
    """A short hash of a module's weights: names, shapes, dtypes and a strided sample of
    every tensor's values. Cheap for a 100M-parameter model, and it changes with any
    retraining, pruning or quantisation that touches the sampled values."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        flat = t.detach().reshape(-1)
        if flat.numel():
            step = max(1, flat.numel() // 4096)
            h.update(flat[::step].float().cpu().numpy().tobytes())
            h.update(np.float64(flat.float().sum().item()).tobytes())
    return h.hexdigest()[:16]


class ModelAdapter(ABC):
    """A model LatentLab can capture from, steer and compare."""

    model_id: str
    kind: str  # "causal-lm", "encoder", "classifier" or "module"
    module: nn.Module
    tokenizer: Any = None
    pooling: str | None = None  # "mean": one row per example (encoders)
    spec: str | None = None  # the spec load_model resolved (None for adapters built in code)

    # ---------------------------------------------------------------- identity
    def weight_hash(self) -> str:
        if not hasattr(self, "_weight_hash"):
            self._weight_hash = weight_fingerprint(self.module)
        return self._weight_hash

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def to(self, device: torch.device | str) -> ModelAdapter:
        self.module.to(device)
        return self

    @property
    def model_dtype(self) -> str:
        """The precision the model runs in: a key of MODEL_DTYPES (float32 when it has no
        floating-point parameters)."""
        names = {v: k for k, v in MODEL_DTYPES.items()}
        for p in self.module.parameters():
            if p.is_floating_point():
                return names.get(p.dtype, str(p.dtype).removeprefix("torch."))
        return "float32"

    def set_dtype(self, name: str) -> ModelAdapter:
        """Run the model in precision ``name`` (a key of MODEL_DTYPES), cast in place.

        ``weight_hash`` keeps fingerprinting the weights as loaded (it is taken first), so a
        store names the same weights whatever precision ran them. Buffers a module does not
        save (derived constants such as RoPE's ``inv_freq``) stay in float32, as Hugging
        Face's own ``from_pretrained(dtype=...)`` keeps them."""
        if name not in MODEL_DTYPES:
            raise ModelError(f"{self.model_id}: model dtype must be one of {', '.join(MODEL_DTYPES)}, not {name!r}")
        self.weight_hash()
        derived = [(mod, key, buf) for mod in self.module.modules()
                   for key, buf in mod.named_buffers(recurse=False)
                   if key in mod._non_persistent_buffers_set and buf.is_floating_point()]
        self.module.to(MODEL_DTYPES[name])
        for mod, key, buf in derived:
            setattr(mod, key, buf)
        return self

    # ---------------------------------------------------------------- hook points
    @abstractmethod
    def hook_sites(self) -> Mapping[str, HookSite]:
        """Canonical hook-point name -> where it attaches, in forward order."""

    def hook_points(self) -> list[str]:
        return list(self.hook_sites())

    def blocks(self) -> list[nn.Module]:
        """The transformer blocks (the modules whose outputs are ``blocks.N.hook_resid_post``;
        none for models without them): where long forward passes can be interrupted."""
        return [site.module for name, site in self.hook_sites().items()
                if site.where == "output" and _BLOCK_OUTPUT.fullmatch(name)]

    def hook_dims(self, names: Sequence[str]) -> dict[str, int]:
        """Row width of each hook point, found once per adapter (as ``weight_hash``) by a
        one-example forward pass: a capture from a warm model does not pay it again."""
        known = self.__dict__.setdefault("_hook_dims", {})
        missing = [n for n in dict.fromkeys(names) if n not in known]
        if missing:
            rows = self.forward(self.example_batch(), missing)
            known.update({n: int(r.shape[-1]) for n, r in rows.items()})
        return {n: known[n] for n in names}

    # ---------------------------------------------------------------- running
    @abstractmethod
    def make_batch(self, items: Sequence[Any]) -> ModelBatch:
        """Stack a list of inputs (token-id lists, images) into one ModelBatch."""

    @abstractmethod
    def example_batch(self) -> ModelBatch:
        """A tiny valid batch (used to probe shapes)."""

    @abstractmethod
    def run(self, batch: ModelBatch) -> Any:
        """Call the underlying module on the batch's inputs."""

    def to_rows(self, act: torch.Tensor, batch: ModelBatch) -> torch.Tensor:
        """Turn a hook tensor into stored rows (n, d)."""
        if batch.keep is not None and act.ndim >= 3 and act.shape[:2] == batch.keep.shape:
            act = act.reshape(*act.shape[:2], -1)
            if self.pooling == "mean":
                w = batch.keep.to(act.dtype).unsqueeze(-1)
                return (act * w).sum(1) / w.sum(1).clamp_min(1)
            return act[batch.keep]
        return act.reshape(act.shape[0], -1)

    def forward(self, batch: ModelBatch, hooks: Sequence[str], stop_early: bool = True) -> dict[str, torch.Tensor]:
        """Activations at ``hooks`` as rows (n, d); the pass stops after the deepest one."""
        sites = self.hook_sites()
        check_hooks(hooks, list(sites), self.model_id)
        batch = batch.to(self.device, MODEL_DTYPES.get(self.model_dtype))
        with torch.inference_mode(), recording({h: sites[h] for h in hooks}, stop_early) as got:
            try:
                self.run(batch)
            except StopForward:
                pass
        return {h: self.to_rows(got[h], batch) for h in hooks}

    # ---------------------------------------------------------------- text
    def tokenize(self, text: str) -> list[int]:
        raise NotImplementedError(f"{self.model_id} takes no text")

    def decode(self, ids: Sequence[int]) -> list[str]:
        """One string per token id (for showing contexts)."""
        if self.tokenizer is None:
            return [str(i) for i in ids]
        return [self.tokenizer.decode([int(i)]) for i in ids]

    @property
    def n_special(self) -> int:
        """Special tokens (BOS, CLS, SEP) ``make_batch`` adds around each text window."""
        return 0

    @property
    def max_context(self) -> int:
        return 1 << 30
