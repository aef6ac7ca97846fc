"""``Prefetcher``: CPU threads decode the next window and encode the last one while the
accelerator works on the current one; order is kept and every item comes back as a result."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from faceveil.anon_core.imageio import DecodedImage
from faceveil.anon_core.results import AnonResult, quarantined

log = logging.getLogger(__name__)


class Stages(Protocol):
    """An anonymizer split into a CPU decode, a stage over a window (``FaceAnonymizer.process``),
    and a CPU encode."""

    def decode(self, item: bytes | np.ndarray) -> DecodedImage | AnonResult: ...
    def process(self, decoded: Sequence[DecodedImage | AnonResult]) -> list[Any]: ...
    def finish(self, staged: Any) -> AnonResult: ...


def safe_decode(stages: Stages, item: bytes | np.ndarray) -> DecodedImage | AnonResult:
    """Decode one untrusted item; any failure quarantines that item alone (fail closed)."""
    try:
        return stages.decode(item)
    except Exception as exc:  # untrusted bytes: whatever a decoder raises quarantines the item
        log.warning("decode failed: %s", type(exc).__name__)
        return quarantined("decode", f"decoder failed ({type(exc).__name__})")


def safe_finish(stages: Stages, staged: Any) -> AnonResult:
    """Encode one processed item; a failure quarantines it, never passes the original on."""
    try:
        return stages.finish(staged)
    except Exception as exc:  # one image's encoder failure must not take its window down
        log.warning("encode failed: %s", type(exc).__name__)
        return quarantined("anonymize", f"encode failed ({type(exc).__name__})")


def process_window(stages: Stages, decoded: list[DecodedImage | AnonResult]) -> list[Any]:
    """The device stage over one window, checked to account for every item."""
    staged = stages.process(decoded)
    if len(staged) != len(decoded):
        raise RuntimeError(f"device stage returned {len(staged)} results for {len(decoded)} items")
    return staged


class Prefetcher:
    """Runs ``stages`` over windows of images with decode and encode overlapped on threads.

    While window k is on the accelerator, window k+1 is decoding and window k-1 encoding on a
    thread pool (PIL and OpenCV release the GIL). ``map`` yields one list of AnonResult per
    window, in input order; an item that fails to decode or encode comes back quarantined. An
    error of the device stage itself propagates (the caller's shard then fails and is redone).
    """

    def __init__(
        self, stages: Stages, workers: int = 4, pool: ThreadPoolExecutor | None = None
    ) -> None:
        if pool is None and workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.stages = stages
        self._own = pool is None
        self.pool = pool or ThreadPoolExecutor(workers, thread_name_prefix="faceveil-io")

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the thread pool if this object made it."""
        if self._own:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def map(self, windows: Iterable[Sequence[bytes | np.ndarray]]) -> Iterator[list[AnonResult]]:
        """One result list per window, each in the order of its items."""
        source = iter(windows)
        decoding = self._decode(next(source, None))
        encoding: list[Future] | None = None
        try:
            while decoding is not None:
                decoded = [f.result() for f in decoding]
                decoding = self._decode(next(source, None))
                staged = process_window(self.stages, decoded)
                current = [self.pool.submit(safe_finish, self.stages, s) for s in staged]
                if encoding is not None:
                    yield [f.result() for f in encoding]
                encoding = current
            if encoding is not None:
                yield [f.result() for f in encoding]
        finally:
            for future in (decoding or []) + (encoding or []):
                future.cancel()

    def _decode(self, window: Sequence[bytes | np.ndarray] | None) -> list[Future] | None:
        if window is None:
            return None
        return [self.pool.submit(safe_decode, self.stages, item) for item in window]
