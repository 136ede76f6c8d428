"""Prediction steering for classifiers (the digits zoo, any image model a store was captured
from): the store's images are classified with and without a steering recipe, and the
predictions are compared per class (how many images each class gets, its mean probability,
the accuracy against a label, and how many images changed class)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from engine.errors import LatentLabError
from engine.jobs import JobContext
from engine.models.base import ModelAdapter
from engine.models.registry import cached_model
from engine.steering.recipe import recipe_interventions
from engine.steering.steer import steered
from engine.store.activations import ActivationStore

ZOO_PREFIX = "digits-zoo:"  # how a digits-zoo model names itself in a store
ZOO_FILE = "latentlab_model.json"


class PredictionShift(NamedTuple):
    """Predictions of ``n`` images without (before) and with (after) the recipe, per class."""

    model_id: str
    label: str | None  # the label accuracy is measured against
    classes: list[str]
    before: np.ndarray  # (n_classes,) int64 images predicted as each class, unsteered
    after: np.ndarray  # (n_classes,) int64, steered
    prob_before: np.ndarray  # (n_classes,) mean softmax probability, unsteered
    prob_after: np.ndarray  # (n_classes,)
    accuracy_before: float  # nan without a label
    accuracy_after: float
    changed: int  # images whose predicted class changed
    n: int


def classifier_spec(model: str | None, workspace: str | os.PathLike | None = None,
                    store: str | os.PathLike | None = None) -> str | None:
    """The model spec to load for a classifier: a digits-zoo folder as it is, or, for a
    store's ``digits-zoo:NAME``, the folder NAME under ``workspace/models`` or under the
    ``models`` folder beside the store's ``stores`` folder (a workspace's layout); None for
    any other model (a text model). Only looks at files, so a view may call it.
    LatentLabError when a ``digits-zoo:NAME`` has no folder."""
    if not model:
        return None
    if (Path(model).expanduser() / ZOO_FILE).is_file():
        return model
    if not model.startswith(ZOO_PREFIX):
        return None
    name = model[len(ZOO_PREFIX):]
    roots = [Path(p) / "models" for p in (workspace, Path(store).resolve().parent.parent if store else None) if p]
    for root in roots:
        found = sorted(p.parent for p in root.rglob(ZOO_FILE) if p.parent.name == name) if root.is_dir() else []
        if found:
            return str(found[0])
    raise LatentLabError(f"model {model}: no folder {name} with {ZOO_FILE} under "
                         f"{' or '.join(map(str, roots)) or 'a workspace'}; open the workspace it came from")


def _store_images(store: ActivationStore, label: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The store's images (n, h, w), one per sample, and each one's ``label`` (or None)."""
    samples = store.index("sample")
    uniq, first = np.unique(samples, return_index=True)
    try:
        images = store.dataset("images")[:]
    except LatentLabError:
        raise LatentLabError(f"{store.path} holds no images: prediction steering classifies a "
                             "store's images") from None
    labels = store.index(label)[first] if label else None
    return images[uniq], labels


def _predict(adapter: ModelAdapter, images: np.ndarray, batch: int) -> np.ndarray:
    """Softmax probabilities (n, classes) of the images."""
    out = []
    for lo in range(0, len(images), batch):
        inputs = adapter.make_batch(list(images[lo:lo + batch])).to(adapter.device)
        with torch.inference_mode():
            out.append(torch.softmax(adapter.run(inputs).float(), -1).cpu().numpy())
    return np.concatenate(out)


def steer_predictions(ctx: JobContext, model: str | ModelAdapter, recipe: Sequence[Mapping[str, Any]],
                      store: str | os.PathLike, label: str | None = None, batch_size: int = 256) -> PredictionShift:
    """Job: the classifier's predictions on the store's images before and after ``recipe``
    (``label``: default the store's first label, for the accuracies)."""
    adapter = cached_model(model) if isinstance(model, str) else model
    if adapter.tokenizer is not None:
        raise LatentLabError(f"model {adapter.model_id} is a text model: steer its generation instead")
    adapter.to(ctx.device)
    with ActivationStore.open(store) as s:
        label = label if label is not None else (s.label_names[0] if s.label_names else None)
        images, labels = _store_images(s, label)
    ctx.progress(0, 2, "unsteered predictions")
    before = _predict(adapter, images, batch_size)
    ctx.check_cancelled()
    ctx.progress(1, 2, "steered predictions")
    with steered(adapter, recipe_interventions(adapter, recipe)):
        after = _predict(adapter, images, batch_size)
    ctx.progress(2, 2, "done")
    c = before.shape[1]
    pb, pa = before.argmax(1), after.argmax(1)
    acc = (lambda p: float((p == labels).mean())) if labels is not None and len(labels) else (lambda p: float("nan"))
    return PredictionShift(adapter.model_id, label, [str(k) for k in range(c)], np.bincount(pb, minlength=c),
                           np.bincount(pa, minlength=c), before.mean(0), after.mean(0), acc(pb), acc(pa),
                           int((pb != pa).sum()), len(images))
