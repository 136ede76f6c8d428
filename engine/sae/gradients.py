"""Gradients for gradient-aware SAEs (g-SAE): the model adapter reruns the store's token
windows and returns each stored row's activation with dLoss/dx, the gradient of the
model's next-token loss with respect to that activation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import LatentLabError
from engine.hooks import replacing
from engine.models.base import ModelAdapter, next_token_pairs
from engine.store.activations import ActivationStore

WINDOWS_PER_PASS = 8


def activations_and_grads(adapter: ModelAdapter, windows: Sequence[Sequence[int]],
                          hook: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (n, d) at ``hook`` and dLoss/dx (n, d) for token windows of a causal LM, where
    Loss is the summed next-token cross-entropy over the windows' document tokens."""
    if adapter.kind != "causal-lm":
        raise LatentLabError(f"g-SAE needs a causal language model's loss; {adapter.model_id} is a {adapter.kind}")
    batch = adapter.make_batch(windows).to(adapter.device)
    leaf: dict[str, torch.Tensor] = {}

    def detach_leaf(t: torch.Tensor) -> torch.Tensor:
        leaf["x"] = t.detach().requires_grad_(True)
        return leaf["x"]

    params = [p for p in adapter.module.parameters() if p.requires_grad]
    for p in params:  # only dLoss/dx is wanted: no weight gradients
        p.requires_grad_(False)
    try:
        with torch.enable_grad(), replacing(adapter.hook_sites()[hook], detach_leaf):
            logits = adapter.run(batch).logits
            pairs, targets = next_token_pairs(batch)
            loss = F.cross_entropy(logits[:, :-1][pairs].float(), targets, reduction="sum")
            loss.backward()
    finally:
        for p in params:
            p.requires_grad_(True)
    x = leaf["x"]
    return x.detach()[batch.keep].float(), x.grad[batch.keep].float()


def gradient_batches(store: ActivationStore, hook: str, batch_size: int, stop: int, seed: int,
                     model: str | ModelAdapter, device: torch.device, skip: int = 0) -> Iterator[tuple]:
    """(x, grad) batches of exactly ``batch_size`` rows from the store's windows in rows
    [0, stop), windows shuffled per epoch; the first ``skip`` batches are skipped by
    counting rows, without running the model."""
    from engine.models.registry import cached_model
    from engine.sae.metrics import store_windows
    adapter = cached_model(model) if isinstance(model, str) else model
    adapter.to(device)
    windows = store_windows(store, 0, stop, n_special=adapter.n_special)
    if sum(hi - lo for lo, hi, _ in windows) < batch_size:
        raise LatentLabError(f"{store.path}: fewer than {batch_size} token rows to compute gradients on")
    to_skip = skip * batch_size
    xs: list[torch.Tensor] = []
    gs: list[torch.Tensor] = []
    held = 0
    for epoch in range(1 << 30):
        order = np.random.default_rng(seed + epoch).permutation(len(windows))
        for i in range(0, len(order), WINDOWS_PER_PASS):
            group = [windows[j] for j in order[i:i + WINDOWS_PER_PASS]]
            rows = sum(hi - lo for lo, hi, _ in group)
            if to_skip >= rows:
                to_skip -= rows
                continue
            x, g = activations_and_grads(adapter, [w[2].tolist() for w in group], hook)
            x, g, to_skip = x[to_skip:], g[to_skip:], 0
            xs.append(x)
            gs.append(g)
            held += len(x)
            while held >= batch_size:
                x_all, g_all = torch.cat(xs), torch.cat(gs)
                yield x_all[:batch_size], g_all[:batch_size]
                xs, gs, held = [x_all[batch_size:]], [g_all[batch_size:]], held - batch_size
