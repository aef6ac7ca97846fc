"""Shared helpers for the bench scripts: dataset replication, process-tree sampling, timing."""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_REPO = Path(__file__).resolve().parents[1]
_RUN_SUMMARY = re.compile(
    r"(\d+)/(\d+) shards done .* (\d+) samples in, (\d+) out, (\d+) quarantined, (\d+) faces, "
    r"(\d+) shards failed, ([\d.]+) samples/s"
)
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def source_images(root: str | Path) -> list[Path]:
    """Every image file under ``root``, sorted, so replicas are the same on every run."""
    paths = [p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        raise FileNotFoundError(f"no images under {root}")
    return sorted(paths)


def replicate_dataset(sources: Sequence[Path], dest: str | Path, count: int) -> list[Path]:
    """Fill the flat folder ``dest`` with ``count`` images cycling over ``sources``.

    Names are non-identifying (``img_000123.jpg``), since source names can be people's names.
    Files are hard links where the file system allows it, else copies; the bytes of replicas
    repeat, only the names are distinct.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        src = sources[i % len(sources)]
        target = dest / f"img_{i:06d}{src.suffix.lower()}"
        try:
            os.link(src, target)
        except OSError:
            shutil.copyfile(src, target)
        out.append(target)
    return out


@dataclass
class TreeSample:
    """One look at a process tree: wall time (epoch s), CPU seconds so far, memory in bytes."""

    time: float
    cpu_s: float
    rss: int
    pss: int
    processes: int


def read_stat(pid: int) -> tuple[int, int, float] | None:
    """(ppid, start ticks, user+sys CPU seconds) from /proc/PID/stat, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / _TICK


def _read_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _read_pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def tree_pids(root: int) -> dict[int, tuple[int, float]]:
    """Live descendants of ``root`` (and ``root``) as ``pid -> (start ticks, CPU seconds)``."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None:
                stats[int(name)] = stat
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            found[pid] = stats[pid][1:]
            todo.extend(children.get(pid, ()))
    return found


class ProcessTreeSampler:
    """Samples a process tree every ``interval`` s on a thread: summed RSS (and PSS), CPU time.

    The tree is ``root`` and every live descendant, found by parent pid in /proc (Linux only),
    so a local Ray's raylet, GCS and workers count with the driver that started them. CPU
    seconds are the last value seen for each process, summed over every process ever seen; a
    process that exits between two samples loses at most ``interval`` s of CPU. RSS sums count
    shared pages (libraries, Ray's object store) once per process; PSS splits them fairly but
    costs about 1 ms per process to read, so it is read only every ``pss_interval`` s (never
    when None; samples without it hold 0).
    """

    def __init__(self, root: int, interval: float = 0.2, pss_interval: float | None = None) -> None:
        self.root = root
        self.interval = interval
        self.pss_interval = pss_interval
        self.samples: list[TreeSample] = []
        self._last_pss = float("-inf")
        self._cpu: dict[tuple[int, int], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> ProcessTreeSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> ProcessTreeSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def sample(self) -> TreeSample:
        """Take one sample now (the thread calls this; tests may too)."""
        pids = tree_pids(self.root)
        for pid, (start, cpu) in pids.items():
            self._cpu[(pid, start)] = cpu
        rss = sum(_read_rss(pid) for pid in pids)
        now, pss = time.time(), 0
        if self.pss_interval is not None and now - self._last_pss >= self.pss_interval:
            pss, self._last_pss = sum(_read_pss(pid) for pid in pids), now
        sample = TreeSample(now, sum(self._cpu.values()), rss, pss, len(pids))
        self.samples.append(sample)
        return sample

    @property
    def peak_rss(self) -> int:
        return max((s.rss for s in self.samples), default=0)

    @property
    def peak_pss(self) -> int:
        return max((s.pss for s in self.samples), default=0)

    @property
    def cpu_s(self) -> float:
        return self.samples[-1].cpu_s if self.samples else 0.0

    def cpu_between(self, t0: float, t1: float) -> float:
        """CPU seconds the tree used between epoch times ``t0`` and ``t1`` (interpolated)."""
        return _interpolate(self.samples, t1) - _interpolate(self.samples, t0)


def _interpolate(samples: Sequence[TreeSample], t: float) -> float:
    if not samples:
        return 0.0
    if t <= samples[0].time:
        return samples[0].cpu_s
    for a, b in zip(samples, samples[1:], strict=False):
        if a.time <= t <= b.time:
            span = b.time - a.time
            return a.cpu_s + (b.cpu_s - a.cpu_s) * ((t - a.time) / span if span else 1.0)
    return samples[-1].cpu_s


@dataclass
class Measured:
    """A command run under a ProcessTreeSampler: exit code, wall and CPU time, peak memory."""

    command: list[str]
    returncode: int
    started: float
    ended: float
    cpu_s: float
    peak_rss: int
    peak_pss: int
    stdout: str
    stderr: str
    sampler: ProcessTreeSampler = field(repr=False)

    @property
    def wall_s(self) -> float:
        return self.ended - self.started


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_measured(
    command: Sequence[str],
    workdir: str | Path,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    interval: float = 0.2,
    pss_interval: float | None = None,
    timeout: float | None = None,
) -> Measured:
    """Run ``command`` to completion while sampling its process tree.

    stdout and stderr go to files in ``workdir`` (so chatty tools never block on a pipe) and
    come back as text. CPU time is the larger of the sampled tree total and the rusage of
    reaped children, which also catches processes that lived less than one interval.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = workdir / "stdout.txt", workdir / "stderr.txt"
    cpu_before = _children_cpu()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.time()
        proc = subprocess.Popen(list(command), stdout=out, stderr=err, env=env, cwd=cwd)
        sampler = ProcessTreeSampler(proc.pid, interval, pss_interval).start()
        try:
            returncode = proc.wait(timeout=timeout)
        finally:
            ended = time.time()
            sampler.stop()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    cpu = max(sampler.cpu_s, _children_cpu() - cpu_before)
    return Measured(
        list(command),
        returncode,
        started,
        ended,
        cpu,
        sampler.peak_rss,
        sampler.peak_pss,
        out_path.read_text(errors="replace"),
        err_path.read_text(errors="replace"),
        sampler,
    )


class Stopwatch:
    """``with Stopwatch() as sw: ...``, then ``sw.seconds`` (wall) and ``sw.cpu_s`` (process)."""

    def __enter__(self) -> Stopwatch:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._wall
        self.cpu_s = time.process_time() - self._cpu


def machine_info() -> dict[str, object]:
    """Cores (online and usable by this process), CPU model, memory and OS, for reports."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu": model,
        "memory_gib": round(mem / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def versions(distributions: Iterable[str]) -> dict[str, str]:
    """Installed versions of the named distributions ("missing" when not installed)."""
    found = {}
    for name in distributions:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max) of ``values``; zeros for an empty list."""
    if not values:
        return 0.0, 0.0, 0.0
    return statistics.median(values), min(values), max(values)


def mib(nbytes: float) -> float:
    return nbytes / 2**20


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain-text table with columns padded to their widest cell."""
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


@dataclass(frozen=True)
class RunSummary:
    """The figures of the line ``faceveil run`` ends with (``jobs.run.JobSummary.line``)."""

    shards_done: int
    shards_total: int
    samples_in: int
    samples_out: int
    quarantined: int
    faces: int
    shards_failed: int
    rate: float


def run_summary(text: str) -> RunSummary | None:
    """The summary line of a ``faceveil run`` output ``text``, parsed; None where it is missing."""
    found = _RUN_SUMMARY.search(text)
    if found is None:
        return None
    *counts, rate = found.groups()
    return RunSummary(*map(int, counts), float(rate))


def job_bench_parser(module: str, doc: str | None, rounds: int) -> argparse.ArgumentParser:
    """The parser of ``python -m bench.MODULE``, a benchmark that times ``faceveil run`` against
    itself (:class:`JobTimer`): with ``--rounds`` (default ``rounds``) and ``--source``."""
    p = argparse.ArgumentParser(prog=f"python -m bench.{module}", description=doc)
    p.add_argument("--rounds", type=int, default=rounds, help="job rounds, order alternated")
    p.add_argument("--source", type=Path, default=lfw_images(), help="folder of images")
    return p


class JobTimer:
    """Times ``faceveil run --method METHOD`` (blur unless given; no progress bar) under sets of
    options, with one new job secret in ``work``; the order of the sets alternates from round to
    round. ``entry`` is what ``python`` runs (the ``faceveil`` CLI module unless a benchmark has
    its own way into the same ``run`` command line)."""

    def __init__(
        self, work: Path, method: str = "blur", entry: Sequence[str] = ("-m", "faceveil.jobs.cli")
    ) -> None:
        self.secret = work / "job.secret"
        self.secret.write_text(secrets.token_hex(32))
        self.secret.chmod(0o600)
        self.env = os.environ | {"PYTHONPATH": str(_REPO)}
        self.method, self.entry = method, tuple(entry)

    def run(self, source: Path, out: Path, options: Sequence[str]) -> tuple[float, float, int]:
        """One run of ``source`` into ``out`` (its output and log beside it); SystemExit with the
        stderr tail if it fails. Returns (wall s, CPU s, samples in): the count is the run's
        summary line's, 0 where that line is missing."""
        command = [sys.executable, *self.entry, "run", str(source), str(out),
                   "--method", self.method, "--secret-file", str(self.secret), "--no-progress",
                   *options]  # fmt: skip
        measured = run_measured(command, out.parent / f"log-{out.name}", env=self.env, cwd=_REPO)
        if measured.returncode != 0:
            raise SystemExit(f"faceveil run failed:\n{measured.stderr[-2000:]}")
        summary = run_summary(measured.stdout + measured.stderr)
        return measured.wall_s, measured.cpu_s, summary.samples_in if summary else 0

    @staticmethod
    def alternated(choices: Sequence[str], rounds: int) -> Iterator[tuple[int, str]]:
        """(round, choice) for every choice in every round: in the given order in even rounds and
        reversed in odd ones, so that no choice always runs first (warm caches, a busy machine)."""
        for r in range(rounds):
            yield from ((r, c) for c in (choices if r % 2 == 0 else list(reversed(choices))))

    @staticmethod
    def mean(runs: Sequence[tuple[float, float, int]]) -> tuple[float, float]:
        """Mean wall and CPU seconds of :meth:`run` results."""
        return sum(r[0] for r in runs) / len(runs), sum(r[1] for r in runs) / len(runs)


def shared_root() -> Path:
    """FACEVEIL_SHARED, else the parent of FACEVEIL_TEST_DATA, else the checkout's ../shared."""
    if os.environ.get("FACEVEIL_SHARED"):
        return Path(os.environ["FACEVEIL_SHARED"])
    if os.environ.get("FACEVEIL_TEST_DATA"):
        return Path(os.environ["FACEVEIL_TEST_DATA"]).parent
    return Path(__file__).resolve().parents[1].parent / "shared"


def missing_shared(bench: str, *paths: str | Path) -> bool:
    """True (after one line on stderr naming the first absent file) when a benchmark's input file
    from ``../shared`` is missing; the caller then exits 2."""
    for path in map(Path, paths):
        if not path.is_file():
            print(f"{bench}: {path} not found (needs ../shared)", file=sys.stderr)
            return True
    return False


def lfw_dev_parser(
    doc: str, recognizer: str | None = None, recognizer_help: str = ""
) -> argparse.ArgumentParser:
    """The parser of a benchmark on lfw_dev (described by the first paragraph of its ``doc``),
    with ``--data``, the lfw_dev folder under :func:`shared_root`, and where ``recognizer`` names
    it (``--attacker``, ``--model``), that option for a recognition ONNX (``recognizer_help``), by
    default the shared MobileFaceNet."""
    shared = shared_root()
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--data", default=str(shared / "data" / "lfw_dev"), help="lfw_dev folder")
    if recognizer:
        default = shared / "models" / "mobilefacenet_128d.onnx"
        p.add_argument(recognizer, default=str(default), help=recognizer_help)
    return p


def lfw_images() -> Path:
    """The lfw_dev images folder under :func:`shared_root` (the benchmarks' default input)."""
    return shared_root() / "data" / "lfw_dev" / "images"
