"""Attribute-preserving, key-driven surrogate faces: donor bank, first pass and synthesis."""

from faceveil.anon_core.surrogate.attributes import (
    LinearAttribute,
    embed_labelled,
    fit_binary,
    fit_probes,
    fit_value,
)
from faceveil.anon_core.surrogate.context import (
    FaceTable,
    SurrogateContext,
    build_surrogate_context,
    collect_faces,
    context_from_table,
)
from faceveil.anon_core.surrogate.donors import DonorBank, DonorFace
from faceveil.anon_core.surrogate.synthesis import Synthesizer

__all__ = [
    "DonorBank",
    "DonorFace",
    "FaceTable",
    "LinearAttribute",
    "SurrogateContext",
    "Synthesizer",
    "build_surrogate_context",
    "collect_faces",
    "context_from_table",
    "embed_labelled",
    "fit_binary",
    "fit_probes",
    "fit_value",
]
