"""The robustness report's figures and its markdown: accuracy with a Wilson interval, the gap to
the whole test sample, the flag, one table.

Each row of the report is a slice of the test sample, a perturbation of part of it or the
hand-written contrast set (and its kinds); each engine (the served ONNX graph, and PyTorch when
a checkpoint is given) gets the row's accuracy, its 95% interval and its gap in points to that
engine's accuracy on the whole sample. A row more than FLAG_POINTS below is flagged, with a line. A perturbation's
gap is to the same reviews unperturbed: a paired comparison, so that what it shows is the
perturbation's cost, not the luck of the part of the sample it rewrote.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

FLAG_POINTS = 5.0
Z95 = 1.959963984540054  # the normal quantile of 0.975
ENGINE_TITLES = {"onnx": "served ONNX", "pytorch": "PyTorch fp32"}


def wilson(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion: unlike p +- z*se it stays inside [0, 1] and is
    honest for a small slice or an accuracy near 100% (the contrast set's kinds have 18 rows)."""
    if total <= 0:
        return (0.0, 1.0)
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def figures(correct: np.ndarray, whole: float | None = None) -> dict[str, Any]:
    """Accuracy, 95% interval, and (given the whole's accuracy) the gap in points and the flag.
    An empty row has accuracy None and is never flagged."""
    n = len(correct)
    k = int(np.sum(correct))
    out: dict[str, Any] = {"correct": k, "accuracy": k / n if n else None, "ci95": list(wilson(k, n)) if n else None}
    if whole is not None:
        # Rounded as reported, then compared: the flag agrees with the figure printed beside it.
        gap = round(100 * (k / n - whole), 2) if n else None
        out["versus"] = whole
        out["gap_points"] = gap
        out["flagged"] = gap is not None and gap < -FLAG_POINTS
    return out


def row(
    name: str,
    group: str,
    definition: str,
    correct: dict[str, np.ndarray],
    whole: dict[str, float],
    **extra: Any,
) -> dict[str, Any]:
    """One row: `correct` holds each engine's per-review hits on the row's reviews."""
    sizes = {len(c) for c in correct.values()}
    return {
        "name": name,
        "group": group,
        "definition": definition,
        "size": sizes.pop() if sizes else 0,
        **{engine: figures(hits, whole.get(engine)) for engine, hits in correct.items()},
        **extra,
    }


def flag_lines(rows: list[dict[str, Any]], titles: dict[str, str]) -> list[str]:
    """A line per flagged row and engine, with the figures that make it."""
    lines = []
    for r in rows:
        for engine in titles:
            f = r.get(engine) or {}
            if not f.get("flagged"):
                continue
            lo, hi = f["ci95"]
            beyond = "; its interval is below that" if hi < f["versus"] else ""
            versus = "the same reviews unperturbed" if r["group"] == "perturbation" else "the whole test sample"
            lines.append(
                f"{r['name']}: {-f['gap_points']:.1f} points below {versus} "
                f"({titles[engine]} {pct(f['accuracy'])} vs {pct(f['versus'])}; 95% interval "
                f"{pct(lo)}-{pct(hi)}, {reviews(r['size'])}{beyond})"
            )
    return lines


def reviews(n: int) -> str:
    return f"{n:,} review" + ("" if n == 1 else "s")


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _cells(f: dict[str, Any] | None, first: bool) -> list[str]:
    if not f or f.get("accuracy") is None:
        return ["n/a", "", ""]
    lo, hi = f["ci95"]
    gap = "" if first else f"{f['gap_points']:+.1f}" + (" ⚠" if f.get("flagged") else "")
    return [pct(f["accuracy"]), f"{pct(lo)}-{pct(hi)}", gap]


def markdown(report: dict[str, Any]) -> str:
    """robustness.md: a header saying what was scored, the table, the flag lines, the notes."""
    engines = list(report["engines"])
    titles = report["engines"]
    head = ["slice", "reviews"]
    for e in engines:
        head += [titles[e], "95% interval", "vs all (points)"]
    head.append("truncated")
    model = report["model"]
    sampled = "all" if report["samples"] == report["test_reviews"] else f"a sample seeded {report['seed']}"
    lines = [
        f"# Robustness: {model['name']} {model['version']} ({model['quantization']})",
        "",
        f"{report['samples']:,} of the {report['test_reviews']:,} reviews of `{report['data']}` "
        f"({sampled}); perturbations on {report['perturbed']:,} of them; "
        f"the {report['contrast_rows']} hand-written reviews of the contrast set. 95% intervals are Wilson's; "
        f"⚠ marks a row more than {report['flag_points']:g} points below the whole sample (a perturbation: "
        "below the same reviews unperturbed). "
        f"Written by `python -m exporter.robustness` in {report['seconds']:.0f} s.",
        "",
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |",
    ]
    for r in [report["whole"], *report["slices"]]:
        first = r is report["whole"]
        cells = [r["name"], f"{r['size']:,}"]
        for e in engines:
            cells += _cells(r.get(e), first)
        share = r.get("truncated_share")
        cells.append("" if share is None else pct(share, 0))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Flags", ""]
    lines += [f"- {line}" for line in report["flags"]] or [f"None: no row is {report['flag_points']:g} points below."]
    lines += ["", "## Definitions", ""]
    for r in report["slices"]:
        note = f" {r['note']}" if r.get("note") else ""
        group = "" if r["name"] == r["group"] else f" ({r['group']})"
        lines.append(f"- **{r['name']}**{group}: {r['definition']}.{note}")
    return "\n".join(lines) + "\n"
