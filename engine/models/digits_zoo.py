"""The digits model zoo: small MLPs and CNNs trained on the 8x8 digits in seconds on a CPU,
their pruned variants, and the adapter that lets LatentLab capture from any of them.

A model folder holds ``model.safetensors`` (the state dict) and ``latentlab_model.json``
(``{"kind": "digits-zoo", "config": ..., "metrics": ...}``). Hook points are
``blocks.{i}.hook_post`` (after each block's ReLU) and ``logits``."""

from __future__ import annotations

import copy
import itertools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from engine.errors import ModelError
from engine.hooks import HookSite
from engine.jobs import JobContext
from engine.models.base import ModelAdapter, ModelBatch
from engine.sources.digits import digits_arrays

KIND = "digits-zoo"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "latentlab_model.json"
ARCHS = ("mlp", "cnn")
PRUNE_METHODS = ("magnitude", "random", "structured")
SPLIT_SEED = 0  # every zoo model trains and tests on the same split
TEST_FRACTION = 0.25
BATCH_SIZE = 64


@dataclass(frozen=True)
class ZooConfig:
    """How one zoo model was made: architecture, size, seeds and (if pruned) the pruning."""

    arch: str = "mlp"
    width: int = 64
    depth: int = 2  # number of hidden blocks
    seed: int = 0
    epochs: int = 20
    lr: float = 3e-3
    method: str | None = None  # pruning method; None for a dense model
    sparsity: float | None = None
    parent_hash: str | None = None  # weight_hash of the dense model it was pruned from
    prune_seed: int | None = None

    @property
    def name(self) -> str:
        """A folder-friendly name, e.g. ``mlp-w64-d2-s0`` or ``mlp-w64-d2-s0-magnitude50``."""
        base = f"{self.arch}-w{self.width}-d{self.depth}-s{self.seed}"
        if self.method is None:
            return base
        suffix = f"-{self.method}{round(100 * (self.sparsity or 0.0))}"
        if self.prune_seed:
            suffix += f"-p{self.prune_seed}"
        return base + suffix


def _check_config(cfg: ZooConfig) -> None:
    """Raise ModelError for an unknown architecture or a non-positive size."""
    if cfg.arch not in ARCHS:
        raise ModelError(f"digits zoo arch {cfg.arch!r} is not one of {', '.join(ARCHS)}")
    if cfg.width < 1 or cfg.depth < 1:
        raise ModelError(f"digits zoo width and depth must be >= 1 (got {cfg.width}, {cfg.depth})")


# ------------------------------------------------------------------------ network
class DigitsNet(nn.Module):
    """``blocks.{i}`` = Linear or 3x3 Conv2d (padding 1, width channels) + ReLU, then ``head``.

    The MLP flattens the image to 64 pixels first. The CNN keeps the 8x8 grid in every
    block and its head is a Linear over the flattened (width * 64) last block output, so
    each spatial position keeps its own weights (no global pooling)."""

    def __init__(self, arch: str, width: int, depth: int) -> None:
        super().__init__()
        self.arch = arch
        d_in = 1 if arch == "cnn" else 64
        self.blocks = nn.ModuleList(_block(arch, d_in if i == 0 else width, width)
                                    for i in range(depth))
        self.head = nn.Linear(width * 64 if arch == "cnn" else width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (batch, 10) for images (batch, 1, 8, 8)."""
        if self.arch == "mlp":
            x = x.flatten(1)
        for block in self.blocks:
            x = block(x)
        return self.head(x.flatten(1))


def _block(arch: str, d_in: int, width: int) -> nn.Sequential:
    """One hidden block: a Linear or same-size 3x3 convolution followed by a ReLU."""
    layer = nn.Conv2d(d_in, width, 3, padding=1) if arch == "cnn" else nn.Linear(d_in, width)
    return nn.Sequential(layer, nn.ReLU())


def build(cfg: ZooConfig) -> nn.Module:
    """An untrained network for ``cfg`` (weights from torch's current random state)."""
    _check_config(cfg)
    return DigitsNet(cfg.arch, cfg.width, cfg.depth)


# ------------------------------------------------------------------------ training
def _split_tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n, 1, 8, 8) and digits (n,) of the zoo's fixed train or test split."""
    x, y = digits_arrays(split, SPLIT_SEED, TEST_FRACTION)
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)


def _accuracy(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of images whose arg-max logit is their digit."""
    with torch.inference_mode():
        return float((module(x).argmax(1) == y).float().mean())


def _epoch(module: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
           gen: torch.Generator) -> float:
    """One pass of shuffled minibatch Adam steps; returns the last batch's loss."""
    perm = torch.randperm(len(y), generator=gen)
    loss = torch.zeros(())
    for start in range(0, len(y), BATCH_SIZE):
        idx = perm[start:start + BATCH_SIZE]
        loss = nn.functional.cross_entropy(module(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def train(cfg: ZooConfig, ctx: JobContext | None = None) -> tuple[nn.Module, dict[str, float]]:
    """Train ``cfg`` on the train split; the same seed gives the same weights.

    Runs on the CPU (the nets are tiny, and CPU kernels keep runs bit-reproducible); the
    global torch RNG is left as it was."""
    x, y = _split_tensors("train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        module = build(cfg)
        opt = torch.optim.Adam(module.parameters(), lr=cfg.lr)
        gen = torch.Generator().manual_seed(cfg.seed)
        for epoch in range(cfg.epochs):
            if ctx is not None:
                ctx.check_cancelled()
            loss = _epoch(module.train(), opt, x, y, gen)
            if ctx is not None:
                ctx.progress(epoch + 1, cfg.epochs, f"{cfg.name} epoch {epoch + 1} loss {loss:.3f}")
    module.eval()
    return module, _metrics(module)


def _metrics(module: nn.Module) -> dict[str, float]:
    """Train and test accuracy of a network on the zoo's split."""
    return {"train_acc": _accuracy(module, *_split_tensors("train")),
            "test_acc": _accuracy(module, *_split_tensors("test"))}


# ------------------------------------------------------------------------ files
def save(module: nn.Module, cfg: ZooConfig, metrics: Mapping[str, Any], folder: str | Path) -> Path:
    """Write ``model.safetensors`` and ``latentlab_model.json`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    info = {"kind": KIND, "config": asdict(cfg), "metrics": dict(metrics)}
    (folder / CONFIG_FILE).write_text(json.dumps(info, indent=2))
    return folder


def _read_info(folder: Path) -> dict[str, Any]:
    """The parsed ``latentlab_model.json`` of a zoo folder, or ModelError naming the path."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ModelError(f"{folder} is not a digits-zoo model folder (no {CONFIG_FILE})")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(info, dict) or info.get("kind") != KIND:
        raise ModelError(f"{path} does not describe a {KIND} model (kind is not {KIND!r})")
    return info


def _read_config(info: Mapping[str, Any], path: Path) -> ZooConfig:
    """The ZooConfig stored in a model json, or ModelError naming the path."""
    try:
        cfg = ZooConfig(**info["config"])
    except (KeyError, TypeError) as exc:
        raise ModelError(f"{path}: invalid digits-zoo config ({exc})") from None
    _check_config(cfg)
    return cfg


def _read_weights(folder: Path, cfg: ZooConfig) -> nn.Module:
    """The network of ``cfg`` with the weights in ``folder``, or ModelError naming the file."""
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise ModelError(f"{folder} has no {WEIGHTS_FILE}")
    module = build(cfg)
    try:
        module.load_state_dict(load_file(str(path)))
    except Exception as exc:
        raise ModelError(f"{path} does not fit {cfg.name} ({exc})") from None
    return module


# ------------------------------------------------------------------------ adapter
class DigitsZooModel(ModelAdapter):
    """A zoo network as a LatentLab classifier: images (8, 8) in, 10 digit logits out."""

    kind = "classifier"

    def __init__(self, module: nn.Module, cfg: ZooConfig,
                 metrics: Mapping[str, float] | None = None) -> None:
        self.module = module.eval()
        self.cfg = cfg
        self.metrics = dict(metrics or {})
        self.model_id = f"{KIND}:{cfg.name}"

    @classmethod
    def load(cls, folder: str | Path) -> DigitsZooModel:
        """Open a folder written by ``save``; ModelError naming the path when it cannot."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelError(f"digits-zoo model folder {folder} does not exist")
        info = _read_info(folder)
        cfg = _read_config(info, folder / CONFIG_FILE)
        return cls(_read_weights(folder, cfg), cfg, info.get("metrics"))

    def save(self, folder: str | Path) -> Path:
        """Write this model (weights, config and metrics) into ``folder``."""
        return save(self.module, self.cfg, self.metrics, folder)

    def hook_sites(self) -> dict[str, HookSite]:
        """``blocks.{i}.hook_post`` after each block's ReLU, then ``logits``."""
        sites = {f"blocks.{i}.hook_post": HookSite(block, "output")
                 for i, block in enumerate(self.module.blocks)}
        sites["logits"] = HookSite(self.module.head, "output")
        return sites

    def make_batch(self, items: Sequence[np.ndarray]) -> ModelBatch:
        """Stack (8, 8) images into one input tensor (batch, 1, 8, 8)."""
        x = np.stack([np.asarray(item, dtype=np.float32) for item in items])
        return ModelBatch({"x": torch.from_numpy(x).reshape(len(items), 1, 8, 8)}, keep=None)

    def example_batch(self) -> ModelBatch:
        return self.make_batch([np.zeros((8, 8), np.float32)])

    def run(self, batch: ModelBatch) -> torch.Tensor:
        return self.module(batch.inputs["x"])

    def predict(self, images: Sequence[np.ndarray] | np.ndarray, batch_size: int = 512) -> np.ndarray:
        """The predicted digit (n,) int64 of each (8, 8) image."""
        out = []
        for start in range(0, len(images), batch_size):
            batch = self.make_batch(list(images[start:start + batch_size])).to(self.device)
            with torch.inference_mode():
                out.append(self.run(batch).argmax(1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def accuracy(self, split: str = "test") -> float:
        """Accuracy on the zoo's fixed ``train``/``test`` split (or ``all`` images)."""
        x, y = digits_arrays(split, SPLIT_SEED, TEST_FRACTION)
        return float((self.predict(x) == y).mean())


# ------------------------------------------------------------------------ pruning
def _weights(module: nn.Module) -> list[torch.Tensor]:
    """The prunable weight tensors: every block's layer weight and the head weight."""
    return [block[0].weight for block in module.blocks] + [module.head.weight]


def _prune_magnitude(module: nn.Module, sparsity: float, gen: torch.Generator) -> None:
    """Zero exactly round(sparsity * n) weights with the smallest |w| across all tensors."""
    weights = _weights(module)
    flat = torch.cat([w.detach().abs().reshape(-1) for w in weights])
    n_zero = round(sparsity * flat.numel())
    mask = torch.ones_like(flat)
    mask[torch.argsort(flat, stable=True)[:n_zero]] = 0
    for w, m in zip(weights, mask.split([w.numel() for w in weights]), strict=True):
        w.mul_(m.reshape(w.shape))


def _prune_random(module: nn.Module, sparsity: float, gen: torch.Generator) -> None:
    """Zero exactly round(sparsity * n) randomly chosen weights in each tensor."""
    for w in _weights(module):
        n_zero = round(sparsity * w.numel())
        idx = torch.randperm(w.numel(), generator=gen)[:n_zero]
        w.view(-1)[idx] = 0


def _prune_structured(module: nn.Module, sparsity: float, gen: torch.Generator) -> None:
    """In each hidden block zero the round(sparsity * width) output units (rows or
    channels: weight and bias) of smallest L2 norm."""
    for block in module.blocks:
        layer = block[0]
        norms = layer.weight.detach().reshape(layer.weight.shape[0], -1).norm(dim=1)
        units = torch.argsort(norms, stable=True)[:round(sparsity * len(norms))]
        layer.weight[units] = 0
        layer.bias[units] = 0


_PRUNERS: dict[str, Callable[[nn.Module, float, torch.Generator], None]] = {
    "magnitude": _prune_magnitude, "random": _prune_random, "structured": _prune_structured}


def _check_prune(method: str, sparsity: float) -> None:
    """Raise ModelError for an unknown method or a sparsity outside [0, 1)."""
    if method not in _PRUNERS:
        raise ModelError(f"pruning method {method!r} is not one of {', '.join(PRUNE_METHODS)}")
    if not 0.0 <= sparsity < 1.0:
        raise ModelError(f"pruning sparsity {sparsity} must satisfy 0 <= sparsity < 1")


def prune(model: DigitsZooModel, method: str, sparsity: float, seed: int = 0) -> DigitsZooModel:
    """A pruned copy of ``model`` (no fine-tuning); ``model`` itself is left unchanged.

    ``seed`` only matters for ``random`` (and is then recorded in the config and name)."""
    _check_prune(method, sparsity)
    module = copy.deepcopy(model.module).cpu()
    with torch.no_grad():
        _PRUNERS[method](module, sparsity, torch.Generator().manual_seed(seed))
    cfg = replace(model.cfg, method=method, sparsity=float(sparsity),
                  parent_hash=model.weight_hash(),
                  prune_seed=seed if method == "random" else None)
    return DigitsZooModel(module, cfg)


# ------------------------------------------------------------------------ jobs
def _sub_context(ctx: JobContext, index: int, count: int) -> JobContext:
    """A context for the ``index``-th of ``count`` steps: shares cancellation, and maps the
    step's own progress onto the whole job's."""
    def on_progress(done: int, total: int, message: str) -> None:
        ctx.progress(index * total + done, count * total, f"[{index + 1}/{count}] {message}")
    return JobContext(device=ctx.device, on_progress=on_progress, cancel_event=ctx.cancel_event)


def train_zoo(ctx: JobContext, out: str, arch: str = "mlp", widths: Sequence[int] = (64,),
              depths: Sequence[int] = (2,), seeds: Sequence[int] = (0,),
              epochs: int | None = None) -> list[str]:
    """Job: train every width x depth x seed combination and save each to ``out/<name>/``."""
    extra = {} if epochs is None else {"epochs": int(epochs)}
    cfgs = [ZooConfig(arch=arch, width=int(w), depth=int(d), seed=int(s), **extra)
            for w, d, s in itertools.product(widths, depths, seeds)]
    for cfg in cfgs:
        _check_config(cfg)
    folders = []
    for i, cfg in enumerate(cfgs):
        start = time.perf_counter()
        module, metrics = train(cfg, _sub_context(ctx, i, len(cfgs)))
        metrics["train_seconds"] = round(time.perf_counter() - start, 3)
        folders.append(str(save(module, cfg, metrics, Path(out) / cfg.name)))
    return folders


def prune_zoo(ctx: JobContext, model: str, out: str,
              methods: Sequence[str] = PRUNE_METHODS,
              sparsities: Sequence[float] = (0.5, 0.8, 0.9), seed: int = 0) -> list[str]:
    """Job: save every method x sparsity pruned variant of the model folder ``model`` into
    ``out/<name>/``, with its train and test accuracy as metrics."""
    variants = list(itertools.product(methods, sparsities))
    for method, sparsity in variants:
        _check_prune(method, sparsity)
    dense = DigitsZooModel.load(model)
    folders = []
    for i, (method, sparsity) in enumerate(variants):
        ctx.check_cancelled()
        pruned = prune(dense, method, float(sparsity), seed)
        pruned.metrics = _metrics(pruned.module)
        folders.append(str(pruned.save(Path(out) / pruned.cfg.name)))
        ctx.progress(i + 1, len(variants), pruned.cfg.name)
    return folders
