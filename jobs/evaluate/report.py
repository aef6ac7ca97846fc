"""Writing an evaluation's report directory: report.json, index.html and example thumbnails."""

from __future__ import annotations

import logging

from faceveil.anon_core import report_page as page
from faceveil.anon_core.report_page import clean, dumps
from faceveil.jobs.evaluate.output import encode_jpeg, write_files
from faceveil.jobs.evaluate.runner import EvalResult

log = logging.getLogger(__name__)


def write_eval_report(result: EvalResult, report_dir: str) -> None:
    """report.json, index.html and examples/ under ``report_dir``."""
    files = {name: encode_jpeg(rgb) for name, rgb in result.thumbnails.items()}
    files["report.json"] = dumps(result.report).encode()
    files["index.html"] = render_eval_page(clean(result.report)).encode()
    write_files(report_dir, files)
    log.info("wrote %s/index.html", report_dir.rstrip("/"))


def _worst_rank1(row: dict) -> float | None:
    if "worst" in row:
        return row["worst"]["rank1"]
    values = [p["rank1"] for p in row["privacy"].values() if p["rank1"] is not None]
    return max(values) if values else None


RECALL_TARGET = 0.99


def _plot(report: dict) -> str:
    points = []
    for row in report["methods"]:
        if row["available"] and row.get("utility") and _worst_rank1(row) is not None:
            points.append((row["label"], _worst_rank1(row), row["utility"]["redetected"] or 0.0))
    if not points:
        return page.paragraph("No utility figures in this run (--no-utility); no plot.")
    return page.scatter_svg(
        points,
        "re-identification, worst rank-1 over every attack and recognizer (lower = more private)",
        "faces re-detected (higher = more useful)",
    )


def _privacy_cells(row: dict, attackers: list[str]) -> list[str]:
    cells = []
    for name in attackers:
        p = row["privacy"][name]
        cells += [
            page.pct(p["rank1"]),
            page.pct(p["tar_at_far"]),
            page.pct(p["same_photo_accept_rate"]),
        ]
    return cells


def _utility_cells(u: dict | None) -> list[str]:
    if not u:
        return ["–"] * 6
    return [
        page.pct(u["redetected"]),
        page.num(u["landmark_error_mean"]),
        page.pct(u.get("gender_agreement")),
        page.num(u.get("age_abs_diff_years"), 1),
        page.num(u["ssim_outside_method_mean"], 4),
        page.num(u["ssim_outside_encoded_mean"], 4),
    ]


def _worst_cells(row: dict) -> list[str]:
    w = row.get("worst") or {}
    where = f"{w.get('rank1_attack', '')} / {w.get('rank1_recognizer', '')}" if w else "–"
    return [page.pct(w.get("rank1")), page.pct(w.get("tar_at_far")), where]


def _table(report: dict) -> str:
    attackers = [a["name"] for a in report["attackers"]]
    far = report["config"]["far"]
    headers = ["method", "worst rank-1", f"worst TAR@FAR {far:g}", "by attack / recognizer"]
    headers += ["rank-1", f"TAR@FAR {far:g}", "same-photo"] * len(attackers)
    headers += ["re-detected", "landmark err", "gender agree", "age diff (y)"]
    headers += ["SSIM out", "SSIM out (enc.)", "img/s", "img/CPU-s"]
    groups = [("", 1), ("worst case, every attack", 3)]
    groups += [*((f"aligned, {a}", 3) for a in attackers), ("utility", 6), ("speed", 2)]
    rows, classes = [], []
    for row in report["methods"]:
        if not row["available"]:
            rows.append([row["label"], f"unavailable: {row['reason']}"])
            classes.append("na")
            continue
        t = row["throughput"]
        cells = [row["label"], *_worst_cells(row), *_privacy_cells(row, attackers)]
        cells += _utility_cells(row.get("utility"))
        cells += [page.num(t["images_per_s_wall"], 1), page.num(t["images_per_cpu_s"], 1)]
        rows.append(cells)
        worst = _worst_rank1(row)
        classes.append("bad" if worst is not None and worst > 0.02 else "")
    return page.table(headers, rows, classes, groups)


def _attackers(report: dict) -> str:
    rows = []
    for a in report["attackers"]:
        base = a["on_originals"]
        rows.append(
            [a["name"], a["sha256"][:16], page.pct(base["rank1"]), page.pct(base["tar_at_far"])]
        )
    headers = ["attacker", "sha256 (prefix)", "rank-1 on originals", "TAR on originals"]
    return page.table(headers, rows)


def _attacks(report: dict) -> str:
    """Rank-1 and TAR of every attack with every recognizer, per method, beside chance."""
    far = report["config"]["far"]
    headers = ["method", "attack", "recognizer", "rank-1", "correct / probes", "chance"]
    headers += [f"TAR@FAR {far:g}", "attack CPU s"]
    rows, classes = [], []
    for row in report["methods"]:
        if not row["available"] or "attacks" not in row:
            continue
        for attack, by_recognizer in row["attacks"].items():
            for recognizer, f in by_recognizer.items():
                base = attack.split("_gallery")[0].replace("_", "-")
                cpu = row.get("attack_cpu_s", {}).get(recognizer, {}).get(base)
                rows.append([row["label"], attack, recognizer, page.pct(f.get("rank1")),
                             f"{f.get('rank1_correct', '–')} / {f.get('n_probes', '–')}",
                             page.pct(f.get("chance")), page.pct(f.get("tar_at_far")),
                             page.num(cpu, 2)])  # fmt: skip
                worst = row["worst"]
                top = attack == worst.get("rank1_attack") and recognizer == worst.get(
                    "rank1_recognizer"
                )
                classes.append("bad" if top else "")
    if not rows:
        return page.paragraph("No attack figures in this report.")
    split = report["dataset"].get("attack_split", {})
    splits = report.get("attack_budget", {}).get("splits", 1)
    pooled = (
        f" That is the first of {splits} identity splits of the same output; each learning "
        f"attack's figure counts the probes of all {splits} together (report.json: by_split, "
        "worst_by_split)."
        if splits > 1
        else ""
    )
    per_split = " and split, its cost summed over the splits," if splits > 1 else ""
    note = page.paragraph(
        f"Learning attackers train on {split.get('train_identities')} identities "
        f"({split.get('train_images')} images) and are tested on "
        f"{split.get('test_identities')} disjoint held-out identities.{pooled} Every method "
        "gets the same budget (report.json: attack_budget). Attack CPU s includes training: "
        f"the pixel U-Net is fitted once per method{per_split} and its cost shown for each "
        "recognizer. Marked: the worst case of each method.",
        "meta",
    )
    return page.table(headers, rows, classes) + note


def _recall_by_group(recall: dict) -> str:
    if "by_group" not in recall:
        return page.paragraph("No --recall-by labels given: recall per group not measured.")
    headers = ["kind", "group", "faces", "detected", "recall", "residual faces", "quarantined"]
    rows, classes = [], []
    for kind, groups in recall["by_group"].items():
        for g in groups:
            rows.append([kind, g["group"], g["n"], g["detected"], page.pct(g["recall"]),
                         g["residual"], g["quarantined"]])  # fmt: skip
            low = g["recall"] is not None and g["recall"] < RECALL_TARGET
            classes.append("bad" if low else "")
    low = recall.get("lowest_group") or {}
    note = page.paragraph(
        f"Lowest recall: {low.get('kind', '–')} {low.get('group', '–')} at "
        f"{page.pct(low.get('recall'))}. Rows in red are below {page.pct(RECALL_TARGET, 0)}.",
        "meta",
    )
    return page.table(headers, rows, classes) + note


def _small_faces(recall: dict) -> str:
    small = recall.get("small_faces") or []
    if not small:
        return ""
    rows, classes = [], []
    for r in small:
        rows.append([f"{r['size_px']} px", r["n"], r["detected"], page.pct(r["recall"]),
                     r["residual"]])  # fmt: skip
        classes.append("bad" if r["recall"] is not None and r["recall"] < RECALL_TARGET else "")
    headers = ["face width", "faces", "detected", "recall", "residual faces"]
    points = [(f"{r['size_px']} px", r["size_px"] / 64, r["recall"] or 0.0) for r in small]
    below = [r["size_px"] for r in small if (r["recall"] or 0.0) < RECALL_TARGET]
    drop = (
        f"recall is below {page.pct(RECALL_TARGET, 0)} at {max(below)} px and smaller"
        if below
        else "recall holds at every size"
    )
    return (
        page.table(headers, rows, classes)
        + page.scatter_svg(points, "face width (fraction of 64 px)", "recall")
        + page.paragraph(f"Labelled faces pasted into synthetic scenes: {drop}.", "meta")
    )


def _recall(report: dict) -> str:
    lab = report["recall"]["labelled"]
    rows = [["labelled set (1 centred face each)", lab["expected"], lab["found"], lab["recall"]]]
    for g in report["recall"]["group_photos"]:
        for role in ("detector", "second_detector"):
            if role in g:
                name = f"{g['image']} ({role.replace('_', ' ')})"
                rows.append([name, g["expected"], g[role]["found"], g[role]["recall"]])
    rows = [[*r[:3], page.pct(r[3])] for r in rows]
    return page.table(["set", "faces expected", "faces found", "recall"], rows)


def _examples(report: dict) -> str:
    if not report.get("examples"):
        return page.paragraph("No examples.")
    labels = ["original"] + [m["label"] for m in report["methods"] if m["available"]]
    rows = []
    for ex in report["examples"]:
        imgs = [(label, ex["images"][label]) for label in labels if label in ex["images"]]
        rows.append(page.image_row(f"sample {ex['sample']}", imgs))
    return "\n".join(rows)


def _models(report: dict) -> str:
    rows = []
    for role, info in report["models"].items():
        for item in info if isinstance(info, list) else [info]:
            rows.append([role, item.get("name", ""), item.get("file", ""), item.get("sha256", "")])
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v is not None)
    return page.table(["role", "name", "file", "sha256"], rows) + page.paragraph(versions, "meta")


def _probe_note(report: dict) -> str:
    attr = report.get("attribute_probes")
    if not attr:
        return "No attribute set given: attribute agreement not measured."
    note = (
        f"Attribute probes fit on {attr['n_used']} labelled faces: gender "
        f"{page.pct(attr['gender_cv_accuracy'])} (5-fold CV), race "
        f"{page.pct(attr['race_cv_accuracy'])}, age MAE {attr['age_cv_mae_years']:.1f} years."
    )
    rows = [m["utility"] for m in report["methods"] if m["available"] and m.get("utility")]
    if rows and "gender_constant_agreement" in rows[0]:
        u = rows[0]
        note += (
            f" A constant answer would agree on {page.pct(u['gender_constant_agreement'])} of "
            f"these faces for gender and be off by {u['age_constant_abs_diff_years']:.1f} years "
            "in age: a method at that level has erased the attribute."
        )
    return note


def render_eval_page(report: dict) -> str:
    """index.html for an evaluation report (a JSON-clean report dict)."""
    d = report["dataset"]
    subtitle = (
        f"{d['n_images']} images of {d['n_identities']} identities ({d['n_gallery']} gallery, "
        f"{d['n_probes']} probes) · created {report['created']} · {report['elapsed_s']} s"
    )
    chance = 1 / d["n_gallery"] if d["n_gallery"] else 0.0
    red = (
        "Rows in red let the strongest attack (worst case over aligned, parrot and inversion, "
        "every recognizer) re-identify more than 2% of probes (chance level of the aligned "
        f"attack with {d['n_gallery']} gallery identities: {page.pct(chance)}; the learning "
        "attacks' chance is in the Attacks table)."
    )
    sections = [
        _section_privacy_utility(report),
        page.section(
            "Methods",
            _table(report),
            page.paragraph(_probe_note(report), "meta"),
            page.paragraph(red, "meta"),
        ),
        page.section("Attacks", _attacks(report)),
        page.section("Attackers", _attackers(report)),
        page.section("Recall", _recall(report)),
        page.section(
            "Recall per group",
            _recall_by_group(report["recall"]),
            _small_faces(report["recall"]),
        ),
        page.section("Before / after", _examples(report)),
        page.section("Models and versions", _models(report)),
        page.section("Definitions", page.definitions(report["definitions"])),
    ]
    return page.page("faceveil evaluation", subtitle, sections)


def _section_privacy_utility(report: dict) -> str:
    note = page.paragraph(
        "Privacy is the worst case: the highest rank-1 of any attack (aligned, parrot, "
        "inversion) with any recognizer. "
        "Best is top left: nobody re-identified, every face still a face.",
        "meta",
    )
    return page.section("Privacy vs utility", _plot(report), note)


def text_table(report: dict) -> str:
    """A plain-text summary of the methods (for terminals)."""
    attackers = [a["name"] for a in report["attackers"]]
    head = f"{'method':<28}{'worst':>8}  {'by':<36}"
    head += "".join(f"{'rank-1':>9}{'TAR@FAR':>9}" for _ in attackers)
    head += f"{'redetect':>10}{'lmk err':>9}{'gender':>8}{'img/s':>8}"
    lines = ["recognizers: " + ", ".join(attackers) + " (rank-1, TAR: aligned attack)", head]
    for row in report["methods"]:
        if not row["available"]:
            lines.append(f"{row['label']:<28}unavailable: {row['reason']}")
            continue
        w = row.get("worst") or {}
        by = f"{w.get('rank1_attack', '')}/{w.get('rank1_recognizer', '')}"[:36]
        cells = f"{page.pct(w.get('rank1')):>8}  {by:<36}"
        cells += "".join(
            f"{page.pct(row['privacy'][a]['rank1']):>9}{page.pct(row['privacy'][a]['tar_at_far']):>9}"
            for a in attackers
        )
        u = row.get("utility") or {}
        cells += f"{page.pct(u.get('redetected')):>10}{page.num(u.get('landmark_error_mean')):>9}"
        cells += f"{page.pct(u.get('gender_agreement')):>8}"
        cells += f"{page.num(row['throughput']['images_per_s_wall'], 1):>8}"
        lines.append(f"{row['label']:<28}{cells}")
        if row.get("worst_by_split"):
            each = ", ".join(
                f"{page.pct(w['rank1'])} (seed {w['seed']})" for w in row["worst_by_split"]
            )
            lines.append(f"{'':<28}worst of each split alone: {each}")
    return "\n".join(lines)
