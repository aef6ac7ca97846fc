"""Local and object-store folders through fsspec; publish by rename (local) or one PUT (stores)."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from faceveil.manifests.canonical import canonical_json
from faceveil.manifests.files import atomic_write

log = logging.getLogger(__name__)

T = TypeVar("T")

# errno values an object store (through s3fs, gcsfs, adlfs) gives for throttling, 5xx answers and
# broken connections: worth another try. ENOSPC, EACCES, ENOENT and the like are not.
TRANSIENT_ERRNOS = frozenset(
    {errno.EAGAIN, errno.EBUSY, errno.EIO, errno.EREMOTEIO, errno.ETIMEDOUT, errno.ECONNRESET,
     errno.ECONNREFUSED, errno.ECONNABORTED, errno.EPIPE, errno.ENETUNREACH, errno.EHOSTUNREACH}
)  # fmt: skip


class StorageError(OSError):
    """A read or write that failed for good; the message names the file and the cause."""


def _error_types() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(errors a store call may raise, those of them that are always transient)."""
    raised: list[type[BaseException]] = [OSError]
    transient: list[type[BaseException]] = [ConnectionError, TimeoutError]
    with contextlib.suppress(ImportError):
        from botocore import exceptions as boto

        raised += [boto.BotoCoreError, boto.ClientError]
        transient += [boto.ConnectionError, boto.HTTPClientError]
    with contextlib.suppress(ImportError):
        import aiohttp

        raised.append(aiohttp.ClientError)
        transient.append(aiohttp.ClientConnectionError)
    return tuple(raised), tuple(transient)


_STORE_ERRORS, _TRANSIENT_TYPES = _error_types()
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                    "ServiceUnavailable", "InternalError", "503", "500"}  # fmt: skip


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is worth retrying: throttling, a 5xx answer, a dropped connection."""
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    response = getattr(exc, "response", None)  # botocore ClientError not translated by s3fs
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or response.get("Error", {}).get("Code") in _TRANSIENT_CODES
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff for object-store calls: ``attempts`` tries in all, waiting
    ``first_delay_s``, then twice as long each time, at most ``max_delay_s``."""

    attempts: int = 5
    first_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("a retry policy needs at least one attempt")

    def call(self, fn: Callable[[], T], what: str) -> T:
        """``fn()``, retried while it fails transiently; StorageError once the tries run out.

        Errors that are not transient are raised at once, unchanged when they are OSErrors.
        """
        delay, attempt = self.first_delay_s, 0
        while True:
            attempt += 1
            try:
                return fn()
            except _STORE_ERRORS as exc:
                if not is_transient(exc):
                    if isinstance(exc, OSError):
                        raise
                    raise StorageError(errno.EIO, f"{what}: {type(exc).__name__}: {exc}") from exc
                if attempt == self.attempts:
                    cause = f"{type(exc).__name__}: {exc}"
                    message = f"{what}: still failing after {attempt} attempts ({cause})"
                    raise StorageError(errno.EIO, message) from exc
                retry = f"retry {attempt} of {self.attempts - 1}"
                log.warning("%s failed (%s), %s in %.1f s", what, type(exc).__name__, retry, delay)
                time.sleep(delay)
                delay = min(2 * delay, self.max_delay_s)


class Location:
    """A folder on a filesystem (``./out``, ``/data/x``, ``s3://bucket/prefix``).

    Object-store calls are retried on transient errors under ``retry``; a write that fails for
    good raises StorageError naming the file. Listings and existence checks always ask the
    store, never fsspec's listing cache, so markers written by other processes are seen.
    """

    def __init__(self, uri: str, retry: RetryPolicy | None = None, **storage_options: object):
        self.fs, root = fsspec.core.url_to_fs(uri, **storage_options)
        self.uri = uri.rstrip("/")
        self.root = root.rstrip("/") if root not in ("/", "") else root
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.retry = retry or RetryPolicy()

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts]) if self.root else "/".join(parts)

    def url(self, *parts: str) -> str:
        """A full URI for ``parts`` (with the protocol), for messages and for other processes."""
        return "/".join([self.uri, *parts])

    def child(self, *parts: str) -> Location:
        loc = object.__new__(Location)
        loc.fs, loc.is_local, loc.retry = self.fs, self.is_local, self.retry
        loc.uri, loc.root = self.url(*parts), self.path(*parts)
        return loc

    def _call(self, fn: Callable[[], T], what: str) -> T:
        return fn() if self.is_local else self.retry.call(fn, what)

    def _fresh(self, path: str) -> str:
        self.fs.invalidate_cache(path)
        return path

    def exists(self, *parts: str) -> bool:
        path = self.path(*parts)
        return self._call(lambda: self.fs.exists(self._fresh(path)), f"check {self.url(*parts)}")

    def read_bytes(self, *parts: str) -> bytes:
        path = self.path(*parts)
        return self._call(lambda: self.fs.cat_file(path), f"read {self.url(*parts)}")

    def read_json(self, *parts: str) -> dict:
        return json.loads(self.read_bytes(*parts))

    def listdir(self, *parts: str) -> list[str]:
        """Base names in a folder, sorted; an absent folder is empty."""
        path = self.path(*parts)

        def names() -> list[str]:
            if not self.fs.exists(self._fresh(path)):
                return []
            return [Path(p.rstrip("/")).name for p in self.fs.ls(path, detail=False)]

        return sorted(self._call(names, f"list {self.url(*parts)}"))

    def publish_bytes(self, data: bytes, *parts: str) -> None:
        """Make ``data`` appear at ``parts`` all at once: temp name + rename, or a single PUT."""
        target, url = self.path(*parts), self.url(*parts)
        with _clear_errors(url):
            if self.is_local:
                atomic_write(target, lambda f: f.write(data))
            else:
                self.retry.call(lambda: self.fs.pipe_file(target, data), f"write {url}")

    def publish_file(self, local_path: str, *parts: str) -> None:
        """Publish a finished local file: copy beside the target then rename, or one PUT."""
        target, url = self.path(*parts), self.url(*parts)
        with _clear_errors(url):
            if self.is_local:
                atomic_write(target, lambda f: _copy_into(local_path, f))
            else:
                self.retry.call(lambda: self.fs.put_file(local_path, target), f"write {url}")

    def publish_json(self, obj: object, *parts: str) -> None:
        self.publish_bytes(canonical_json(obj), *parts)

    def remove(self, *parts: str) -> None:
        path = self.path(*parts)
        if self.fs.exists(path):
            self.fs.rm(path)


@contextlib.contextmanager
def _clear_errors(url: str):
    """Turn a failed write into one StorageError that says which file and why (disk full,
    permission denied, not a directory), keeping the errno."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise StorageError(exc.errno, f"cannot write {url}: {reason}") from exc


def _copy_into(local_path: str, f) -> None:
    with open(local_path, "rb") as src:
        shutil.copyfileobj(src, f, 1 << 20)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
