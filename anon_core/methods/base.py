"""The one anonymizer contract, ``(image, faces) -> image``, and the registry of methods by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from faceveil.anon_core.faces import Faces


@dataclass(frozen=True)
class MethodOutput:
    """An anonymized image and, per face, the method actually applied and the changed region.

    ``regions`` is N x 4 (x1, y1, x2, y2) int: every pixel the method may have changed for face i
    lies inside region i, which is what the key manifest seals to restore the original exactly.
    ``methods`` names what was done to each face (a surrogate falls back to ``mask`` on faces
    whose landmarks are unreliable). ``pseudonyms`` is filled by methods that assign one.
    """

    image: np.ndarray
    regions: np.ndarray
    methods: tuple[str, ...]
    pseudonyms: tuple[str | None, ...] = ()
    notes: dict = field(default_factory=dict)


@runtime_checkable
class Anonymizer(Protocol):
    """Replaces every face in an RGB uint8 image; never modifies its input in place."""

    name: str
    needs_landmarks68: bool
    needs_embeddings: bool

    def __call__(self, image: np.ndarray, faces: Faces) -> MethodOutput: ...


_REGISTRY: dict[str, Callable[..., Anonymizer]] = {}


def register(name: str) -> Callable[[Callable[..., Anonymizer]], Callable[..., Anonymizer]]:
    """Class decorator adding an anonymizer factory to the registry under ``name``."""

    def add(factory: Callable[..., Anonymizer]) -> Callable[..., Anonymizer]:
        if name in _REGISTRY:
            raise ValueError(f"anonymizer {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return add


def create(name: str, **options: object) -> Anonymizer:
    """Build the anonymizer registered as ``name`` with its options."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(_REGISTRY)}") from None
    return factory(**options)


def available() -> list[str]:
    return sorted(_REGISTRY)
