"""Robustness of pruned digits-zoo models, read through geometry: corrupt the digits, split
each sample's loss into the penultimate feature norm, its angle to the true class weight and
to the class centroid, and the logit margin, then compare each pruned model's distributions
with the dense model's (after Li et al., "Understanding Robustness Lottery", 2022).

For a head ``logits = W h + b`` the decomposition is exact:
``logit_y = ||w_y|| ||h|| cos(angle_weight) + b_y``. Angles are radians; where ``h`` or
the reference vector is zero the angle is taken as pi/2 (cos 0), which keeps the identity.
Pruned variants come from ``engine.models.digits_zoo.prune_zoo``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy import ndimage, stats
from torch import nn

from engine.errors import LatentLabError, ModelError, SourceError
from engine.hooks import HookSite, StopForward, recording
from engine.jobs import JobContext
from engine.models.digits_zoo import SPLIT_SEED, TEST_FRACTION, DigitsZooModel
from engine.sources import load_source
from engine.sources.digits import digits_arrays

CORRUPTIONS = ("none", "noise", "blur", "dropout")
PIXEL_RANGE = 1.0  # the digits source scales pixels to [0, 1]
QUANTITIES = ("norm", "angle_weight", "angle_centroid", "margin", "loss")
CENTROID_MODES = ("own", "dense")
DEFAULT_CORRUPTIONS = (("none", 0.0), ("noise", 0.3), ("blur", 1.0), ("dropout", 0.3))
FORMAT_VERSION = 1
BATCH_SIZE = 1024


# ------------------------------------------------------------------------ corruptions
def _check_severity(kind: str, severity: float) -> float:
    """The severity as a float, or LatentLabError naming the kind and the allowed range."""
    if kind not in CORRUPTIONS:
        raise LatentLabError(f"corruption {kind!r} is not one of {', '.join(CORRUPTIONS)}")
    s = float(severity)
    if kind == "none" and s != 0.0:
        raise LatentLabError(f"corruption 'none' takes severity 0 (got {severity})")
    if not np.isfinite(s) or s < 0 or (kind == "dropout" and s > 1):
        allowed = "0 <= severity <= 1" if kind == "dropout" else "a finite severity >= 0"
        raise LatentLabError(f"corruption {kind!r} needs {allowed} (got {severity})")
    return s


def corrupt(images: np.ndarray, kind: str, severity: float, seed: int) -> np.ndarray:
    """Corrupted copies of images (..., 8, 8): ``noise`` adds N(0, (severity * pixel
    range)^2) per pixel (no clipping), ``blur`` is a Gaussian of sigma ``severity`` pixels
    (reflecting edges), ``dropout`` zeroes each pixel with probability ``severity``.
    The same seed gives the same result."""
    s = _check_severity(kind, severity)
    x = np.asarray(images, dtype=np.float32)
    if x.ndim < 2:
        raise LatentLabError(f"corrupt needs images (..., height, width), got shape {x.shape}")
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return (x + rng.normal(0.0, s * PIXEL_RANGE, x.shape)).astype(np.float32)
    if kind == "blur":
        sigma = (0.0,) * (x.ndim - 2) + (s, s)
        return ndimage.gaussian_filter(x, sigma=sigma, mode="reflect").astype(np.float32)
    if kind == "dropout":
        return np.where(rng.random(x.shape) < s, np.float32(0), x).astype(np.float32)
    return x.copy()


def corruption_name(kind: str, severity: float) -> str:
    """``none``, or ``kind:severity`` such as ``noise:0.3``."""
    return "none" if kind == "none" else f"{kind}:{float(severity):g}"


# ------------------------------------------------------------------------ geometry
class SampleGeometry(NamedTuple):
    """Per-sample geometry of one model on one set of images; every field is (n,)."""

    norm: np.ndarray  # ||h||, float64
    angle_weight: np.ndarray  # angle(h, w_y), radians
    angle_centroid: np.ndarray  # angle(h, centroid_y), radians
    margin: np.ndarray  # logit_y - max other logit
    loss: np.ndarray  # cross-entropy
    correct: np.ndarray  # bool
    logit_true: np.ndarray  # logit_y = ||w_y|| ||h|| cos(angle_weight) + b_y
    predicted: np.ndarray  # int64 arg-max class


def final_linear(model: DigitsZooModel) -> nn.Linear:
    """The layer that makes the logits: the zoo's ``head`` (else the last nn.Linear)."""
    head = getattr(model.module, "head", None)
    if not isinstance(head, nn.Linear):
        linears = [m for m in model.module.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ModelError(f"{model.model_id} has no final linear layer to decompose")
        head = linears[-1]
    return head


def penultimate(model: DigitsZooModel, images: np.ndarray) -> np.ndarray:
    """The input h (n, d) float32 of the final linear layer for images (n, 8, 8)."""
    site = {"h": HookSite(final_linear(model), "input")}
    out = []
    for start in range(0, len(images), BATCH_SIZE):
        batch = model.make_batch(list(images[start:start + BATCH_SIZE])).to(model.device)
        with torch.inference_mode(), recording(site) as got:
            try:
                model.run(batch)
            except StopForward:
                pass
        out.append(got["h"].reshape(len(batch.inputs["x"]), -1).float().cpu().numpy())
    d = final_linear(model).in_features
    return np.concatenate(out) if out else np.zeros((0, d), np.float32)


def class_centroids(model: DigitsZooModel, split: str = "train") -> np.ndarray:
    """Mean penultimate feature (10, d) float64 of each digit over the zoo's clean split."""
    x, y = digits_arrays(split, SPLIT_SEED, TEST_FRACTION)
    h = penultimate(model, x).astype(np.float64)  # (n, d)
    n_classes = final_linear(model).out_features
    sums = np.zeros((n_classes, h.shape[1]))
    np.add.at(sums, y, h)
    counts = np.bincount(y, minlength=n_classes)[:, None]
    return sums / np.maximum(counts, 1)


def _angle(h: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Row-wise angle (n,) in radians between h (n, d) and ref (n, d); pi/2 where either
    is zero."""
    nh, nr = np.linalg.norm(h, axis=1), np.linalg.norm(ref, axis=1)
    denom = nh * nr
    cos = np.divide(np.einsum("nd,nd->n", h, ref), denom, out=np.zeros_like(nh), where=denom > 0)
    return np.arccos(np.clip(cos, -1.0, 1.0))


def _check_labels(labels: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    """Labels as int64 (n,), or LatentLabError for a wrong length or an unknown class."""
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if len(y) != n:
        raise LatentLabError(f"geometry_of got {n} images but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise LatentLabError(f"labels must lie in 0..{n_classes - 1} (got {y.min()}..{y.max()})")
    return y


def geometry_of(model: DigitsZooModel, images: np.ndarray, labels: np.ndarray,
                centroids: np.ndarray | None = None) -> SampleGeometry:
    """Per-sample loss geometry of ``model`` on images (n, 8, 8) with digits (n,).

    ``centroids`` (classes, d) defaults to the model's own clean training-split class means.
    Logits are recomputed in float64 from h and the head, so the decomposition is exact."""
    head = final_linear(model)
    W = head.weight.detach().double().cpu().numpy()  # (classes, d)
    b = head.bias.detach().double().cpu().numpy() if head.bias is not None else np.zeros(len(W))
    y = _check_labels(labels, len(images), len(W))
    cents = class_centroids(model) if centroids is None else np.asarray(centroids, np.float64)
    if cents.shape != W.shape:
        raise LatentLabError(f"centroids have shape {cents.shape}, the head needs {W.shape}")
    h = penultimate(model, np.asarray(images, np.float32)).astype(np.float64)  # (n, d)
    norm = np.linalg.norm(h, axis=1)
    logits = h @ W.T + b  # (n, classes)
    logit_true = logits[np.arange(len(y)), y]
    others = logits.copy()
    others[np.arange(len(y)), y] = -np.inf
    predicted = logits.argmax(1)
    return SampleGeometry(
        norm=norm, angle_weight=_angle(h, W[y]), angle_centroid=_angle(h, cents[y]),
        margin=logit_true - others.max(1, initial=-np.inf),
        loss=_logsumexp(logits) - logit_true, correct=predicted == y,
        logit_true=logit_true, predicted=predicted.astype(np.int64))


def _logsumexp(logits: np.ndarray) -> np.ndarray:
    """log sum_j exp(logits[:, j]) (n,), stable."""
    top = logits.max(1, keepdims=True) if logits.size else np.zeros((len(logits), 1))
    return (top + np.log(np.exp(logits - top).sum(1, keepdims=True)))[:, 0]


# ------------------------------------------------------------------------ comparison
class SummaryRow(NamedTuple):
    """One model under one corruption: means, and KS tests against the dense model."""

    model: str
    corruption: str
    accuracy: float
    mean_loss: float
    mean_norm: float
    mean_angle_weight: float
    mean_angle_centroid: float
    mean_margin: float
    ks: dict[str, tuple[float, float]]  # quantity -> (statistic, p-value) vs dense


class PruningComparison(NamedTuple):
    """Dense vs pruned models under corruptions; keys are (model name, corruption name)."""

    models: list[str]  # "dense" first, then e.g. "magnitude50", "random90"
    corruptions: list[str]  # e.g. "none", "noise:0.3"
    geometry: dict[tuple[str, str], SampleGeometry]
    accuracy: dict[tuple[str, str], float]
    flips: dict[tuple[str, str], np.ndarray]  # source rows dense gets right, this one wrong
    summary: list[SummaryRow]
    labels: np.ndarray  # (n,) the source's digits
    info: dict[str, Any]  # source, seed, centroids mode, folders, corruption specs


def pruned_name(model: DigitsZooModel) -> str:
    """``dense``, or the pruning from the model's metadata: ``magnitude50``, ``random90-p3``."""
    cfg = model.cfg
    if cfg.method is None:
        return "dense"
    name = f"{cfg.method}{round(100 * (cfg.sparsity or 0.0))}"
    return name + (f"-p{cfg.prune_seed}" if cfg.prune_seed else "")


def _load_models(dense: str | Path, pruned: Sequence[str | Path]) -> dict[str, DigitsZooModel]:
    """The dense model and its pruned variants by name; ModelError for a wrong family."""
    base = DigitsZooModel.load(dense)
    if base.cfg.method is not None:
        raise ModelError(f"{dense} is a pruned model ({base.cfg.method} {base.cfg.sparsity}); "
                         "pass its dense parent as the dense model")
    models = {"dense": base}
    for folder in pruned:
        model = DigitsZooModel.load(folder)
        name = pruned_name(model)
        if model.cfg.parent_hash != base.weight_hash():
            raise ModelError(f"{folder} was not pruned from {dense} (parent hash "
                             f"{model.cfg.parent_hash} != {base.weight_hash()})")
        if name in models:
            raise ModelError(f"{folder} repeats the variant {name!r} already listed")
        models[name] = model
    return models


def _load_images(source: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 8, 8) float32 and digits (n,) of an image source spec, in source order."""
    src = load_source(source)
    if src.kind != "image" or tuple(src.image_shape or ()) != (8, 8) or "digit" not in src.label_names:
        raise SourceError(f"source {source!r} does not give 8x8 images labelled with a digit")
    examples = list(src)
    if not examples:
        raise SourceError(f"source {source!r} is empty")
    images = np.stack([np.asarray(e.image, np.float32) for e in examples])
    return images, np.array([e.labels["digit"] for e in examples], np.int64)


def _ks(a: SampleGeometry, ref: SampleGeometry) -> dict[str, tuple[float, float]]:
    """Two-sample KS (statistic, p-value) of each quantity of ``a`` against ``ref``."""
    out = {}
    for q in QUANTITIES:
        res = stats.ks_2samp(getattr(a, q), getattr(ref, q))
        out[q] = (float(res.statistic), float(res.pvalue))
    return out


def _summary_row(model: str, corruption: str, g: SampleGeometry,
                 ref: SampleGeometry) -> SummaryRow:
    """The means of ``g`` and its KS tests against the dense geometry ``ref``."""
    return SummaryRow(model, corruption, float(g.correct.mean()), float(g.loss.mean()),
                      float(g.norm.mean()), float(g.angle_weight.mean()),
                      float(g.angle_centroid.mean()), float(g.margin.mean()), _ks(g, ref))


def _corrupted_sets(images: np.ndarray, corruptions: Sequence[tuple[str, float]],
                    seed: int) -> dict[str, np.ndarray]:
    """Corruption name -> corrupted images; every model later sees these same images."""
    sets: dict[str, np.ndarray] = {}
    for kind, severity in corruptions:
        name = corruption_name(kind, _check_severity(kind, severity))
        if name in sets:
            raise LatentLabError(f"corruption {name} is listed twice")
        sets[name] = corrupt(images, kind, severity, seed)
    if not sets:
        raise LatentLabError("compare_pruned needs at least one corruption")
    return sets


def compare_pruned(ctx: JobContext, dense: str | Path, pruned: list[str | Path],
                   corruptions: Sequence[tuple[str, float]] = DEFAULT_CORRUPTIONS,
                   source: str = "digits:test", seed: int = 0,
                   centroids: str = "own") -> PruningComparison:
    """Job: geometry of the dense model and each pruned variant under each corruption,
    with accuracy, flipped samples and KS tests against the dense model.

    ``centroids``: ``own`` (each model's clean training centroids) or ``dense`` (the dense
    model's, so angle_centroid measures drift from the dense representation)."""
    if centroids not in CENTROID_MODES:
        raise LatentLabError(f"centroids {centroids!r} is not one of {', '.join(CENTROID_MODES)}")
    models = _load_models(dense, pruned)
    images, labels = _load_images(source)
    sets = _corrupted_sets(images, corruptions, seed)
    for model in models.values():
        model.to(ctx.device)
    dense_cents = class_centroids(models["dense"]) if centroids == "dense" else None
    geometry: dict[tuple[str, str], SampleGeometry] = {}
    summary: list[SummaryRow] = []
    total, done = len(models) * len(sets), 0
    for name, model in models.items():
        for corr, x in sets.items():
            ctx.check_cancelled()
            g = geometry_of(model, x, labels, dense_cents)
            geometry[name, corr] = g
            summary.append(_summary_row(name, corr, g, geometry["dense", corr]))
            ctx.partial(summary[-1])
            done += 1
            ctx.progress(done, total, f"{name} {corr} acc {summary[-1].accuracy:.3f}")
    info = {"source": source, "seed": int(seed), "centroids": centroids,
            "dense": str(dense), "pruned": [str(p) for p in pruned],
            "corruption_specs": [[k, float(s)] for k, s in corruptions]}
    return _assemble(list(models), list(sets), geometry, summary, labels, info)


def _assemble(models: list[str], corruptions: list[str],
              geometry: dict[tuple[str, str], SampleGeometry], summary: list[SummaryRow],
              labels: np.ndarray, info: dict[str, Any]) -> PruningComparison:
    """The result, with accuracy and flips derived from the geometry."""
    accuracy = {k: float(g.correct.mean()) for k, g in geometry.items()}
    flips = {(m, c): np.flatnonzero(geometry["dense", c].correct & ~geometry[m, c].correct)
             for m, c in geometry}
    return PruningComparison(models, corruptions, geometry, accuracy, flips, summary,
                             labels, info)


# ------------------------------------------------------------------------ files
def save_comparison(result: PruningComparison, path: str | Path) -> Path:
    """Write a comparison to one .npz: the arrays, plus its names and summary as JSON."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {"labels": result.labels}
    for (m, c), g in result.geometry.items():
        key = f"{result.models.index(m)}/{result.corruptions.index(c)}"
        arrays.update({f"geometry/{key}/{f}": np.asarray(v) for f, v in g._asdict().items()})
    meta = {"format": "latentlab-pruning-comparison", "version": FORMAT_VERSION,
            "models": result.models, "corruptions": result.corruptions, "info": result.info,
            "summary": [r._asdict() for r in result.summary]}
    arrays["meta"] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:  # a file handle: numpy would append .npz to the name
        np.savez_compressed(fh, **arrays)
    return path


def _read_meta(path: Path, data: Any) -> dict[str, Any]:
    """The JSON block of a saved comparison, or LatentLabError naming the file."""
    if "meta" not in data.files:
        raise LatentLabError(f"{path} is not a pruning comparison (no meta block)")
    meta = json.loads(str(data["meta"]))
    if meta.get("format") != "latentlab-pruning-comparison":
        raise LatentLabError(f"{path} is not a pruning comparison (format {meta.get('format')!r})")
    if meta.get("version", 0) > FORMAT_VERSION:
        raise LatentLabError(f"{path} has comparison format {meta['version']}, newer than "
                             f"this LatentLab reads ({FORMAT_VERSION})")
    return meta


def load_comparison(path: str | Path) -> PruningComparison:
    """Read a comparison written by ``save_comparison``."""
    path = Path(path)
    if not path.is_file():
        raise LatentLabError(f"pruning comparison {path} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise LatentLabError(f"{path} is not a readable .npz file ({exc})") from None
    with data:
        meta = _read_meta(path, data)
        models, corrs = meta["models"], meta["corruptions"]
        try:
            geometry = {(m, c): SampleGeometry(*(data[f"geometry/{i}/{j}/{f}"]
                                                 for f in SampleGeometry._fields))
                        for i, m in enumerate(models) for j, c in enumerate(corrs)}
            labels = data["labels"]
        except KeyError as exc:
            raise LatentLabError(f"{path} misses the array {exc}") from None
    summary = [SummaryRow(**{**r, "ks": {q: tuple(v) for q, v in r["ks"].items()}})
               for r in meta["summary"]]
    return _assemble(models, corrs, geometry, summary, labels, meta["info"])
