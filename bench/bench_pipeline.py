"""Issue 2's benchmark: faceveil run vs a plain anon_core loop vs deface, side by side.

Run from the repository root: ``python -m bench.bench_pipeline --images 2000`` (see bench/README.md
for what each figure means). Rounds alternate the order of the three tools so that a busy
machine slows all of them alike; ratios are taken within a round, then the median is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    Measured,
    Stopwatch,
    format_table,
    lfw_images,
    machine_info,
    mib,
    replicate_dataset,
    run_measured,
    run_summary,
    source_images,
    spread,
    versions,
)

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("loop", "faceveil", "deface")
TARGETS = {"efficiency": (">=", 0.85), "per_core_ratio": (">=", 1.5), "memory_ratio": ("<=", 1.2)}
_POOL = re.compile(r"processing (\d+) shards on (\d+) actors")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_pipeline", description=__doc__)
    p.add_argument("--images", type=int, default=2000, help="dataset size (1x)")
    p.add_argument("--scale", type=int, default=5, help="memory run on scale x images")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds, tool order rotated")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--source", type=Path, default=lfw_images(), help="folder of images")
    p.add_argument("--faceveil-args", default="", help="extra `faceveil run` options, quoted")
    p.add_argument(
        "--escrow-args",
        default="--no-escrow",
        help="faceveil's escrow choice (default --no-escrow: nothing sealed, as in the loop)",
    )
    p.add_argument(
        "--workdir", type=Path, help="where the scratch folder goes (default: the system temp dir)"
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("--interval", type=float, default=0.2, help="memory/CPU sampling period")
    p.add_argument("--json", type=Path, help="also write every raw figure here")
    p.add_argument("--loop-only", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.images < 2 or args.scale < 1 or args.rounds < 1 or args.batch_size < 1:
        p.error("--images >= 2, --scale >= 1, --rounds >= 1 and --batch-size >= 1")
    return args


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"`{name}` is not installed in this environment")
    return found


# --- the plain loop ---------------------------------------------------------------------------


def loop_main(folder: Path, batch_size: int) -> None:
    """Child-process body: one process, one thread, anon_core over in-memory bytes."""
    import cv2

    from faceveil.anon_core.pipeline import AnonConfig, FaceAnonymizer

    cv2.setNumThreads(1)
    data = [p.read_bytes() for p in sorted(folder.iterdir())]
    anonymizer = FaceAnonymizer(AnonConfig(method="blur", threads=1))
    faces = quarantined = 0
    with Stopwatch() as sw:
        for i in range(0, len(data), batch_size):
            for result in anonymizer.batch(data[i : i + batch_size]):
                faces += len(result.faces)
                quarantined += not result.ok
    figures = {
        "images": len(data),
        "seconds": sw.seconds,
        "cpu_s": sw.cpu_s,
        "faces": faces,
        "quarantined": quarantined,
    }
    print(json.dumps(figures))


def loop_command(folder: Path, batch_size: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.bench_pipeline",
        "--loop-only",
        str(folder),
        "--batch-size",
        str(batch_size),
    ]


def run_loop(folder: Path, batch_size: int, work: Path, interval: float) -> dict:
    m = run_measured(loop_command(folder, batch_size), work, cwd=REPO, interval=interval)
    _check(m, "loop")
    fig = json.loads(m.stdout.strip().splitlines()[-1])
    n = fig["images"]
    return {
        "images": n,
        "rate": n / fig["seconds"],
        "per_cpu_s": n / fig["cpu_s"],
        "busy_cores": fig["cpu_s"] / fig["seconds"],
        "faces": fig["faces"],
        "wall_s": m.wall_s,
        "peak_rss": m.peak_rss,
    }


def _check(m: Measured, name: str) -> None:
    if m.returncode != 0:
        tail = "\n".join((m.stdout + m.stderr).splitlines()[-20:])
        raise SystemExit(f"{name} failed with exit code {m.returncode}:\n{tail}")


# --- faceveil run -----------------------------------------------------------------------------


def faceveil_command(data: Path, out: Path, batch_size: int, extra: list[str]) -> list[str]:
    return [
        _tool("faceveil"),
        "--log-format",
        "json",
        "run",
        str(data),
        str(out),
        "--method",
        "blur",
        "--batch-size",
        str(batch_size),
        "--no-progress",
        *extra,
    ]


def faceveil_env(work: Path) -> dict[str, str]:
    """A local Ray (RAY_ADDRESS dropped) and a job secret private to this bench run."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["FACEVEIL_SECRET"] = str(work / "secret.key")
    return env


def cpus_per_actor(extra: list[str]) -> float:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    return p.parse_known_args(extra)[0].cpus_per_actor


def json_records(stderr: str) -> list[dict]:
    """The job's JSON log records (Ray's own plain-text lines are skipped)."""
    records = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def pool_start(records: list[dict]) -> tuple[float, int, int]:
    """(epoch time, shards, actors) of the job's "processing N shards on K actors" record."""
    for record in records:
        match = _POOL.search(str(record.get("message", "")))
        if match:
            return float(record["time"]), int(match[1]), int(match[2])
    raise SystemExit("faceveil logged no 'processing N shards on K actors' line")


def warm_window(records: list[dict], total: int) -> tuple[float, float, int] | None:
    """(t0, t1, samples) between the first and last progress records taken mid-run.

    Progress is logged every 10 s, so this needs a run of 30 s or more; None when shorter.
    """
    points = [
        (float(r["time"]), int(r["samples"]))
        for r in records
        if r.get("logger") == "faceveil.progress" and 0 < r.get("samples", 0) < total
    ]
    if len(points) < 2 or points[-1][1] == points[0][1]:
        return None
    return points[0][0], points[-1][0], points[-1][1] - points[0][1]


def run_faceveil(data: Path, work: Path, args: argparse.Namespace) -> dict:
    """One `faceveil run` into a fresh OUT; processing window = pool start -> last marker."""
    extra = shlex.split(args.escrow_args) + shlex.split(args.faceveil_args)
    out = work / "out"
    cmd = faceveil_command(data, out, args.batch_size, extra)
    m = run_measured(
        cmd, work, env=faceveil_env(work.parent), interval=args.interval, pss_interval=1.0
    )
    _check(m, "faceveil run")
    summary = run_summary(m.stdout)
    if summary is None:
        raise SystemExit(f"no summary line in faceveil's output:\n{m.stdout[-2000:]}")
    n = summary.samples_in
    records = json_records(m.stderr)
    start, shards, actors = pool_start(records)
    end = max(p.stat().st_mtime for p in (out / "_done").glob("*.json"))
    cores = actors * cpus_per_actor(extra)
    warm = warm_window(records, n)
    return {
        "warm_rate": warm[2] / (warm[1] - warm[0]) if warm else None,
        "warm_per_cpu_s": warm[2] / m.sampler.cpu_between(warm[0], warm[1]) if warm else None,
        "images": n,
        "out": summary.samples_out,
        "faces": summary.faces,
        "summary_rate": summary.rate,
        "e2e_rate": n / m.wall_s,
        "wall_s": m.wall_s,
        "proc_rate": n / (end - start),
        "proc_s": end - start,
        "startup_s": start - m.started,
        "shutdown_s": m.ended - end,
        "shards": shards,
        "actors": actors,
        "cores": cores,
        "per_cpu_s": n / m.cpu_s,
        "cpu_s": m.cpu_s,
        "proc_per_cpu_s": n / m.sampler.cpu_between(start, end),
        "peak_rss": m.peak_rss,
        "peak_pss": m.peak_pss,
        "command": cmd,
    }


# --- deface -----------------------------------------------------------------------------------


def deface_command(folder: Path) -> list[str]:
    return [_tool("deface"), str(folder)]


def run_deface(files: list[Path], work: Path, interval: float) -> dict:
    """deface on a folder of the same images (its defaults: threshold 0.2, blurred ellipses).

    It writes NAME_anonymized.jpg beside each input, so each run gets a fresh folder of links.
    Steady window = first -> last output file written.
    """
    folder = work / "in"
    folder.mkdir(parents=True)
    for f in files:
        os.link(f, folder / f.name)
    cmd = deface_command(folder)
    m = run_measured(cmd, work, interval=interval, pss_interval=1.0)
    _check(m, "deface")
    written = sorted(p.stat().st_mtime for p in folder.glob("*_anonymized.*"))
    n = len(files)
    if len(written) != n:
        raise SystemExit(f"deface wrote {len(written)} of {n} images; see {work}")
    first, last = written[0], written[-1]
    return {
        "images": n,
        "e2e_rate": n / m.wall_s,
        "wall_s": m.wall_s,
        "steady_rate": (n - 1) / (last - first),
        "per_cpu_s": n / m.cpu_s,
        "steady_per_cpu_s": (n - 1) / m.sampler.cpu_between(first, last),
        "busy_cores": m.cpu_s / m.wall_s,
        "cpu_s": m.cpu_s,
        "peak_rss": m.peak_rss,
        "peak_pss": m.peak_pss,
        "command": cmd,
    }


# --- rounds, ratios, report -------------------------------------------------------------------


@dataclass
class Dataset:
    """The replicated images: the 1x set every tool runs on, the scaled set for memory."""

    one: Path
    files: list[Path]
    scaled: Path | None


def make_datasets(args: argparse.Namespace, work: Path) -> Dataset:
    sources = source_images(args.source)
    files = replicate_dataset(sources, work / "data-1x", args.images)
    scaled = None
    if args.scale > 1:
        scaled = work / f"data-{args.scale}x"
        replicate_dataset(sources, scaled, args.images * args.scale)
    return Dataset(work / "data-1x", files, scaled)


def run_round(index: int, ds: Dataset, args: argparse.Namespace, work: Path) -> dict:
    """All three tools once, in an order rotated by ``index``; adds the within-round ratios."""
    runners = {
        "loop": lambda d: run_loop(ds.one, args.batch_size, d, args.interval),
        "faceveil": lambda d: run_faceveil(ds.one, d, args),
        "deface": lambda d: run_deface(ds.files, d, args.interval),
    }
    order = TOOLS[index % 3 :] + TOOLS[: index % 3]
    result: dict = {"order": list(order)}
    for tool in order:
        print(f"round {index + 1}/{args.rounds}: {tool} ...", file=sys.stderr, flush=True)
        result[tool] = runners[tool](work / f"round{index}-{tool}")
    loop, fv, de = result["loop"], result["faceveil"], result["deface"]
    result["ratios"] = {
        "efficiency": fv["proc_rate"] / (loop["rate"] * fv["cores"]),
        "efficiency_e2e": fv["e2e_rate"] / (loop["rate"] * fv["cores"]),
        "efficiency_warm": (
            fv["warm_rate"] / (loop["rate"] * fv["cores"]) if fv["warm_rate"] else None
        ),
        "cpu_efficiency": fv["proc_per_cpu_s"] / loop["per_cpu_s"],
        "cpu_efficiency_warm": (
            fv["warm_per_cpu_s"] / loop["per_cpu_s"] if fv["warm_per_cpu_s"] else None
        ),
        "per_core_ratio": fv["per_cpu_s"] / de["per_cpu_s"],
        "per_core_ratio_steady": fv["proc_per_cpu_s"] / de["steady_per_cpu_s"],
        "speed_ratio": fv["e2e_rate"] / de["e2e_rate"],
    }
    return result


def run_memory(ds: Dataset, args: argparse.Namespace, work: Path, rounds: list[dict]) -> dict:
    """Peak tree memory of faceveil at 1x (median over rounds) and at ``scale`` x."""
    one_rss = spread([r["faceveil"]["peak_rss"] for r in rounds])[0]
    one_pss = spread([r["faceveil"]["peak_pss"] for r in rounds])[0]
    memory = {"peak_rss_1x": one_rss, "peak_pss_1x": one_pss, "scaled": None}
    if ds.scaled is not None:
        print(f"memory: faceveil on {args.scale}x ...", file=sys.stderr, flush=True)
        scaled = run_faceveil(ds.scaled, work / f"memory-{args.scale}x", args)
        memory.update(
            scaled=scaled,
            rss_ratio=scaled["peak_rss"] / one_rss,
            pss_ratio=scaled["peak_pss"] / one_pss if one_pss else 0.0,
        )
    return memory


def _fmt(values: list[float | None], digits: int = 2) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a (run too short)"
    mid, lo, hi = spread(values)
    if len(values) < 2:
        return f"{mid:.{digits}f}"
    return f"{mid:.{digits}f} [{lo:.{digits}f}-{hi:.{digits}f}]"


_ROWS = [  # label, tool, key, digits
    ("images/s, end to end (whole command)", "faceveil", "e2e_rate", 1),
    ("images/s, job summary line", "faceveil", "summary_rate", 1),
    ("images/s, processing (pool start -> last marker)", "faceveil", "proc_rate", 1),
    ("images/s, warm pool (progress log, mid-run)", "faceveil", "warm_rate", 1),
    ("seconds, command start -> pool start (Ray, sharding)", "faceveil", "startup_s", 1),
    ("seconds, processing window", "faceveil", "proc_s", 1),
    ("seconds, last marker -> command exit", "faceveil", "shutdown_s", 1),
    ("cores used (actors x cpus-per-actor)", "faceveil", "cores", 1),
    ("images per CPU-second, whole command", "faceveil", "per_cpu_s", 2),
    ("images per CPU-second, processing window", "faceveil", "proc_per_cpu_s", 2),
    ("images per CPU-second, warm pool", "faceveil", "warm_per_cpu_s", 2),
    ("images/s, timed loop (1 process, 1 thread)", "loop", "rate", 1),
    ("images per CPU-second, timed loop", "loop", "per_cpu_s", 2),
    ("cores kept busy (CPU s / wall s), timed loop", "loop", "busy_cores", 2),
    ("images/s, end to end (whole command)", "deface", "e2e_rate", 1),
    ("images/s, steady (first -> last output)", "deface", "steady_rate", 1),
    ("cores kept busy (CPU s / wall s)", "deface", "busy_cores", 2),
    ("images per CPU-second, whole command", "deface", "per_cpu_s", 2),
    ("images per CPU-second, steady window", "deface", "steady_per_cpu_s", 2),
    ("faces found", "loop", "faces", 0),
    ("faces found", "faceveil", "faces", 0),
]


def figures_table(rounds: list[dict]) -> str:
    rows = [
        (tool, label, _fmt([r[tool][key] for r in rounds], digits))
        for label, tool, key, digits in _ROWS
    ]
    return format_table(("tool", "figure", "median [min-max] over rounds"), rows)


_RATIOS = [  # label, key in a round's ratios, target (None: shown, not judged)
    ("pipeline efficiency, processing window [used]", "efficiency", "efficiency"),
    ("pipeline efficiency, warm pool", "efficiency_warm", None),
    ("pipeline efficiency, end to end", "efficiency_e2e", None),
    ("pipeline CPU efficiency, processing window", "cpu_efficiency", None),
    ("pipeline CPU efficiency, warm pool", "cpu_efficiency_warm", None),
    ("faceveil / deface, images per CPU-s, whole [used]", "per_core_ratio", "per_core_ratio"),
    ("faceveil / deface, images per CPU-s, steady", "per_core_ratio_steady", None),
    ("faceveil / deface, images/s end to end", "speed_ratio", None),
]


def _judge(target: str | None, value: float | None) -> tuple[str, str]:
    if target is None or value is None:
        return "", ""
    op, limit = TARGETS[target]
    ok = value <= limit if op == "<=" else value >= limit
    return f"{op} {limit:g}", "met" if ok else "NOT met"


def targets_table(rounds: list[dict], memory: dict) -> str:
    rows = []
    for label, key, target in _RATIOS:
        values = [r["ratios"][key] for r in rounds]
        known = [v for v in values if v is not None]
        rows.append((label, _fmt(values), *_judge(target, spread(known)[0] if known else None)))
    if memory["scaled"] is not None:
        rss, pss = memory["rss_ratio"], memory["pss_ratio"]
        rows.append(
            ("peak memory ratio, summed RSS [used]", f"{rss:.2f}", *_judge("memory_ratio", rss))
        )
        rows.append(("peak memory ratio, summed PSS", f"{pss:.2f}", "", ""))
    return format_table(("ratio (median [min-max] over rounds)", "value", "target", ""), rows)


def memory_table(memory: dict, rounds: list[dict], args: argparse.Namespace) -> str:
    one = [r["faceveil"] for r in rounds]
    rows = [
        (
            f"1x, median of {len(one)}",
            args.images,
            f"{mib(memory['peak_rss_1x']):.0f}",
            f"{mib(memory['peak_pss_1x']):.0f}",
            _fmt([f["proc_rate"] for f in one], 1),
            _fmt([f["warm_rate"] for f in one], 1),
        ),
    ]
    scaled = memory["scaled"]
    if scaled is not None:
        rows.append(
            (
                f"{args.scale}x",
                scaled["images"],
                f"{mib(scaled['peak_rss']):.0f}",
                f"{mib(scaled['peak_pss']):.0f}",
                f"{scaled['proc_rate']:.1f}",
                _fmt([scaled["warm_rate"]], 1),
            )
        )
    headers = (
        "faceveil run",
        "images",
        "peak RSS MiB",
        "peak PSS MiB",
        "processing images/s",
        "warm pool images/s",
    )
    return format_table(headers, rows)


DEFINITIONS = """\
definitions:
  processing rate = images / (job's "processing N shards" log time -> last _done marker mtime):
    excludes interpreter start, Ray start and sharding; includes actor start and model load.
  warm pool rate = samples / time between the first and last mid-run progress records
    (logged every 10 s; needs a run of 30 s or more).
  pipeline efficiency = faceveil processing images/s / (loop images/s x cores used), per round.
  pipeline CPU efficiency = faceveil images per CPU-second / loop images per CPU-second: the
    same question asked of CPU time, which holds up better than images/s on a shared machine.
  images per CPU-second = images / (user+sys CPU of the whole process tree: driver, raylet,
    GCS, workers for faceveil; the one process and its threads for deface).
  peak memory = max over samples (every --interval s; PSS every 1 s) of the tree's summed RSS.
  ratios are computed within each round (tools run back to back), then the median is shown."""


def print_report(args, ds: Dataset, rounds: list[dict], memory: dict) -> None:
    info = machine_info()
    vers = versions(("faceveil", "ray", "onnxruntime", "opencv-python-headless", "deface"))
    first = rounds[0]
    print("\n== faceveil pipeline benchmark ==")
    print(
        f"machine: {info['cores']} cores ({info['usable_cores']} usable), {info['cpu']}, "
        f"{info['memory_gib']} GiB, {info['os']}, python {info['python']}"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    print(
        f"dataset: {args.images} images replicated from {args.source}; batch size "
        f"{args.batch_size}; {args.rounds} rounds; memory at {args.scale}x"
    )
    fv = first["faceveil"]
    print(
        f"pool: {fv['actors']} actors x {cpus_per_actor(shlex.split(args.faceveil_args)):g} "
        f"CPU = {fv['cores']:g} cores, {fv['shards']} shards"
    )
    print("commands (round 1):")
    print("  loop:     " + shlex.join(loop_command(ds.one, args.batch_size)))
    print("  faceveil: " + shlex.join(fv["command"]))
    print("  deface:   " + shlex.join(first["deface"]["command"]))
    print("  round orders: " + "; ".join(",".join(r["order"]) for r in rounds))
    print()
    print(figures_table(rounds))
    print()
    print(memory_table(memory, rounds, args))
    print()
    print(targets_table(rounds, memory))
    print()
    print(DEFINITIONS)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.loop_only is not None:
        loop_main(args.loop_only, args.batch_size)
        return 0
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="faceveil-bench-", dir=args.workdir))
    try:
        ds = make_datasets(args, work)
        rounds = [run_round(i, ds, args, work) for i in range(args.rounds)]
        memory = run_memory(ds, args, work, rounds)
        print_report(args, ds, rounds, memory)
        if args.json:
            raw = {
                "machine": machine_info(),
                "args": {k: str(v) for k, v in vars(args).items()},
                "rounds": rounds,
                "memory": memory,
            }
            args.json.write_text(json.dumps(raw, indent=1, default=str))
    finally:
        if args.keep:
            print(f"scratch kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
