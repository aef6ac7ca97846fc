"""The evaluation's frozen configuration and its method-spec mini language (``blur:sigma=2``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MethodSpec:
    """One row of the report: a method name plus options, e.g. ``pixelate:blocks=6``."""

    name: str
    options: Mapping[str, object] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The row name: the method name plus its options, sorted."""
        if not self.options:
            return self.name
        opts = ":".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.name}:{opts}"


def _value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_method_spec(text: str) -> MethodSpec:
    """``name[:key=value[:key=value]...]``; values are JSON (numbers, lists) or plain strings."""
    name, *parts = text.strip().split(":")
    if not name:
        raise ValueError(f"empty method name in {text!r}")
    options: dict[str, object] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"method option {part!r} in {text!r} is not key=value")
        options[key] = _value(value)
    return MethodSpec(name, options)


def parse_methods(text: str) -> tuple[MethodSpec, ...]:
    """A comma-separated list of method specs."""
    specs = tuple(parse_method_spec(t) for t in text.split(",") if t.strip())
    if not specs:
        raise ValueError("no method given")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"a method is listed twice: {labels}")
    return specs


JUDGES = ("dlib", "attacker", "both")


@dataclass(frozen=True)
class EvalConfig:
    """Everything one ``faceveil eval`` run depends on.

    ``images`` is the root the manifest's relative paths start from; ``identities`` the
    manifest (``path,identity``). ``attacker_models`` are InsightFace-compatible recognition
    ONNX files; empty means dlib's recognizer. ``second_detector`` None picks scrfd when
    ``model_root`` is given, else the other of centerface/scrfd that can be built.
    ``attribute_faces`` caps the faces per method whose attributes are compared (dlib's
    recognizer is the slowest stage); ``attribute_judge`` is whose embeddings the probes read:
    "dlib", "attacker" (the first attacker model, independent of a method that selects donors
    by dlib embeddings) or "both" (dlib's, and the attacker's reported beside them).
    ``sample_salt`` keys the sample hashes shown in the report (random per run when None).
    """

    images: str
    identities: str
    report_dir: str
    methods: tuple[MethodSpec, ...] = (
        MethodSpec("blur"),
        MethodSpec("pixelate"),
        MethodSpec("mask"),
    )
    attacker_models: tuple[str, ...] = ()
    attributes: str | None = None
    detector: str = "centerface"
    second_detector: str | None = None
    model_root: str | None = None
    limit_identities: int | None = None
    utility: bool = True
    attribute_faces: int = 200
    attribute_judge: str = "dlib"
    far: float = 1e-3
    examples: int = 6
    group_photos: tuple[tuple[str, int], ...] = (("two_people.jpg", 2),)
    batch_size: int = 16
    device: str = "cpu"
    threads: int = 0
    sample_salt: bytes | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.attribute_judge not in JUDGES:
            raise ValueError(f"attribute_judge is one of {JUDGES}, not {self.attribute_judge!r}")

    def public(self) -> dict:
        """The config as written into report.json (no salt)."""
        return {
            "images": self.images,
            "identities": self.identities,
            "methods": [{"name": m.name, "options": dict(m.options)} for m in self.methods],
            "attacker_models": list(self.attacker_models),
            "attributes": self.attributes,
            "detector": self.detector,
            "second_detector": self.second_detector,
            "model_root": self.model_root,
            "limit_identities": self.limit_identities,
            "utility": self.utility,
            "attribute_faces": self.attribute_faces,
            "far": self.far,
            "examples": self.examples,
            "batch_size": self.batch_size,
            "device": self.device,
            "threads": self.threads,
        }
