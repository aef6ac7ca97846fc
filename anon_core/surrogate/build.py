"""The one way to build the surrogate method, for the job, evaluation and tests alike.

A first pass gives a ``FaceTable`` (``collect_faces``, or per shard and ``FaceTable.merge``);
``surrogate_from_table`` turns it into identity clusters and a donor bank and builds the method
from the registry with the key; ``surrogate_from_context`` rebuilds it where the context was
shipped (second-pass actors). ``attribute_probes`` fits the optional gender and age probes on
a labels CSV.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from faceveil.anon_core import methods
from faceveil.anon_core.detectors import Detector
from faceveil.anon_core.embeddings import Embedder
from faceveil.anon_core.labels import decoded, load_attribute_set
from faceveil.anon_core.landmarks import Dlib68
from faceveil.anon_core.methods.base import Anonymizer
from faceveil.anon_core.surrogate.attributes import LinearAttribute, embed_labelled, fit_probes
from faceveil.anon_core.surrogate.context import FaceTable, SurrogateContext, context_from_table

log = logging.getLogger(__name__)


def attribute_probes(
    labels: str, detector: Detector, embedder: Embedder
) -> tuple[LinearAttribute, ...]:
    """Gender and age probes fitted on the user's labelled faces (a UTKFace-style CSV: path,
    age, gender 0 male / 1 female, race; paths relative to it) with ``embedder``."""
    data = load_attribute_set(labels)
    numbered = ((rgb, float(i)) for i, rgb in enumerate(decoded(data.paths)))
    embeddings, rows = embed_labelled(numbered, detector, Dlib68(), embedder)
    rows = rows.astype(np.int64)
    probes = fit_probes(embeddings, data.gender[rows], data.age[rows], embedder.name)
    log.info("attribute probes fitted on %d of %d labelled faces", len(rows), len(data.paths))
    return probes


def surrogate_from_context(
    key: bytes, context: SurrogateContext, options: Mapping[str, object]
) -> Anonymizer:
    """The registry's ``surrogate`` for ``key`` on a first pass's ``context``; ``options`` are
    the method's own (``privacy``, ``donors``, ``linkage``, ``surround``, ``shading``)."""
    return methods.create("surrogate", key=key, context=context, **dict(options))


def surrogate_from_table(
    key: bytes,
    table: FaceTable,
    options: Mapping[str, object],
    attributes: Sequence[LinearAttribute] = (),
    threshold: float | None = None,
) -> tuple[Anonymizer, SurrogateContext]:
    """The surrogate method and its context from a first pass's faces; ValueError when the
    faces cannot give one (too few identities for the donors asked for)."""
    context = context_from_table(table, threshold, attributes=attributes)
    return surrogate_from_context(key, context, options), context
