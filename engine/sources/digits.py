"""scikit-learn's bundled 8x8 handwritten digits (1797 images, no download) as an image
source, with a deterministic stratified train/test split shared by the digits model zoo."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np

from engine.errors import SourceError
from engine.sources.base import Example, Source, content_id

SPLITS = ("all", "train", "test")


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    """Every image scaled to [0, 1] (1797, 8, 8) float32 and its digit (1797,) int64."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    return images, data.target.astype(np.int64)


def split_indices(split: str, seed: int = 0, test_fraction: float = 0.25) -> np.ndarray:
    """Dataset indices of ``split`` in ascending order; train/test are a stratified split."""
    if split not in SPLITS:
        raise SourceError(f"digits split {split!r} is not one of {', '.join(SPLITS)}")
    _, y = _load()
    every = np.arange(len(y))
    if split == "all":
        return every
    if not 0.0 < test_fraction < 1.0:
        raise SourceError(f"digits test_fraction {test_fraction} must lie strictly between 0 and 1")
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(every, test_size=test_fraction, random_state=seed, stratify=y)
    return np.sort(train if split == "train" else test)


def digits_arrays(split: str = "all", seed: int = 0,
                  test_fraction: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 8, 8) float32 in [0, 1] and digits (n,) int64 of one split, for training."""
    images, y = _load()
    idx = split_indices(split, seed, test_fraction)
    return images[idx], y[idx]


class DigitsSource(Source):
    """The digits of one split in a fixed order, each labelled with its ``digit``."""

    kind = "image"
    image_shape = (8, 8)
    label_names = ("digit",)

    def __init__(self, split: str = "all", seed: int = 0, test_fraction: float = 0.25) -> None:
        self.split, self.seed, self.test_fraction = split, seed, test_fraction
        self.images, self.digits = digits_arrays(split, seed, test_fraction)
        self.source_id = content_id(f"digits:{split}", self.images.tobytes(), self.digits.tobytes())

    def __len__(self) -> int:
        return len(self.digits)

    def __iter__(self) -> Iterator[Example]:
        for image, digit in zip(self.images, self.digits, strict=True):
            yield Example(image=image.copy(), labels={"digit": int(digit)})
