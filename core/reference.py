"""The input reference in export_report.json: what served traffic is compared with.

The exporter writes it (from its parity reviews and the training split); the monitor
(server/monitor.py) and the server's drift gauge read it with `read_reference`, its one reader.
Token counts are the served ones, the ids the model sees ([CLS] and [SEP] included, after
truncation), so a prediction log row's `tokens` and the reference count the same thing.

    "reference": {
      "tokens": {"edges": [0, 16, ...], "counts": [...], "samples": 500, "source": "..."},
      "label_share": {"negative": 0.5, "positive": 0.5},   # null where the data had no labels
      "label_source": "..."
    }
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Bins [edge_i, edge_i+1), the last one open. Fixed, so that references written by different
# exports compare; 256 (the shipped max_length) starts a bin of its own: a text that fills the
# model's window sits apart from one just short of it.
TOKEN_EDGES = (0, 16, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 512, 1024)
# A bin empty on one side would make the index infinite; the usual floor for a share.
PSI_FLOOR = 1e-4
# Population stability index, by the usual reading: under 0.1 stable, 0.1-0.25 some shift,
# over 0.25 a different population.
PSI_DRIFT = 0.2


class BadReference(ValueError):
    """export_report.json holds a malformed reference (one-line message)."""


@dataclass(frozen=True)
class InputReference:
    edges: tuple[int, ...]
    counts: tuple[int, ...]  # texts per bin
    samples: int
    source: str  # where the texts came from
    label_share: dict[str, float] | None  # label -> share; None where the data had no labels
    label_source: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": {
                "edges": list(self.edges),
                "counts": list(self.counts),
                "samples": self.samples,
                "source": self.source,
            },
            "label_share": self.label_share,
            "label_source": self.label_source,
        }


def token_counts(lengths: Iterable[int], edges: Sequence[int] = TOKEN_EDGES) -> list[int]:
    """Texts per bin of `edges` (bin i holds edges[i] <= n < edges[i+1]; the last is open)."""
    values = np.fromiter(lengths, dtype=np.int64)
    index = np.searchsorted(np.asarray(edges), values, side="right") - 1
    counts: list[int] = np.bincount(np.clip(index, 0, len(edges) - 1), minlength=len(edges)).tolist()
    return counts


def label_share(counts: Mapping[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {label: n / total for label, n in counts.items()} if total else {}


def build_reference(
    lengths: Sequence[int], source: str, label_counts: Mapping[str, int] | None, label_source: str | None
) -> InputReference:
    return InputReference(
        TOKEN_EDGES,
        tuple(token_counts(lengths)),
        len(lengths),
        source,
        label_share(label_counts) if label_counts else None,
        label_source if label_counts else None,
    )


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of `actual` against `expected` (counts or shares per bin):
    sum of (a - e) x ln(a / e) over the bins' shares."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or not e.sum() or not a.sum():
        raise ValueError("psi: two non-empty histograms over the same bins")
    e = np.maximum(e / e.sum(), PSI_FLOOR)
    a = np.maximum(a / a.sum(), PSI_FLOOR)
    return float(((a - e) * np.log(a / e)).sum())


def read_reference(report: Mapping[str, Any]) -> InputReference | None:
    """The reference in an export report, or None where it has none (an export from before
    references, or one without evaluation data). Raises BadReference when it is malformed."""
    ref = report.get("reference")
    if ref is None:
        return None
    try:
        tokens = ref["tokens"]
        edges = tuple(int(e) for e in tokens["edges"])
        counts = tuple(int(c) for c in tokens["counts"])
        share = ref.get("label_share")
        shares = {str(k): float(v) for k, v in share.items()} if share else None
        result = InputReference(
            edges, counts, int(tokens["samples"]), str(tokens["source"]), shares, ref.get("label_source")
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadReference(f"export_report.json: malformed reference ({type(exc).__name__}: {exc})") from None
    if len(edges) != len(counts) or list(edges) != sorted(set(edges)) or not sum(counts):
        raise BadReference("export_report.json: reference token bins and counts do not match")
    if shares is not None and not all(math.isfinite(v) and 0 <= v <= 1 for v in shares.values()):
        raise BadReference("export_report.json: reference label shares must lie within [0, 1]")
    return result
