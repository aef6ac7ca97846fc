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

from anon_core.accel import select_backend
from anon_core.detectors import build_detector
from anon_core.pipeline import AnonConfig, FaceAnonymizer, build_embedder
from jobs import plan as planning
from jobs import shard as sharding
from jobs.config import JobConfig
from jobs.keys import hold_secrets
from jobs.privacy_sample import privacy_sampler
from jobs.progress import BufferedProgress, ProgressCounter, ProgressDisplay
from jobs.raypool import (
    actor_device,
    connect,
    map_over_shards,
    shard_tasks,
    size_pool,
    wait_for_resources,
)
from jobs.shardio import ShardFormatError
from jobs.storage import Location
from jobs.worker import ShardSummary, ShardTask, process_shard
from manifests.jobsecret import secret_fingerprint

log = logging.getLogger(__name__)

JOB_FILE = "job.json"


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
    audit_key_id: str | None = None  # this run's job signing key (with escrow)
    audit_tail: str | None = None  # the audit log's tail at the run's end

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

    def __init__(self, anon: AnonConfig, out_uri: str, batch_size: int, counter, key_holder,
                 observer=None, surrogate_context=None):  # fmt: skip
        import cv2

        cv2.setNumThreads(max(1, anon.threads))
        anon = replace(anon, device=actor_device(anon.device))
        self.node = ray.get_runtime_context().get_node_id()
        self.secrets = ray.get(key_holder.get.remote())
        if surrogate_context is not None:
            from jobs.firstpass import surrogate_method

            method = surrogate_method(anon, self.secrets, surrogate_context)
            self.anonymizer = FaceAnonymizer(anon, method=method)  # per-face work runs on CPU
        else:
            self.anonymizer = select_backend(anon)  # the accelerated path when device is cuda
        self.out = Location(out_uri)
        self.batch_size = batch_size
        self.max_file_bytes = anon.max_file_bytes
        self.progress = BufferedProgress(counter)
        self.observer = observer  # the in-job privacy sampler, or None
        self.actor_id = uuid.uuid4().hex
        log.info("actor ready on %s, node %s (%s)", platform.node(), self.node, anon.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [self._one(task) for task in shard_tasks(batch)]
        self.progress.flush()
        out = {k: [getattr(r, k) for r in rows] for k in _SUMMARY_COLUMNS}
        # The privacy summary is cumulative per actor: the driver keeps each actor's latest.
        audit = json.dumps(self.observer.summary()) if self.observer is not None else ""
        out.update(actor=[self.actor_id] * len(rows), audit=[audit] * len(rows))
        return out

    def _one(self, task: ShardTask) -> ShardSummary:
        sealer = self.secrets.sealer(task.shard)
        try:
            return process_shard(
                task, self.anonymizer, self.out, self.batch_size, sealer,
                observer=self.observer,
                progress=self.progress,
                marker_extra={"input_sha256": task.sha256, "node": self.node},
                secret=self.secrets.secret,
                max_member_bytes=self.max_file_bytes,
            )  # fmt: skip
        except (ShardFormatError, OSError, RuntimeError, ValueError) as exc:
            log.error("shard %s failed: %s", task.shard, exc)
            return ShardSummary(task.shard, status="failed", error=f"{type(exc).__name__}: {exc}")


_SUMMARY_COLUMNS = ("shard", "samples_in", "anonymized", "no_face", "quarantined", "faces",
                    "status", "error")  # fmt: skip


def resolve_shards(config: JobConfig, out: Location, secret: bytes) -> tuple[Location, list]:
    """Shards of a sharded input as they are; loose images are planned into OUT/plan (shard lists
    of sealed URIs: the actors read each source in place, no copy is written). ``--resume``
    reuses a complete plan made with the same secret instead of listing the input again."""
    src = Location(config.input)
    if src.exists(sharding.INDEX):
        theirs = src.read_json(sharding.INDEX).get("secret_fingerprint")
        if theirs != secret_fingerprint(secret):
            raise JobError(f"{src.uri} was sharded with another job secret; pass the same "
                           "--secret-file that `faceveil shard` used")  # fmt: skip
        return src, sharding.read_index(src)
    target = out.child(planning.PLAN_DIR)
    if config.resume and (entries := planning.reusable_plan(target, secret)) is not None:
        log.info("resuming with the plan in %s", target.uri)
        return target, entries
    log.info("planning %s into %s", config.input, target.uri)
    planning.write_plan(config.input, target, secret, config.shard_size,
                        max_member_bytes=config.anon.max_file_bytes)  # fmt: skip
    return target, planning.read_plan(target)


def open_job(config: JobConfig, out: Location) -> dict:
    """Start job.json, or on --resume reuse it after checking the config is the same."""
    if out.exists(JOB_FILE):
        job = out.read_json(JOB_FILE)
        if not config.resume:
            raise JobError(f"{out.uri} already holds job {job['job_id']}; pass --resume to "
                           "finish it or choose an empty output")  # fmt: skip
        if job.get("config_sha256") != config.output_config_sha256():
            raise JobError(f"{out.uri} holds a job with another config; --resume needs the same "
                           "method, detector and options")  # fmt: skip
        return {**job, "_resumed": True}
    if out.listdir("_done"):
        raise JobError(f"{out.uri} has shard markers but no job.json; choose an empty output")
    job = {
        "job_id": uuid.uuid4().hex,
        "created": time.time(),
        "status": "running",
        "config": config.output_config(),
        "config_sha256": config.output_config_sha256(),
        "versions": _versions(),
    }
    return job


def _versions() -> dict:
    import onnxruntime

    from jobs import __version__

    return {"faceveil": __version__, "python": platform.python_version(),
            "ray": ray.__version__, "onnxruntime": onnxruntime.__version__}  # fmt: skip


def pending_tasks(src: Location, entries: list, out: Location, resume: bool) -> list[ShardTask]:
    done = {name.removesuffix(".json") for name in out.listdir("_done")} if resume else set()
    return [
        ShardTask(e.shard, src.url(e.file), e.samples, e.sha256)
        for e in entries
        if e.shard.removesuffix(".tar") not in done
    ]


def _execute(tasks: list[ShardTask], config: JobConfig, anon: AnonConfig, actors: int,
             counter, key_holder, summary: JobSummary, observer=None,
             surrogate_context=None) -> None:  # fmt: skip
    """Map the pool over the shards with Ray Data, streaming one summary row per shard."""
    ds = map_over_shards(tasks, ShardProcessor, actors, config.pool, {
        "anon": anon,
        "out_uri": config.output,
        "batch_size": config.pool.batch_size,
        "counter": counter,
        "key_holder": key_holder,
        "observer": observer,
        "surrogate_context": surrogate_context,
    })  # fmt: skip
    audits: dict[str, dict] = {}
    for row in ds.iter_rows():
        if row["audit"]:
            audits[row["actor"]] = json.loads(row["audit"])
        if row["status"] == "failed":
            summary.failed.append({"shard": row["shard"], "error": row["error"]})
            continue
        summary.shards_done += 1
        summary.samples_in += row["samples_in"]
        summary.samples_out += row["anonymized"] + row["no_face"]
        summary.quarantined += row["quarantined"]
        summary.faces += row["faces"]
    if observer is not None and audits:
        from jobs.privacy_report import write_privacy_report

        write_privacy_report(f"{config.output.rstrip('/')}/report", list(audits.values()),
                             keep_originals=config.audit.report_originals)  # fmt: skip


def _watch(counter, display: ProgressDisplay, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        display.update(*ray.get(counter.get.remote()))
    display.update(*ray.get(counter.get.remote()))


def run_job(config: JobConfig) -> JobSummary:
    """Run (or resume) a whole job; returns its summary, raises JobError if any shard failed."""
    from jobs.auditlog import log_started
    from jobs.keyfile import load_secret
    from jobs.keys import Secrets, audit, escrow_mode, open_keys

    started = time.monotonic()
    out = Location(config.output)
    pseudonym_key = _pseudonym_key(config)
    job = open_job(config, out)  # checks only: nothing is written before sharding succeeds
    resuming = job.pop("_resumed", False)
    _record_key(job, pseudonym_key)
    escrow_mode(config.escrow, job, resuming)  # refuse missing escrow flags before sharding
    secret = load_secret(config.secret_file)
    src, entries = resolve_shards(config, out, secret)
    keys = open_keys(config.escrow, out, job, resuming)
    out.publish_json(job, JOB_FILE)
    tasks = pending_tasks(src, entries, out, config.resume)
    summary = JobSummary(job["job_id"], len(entries), shards_skipped=len(entries) - len(tasks))
    if keys is not None:
        started = log_started(out)  # a run whose job.start failed wrote no entry
        anchor = _audit_anchor(config, out, started)
        details = {**keys.start_details(), "resumed": resuming, "shards_to_do": len(tasks),
                   "audit_anchor": anchor}  # fmt: skip
        audit(out, keys, "job.resume" if started else "job.start", details, anchor)
    elif config.audit.anchor:
        raise JobError("--audit-anchor anchors the signed audit log, which a run without "
                       "escrow does not write")  # fmt: skip
    transit = os.urandom(32) if pseudonym_key is not None else None
    secrets = Secrets(secret, keys.sealing if keys is not None else None, pseudonym_key, transit)
    try:
        _process(config, tasks, secrets, summary, job, (src, entries))
    finally:
        summary.seconds = time.monotonic() - started
        _finish_job(out, job, summary, keys)
    return summary


def _audit_anchor(config: JobConfig, out: Location, started: bool) -> str | None:
    """The run's audit anchor: ``--audit-anchor``, or once the log has begun the one its start
    entry names (a resume cannot change it)."""
    from jobs.auditlog import recorded_anchor

    if not started:
        return config.audit.anchor
    recorded = recorded_anchor(out)
    if config.audit.anchor and config.audit.anchor.rstrip("/") != (recorded or "").rstrip("/"):
        raise JobError(f"this job's audit log is anchored at {recorded!r}, not at "
                       f"{config.audit.anchor!r}")  # fmt: skip
    return recorded


def _pseudonym_key(config: JobConfig) -> bytes | None:
    """The team's pseudonym key for --method surrogate (None for other methods)."""
    from jobs.keyfile import load_key_file

    if config.anon.method != "surrogate":
        if config.surrogate.key_file:
            raise JobError("--key-file is used by --method surrogate only")
        return None
    for flag, path in (("--attributes", config.surrogate.attributes),
                       ("--recognizer", config.anon.recognizer)):  # fmt: skip
        if path and not Path(path).is_file():
            raise JobError(f"{flag} {path} is not a file")
    if not config.surrogate.key_file:
        raise JobError("--method surrogate needs --key-file, the team's pseudonym key; create "
                       "one with `faceveil key new team.key` and keep it safe")  # fmt: skip
    return load_key_file(config.surrogate.key_file)


def _record_key(job: dict, key: bytes | None) -> None:
    """Record the pseudonym key's fingerprint; a resumed job must use the same key."""
    from jobs.firstpass import key_fingerprint

    if key is None:
        return
    found = key_fingerprint(key)
    recorded = job.get("surrogate", {}).get("key_fingerprint")
    if recorded is not None and recorded != found:
        raise JobError(f"this job's surrogates were made with another key (fingerprint "
                       f"{recorded}, this --key-file has {found}); resume with that "
                       "key")  # fmt: skip
    job["surrogate"] = {**job.get("surrogate", {}), "key_fingerprint": found}


def _surrogate_setup(config: JobConfig, sources, anon: AnonConfig, actors: int, holder,
                     secrets, job: dict):  # fmt: skip
    """Run the first pass over (a sample of) every shard, done or not, so a resumed job gets
    the same identities and donors; records its summary in ``job``."""
    from anon_core.surrogate.build import attribute_probes
    from jobs.firstpass import FirstPassError, first_pass_entries, run_first_pass

    src, entries = sources
    chosen = first_pass_entries(entries, config.surrogate.first_pass_shards)
    tasks = pending_tasks(src, chosen, Location(config.output), resume=False)
    log.info("surrogate first pass over %d of %d shards", len(tasks), len(entries))
    try:
        probes = ()
        if config.surrogate.attributes:
            cpu = replace(anon, device="cpu")
            detector = build_detector(cpu.detector, cpu.model_root, cpu.threshold, "cpu")
            probes = attribute_probes(config.surrogate.attributes, detector, build_embedder(cpu))
        with _live_progress(config, sum(t.samples for t in tasks), "first pass") as counter:
            setup = run_first_pass(config, tasks, anon, actors, holder, secrets, probes, counter)
    except FirstPassError as exc:
        raise JobError(str(exc)) from None
    job["surrogate"]["first_pass"] = setup.info
    return setup.context


def _process(config: JobConfig, tasks: list[ShardTask], secrets, summary: JobSummary,
             job: dict, sources) -> None:  # fmt: skip
    """Start or join Ray, size the pool, and process ``tasks`` with a live progress display
    (after the surrogate's first pass, which has a display of its own)."""
    if not tasks:
        return
    we_started = connect(config.address)
    try:
        resources = wait_for_resources(config.pool, joined=not we_started)
        pool = size_pool(config.pool, resources)
        device = "cuda" if config.pool.gpus_per_actor > 0 else "cpu"
        anon = replace(config.anon, device=device,
                       threads=max(1, int(config.pool.cpus_per_actor)))  # fmt: skip
        holder = hold_secrets(secrets)
        context = None
        if secrets.pseudonym_key is not None:
            context = _surrogate_setup(config, sources, anon, pool, holder, secrets, job)
        actors = min(pool, len(tasks))
        log.info("processing %d shards on %d actors (%s)", len(tasks), actors, device)
        with _live_progress(config, sum(t.samples for t in tasks), "anonymize") as counter:
            _execute(tasks, config, anon, actors, counter, holder, summary,
                     privacy_sampler(config), context)  # fmt: skip
    finally:
        if we_started:
            ray.shutdown()


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


def _finish_job(out: Location, job: dict, summary: JobSummary, keys) -> None:
    """Record totals in job.json (and the audit tail with escrow); raise if shards failed."""
    from jobs.keys import audit

    markers = [out.read_json("_done", n) for n in out.listdir("_done") if n.endswith(".json")]
    totals = {k: sum(m[k] for m in markers)
              for k in ("samples_in", "anonymized", "no_face", "quarantined", "faces")}  # fmt: skip
    complete = not summary.failed and len(markers) == summary.shards_total
    job.update(status="complete" if complete else "incomplete", totals=totals,
               shards={"total": summary.shards_total, "done": len(markers)},
               failed=summary.failed)  # fmt: skip
    if keys is not None:
        sealed = {m["shard"].removesuffix(".tar"): m["manifest"] for m in markers
                  if m.get("escrow_id") == keys.escrow_id}  # fmt: skip
        audit(out, keys, "job.manifests", {"escrow_id": keys.escrow_id, "manifests": sealed})
        details = {"status": job["status"], "totals": totals, "failed_shards": len(summary.failed)}
        tail = audit(out, keys, "job.end", details)
        summary.audit_key_id, summary.audit_tail = keys.audit.signer, str(tail)
        job.update(keys.job_json_fields(tail))
    out.publish_json(job, JOB_FILE)
    if summary.failed:
        names = ", ".join(f["shard"] for f in summary.failed[:10])
        raise JobError(f"{len(summary.failed)} shards failed ({names}; first: "
                       f"{summary.failed[0]['error']}); fix the cause and rerun "
                       "with --resume: done shards are kept")  # fmt: skip
