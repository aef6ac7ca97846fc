"""Live progress across actors (a counter actor the driver polls) and log formatting."""

from __future__ import annotations

import json
import logging
import sys
import time

import ray


@ray.remote(num_cpus=0)
class ProgressCounter:
    """Totals reported by every actor; cheap to call, holds only three integers."""

    def __init__(self) -> None:
        self.totals = [0, 0, 0]

    def add(self, samples: int, faces: int, quarantined: int) -> None:
        self.totals[0] += samples
        self.totals[1] += faces
        self.totals[2] += quarantined

    def get(self) -> tuple[int, int, int]:
        return tuple(self.totals)


class BufferedProgress:
    """Actor-side callback that batches increments and flushes at most every ``interval`` s."""

    def __init__(self, counter, interval: float = 0.5) -> None:
        self.counter = counter
        self.interval = interval
        self.pending = [0, 0, 0]
        self.last = time.monotonic()

    def __call__(self, samples: int, faces: int, quarantined: int) -> None:
        self.pending[0] += samples
        self.pending[1] += faces
        self.pending[2] += quarantined
        if time.monotonic() - self.last >= self.interval:
            self.flush()

    def flush(self) -> None:
        if any(self.pending):
            self.counter.add.remote(*self.pending)
        self.pending = [0, 0, 0]
        self.last = time.monotonic()


class ProgressDisplay:
    """A tqdm bar (samples/s, faces, quarantined) on a terminal, JSON lines in cluster logs."""

    def __init__(self, total: int, enabled: bool, json_lines: bool, every: float = 10.0,
                 stage: str = "anonymize") -> None:  # fmt: skip
        self.total = total
        self.stage = stage
        self.json_lines = json_lines
        self.every = every
        self.started = time.monotonic()
        self.last_line = 0.0
        self.bar = None
        if enabled and not json_lines:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", dynamic_ncols=True, file=sys.stderr,
                            desc=stage)  # fmt: skip

    def update(self, samples: int, faces: int, quarantined: int) -> None:
        if self.bar is not None:
            self.bar.n = samples
            self.bar.set_postfix(faces=faces, quarantined=quarantined, refresh=False)
            self.bar.refresh()
        elif self.json_lines and time.monotonic() - self.last_line >= self.every:
            self.last_line = time.monotonic()
            logging.getLogger("faceveil.progress").info(
                "progress", extra={"fields": self._fields(samples, faces, quarantined)}
            )

    def _fields(self, samples: int, faces: int, quarantined: int) -> dict:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = round(samples / elapsed, 2)
        return {"stage": self.stage, "samples": samples, "total": self.total, "faces": faces,
                "quarantined": quarantined, "samples_per_s": rate}  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and any ``fields`` extra."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, sort_keys=True)


def configure_logging(log_format: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party loggers stay at WARNING even with -v: fsspec logs every path it opens at DEBUG,
    # and source paths are people's names.
    for noisy in ("ray", "filelock", "botocore", "s3fs", "aiobotocore", "urllib3", "fsspec", "PIL"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
