"""The frozen configuration of a job; the CLI only fills it in."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from faceveil.anon_core.methods.baselines import (
    BLUR_STRENGTH,
    PIXELATE_BLOCKS,
    REGION_GROW,
    WIDE_GROW,
)
from faceveil.anon_core.pipeline import AnonConfig
from faceveil.anon_core.surrogate.synthesis import RENDERER
from faceveil.jobs.datawriter import OutputFormat
from faceveil.jobs.parquetin import InputColumns


@dataclass(frozen=True)
class PoolConfig:
    """Actor pool shape. ``num_actors`` None: as many as the cluster's resources allow."""

    num_actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.num_actors is not None and self.num_actors < 1:
            raise ValueError("--num-actors must be at least 1")
        if self.cpus_per_actor <= 0 or self.gpus_per_actor < 0:
            raise ValueError("--cpus-per-actor must be > 0 and --gpus-per-actor >= 0")
        if self.batch_size < 1:
            raise ValueError("--batch-size must be at least 1")


@dataclass(frozen=True)
class EscrowConfig:
    """How originals are escrowed: custodians (M-of-N), a KMS key, or explicitly not at all."""

    custodians: tuple[str, ...] = ()
    threshold: int = 0
    kms: str | None = None
    no_escrow: bool = False


@dataclass(frozen=True)
class AuditConfig:
    """The in-job privacy sample (``jobs.privacy_sample``): a random ``fraction`` of faces
    measured inside the actors; and ``anchor``, where each tail of the signed audit log is also
    written (fsspec URL)."""

    fraction: float = 0.0
    seed: str = "0"
    attacker: str | None = None
    report_originals: bool = False
    anchor: str | None = None


@dataclass(frozen=True)
class SurrogateConfig:
    """The surrogate method's first pass. ``key_file``: the team's pseudonym key (``faceveil key
    new``); ``first_pass_shards``: at most this many shards, picked by a hash of their names,
    feed the identity clusters and donor bank (None: all); ``max_donor_faces`` caps the donor
    candidates kept in memory; ``attributes``: a labels CSV of the user's own faces to fit
    gender and age probes on, so donors share the original's gender and age.

    ``reuse_first_pass`` (internal, no CLI option; tests and ``bench/bench_oneread.py`` turn it
    off to compare): the second pass takes the faces the first pass found, landmarked and
    embedded in the same image instead of computing them again. The output bytes are the same
    either way, so it is not part of ``output_config``."""

    key_file: str | None = None
    first_pass_shards: int | None = None
    max_donor_faces: int = 1024
    attributes: str | None = None
    reuse_first_pass: bool = True

    def __post_init__(self) -> None:
        if self.first_pass_shards is not None and self.first_pass_shards < 1:
            raise ValueError("--first-pass-shards must be at least 1")
        if self.max_donor_faces < 16:
            raise ValueError("--max-donor-faces must be at least 16")

    def output_config(self) -> dict:
        return {"first_pass_shards": self.first_pass_shards, "renderer": RENDERER,
                "max_donor_faces": self.max_donor_faces, "attributes": self.attributes}  # fmt: skip


# pixelate's default before jobs recorded their cells
EARLIER_PIXELATE_BLOCKS = 8
# blur's default before jobs recorded their strength
EARLIER_BLUR_STRENGTH = 0.125


@dataclass(frozen=True)
class ChangedDefault:
    """A method option whose default changed: jobs written before ``option`` was recorded drew
    with ``earlier``; today's default is ``now``. ``drawn`` says what the value means."""

    option: str
    earlier: float
    now: float
    drawn: str


# blur's and pixelate's reach before jobs recorded it: mask's
_GROW = ChangedDefault("grow", REGION_GROW, WIDE_GROW, "its regions were the face box grown by {}")
CHANGED_DEFAULTS = {
    "pixelate": (
        ChangedDefault("blocks", EARLIER_PIXELATE_BLOCKS, PIXELATE_BLOCKS,
                       "its mosaics were drawn with {} cells across"),
        _GROW,
    ),
    "blur": (
        ChangedDefault("strength", EARLIER_BLUR_STRENGTH, BLUR_STRENGTH,
                       "its blurs had a sigma of {} of the region"),
        _GROW,
    ),
}  # fmt: skip


def _with_options(config: dict, values: dict) -> dict:
    """A job's recorded config with ``values`` added to its method options."""
    anon = config.get("anon") or {}
    options = {**(anon.get("method_options") or {}), **values}
    return {**config, "anon": {**anon, "method_options": options}}


@dataclass(frozen=True)
class DataConfig:
    """The dataset's formats: which Parquet input columns hold the image and the known boxes
    (``columns``), what ``data/`` holds (``output_format``), and the one image format of the
    output (``image_format``: jpg or png; None: png when every input is lossless, else jpg)."""

    columns: InputColumns = field(default_factory=InputColumns)
    output_format: OutputFormat = OutputFormat.WEBDATASET
    image_format: str | None = None

    def __post_init__(self) -> None:
        if self.image_format not in (None, "jpg", "png"):
            raise ValueError(f"--output-image-format must be jpg or png, got {self.image_format}")

    def output_config(self) -> dict:
        return {"columns": self.columns.to_json(), "output_format": str(self.output_format),
                "image_format": self.image_format}  # fmt: skip


@dataclass(frozen=True)
class JobConfig:
    """Everything ``faceveil run`` needs. ``anon`` alone decides the output pixels."""

    input: str
    output: str
    anon: AnonConfig = field(default_factory=AnonConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    escrow: EscrowConfig = field(default_factory=EscrowConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    surrogate: SurrogateConfig = field(default_factory=SurrogateConfig)
    data: DataConfig = field(default_factory=DataConfig)
    shard_size: int = 1000
    resume: bool = False
    address: str | None = None
    secret_file: str | None = None
    progress: bool = True
    log_format: str = "text"

    def output_config(self) -> dict:
        """The part of the config that determines output bytes (recorded in job.json)."""
        anon = asdict(self.anon)
        anon["method_options"] = dict(self.anon.method_options)
        for changed in CHANGED_DEFAULTS.get(self.anon.method, ()):
            # its default changed: a resume must not mix the two
            anon["method_options"].setdefault(changed.option, changed.now)
        anon.pop("threads", None)
        anon.pop("image_format", None)  # decided by data.image_format and the input (JobRun)
        out = {"anon": anon, "shard_size": self.shard_size, "batch_size": self.pool.batch_size}
        if self.data != DataConfig():
            out["data"] = self.data.output_config()
        if self.anon.method == "surrogate":
            out["surrogate"] = self.surrogate.output_config()
        return out

    def output_config_sha256(self) -> str:
        return _config_sha256(self.output_config())

    def resume_refusal(self, recorded: dict) -> str | None:
        """None when this config may resume the job of ``recorded`` (its job.json), else why
        not. Only the same output config resumes: a surrogate job recorded by another renderer
        revision (none recorded: before revision 2), or a pixelate or blur job recorded before its
        cells, strength or reach were (``CHANGED_DEFAULTS``), is refused with that reason, since
        its shards would not match the new ones."""
        if recorded.get("config_sha256") == self.output_config_sha256():
            return None
        config = recorded.get("config") or {}
        decided, refusal = self._earlier_defaults(config)
        if decided:
            return refusal
        if self.anon.method == "surrogate":
            surrogate = config.get("surrogate") or {}
            renderer = surrogate.get("renderer", 1)
            if renderer != RENDERER:
                return (
                    f"its surrogates were drawn by renderer {renderer}, and this faceveil draws "
                    f"them with renderer {RENDERER}; one dataset cannot mix the two: finish it "
                    "with the faceveil that started it, or choose a new output"
                )
        return (
            "it holds a job with another config; --resume needs the same method, detector "
            "and options"
        )

    def _earlier_defaults(self, config: dict) -> tuple[bool, str | None]:
        """For a job recorded before some of its method's options were (``CHANGED_DEFAULTS``):
        (True, None) when it drew what this config draws, (True, why not) when only those
        options' values differ; (False, None) for any other job."""
        anon = config.get("anon") or {}
        options = anon.get("method_options") or {}
        changes = CHANGED_DEFAULTS.get(anon.get("method"), ())
        missing = [c for c in changes if c.option not in options]
        if not missing:
            return False, None
        output = self.output_config()
        ours = _config_sha256(output)
        if _config_sha256(_with_options(config, {c.option: c.earlier for c in missing})) == ours:
            return True, None
        mine = output["anon"]["method_options"]
        drawn_as_mine = _with_options(config, {c.option: mine.get(c.option) for c in missing})
        if _config_sha256(drawn_as_mine) != ours:
            return False, None
        c = next(c for c in missing if mine[c.option] != c.earlier)
        return True, (
            f"{c.drawn.format(c.earlier)} (the earlier default), and this config draws "
            f"{mine[c.option]}; one dataset cannot mix the two: finish it with the faceveil "
            "that started it, or choose a new output"
        )


def _config_sha256(config: dict) -> str:
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()
