"""What a data source yields: examples (a text document or an image) with integer labels."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Example:
    """One document or image; ``labels`` travel into the store as /labels/<name>."""

    text: str | None = None
    image: np.ndarray | None = None
    labels: dict[str, int] = field(default_factory=dict)


class Source(ABC):
    """An ordered, repeatable stream of examples (the same order every time it is iterated)."""

    source_id: str
    kind: str = "text"  # "text" or "image"
    label_names: tuple[str, ...] = ()
    image_shape: tuple[int, ...] | None = None

    @abstractmethod
    def __iter__(self) -> Iterator[Example]:
        ...


def content_id(prefix: str, *parts: bytes | str) -> str:
    """A source id that changes when the content does: ``prefix:sha256[:12]``."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
    return f"{prefix}:{h.hexdigest()[:12]}"
