"""``write_privacy_report``: the in-job privacy sample's report.json and index.html (OUT/report/),
from the actors' summaries."""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np

from faceveil.anon_core import report_page as page
from faceveil.anon_core.report_page import clean, dumps
from faceveil.jobs.privacy_sample import LMK_BINS, SIM_BINS, merge
from faceveil.jobs.storage import Location

log = logging.getLogger(__name__)

DEFINITIONS = {
    "similarity": "attacker cosine similarity between the original face and its anonymized "
    "version, both cropped with the original's landmarks",
    "impostor": "similarity between a sampled original face and recently sampled anonymized "
    "faces of other samples in the same worker (the reference for the threshold)",
    "match_rate": "share of sampled faces whose similarity is at or above the impostor "
    "threshold at the given false accept rate (histogram resolution 0.01)",
    "redetected": "share of sampled anonymized faces a detector still finds (IoU >= 0.3)",
    "landmark_error": "dlib 68-point shapes in the original's box on original and anonymized "
    "image: mean point distance / inter-ocular distance",
}


def _quantile(hist: Sequence[int], lo: float, hi: float, q: float) -> float | None:
    counts = np.asarray(hist, np.float64)
    if counts.sum() == 0:
        return None
    k = int(np.searchsorted(np.cumsum(counts), q * counts.sum()))
    return lo + (hi - lo) * (k + 0.5) / len(counts)


def _threshold_bin(impostor: Sequence[int], far: float) -> int | None:
    """Lowest bin b with at most ``far`` of the impostor scores in bins >= b (None if too few)."""
    counts = np.asarray(impostor, np.int64)
    n = counts.sum()
    if n == 0 or n * far < 1:
        return None
    above = np.cumsum(counts[::-1])[::-1]  # above[b] = count in bins >= b
    ok = np.nonzero(above <= far * n)[0]
    return int(ok[0]) if len(ok) else len(counts)


def figures(merged: dict, far: float) -> dict:
    """Headline numbers of a merged privacy sample summary."""
    n = merged["faces_sampled"]
    b = _threshold_bin(merged["impostor_hist"], far)
    genuine = np.asarray(merged["similarity_hist"])
    return {
        "images_seen": merged["images_seen"],
        "faces_seen": merged["faces_seen"],
        "faces_sampled": n,
        "faces_failed": merged["faces_failed"],
        "similarity_mean": merged["similarity_sum"] / n if n else None,
        "similarity_median": _quantile(merged["similarity_hist"], -1, 1, 0.5),
        "similarity_p95": _quantile(merged["similarity_hist"], -1, 1, 0.95),
        "impostor_pairs": int(sum(merged["impostor_hist"])),
        "far": far,
        "threshold": None if b is None else -1 + 2 * b / SIM_BINS,
        "match_rate": None if b is None or n == 0 else float(genuine[b:].sum() / n),
        "redetected_rate": merged["redetected"] / n if n else None,
        "landmark_error_mean": merged["landmark_sum"] / max(merged["landmark_n"], 1) if n else None,
        "landmark_error_median": _quantile(merged["landmark_hist"], 0, 1, 0.5),
    }


def _example_files(merged: dict, keep_originals: bool) -> tuple[dict[str, bytes], list[dict]]:
    files, entries = {}, []
    for e in merged["examples"]:
        digest = hashlib.sha256(str(e["sample"]).encode()).hexdigest()[:16]
        stem = f"examples/{digest}-{e['face']}"
        entry = {"sample": e["sample"], "face": e["face"], "anonymized": f"{stem}.png"}
        files[entry["anonymized"]] = base64.b64decode(e["anonymized_png"])
        if keep_originals and "original_png" in e:
            entry["original"] = f"{stem}-original.png"
            files[entry["original"]] = base64.b64decode(e["original_png"])
        entries.append(entry)
    return files, entries


def write_privacy_report(
    report_dir: str, summaries: Sequence[dict], keep_originals: bool = False, far: float = 1e-3
) -> dict:
    """Merge ``summaries`` and write report.json, index.html and example crops to ``report_dir``
    (a local path or fsspec URL, e.g. ``OUT/report``). Original crops appear only when
    ``keep_originals`` is True and the samplers kept them. Returns the report dict."""
    merged = merge(summaries)
    files, examples = _example_files(merged, keep_originals)
    report = {
        "kind": "faceveil-audit",
        "schema": 1,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "fraction": merged["fraction"],
        "attacker": merged["attacker"],
        "detector": merged["detector"],
        "figures": figures(merged, far),
        "histograms": {k: merged[k] for k in ("similarity_hist", "impostor_hist", "landmark_hist")},
        "originals_shown": keep_originals and any("original" in e for e in examples),
        "examples": examples,
        "definitions": DEFINITIONS,
    }
    files["report.json"] = dumps(report).encode()
    files["index.html"] = render_privacy_page(clean(report)).encode()
    out = Location(report_dir)
    for name, data in files.items():
        out.publish_bytes(data, *name.split("/"))
    log.info("wrote the privacy sample report to %s", report_dir)
    return report


def _threshold_cell(f: dict) -> str:
    if f["threshold"] is not None:
        return page.num(f["threshold"], 2)
    return f"– (needs at least {int(np.ceil(1 / f['far']))} impostor pairs)"


def _summary_table(f: dict) -> str:
    rows = [
        ["images seen", f["images_seen"]],
        ["faces seen", f["faces_seen"]],
        ["faces sampled", f["faces_sampled"]],
        ["sampled faces that could not be measured", f["faces_failed"]],
        [
            "attacker similarity, mean / median / 95th pct.",
            "  /  ".join(
                page.num(f[k]) for k in ("similarity_mean", "similarity_median", "similarity_p95")
            ),
        ],
        [
            f"impostor threshold at FAR {f['far']:g} ({f['impostor_pairs']} pairs)",
            _threshold_cell(f),
        ],
        ["match rate (original recognised in its anonymized face)", page.pct(f["match_rate"])],
        ["faces re-detected after anonymization", page.pct(f["redetected_rate"])],
        [
            "landmark error, mean / median",
            "  /  ".join(page.num(f[k]) for k in ("landmark_error_mean", "landmark_error_median")),
        ],
    ]
    return page.table(["figure", "value"], rows)


def _grid(report: dict) -> str:
    items = []
    for e in report["examples"]:
        if "original" in e:
            items.append((f"{e['sample'][:10]} #{e['face']} original", e["original"]))
        items.append((f"{e['sample'][:10]} #{e['face']}", e["anonymized"]))
    if report["originals_shown"]:
        note = "Original faces are shown beside their anonymized versions (--report-originals)."
    else:
        note = (
            "Anonymized faces only: original faces are not kept or shown "
            "(run with --report-originals to include them)."
        )
    return page.paragraph(note, "note") + page.image_grid(items)


def render_privacy_page(report: dict) -> str:
    """index.html for an in-job privacy sample report (a JSON-clean report dict)."""
    f = report["figures"]
    subtitle = (
        f"sampled {page.pct(report['fraction'], 2)} of faces · attacker "
        f"{report['attacker']['name']} · re-detection by {report['detector']} · "
        f"created {report['created']}"
    )
    hist = page.histogram_svg(
        [
            ("original vs own anonymized", report["histograms"]["similarity_hist"]),
            ("original vs other anonymized (impostor)", report["histograms"]["impostor_hist"]),
        ],
        -1.0,
        1.0,
        "attacker cosine similarity",
    )
    lmk = page.histogram_svg(
        [("landmark error", report["histograms"]["landmark_hist"])],
        0.0,
        1.0,
        f"landmark error / inter-ocular distance ({LMK_BINS} bins, last bin = 1 or more)",
    )
    sections = [
        page.section("Summary", _summary_table(f)),
        page.section("Attacker similarity", hist),
        page.section("Landmark error", lmk),
        page.section("Sampled faces", _grid(report)),
        page.section("Definitions", page.definitions(report["definitions"])),
    ]
    return page.page("faceveil audit", subtitle, sections)
