"""bench/bench_oneread.py's own arithmetic: the on / off ratios it prints and the photos it
picks (the jobs it times are tested in tests/jobs/test_run_oneread.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_oneread import _spread, report


def test_report_prints_the_ratio_of_images_per_cpu_second() -> None:
    runs = {
        "off": [(10.0, 40.0, 100), (12.0, 40.0, 100)],
        "on": [(6.0, 20.0, 100), (5.0, 20.0, 100)],
    }
    text = report(runs, 100)
    rows = [line.split() for line in text.splitlines()]
    assert ["reuse", "off,", "mean", "11.0", "40.0", "2.500"] in rows
    assert ["reuse", "on,", "mean", "5.5", "20.0", "5.000"] in rows
    assert "images per CPU-s, on / off: 2.00" in text
    assert "wall time, off / on: 2.00" in text
    with pytest.raises(SystemExit, match="did not read 100"):
        report({"off": [(1.0, 1.0, 99)], "on": [(1.0, 1.0, 100)]}, 100)


def test_photos_are_spread_over_people(tmp_path: Path) -> None:
    paths = [tmp_path / person / f"{i}.jpg" for person in ("a", "b") for i in range(5)]
    assert _spread(paths, 5) == [*paths[:3], *paths[5:7]]
    with pytest.raises(SystemExit, match="only 6 photos"):
        _spread(paths, 7)
