"""Process-tree helpers for fault tests: find a job's processes, clean up what we started."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from bench.common import read_stat, tree_pids


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(root: int) -> dict[int, int]:
    """Live descendants of ``root`` (not ``root`` itself) as ``pid -> start ticks``."""
    return {pid: start for pid, (start, _) in tree_pids(root).items() if pid != root}


def find(root: int, needle: str) -> list[int]:
    """Descendants of ``root`` whose command line (Ray's process title) contains ``needle``."""
    return sorted(pid for pid in descendants(root) if needle in cmdline(pid))


def kill_survivors(snapshot: dict[int, int]) -> list[int]:
    """SIGKILL every process of ``snapshot`` (pid -> start ticks) that is still the same process
    and still alive; returns the pids killed."""
    killed = []
    for pid, start in snapshot.items():
        stat = read_stat(pid)
        if stat is not None and stat[1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.append(pid)
    return killed


def wait_for(condition: Callable[[], object], timeout: float, what: str, step: float = 0.05):
    """Poll ``condition`` until it returns something truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
