"""``faceveil run``: plan loose images (read in place, never copied) or take sharded input as it
is, then anonymize every shard on a Ray Data actor pool."""

from __future__ import annotations

import json
import logging
import os
import platform
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import ray

from faceveil.anon_core.accel import select_backend
from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.pipeline import build_embedder
from faceveil.jobs import plan as planning
from faceveil.jobs import shard as sharding
from faceveil.jobs.config import JobConfig
from faceveil.jobs.datawriter import OutputSpec
from faceveil.jobs.jobmanifest import JOB_FILE, JobFileError, JobManifest, JobStatus
from faceveil.jobs.keys import Secrets, hold_secrets
from faceveil.jobs.privacy_sample import privacy_sampler
from faceveil.jobs.progress import BufferedProgress, ProgressCounter, ProgressDisplay
from faceveil.jobs.raypool import (
    ActorSpec,
    actor_device,
    connect,
    map_over_shards,
    shard_tasks,
    size_pool,
    wait_for_resources,
)
from faceveil.jobs.shardio import ShardFormatError
from faceveil.jobs.storage import Location
from faceveil.jobs.worker import ShardOptions, ShardStatus, ShardSummary, ShardTask, process_shard
from faceveil.manifests.jobsecret import secret_fingerprint

log = logging.getLogger(__name__)


class JobError(RuntimeError):
    """The job cannot start or did not finish every shard; the message says what to do."""


@dataclass
class JobSummary:
    job_id: str
    shards_total: int
    shards_done: int = 0
    shards_skipped: int = 0
    failed: list[dict] = field(default_factory=list)
    samples_in: int = 0
    samples_out: int = 0
    quarantined: int = 0
    faces: int = 0
    seconds: float = 0.0
    sealed: dict[str, dict] = field(default_factory=dict)  # shard -> its rows' commitment
    audit_key_id: str | None = None  # this run's job signing key (with escrow)
    audit_tail: str | None = None  # the audit log's tail at the run's end
    images_reused: int = 0  # surrogate: images the second pass took from the first pass's records
    images_detected: int = 0  # surrogate with records: images its second pass detected again

    def line(self) -> str:
        rate = self.samples_in / self.seconds if self.seconds else 0.0
        return (
            f"job {self.job_id}: {self.shards_done + self.shards_skipped}/{self.shards_total} "
            f"shards done ({self.shards_skipped} skipped as already done), "
            f"{self.samples_in} samples in, {self.samples_out} out, {self.quarantined} "
            f"quarantined, {self.faces} faces, {len(self.failed)} shards failed, "
            f"{rate:.1f} samples/s"
        )


class ShardProcessor:
    """Ray Data actor: loads models once, then processes whole shards one row at a time."""

    def __init__(self, spec: ActorSpec):
        import cv2

        cv2.setNumThreads(max(1, spec.anon.threads))
        anon = replace(spec.anon, device=actor_device(spec.anon.device))
        self.node = ray.get_runtime_context().get_node_id()
        self.secrets = ray.get(spec.key_holder.get.remote())
        self.recall = None  # the surrogate's first-pass records, when it kept them
        if spec.surrogate_context is not None:
            from faceveil.jobs.firstpass import surrogate_anonymizer

            # per-face work runs on CPU
            self.anonymizer, self.recall = surrogate_anonymizer(anon, self.secrets, spec)
        else:
            self.anonymizer = select_backend(anon)  # the accelerated path when device is cuda
        self.out = Location(spec.out_uri)
        self.progress = BufferedProgress(spec.counter)
        self.observer = spec.observer  # the in-job privacy sampler, or None
        self.options = ShardOptions(
            batch_size=spec.pool.batch_size,
            secret=self.secrets.secret,
            max_member_bytes=anon.max_file_bytes,
            observer=self.observer,
            progress=self.progress,
            output=spec.output,
        )
        self.actor_id = uuid.uuid4().hex
        log.info("actor ready on %s, node %s (%s)", platform.node(), self.node, anon.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [self._one(task) for task in shard_tasks(batch)]
        self.progress.flush()
        out = {k: [getattr(r, k) for r in rows] for k in _SUMMARY_COLUMNS}
        out["status"] = [str(status) for status in out["status"]]  # a plain string column
        # The privacy summary is cumulative per actor: the driver keeps each actor's latest.
        audit = json.dumps(self.observer.summary()) if self.observer is not None else ""
        out.update(actor=[self.actor_id] * len(rows), audit=[audit] * len(rows))
        return out

    def _one(self, task: ShardTask) -> ShardSummary:
        if self.recall is None:
            return self._process(task)
        self.recall.load(task.shard)
        try:
            summary = self._process(task)
        finally:
            reused, detected = self.recall.release()
        summary.images_reused, summary.images_detected = reused, detected
        return summary

    def _process(self, task: ShardTask) -> ShardSummary:
        sealer = self.secrets.sealer(task.shard)
        options = self.options.for_marker(input_sha256=task.sha256, node=self.node)
        try:
            return process_shard(task, self.anonymizer, self.out, sealer, options)
        except (ShardFormatError, OSError, RuntimeError, ValueError) as exc:
            log.error("shard %s failed: %s", task.shard, exc)
            error = f"{type(exc).__name__}: {exc}"
            return ShardSummary(task.shard, status=ShardStatus.FAILED, error=error)


_SUMMARY_COLUMNS = (
    "shard",
    "samples_in",
    "anonymized",
    "no_face",
    "quarantined",
    "faces",
    "status",
    "error",
    "manifest",
    "images_reused",
    "images_detected",
)


@dataclass(frozen=True)
class ShardSources:
    """Where a job's shards are (a sharded input, or OUT/plan), their index entries, and whether
    the index says every input image is in a lossless format."""

    location: Location
    entries: list
    lossless: bool = False

    @classmethod
    def indexed(cls, location: Location, index: str, entries: list) -> ShardSources:
        return cls(location, entries, bool(location.read_json(index).get("lossless")))


def resolve_shards(config: JobConfig, out: Location, secret: bytes) -> ShardSources:
    """Shards of a sharded input as they are; loose images are planned into OUT/plan (shard lists
    of sealed URIs: the actors read each source in place, no copy is written). ``--resume``
    reuses a complete plan made with the same secret instead of listing the input again."""
    src = Location(config.input)
    if src.exists(sharding.INDEX):
        theirs = src.read_json(sharding.INDEX).get("secret_fingerprint")
        if theirs != secret_fingerprint(secret):
            raise JobError(
                f"{src.uri} was sharded with another job secret; pass the same "
                "--secret-file that `faceveil shard` used"
            )
        return ShardSources.indexed(src, sharding.INDEX, sharding.read_index(src))
    target = out.child(planning.PLAN_DIR)
    if config.resume and (entries := planning.reusable_plan(target, secret)) is not None:
        log.info("resuming with the plan in %s", target.uri)
        return ShardSources.indexed(target, planning.INDEX, entries)
    log.info("planning %s into %s", config.input, target.uri)
    reading = sharding.ReadOptions(
        max_member_bytes=config.anon.max_file_bytes, columns=config.data.columns
    )
    planning.write_plan(config.input, target, secret, config.shard_size, reading)
    return ShardSources.indexed(target, planning.INDEX, planning.read_plan(target))


def open_job(config: JobConfig, out: Location) -> tuple[JobManifest, bool]:
    """A new job's manifest, or on --resume the recorded one after checking the config is the
    same; and whether the job is resumed. Nothing is written."""
    if out.exists(JOB_FILE):
        doc = out.read_json(JOB_FILE)
        if not config.resume:
            raise JobError(
                f"{out.uri} already holds job {doc['job_id']}; pass --resume to "
                "finish it or choose an empty output"
            )
        refusal = config.resume_refusal(doc)
        if refusal is not None:
            raise JobError(f"{out.uri} cannot be resumed: {refusal}")
        try:
            return JobManifest.from_json(doc), True
        except (JobFileError, KeyError, TypeError, ValueError) as exc:
            raise JobError(f"{out.uri}/{JOB_FILE} cannot be resumed: {exc}") from None
    if out.listdir("_done"):
        raise JobError(f"{out.uri} has shard markers but no job.json; choose an empty output")
    foreign = sum(not _is_job_name(name) for name in out.listdir())
    if foreign:  # not named: the folder may be the input, whose file names are people's names
        raise JobError(
            f"{out.uri} is not empty and holds no faceveil job ({foreign} entries that a job "
            "does not write); choose an empty or new output folder"
        )
    manifest = JobManifest.new(
        config.output_config(), config.output_config_sha256(), versions=_versions()
    )
    return manifest, False


# What a run writes into OUT (an earlier attempt may have stopped before job.json: after its
# plan, or after escrow.json), and the temporary names it publishes through.
JOB_NAMES = frozenset(
    {"plan", "escrow.json", JOB_FILE, "data", "keys", "quarantine", "_done", "audit.jsonl",
     "report", "_rekey"}
)  # fmt: skip


def _is_job_name(name: str) -> bool:
    return name in JOB_NAMES or (name.startswith(".") and name.endswith(".tmp"))


def _versions() -> dict:
    import onnxruntime

    from faceveil.jobs import __version__

    return {
        "faceveil": __version__,
        "python": platform.python_version(),
        "ray": ray.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def pending_tasks(src: Location, entries: list, out: Location, resume: bool) -> list[ShardTask]:
    done = {name.removesuffix(".json") for name in out.listdir("_done")} if resume else set()
    return [
        ShardTask(e.shard, src.url(e.file), e.samples, e.sha256)
        for e in entries
        if e.shard.removesuffix(".tar") not in done
    ]


def _watch(counter, display: ProgressDisplay, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        display.update(*ray.get(counter.get.remote()))
    display.update(*ray.get(counter.get.remote()))


def _audit_anchor(config: JobConfig, out: Location, started: bool) -> str | None:
    """The run's audit anchor: ``--audit-anchor``, or once the log has begun the one its start
    entry names (a resume cannot change it)."""
    from faceveil.jobs.auditlog import recorded_anchor

    if not started:
        return config.audit.anchor
    recorded = recorded_anchor(out)
    if config.audit.anchor and config.audit.anchor.rstrip("/") != (recorded or "").rstrip("/"):
        raise JobError(
            f"this job's audit log is anchored at {recorded!r}, not at {config.audit.anchor!r}"
        )
    return recorded


def _pseudonym_key(config: JobConfig) -> bytes | None:
    """The team's pseudonym key for --method surrogate (None for other methods)."""
    from faceveil.jobs.keyfile import load_key_file

    if config.anon.method != "surrogate":
        if config.surrogate.key_file:
            raise JobError("--key-file is used by --method surrogate only")
        return None
    for flag, path in (
        ("--attributes", config.surrogate.attributes),
        ("--recognizer", config.anon.recognizer),
    ):
        if path and not Path(path).is_file():
            raise JobError(f"{flag} {path} is not a file")
    if not config.surrogate.key_file:
        raise JobError(
            "--method surrogate needs --key-file, the team's pseudonym key; create "
            "one with `faceveil key new team.key` and keep it safe"
        )
    return load_key_file(config.surrogate.key_file)


@contextmanager
def _live_progress(config: JobConfig, total: int, stage: str) -> Iterator:
    """A progress counter actor for the pool, shown live while the block runs."""
    counter = ProgressCounter.remote()
    display = ProgressDisplay(total, config.progress, config.log_format == "json", stage=stage)
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(counter, display, stop), daemon=True)
    watcher.start()
    try:
        yield counter
    finally:
        stop.set()
        watcher.join()
        display.close()


def _record_key(job: JobManifest, key: bytes | None) -> JobManifest:
    """Record the pseudonym key's fingerprint; a resumed job must use the same key."""
    from faceveil.jobs.firstpass import key_fingerprint

    if key is None:
        return job
    found = key_fingerprint(key)
    recorded = (job.surrogate or {}).get("key_fingerprint")
    if recorded is not None and recorded != found:
        raise JobError(
            f"this job's surrogates were made with another key (fingerprint "
            f"{recorded}, this --key-file has {found}); resume with that "
            "key"
        )
    return job.with_surrogate(key_fingerprint=found)


def run_job(config: JobConfig) -> JobSummary:
    """Run (or resume) a whole job; returns its summary, raises JobError if any shard failed."""
    started = time.monotonic()
    run = JobRun(config)  # checks only: nothing is written before sharding succeeds
    sources = run.find_shards()
    run.open_keys()
    tasks = pending_tasks(sources.location, sources.entries, run.out, config.resume)
    total = len(sources.entries)
    summary = JobSummary(run.manifest.job_id, total, shards_skipped=total - len(tasks))
    run.log_start(len(tasks))
    try:
        run.process(tasks, sources, summary)
    finally:
        summary.seconds = time.monotonic() - started
        run.finish(summary)
    return summary


class JobRun:
    """One run (or resume) of a job. It owns the output Location, the typed JobManifest (what
    job.json holds), the job's keys (JobKeys: the escrow's public sealing values and this run's
    audit signer; None without escrow) and the Secrets the actors get through a KeyHolder.

    Building it only checks (the pseudonym key, job.json on resume, the escrow flags): nothing
    is written before ``find_shards`` succeeds.
    """

    def __init__(self, config: JobConfig):
        from faceveil.jobs.keys import escrow_mode

        self.config = config
        self.out = Location(config.output)
        self.pseudonym_key = _pseudonym_key(config)
        manifest, self.resuming = open_job(config, self.out)
        manifest = _record_key(manifest, self.pseudonym_key)
        # refuse missing escrow flags before sharding
        mode = escrow_mode(config.escrow, manifest.escrow_mode, self.resuming)
        self.manifest = replace(manifest, escrow_mode=mode)
        self.keys = None  # JobKeys once open_keys ran, with escrow
        self._secret = b""  # the job secret, loaded by find_shards
        self.secrets: Secrets | None = None  # what the actors get, once open_keys ran

    def find_shards(self) -> ShardSources:
        """Load the job secret and find the shards (loose images are planned into OUT/plan)."""
        from faceveil.jobs.keyfile import load_secret

        self._secret = load_secret(self.config.secret_file)
        return resolve_shards(self.config, self.out, self._secret)

    def open_keys(self) -> None:
        """Open the escrow (escrow.json is published before anything is sealed), publish
        job.json, and gather the actors' Secrets."""
        from faceveil.jobs.keys import open_keys

        self.keys = open_keys(self.config.escrow, self.out, self.manifest, self.resuming)
        self.publish()
        sealing = self.keys.sealing if self.keys is not None else None
        transit = os.urandom(32) if self.pseudonym_key is not None else None
        self.secrets = Secrets(self._secret, sealing, self.pseudonym_key, transit)

    def publish(self) -> None:
        """Write the manifest to OUT/job.json."""
        self.out.publish_json(self.manifest.to_json(), JOB_FILE)

    def log_start(self, shards_to_do: int) -> None:
        """With escrow, sign job.start (or job.resume once the log has begun) into the audit
        log; without escrow, refuse --audit-anchor (there is no signed log to anchor)."""
        from faceveil.jobs.auditlog import log_started
        from faceveil.jobs.keys import audit

        if self.keys is None:
            if self.config.audit.anchor:
                raise JobError(
                    "--audit-anchor anchors the signed audit log, which a run without "
                    "escrow does not write"
                )
            return
        begun = log_started(self.out)  # a run whose job.start failed wrote no entry
        anchor = _audit_anchor(self.config, self.out, begun)
        details = {
            **self.keys.start_details(),
            "resumed": self.resuming,
            "shards_to_do": shards_to_do,
            "audit_anchor": anchor,
        }
        audit(self.out, self.keys, "job.resume" if begun else "job.start", details, anchor)

    def process(self, tasks: list[ShardTask], sources: ShardSources, summary: JobSummary) -> None:
        """Start or join Ray, size the pool, and process ``tasks`` with a live progress display
        (after the surrogate's first pass, which has a display of its own)."""
        if not tasks:
            return
        config = self.config
        we_started = connect(config.address)
        try:
            resources = wait_for_resources(config.pool, joined=not we_started)
            pool = size_pool(config.pool, resources)
            device = "cuda" if config.pool.gpus_per_actor > 0 else "cpu"
            anon = replace(
                config.anon,
                device=device,
                threads=max(1, int(config.pool.cpus_per_actor)),
                image_format=config.data.image_format or ("png" if sources.lossless else "jpg"),
            )
            spec = ActorSpec(
                anon,
                hold_secrets(self.secrets),
                config.pool,
                size=pool,
                max_donor_faces=config.surrogate.max_donor_faces,
                output=OutputSpec(config.data.output_format, config.data.columns.image_column),
            )
            if self.secrets.pseudonym_key is not None:
                spec = self._first_pass(sources, spec, {t.shard for t in tasks})
            spec = replace(
                spec,
                size=min(pool, len(tasks)),
                out_uri=config.output,
                observer=privacy_sampler(config),
            )
            log.info("processing %d shards on %d actors (%s)", len(tasks), spec.size, device)
            with _live_progress(config, sum(t.samples for t in tasks), "anonymize") as counter:
                self._execute(tasks, replace(spec, counter=counter), summary)
            if spec.face_records is not None:
                second = {"images_reused": summary.images_reused,
                          "images_detected": summary.images_detected}  # fmt: skip
                self.manifest = self.manifest.with_surrogate(second_pass=second)
        finally:
            if we_started:
                ray.shutdown()

    def _first_pass(self, sources: ShardSources, spec: ActorSpec, pending: set[str]) -> ActorSpec:
        """Run the surrogate's first pass over (a sample of) every shard, done or not, so a
        resumed job gets the same identities and donors; records its summary in the manifest
        and returns ``spec`` with the sealed context's object ref and, unless the config turns
        reuse off, the shelf of face records kept for the ``pending`` shards."""
        from faceveil.anon_core.surrogate.build import attribute_probes
        from faceveil.jobs.firstpass import (
            FirstPassError,
            RecordShelf,
            first_pass_entries,
            run_first_pass,
        )

        config = self.config
        chosen = first_pass_entries(sources.entries, config.surrogate.first_pass_shards)
        tasks = pending_tasks(sources.location, chosen, self.out, resume=False)
        log.info("surrogate first pass over %d of %d shards", len(tasks), len(sources.entries))
        try:
            probes = ()
            if config.surrogate.attributes:
                cpu = replace(spec.anon, device="cpu")
                detector = build_detector(cpu.detector, cpu.model_root, cpu.threshold, "cpu")
                probes = attribute_probes(
                    config.surrogate.attributes, detector, build_embedder(cpu)
                )
            if config.surrogate.reuse_first_pass:
                spec = replace(spec, face_records=RecordShelf.remote())
            with _live_progress(config, sum(t.samples for t in tasks), "first pass") as counter:
                passing = replace(spec, counter=counter)
                setup = run_first_pass(tasks, passing, self.secrets, probes, pending)
        except FirstPassError as exc:
            raise JobError(str(exc)) from None
        self.manifest = self.manifest.with_surrogate(first_pass=setup.info)
        return replace(spec, surrogate_context=setup.context)

    def _execute(self, tasks: list[ShardTask], spec: ActorSpec, summary: JobSummary) -> None:
        """Map the pool over the shards with Ray Data, streaming one summary row per shard."""
        audits: dict[str, dict] = {}
        for row in map_over_shards(tasks, ShardProcessor, spec).iter_rows():
            if row["audit"]:
                audits[row["actor"]] = json.loads(row["audit"])
            if row["status"] == ShardStatus.FAILED:
                summary.failed.append({"shard": row["shard"], "error": row["error"]})
                continue
            summary.shards_done += 1
            if row["manifest"]:
                summary.sealed[row["shard"].removesuffix(".tar")] = json.loads(row["manifest"])
            summary.samples_in += row["samples_in"]
            summary.samples_out += row["anonymized"] + row["no_face"]
            summary.quarantined += row["quarantined"]
            summary.faces += row["faces"]
            summary.images_reused += row["images_reused"]
            summary.images_detected += row["images_detected"]
        if spec.observer is not None and audits:
            from faceveil.jobs.privacy_report import write_privacy_report

            write_privacy_report(
                f"{self.config.output.rstrip('/')}/report",
                list(audits.values()),
                keep_originals=self.config.audit.report_originals,
            )

    def finish(self, summary: JobSummary) -> None:
        """Record totals in job.json (and the audit tail with escrow); raise if shards failed."""
        from faceveil.jobs.keys import audit

        out, keys = self.out, self.keys
        markers = [out.read_json("_done", n) for n in out.listdir("_done") if n.endswith(".json")]
        totals = {
            k: sum(m[k] for m in markers)
            for k in ("samples_in", "anonymized", "no_face", "quarantined", "faces")
        }
        complete = not summary.failed and len(markers) == summary.shards_total
        status = JobStatus.COMPLETE if complete else JobStatus.INCOMPLETE
        shards = {"total": summary.shards_total, "done": len(markers)}
        self.manifest = replace(
            self.manifest, status=status, totals=totals, shards=shards, failed=summary.failed
        )
        if keys is not None:
            sealed = {**_unsigned_earlier(out, markers, summary.sealed), **summary.sealed}
            audit(out, keys, "job.manifests", {"escrow_id": keys.escrow_id, "manifests": sealed})
            details = {
                "status": str(status),
                "totals": totals,
                "failed_shards": len(summary.failed),
            }
            tail = audit(out, keys, "job.end", details)
            summary.audit_key_id, summary.audit_tail = keys.audit.signer, str(tail)
            self.manifest = replace(self.manifest, **keys.job_json_fields(tail))
        self.publish()
        if summary.failed:
            names = ", ".join(f["shard"] for f in summary.failed[:10])
            raise JobError(
                f"{len(summary.failed)} shards failed ({names}; first: "
                f"{summary.failed[0]['error']}); fix the cause and rerun "
                "with --resume: done shards are kept"
            )


def _unsigned_earlier(out: Location, markers: list[dict], ours: dict) -> dict[str, dict]:
    """Row-list commitments of shards sealed by an earlier run that ended before signing them
    (a crash), taken from their markers, so that a resume leaves no shard unrestorable. This
    run's own shards are signed from what its actors returned, not from the markers on disk."""
    from faceveil.jobs.restore import log_entries, signed_commitments

    signed = signed_commitments(log_entries(out))
    found = {
        m["shard"].removesuffix(".tar"): m["manifest"]
        for m in markers
        if "manifest" in m and m["shard"].removesuffix(".tar") not in {*signed, *ours}
    }
    if found:
        log.warning("signing the row lists of %d shards an earlier run sealed but did not sign "
                    "(it ended early), from their markers", len(found))  # fmt: skip
    return found
