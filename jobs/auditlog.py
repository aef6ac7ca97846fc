"""A job's audit log in its output tree: the one append function, the anchor, and verification.

Every entry of ``OUT/audit.jsonl`` (written by ``faceveil run``, restore and escrow commands) goes
through :func:`append`. When the job's signed ``job.start`` entry names an anchor
(``details.audit_anchor``, from ``faceveil run --audit-anchor URL``), each append first writes the
new tail there as a new object ``URL/{seq:012d}.json`` holding ``{"job_id", "seq", "sha256"}``
(canonical JSON), never overwriting one (an object that exists with other content fails the
append), and only then appends the line: a failed anchor write leaves the log as it was.
The anchor is meant to be outside the reach of whoever can write OUT, e.g. an S3 bucket with
Object Lock. On S3 the verifier reads every object version (``s3:ListBucketVersions``): on a
versioned bucket a plain DELETE only adds a delete marker and a PUT adds a version, and either
fails verification instead of hiding a cut log. Other object stores are read as listed.

:func:`verify_tree` checks the log on its own (:func:`manifests.audit.verify_log`: chain,
signatures, signer roles, pins), every approval's custodian statement (:func:`check_approval`),
then the anchor: the log must have exactly the anchored lines, each equal to its anchored tail.
``job.json``'s ``audit.tail`` is unsigned and is only shown as a hint.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from faceveil.jobs.storage import Location
from faceveil.manifests.audit import AuditTail, AuditWriter, LogReport, verify_log
from faceveil.manifests.canonical import canonical_json
from faceveil.manifests.custodian import b64d
from faceveil.manifests.errors import AuditError, RestoreError
from faceveil.manifests.restore import check_statement

log = logging.getLogger(__name__)

LOG_FILE = "audit.jsonl"
_ANCHOR_NAME = re.compile(r"(\d{12})\.json")


class Tree(Protocol):
    """What :func:`append` needs of an output tree (a :class:`~jobs.storage.Location` or an
    ``OutTree``): its fsspec file system, paths inside it, and whether it is local."""

    fs: object
    is_local: bool

    def path(self, rel: str) -> str: ...


def _tree(out: Tree | str) -> Tree:
    return Location(out) if isinstance(out, str) else out


class Anchor:
    """An append-only folder (fsspec URL) of a log's tails, one object per ``seq``."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.loc = Location(self.url)

    def __repr__(self) -> str:
        return f"Anchor({self.url!r})"

    def write(self, job_id: str | None, tail: AuditTail) -> None:
        """Record ``tail`` as a new object; the same content again is a no-op (a retry)."""
        name = f"{tail.seq:012d}.json"
        data = canonical_json({"job_id": job_id, "seq": tail.seq, "sha256": tail.sha256})
        if self.loc.exists(name):
            if self.loc.read_bytes(name) == data:
                return
            raise AuditError(f"the anchor {self.url} already holds another line {tail.seq}")
        path = self.loc.path(name)
        try:
            if self.loc.is_local:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "xb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            else:
                self.loc.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            raise AuditError(f"the anchor {self.url} already holds a line {tail.seq}") from None
        except OSError as exc:
            raise AuditError(f"cannot write the audit anchor {self.url}: {exc}") from None

    def _s3_names(self) -> list[str]:
        """Names under an S3 anchor, from every version: an object hidden by a delete marker
        or overwritten (Object Lock keeps the old versions) fails."""
        bucket, prefix, _ = self.loc.fs.split_path(self.loc.root)
        prefix = prefix.rstrip("/") + "/"
        etags: dict[str, set[str]] = {}
        args = {"Bucket": bucket, "Prefix": prefix}
        while True:
            page = self.loc.fs.call_s3("list_object_versions", **args)
            for marker in page.get("DeleteMarkers", []):
                name = marker["Key"][len(prefix) :]
                raise AuditError(f"the anchor object {name} was deleted (a delete marker hides it)")
            for version in page.get("Versions", []):
                etags.setdefault(version["Key"][len(prefix) :], set()).add(version["ETag"])
            if not page.get("IsTruncated"):
                break
            args |= {"KeyMarker": page["NextKeyMarker"]}
            args |= {"VersionIdMarker": page["NextVersionIdMarker"]}
        for name, tags in etags.items():
            if len(tags) > 1:
                raise AuditError(f"the anchor object {name} was overwritten")
        return sorted(etags)

    def read(self, job_id: str | None) -> dict[int, str]:
        """``seq -> sha256`` of every anchored tail; AuditError on an object that is not one
        of this job's tails (or, on S3, on one deleted or overwritten)."""
        tails = {}
        on_s3 = "s3" in self.loc.fs.protocol
        for name in self._s3_names() if on_s3 else self.loc.listdir():
            match = _ANCHOR_NAME.fullmatch(name)
            if not match:
                raise AuditError(f"the anchor {self.url} holds a foreign object {name!r}")
            try:
                doc = json.loads(self.loc.read_bytes(name))
                seq, sha = doc["seq"], doc["sha256"]
                ok = doc["job_id"] == job_id and seq == int(match.group(1)) and len(sha) == 64
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                raise AuditError(f"the anchor object {name} is not a tail of job {job_id}")
            tails[seq] = sha
        return tails


def _start_entry(log_bytes: bytes) -> dict:
    try:
        entry = json.loads(log_bytes.split(b"\n", 1)[0])
        return entry["details"] if entry["action"] == "job.start" else {}
    except (ValueError, KeyError, TypeError):
        raise AuditError("the first line is not an audit entry", 1) from None


def _log_bytes(tree: Tree) -> bytes:
    path = tree.path(LOG_FILE)
    return tree.fs.cat_file(path) if tree.fs.exists(path) else b""


def log_started(out: Tree | str) -> bool:
    """Whether the log has an entry (a run whose ``job.start`` failed left none)."""
    return bool(_log_bytes(_tree(out)))


def recorded_anchor(out: Tree | str) -> str | None:
    """The anchor URL the log's first entry names (None: no log, or an unanchored one)."""
    log_bytes = _log_bytes(_tree(out))
    return _start_entry(log_bytes).get("audit_anchor") if log_bytes else None


# The anchor (and job id) for a new entry after ``old``: the start entry's, checked against
# ``anchor`` when the caller names one.
def _anchor_for(
    old: bytes, details: Mapping, anchor: str | None
) -> tuple[Anchor | None, str | None]:
    start = _start_entry(old) if old else dict(details)
    recorded = start.get("audit_anchor")
    if anchor is not None and anchor.rstrip("/") != (recorded or "").rstrip("/"):
        raise AuditError(f"this job's audit log is anchored at {recorded!r}, not {anchor!r}")
    return (Anchor(recorded) if recorded else None), start.get("job_id")


def _extend(old: bytes, writer: AuditWriter, action: str, details: Mapping, anchor) -> tuple:
    new, tail = writer.append(old, action, details)
    target, job_id = _anchor_for(old, details, anchor)
    if target is not None:
        target.write(job_id, tail)
    return new, tail


def append(
    out: Tree | str,
    writer: AuditWriter,
    action: str,
    details: Mapping,
    anchor: str | None = None,
) -> AuditTail:
    """Append one signed entry to ``OUT/audit.jsonl``, anchored first; returns the new tail.

    ``out`` is a :class:`~jobs.storage.Location`, an ``OutTree`` or a URL. The anchor is the
    one the log's ``job.start`` names (for ``job.start`` itself: ``details.audit_anchor``);
    ``anchor``, when given, must be that one. Locally the append holds a file lock; on an
    object store it is one read and one PUT (no concurrent appenders).
    """
    tree = _tree(out)
    path = tree.path(LOG_FILE)
    if not tree.is_local:
        old = tree.fs.cat_file(path) if tree.fs.exists(path) else b""
        new, tail = _extend(old, writer, action, details, anchor)
        tree.fs.pipe_file(path, new)
        return tail
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "ab+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        old = f.read()
        new, tail = _extend(old, writer, action, details, anchor)
        f.write(new[len(old) :])
        f.flush()
        os.fsync(f.fileno())
    log.debug("audit entry %d (%s) appended", tail.seq, action)
    return tail


def check_approval(details: Mapping, custodian_public: bytes) -> None:
    """AuditError unless a ``restore.approve`` entry's ``details`` embed a statement that the
    custodian (``custodian_public``) signed, about the same request and custodian."""
    try:
        statement, custodian = details["statement"], details["custodian"]
        signature = b64d(details["custodian_signature"], "custodian signature", 64)
        same = (statement["request_sha256"], statement["custodian"]) == (
            details["request_sha256"],
            custodian,
        )
    except (KeyError, TypeError, ValueError):
        raise AuditError("a malformed approval record") from None
    if not same:
        raise AuditError("the approval record does not match its signed statement")
    try:
        check_statement(statement, signature, custodian_public)
    except RestoreError:
        raise AuditError(f"the approval by {custodian!r}: bad custodian signature") from None


@dataclass(frozen=True)
class Verified:
    """A log that verified, and against what: the anchor URL (None: unanchored), whether job
    keys were pinned, and ``job.json``'s unsigned tail (a hint only)."""

    report: LogReport
    anchor: str | None
    pinned: bool
    job_json_tail: str | None

    def summary(self) -> list[str]:
        """What ``faceveil audit verify`` prints."""
        tail, keys = self.report.tail, ", ".join(self.report.job_keys)
        out = [f"audit log OK: {tail.seq} entries, tail {tail}, job signing key(s) {keys}"]
        if self.anchor:
            out.append(f"anchored: lines 1..{tail.seq} match the tails at {self.anchor}")
        else:
            out.append(f"unanchored: truncation after line {tail.seq} cannot be detected")
            if not self.pinned:
                out.append(
                    "trust rests on the job key ids published when the run started: compare "
                    "them with the ids above, or pin them with --job-key"
                )
        if self.job_json_tail and self.job_json_tail != str(tail):
            out.append(f"hint: job.json (unsigned, not trusted) records tail {self.job_json_tail}")
        return out


def _check_anchor(report: LogReport, anchored: Mapping[int, str], url: str) -> None:
    count = report.tail.seq
    last = max(anchored, default=0)
    if last > count:
        raise AuditError(
            f"the log ends at line {count} but {url} anchors line {last}: lines were removed",
            count + 1,
        )
    for seq in range(1, count + 1):
        if seq not in anchored:
            raise AuditError(f"not anchored at {url}: appended without anchoring", seq)
        if anchored[seq] != report.line_sha256[seq - 1]:
            raise AuditError(f"differs from its anchored tail at {url}", seq)


def _check_expected(report: LogReport, expected: AuditTail) -> None:
    if report.tail.seq < expected.seq:
        raise AuditError(
            f"the log ends at line {report.tail.seq} but the expected tail is line "
            f"{expected.seq}: trailing lines were removed",
            report.tail.seq + 1,
        )
    if report.line_sha256[expected.seq - 1] != expected.sha256:
        raise AuditError("differs from the expected tail", expected.seq)


def verify_tree(
    out: Tree | str,
    pins: Iterable[str] | None = None,
    anchor: str | None = None,
    expected_tail: AuditTail | None = None,
) -> Verified:
    """Verify ``OUT/audit.jsonl``: the log itself (roles, pins, approvals), then the anchor.

    The anchor is the one the verified ``job.start`` names, or ``anchor`` (which must equal
    it when both exist; given alone, it is checked all the same). ``pins``: job key ids, each
    of which the log must declare and none other (None or empty: no pinning).
    ``expected_tail``: a tail recorded out of band, which the log must still contain.
    Raises :class:`~manifests.errors.AuditError` naming the first bad line.
    """
    tree = _tree(out)
    report = verify_log(tree.fs.cat_file(tree.path(LOG_FILE)), pins or None, check_approval)
    recorded = report.anchor.rstrip("/") if report.anchor else None
    given = anchor.rstrip("/") if anchor else None
    if recorded and given and recorded != given:
        raise AuditError(f"--anchor {given} is not the anchor the signed start names: {recorded}")
    url = recorded or given
    if url:
        _check_anchor(report, Anchor(url).read(report.job_id), url)
    if expected_tail is not None:
        _check_expected(report, expected_tail)
    return Verified(report, url, bool(pins), _job_json_tail(tree))


def _job_json_tail(tree: Tree) -> str | None:
    path = tree.path("job.json")
    if not tree.fs.exists(path):
        return None
    try:
        return json.loads(tree.fs.cat_file(path)).get("audit", {}).get("tail")
    except (ValueError, AttributeError):
        return None
