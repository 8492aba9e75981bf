"""`python -m server.monitor --db LOG --model-dir DIR --output-dir OUT`: a drift report from the log.

Reads the prediction log (server/predlog.py's schema, and nothing else of the server) over the
last `--hours` up to its newest row, and the model directory's input reference (core/reference.py,
written by the exporter), then writes OUT/report.md with its plots (server/monitor_report.py) and
OUT/monitor.json. Two checks flag a drift:
- label share: a label's share of the answered texts is more than `--share-margin` away from its
  share of the training data (the Prometheus alert SentimentLabelShareDrift uses the same margin);
- input length: the population stability index of the texts' token counts against the
  evaluation data's, over the reference's fixed bins, is above `--psi-threshold`.
Fewer than `--min-rows` answered texts are too few to judge: the report says so and flags
nothing. matplotlib is imported only here (the `monitor` extra; the serving image has none).

Exit: 0 written (1 with --fail-on-drift when a drift was flagged); 2 bad input, one line.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core import cli
from core.cli import opt
from core.modeldir import ModelDir, ModelDirError, read_model_dir
from core.reference import PSI_DRIFT, InputReference, psi, token_counts

PROG = "python -m server.monitor"
# The alert's margin too (deploy/prometheus/alerts.yml; tests/ship/test_monitoring.py holds them equal).
SHARE_MARGIN = 0.15
HOUR_S = 3600.0


@dataclass(frozen=True)
class MonitorConfig:
    """Drift report (markdown with plots) from a prediction log and the model's reference."""

    db: Path = field(metadata=opt("the prediction log: the server's --prediction-log file"))
    model_dir: Path = field(metadata=opt("model directory whose export_report.json holds the input reference"))
    output_dir: Path = field(metadata=opt("where report.md, its plots and monitor.json are written"))
    hours: float = field(default=24.0, metadata=opt("hours of the log to report, up to its newest row (0: all)"))
    share_margin: float = field(
        default=SHARE_MARGIN, metadata=opt("a label share further than this from the training data's is a drift")
    )
    psi_threshold: float = field(
        default=PSI_DRIFT, metadata=opt("an input-length population stability index above this is a drift")
    )
    min_rows: int = field(default=200, metadata=opt("fewest answered texts to judge a drift on"))
    fail_on_drift: bool = field(default=False, metadata=opt("exit 1 when a drift is flagged"))

    def __post_init__(self) -> None:
        if self.hours < 0 or not 0 < self.share_margin < 1 or self.psi_threshold <= 0 or self.min_rows < 1:
            raise ValueError("--hours >= 0, --share-margin within (0, 1), --psi-threshold > 0, --min-rows >= 1")


class MonitorError(Exception):
    """Bad input (one line)."""


@dataclass(frozen=True)
class LogWindow:
    """The log's rows in the reported window."""

    start: float  # Unix seconds of the first row and the last
    end: float
    rows: int  # every row, failures included
    statuses: dict[int, int]  # HTTP status -> rows
    models: list[tuple[str, str, int]]  # (name, version, rows)
    label_counts: dict[str, int]  # answered texts by label
    hourly: list[tuple[float, dict[str, int]]]  # (hour start, label -> texts), oldest first
    scores: np.ndarray  # the predicted label's probability per answered text
    tokens: np.ndarray  # ids seen per answered text
    truncated: int  # answered texts that were cut

    @property
    def answered(self) -> int:
        return int(sum(self.label_counts.values()))


@dataclass(frozen=True)
class Check:
    name: str  # "label share" or "input length"
    value: float | None  # the largest share difference, or the PSI; None when not judged
    limit: float
    drift: bool
    detail: str  # one sentence for the report


def read_window(db: Path, hours: float) -> LogWindow:
    """The last `hours` of the log up to its newest row (all of it for 0). Read-only."""
    if not db.is_file():
        raise MonitorError(f"--db {db}: no such file")
    try:
        conn = sqlite3.connect(Path(db).resolve().as_uri() + "?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        raise MonitorError(f"--db {db}: cannot open ({exc})") from None
    try:
        return _read(conn, hours)
    except sqlite3.Error as exc:
        raise MonitorError(f"--db {db}: not a readable prediction log ({exc})") from None
    finally:
        conn.close()


def _read(conn: sqlite3.Connection, hours: float) -> LogWindow:
    first, last = conn.execute("SELECT MIN(ts), MAX(ts) FROM predictions").fetchone()
    if last is None:
        raise MonitorError("the prediction log holds no rows yet")
    since = last - hours * HOUR_S if hours else first - 1.0  # the window is (since, last]
    where = "WHERE ts > ?"
    args = (since,)
    start, rows = conn.execute(f"SELECT MIN(ts), COUNT(*) FROM predictions {where}", args).fetchone()
    statuses = dict(conn.execute(f"SELECT status, COUNT(*) FROM predictions {where} GROUP BY status", args))
    models = [
        (str(n), str(v), int(c))
        for n, v, c in conn.execute(
            f"SELECT model_name, model_version, COUNT(*) FROM predictions {where} GROUP BY 1, 2 ORDER BY 3 DESC", args
        )
    ]
    answered = f"{where} AND label IS NOT NULL"
    labels = dict(conn.execute(f"SELECT label, COUNT(*) FROM predictions {answered} GROUP BY label", args))
    hourly: dict[float, dict[str, int]] = {}
    for hour, label, count in conn.execute(
        f"SELECT CAST(ts / 3600 AS INTEGER), label, COUNT(*) FROM predictions {answered} GROUP BY 1, 2", args
    ):
        hourly.setdefault(hour * HOUR_S, {})[label] = count
    values = conn.execute(f"SELECT score, tokens, truncated FROM predictions {answered}", args).fetchall()
    arr = np.array(values, dtype=np.float64).reshape(-1, 3)
    return LogWindow(
        float(start),
        float(last),
        int(rows),
        {int(k): int(v) for k, v in statuses.items()},
        models,
        {str(k): int(v) for k, v in sorted(labels.items())},
        sorted(hourly.items()),
        arr[:, 0],
        arr[~np.isnan(arr[:, 1]), 1].astype(np.int64),
        int(np.nansum(arr[:, 2])),
    )


def share(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


def check_label_share(window: LogWindow, ref: InputReference | None, config: MonitorConfig) -> Check:
    limit = config.share_margin
    if ref is None or not ref.label_share:
        return Check("label share", None, limit, False, "the reference has no training label share")
    if window.answered < config.min_rows:
        return Check(
            "label share",
            None,
            limit,
            False,
            f"{window.answered} answered texts, fewer than {config.min_rows}",
        )
    seen = share(window.label_counts)
    gaps = {label: seen.get(label, 0.0) - expected for label, expected in ref.label_share.items()}
    # With two labels both move alike: name the one that rose.
    label = max(gaps, key=lambda k: (round(abs(gaps[k]), 9), gaps[k]))
    gap = abs(gaps[label])
    detail = (
        f"{label} is {seen.get(label, 0.0):.1%} of the answered texts against {ref.label_share[label]:.1%} "
        f"of the training data ({gap:.1%} apart; margin {limit:.0%})"
    )
    return Check("label share", gap, limit, gap > limit, detail)


def check_input_length(window: LogWindow, ref: InputReference | None, config: MonitorConfig) -> Check:
    limit = config.psi_threshold
    if ref is None:
        return Check("input length", None, limit, False, "no input reference")
    if len(window.tokens) < config.min_rows:
        return Check("input length", None, limit, False, f"{len(window.tokens)} texts, fewer than {config.min_rows}")
    value = psi(ref.counts, token_counts(window.tokens.tolist(), ref.edges))
    detail = f"population stability index {value:.3f} against the evaluation data's token counts (limit {limit:g})"
    return Check("input length", value, limit, value > limit, detail)


def reference_note(model: ModelDir, ref: InputReference | None) -> str | None:
    """Why there is no reference, in words a user can act on (None when there is one)."""
    if ref is not None:
        return None
    report = model.path / "export_report.json"
    if not report.is_file():
        return f"{model.path} has no export_report.json: no input reference; re-export the checkpoint to get one"
    if "reference" not in model.report:
        return (
            f"{report} predates input references (an older export): input length and label share are shown but "
            "not compared; re-export the checkpoint with this exporter to get them"
        )
    return (
        f"{report} has no input reference: it was exported without labelled evaluation data (random text); "
        "re-export with --eval-data to get one"
    )


def run(config: MonitorConfig) -> dict[str, Any]:
    """Read, check, write; the summary written to monitor.json."""
    try:
        model = read_model_dir(config.model_dir)
        ref = model.reference()
    except ModelDirError as exc:
        raise MonitorError(str(exc)) from None
    window = read_window(config.db, config.hours)
    checks = [check_label_share(window, ref, config), check_input_length(window, ref, config)]
    note = reference_note(model, ref)
    from server import monitor_report

    config.output_dir.mkdir(parents=True, exist_ok=True)
    monitor_report.write(config.output_dir, window, ref, checks, note, model)
    summary = {
        "db": str(config.db),
        "model_dir": str(config.model_dir),
        "window": {"start": window.start, "end": window.end, "rows": window.rows, "answered": window.answered},
        "label_share": share(window.label_counts),
        "reference_label_share": ref.label_share if ref else None,
        "reference_note": note,
        "checks": [asdict(c) for c in checks],
        "drift": any(c.drift for c in checks),
    }
    (config.output_dir / "monitor.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    config = cli.parse_settings(MonitorConfig, argv, prog=PROG, description=(MonitorConfig.__doc__ or "").strip())
    try:
        import matplotlib  # noqa: F401  # the plots; checked before any work is done
    except ImportError:
        return cli.fail(PROG, "the monitor draws its plots with matplotlib: pip install 'sentiment-service[monitor]'")
    try:
        summary = run(config)
    except MonitorError as exc:
        return cli.fail(PROG, str(exc))
    drifted = [f"{c['name']}: {c['detail']}" for c in summary["checks"] if c["drift"]]
    print(
        f"monitor: wrote {config.output_dir / 'report.md'} ({summary['window']['answered']} answered texts); "
        + ("DRIFT: " + "; ".join(drifted) if drifted else "no drift flagged")
    )
    return 1 if drifted and config.fail_on_drift else 0


if __name__ == "__main__":
    sys.exit(main())
