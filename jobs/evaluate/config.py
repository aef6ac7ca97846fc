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
ATTACKS = ("aligned", "parrot", "parrot-finetune", "inversion", "inversion-pixels")
# the pixel U-Net costs minutes and the last-block fine-tune about a minute per method: opt in
DEFAULT_ATTACKS = ("aligned", "parrot", "inversion")


def parse_attacks(text: str) -> tuple[str, ...]:
    """A comma list of attack names (``aligned`` is always measured and always included)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = sorted(set(names) - set(ATTACKS))
    if unknown:
        raise ValueError(f"unknown attack {unknown[0]!r} (have {', '.join(ATTACKS)})")
    return tuple(a for a in ATTACKS if a in names or a == "aligned")


@dataclass(frozen=True)
class PixelBudget:
    """The pixel inversion attacker's compute (``pixels``): ``steps`` Adam steps at ``lr`` on
    batches of ``batch`` crop pairs (each pair also seen mirrored) under an L1 loss, whatever
    the number of training pairs; crops ``side`` x ``side``; a U-Net of ``width`` channels at
    full resolution, doubling twice; ``threads`` torch threads; ``seed`` fixes init and order."""

    side: int = 64
    width: int = 12
    steps: int = 300
    batch: int = 16
    lr: float = 2e-3
    threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.side % 8 or self.side < 16:
            raise ValueError(f"pixel crop side must be a multiple of 8, >= 16, not {self.side}")
        if self.steps < 0 or self.batch < 1 or self.width < 1 or self.threads < 1:
            raise ValueError("pixel steps, batch, width and threads must be positive")

    def public(self) -> dict:
        """The budget as written into report.json."""
        w = self.width
        return {
            "model": f"residual U-Net, {w}-{2 * w}-{4 * w} channels, 3 scales",
            "crop": f"{self.side} x {self.side}, ArcFace alignment at the original's 5 points",
            "loss": "L1 on the crop",
            "steps": self.steps,
            "batch": self.batch,
            "augmentation": "horizontal mirror",
            "optimizer": f"Adam lr {self.lr}",
            "torch_threads": self.threads,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class AttackBudget:
    """The compute every learning attacker gets, the same for every method of a run.

    ``head`` is "mlp" (residual, ``hidden`` units) or "linear"; it is trained for ``epochs``
    passes over the training features in batches of ``batch`` with Adam at ``lr``, under an
    additive cosine margin ``margin`` at scale ``scale``. ``ridge_alpha`` regularises the
    inversion map; ``pixels`` is the pixel inversion's budget; ``threads`` torch threads
    train the head. ``train_share`` of the identities with two or more images go to training
    (plus every one-image identity); the rest are held out; ``seed`` fixes split and init.
    With ``splits`` > 1 the learning attackers run on that many splits (seeds ``seed``,
    ``seed + 1``, ...) of the same anonymized output, and their figures are pooled.
    ``finetune_steps`` Adam steps at ``finetune_lr`` on batches of ``finetune_batch`` train the
    recognizer's last block for the fine-tuned parrot (``parrot-finetune``; 0: not run), with
    the head's margin, scale and ``lr`` for its class centres.
    """

    head: str = "mlp"
    hidden: int = 256
    epochs: int = 40
    batch: int = 128
    lr: float = 2e-3
    margin: float = 0.35
    scale: float = 30.0
    ridge_alpha: float = 0.1
    train_share: float = 0.5
    seed: int = 0
    splits: int = 1
    threads: int = 1
    finetune_steps: int = 300
    finetune_batch: int = 64
    finetune_lr: float = 1e-4
    pixels: PixelBudget = field(default_factory=PixelBudget)

    def __post_init__(self) -> None:
        if self.head not in ("mlp", "linear"):
            raise ValueError(f"attack head is 'mlp' or 'linear', not {self.head!r}")
        if not 0.0 < self.train_share < 1.0:
            raise ValueError(f"train_share must be in (0, 1), got {self.train_share}")
        if self.splits < 1:
            raise ValueError(f"attack splits must be at least 1, got {self.splits}")
        if self.epochs < 0 or self.batch < 1 or self.hidden < 1 or self.threads < 1:
            raise ValueError("epochs, batch, hidden and threads must be positive")
        if self.finetune_steps < 0 or self.finetune_batch < 1 or self.finetune_lr <= 0:
            raise ValueError("finetune steps must be >= 0, its batch and lr positive")

    def public(self) -> dict:
        """The budget as written into report.json."""
        return {
            "parrot": {
                "features": "frozen recognizer embedding of the anonymized crop",
                "head": self.head,
                "hidden": self.hidden if self.head == "mlp" else None,
                "loss": f"additive cosine margin {self.margin}, scale {self.scale}",
                "epochs": self.epochs,
                "batch": self.batch,
                "optimizer": f"Adam lr {self.lr}",
                "torch_threads": self.threads,
                "fine_tuned_layers": "none (head only)",
            },
            "parrot_finetune": {
                "features": "the recognizer's own network (ONNX graph as torch layers)",
                "fine_tuned_layers": "the last residual block and every layer after it; the rest "
                "frozen (names per recognizer: methods[].parrot_finetune)",
                "loss": f"additive cosine margin {self.margin}, scale {self.scale}",
                "steps": self.finetune_steps,
                "batch": self.finetune_batch,
                "optimizer": f"Adam lr {self.finetune_lr} (class centres lr {self.lr})",
                "torch_threads": self.threads,
            },
            "inversion": {"map": "ridge, anonymized -> original", "alpha": self.ridge_alpha},
            "inversion_pixels": self.pixels.public(),
            "train_share": self.train_share,
            "seed": self.seed,
            "splits": self.splits,
        }

    def split_seeds(self) -> tuple[int, ...]:
        """The seed of each identity split the learning attackers run on."""
        return tuple(range(self.seed, self.seed + self.splits))


AGE_BANDS = ((0, 12), (13, 19), (20, 39), (40, 59), (60, 200))


@dataclass(frozen=True)
class RecallConfig:
    """Recall per group: ``labels`` is a UTKFace-style CSV (path, age, gender_0male_1female,
    race); ``small_faces`` labelled faces are also composited into synthetic scenes of
    ``scene`` (height, width) at each face width in ``sizes`` (pixels)."""

    labels: str | None = None
    sizes: tuple[int, ...] = (16, 24, 32, 48)
    small_faces: int = 96
    scene: tuple[int, int] = (480, 640)
    age_bands: tuple[tuple[int, int], ...] = AGE_BANDS
    seed: int = 0

    def public(self) -> dict:
        """The recall settings as written into report.json."""
        return {
            "labels": self.labels,
            "sizes": list(self.sizes),
            "small_faces": self.small_faces,
            "scene": list(self.scene),
            "age_bands": [list(b) for b in self.age_bands],
        }


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
    ``dlib_attacker`` adds dlib's ResNet to the ONNX recognizers (it is the only one when none
    is given). ``attacks`` are run with every recognizer; ``budget`` is the learning
    attackers' compute, the same for every method; ``recall`` the recall-per-group settings.
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
    dlib_attacker: bool = True
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    budget: AttackBudget = field(default_factory=AttackBudget)
    recall: RecallConfig = field(default_factory=RecallConfig)
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
        unknown = set(self.attacks) - set(ATTACKS)
        if unknown or "aligned" not in self.attacks:
            raise ValueError(f"attacks are {ATTACKS} with aligned among them, not {self.attacks}")
        if self.attribute_judge not in JUDGES:
            raise ValueError(f"attribute_judge is one of {JUDGES}, not {self.attribute_judge!r}")

    def public(self) -> dict:
        """The config as written into report.json (no salt)."""
        return {
            "images": self.images,
            "identities": self.identities,
            "methods": [{"name": m.name, "options": dict(m.options)} for m in self.methods],
            "attacker_models": list(self.attacker_models),
            "dlib_attacker": self.dlib_attacker,
            "attacks": list(self.attacks),
            "attack_budget": self.budget.public(),
            "recall": self.recall.public(),
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
