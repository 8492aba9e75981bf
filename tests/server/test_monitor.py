"""`python -m server.monitor`: the drift report from a prediction log with a planted drift, and without."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.modeldir import read_model_dir
from core.reference import build_reference
from server.inference import Answer
from server.monitor import main
from server.predlog import INSERT, connect, rows

ROOT = Path(__file__).resolve().parents[2]
LABELS = ("negative", "positive")
HOURS, PER_HOUR = 24, 60


def reference_lengths(rng: random.Random, n: int) -> list[int]:
    """Token counts like the evaluation data's: mostly short reviews, a few filling the window."""
    return [min(64, max(4, int(rng.gauss(30, 10)))) for _ in range(n)]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with a known reference: balanced labels, short texts."""
    out = tmp_path_factory.mktemp("monitored") / "model"
    shutil.copytree(tiny_model_dir, out)
    report = json.loads((out / "export_report.json").read_text())
    ref = build_reference(
        reference_lengths(random.Random(0), 2000),
        "planted reviews",
        {"negative": 1000, "positive": 1000},
        "planted train split",
    )
    report["reference"] = ref.to_dict()
    (out / "export_report.json").write_text(json.dumps(report))
    return out


def write_log(db: Path, model_dir: Path, drift_from_hour: int | None) -> None:
    """HOURS of PER_HOUR answered texts each, written through the log's own rows() and schema.
    From `drift_from_hour` on, 90% are positive and every text fills the model's window."""
    serving = read_model_dir(model_dir).serving
    rng = random.Random(1)
    start = (int(time.time() // 3600) - HOURS) * 3600.0  # on the hour: the report groups by clock hour
    batch = []
    for hour in range(HOURS):
        drifted = drift_from_hour is not None and hour >= drift_from_hour
        lengths = [64] * PER_HOUR if drifted else reference_lengths(rng, PER_HOUR)
        for k, tokens in enumerate(lengths):
            positive = rng.random() < (0.9 if drifted else 0.5)
            p = rng.uniform(0.55, 0.99)
            probs = np.array([[1 - p, p] if positive else [p, 1 - p]])
            answer = Answer(probs, 1, LABELS, (tokens,), (tokens >= 64,))
            entry = (start + hour * 3600 + k * 50, f"req-{hour}-{k}", 200, 0.012, answer, None)
            batch += rows(entry, serving["model_name"], serving["model_version"])
    batch += rows((start + 10, "bad", 503, 0.001, None, None), serving["model_name"], serving["model_version"])
    conn = connect(db)
    with conn:
        conn.executemany(INSERT, batch)
    conn.close()


def run_monitor(tmp_path: Path, db: Path, model_dir: Path, *extra: str) -> tuple[int, dict, str]:
    out = tmp_path / "report"
    code = main(["--db", str(db), "--model-dir", str(model_dir), "--output-dir", str(out), *extra])
    return code, json.loads((out / "monitor.json").read_text()), (out / "report.md").read_text()


def test_a_planted_drift_is_flagged(tmp_path, model_dir, capsys):
    db = tmp_path / "log.db"
    write_log(db, model_dir, drift_from_hour=12)
    code, summary, report = run_monitor(tmp_path, db, model_dir, "--fail-on-drift")
    assert code == 1 and summary["drift"] is True
    checks = {c["name"]: c for c in summary["checks"]}
    # Half the day at 90% positive: ~70% against the training data's 50%.
    assert checks["label share"]["drift"] and checks["label share"]["value"] == pytest.approx(0.2, abs=0.05)
    assert checks["input length"]["drift"] and checks["input length"]["value"] > 1.0
    assert summary["window"]["answered"] == HOURS * PER_HOUR and summary["window"]["rows"] == HOURS * PER_HOUR + 1
    assert "**DRIFT flagged: label share; input length.**" in report
    assert "positive is 70" in report or "positive is 69" in report or "positive is 71" in report
    for plot in ("label_share.png", "confidence.png", "input_length.png"):
        assert f"]({plot})" in report and (tmp_path / "report" / plot).stat().st_size > 5000
    assert report.count(" UTC | 60 |") == HOURS  # one row per hour in the label share table
    assert "DRIFT: label share" in capsys.readouterr().out

    # The last 12 hours alone: all drifted.
    code, summary, _ = run_monitor(tmp_path, db, model_dir, "--hours", "12")
    assert code == 0  # without --fail-on-drift a drift is reported, not an error
    assert summary["window"]["answered"] == 12 * PER_HOUR
    assert {c["name"]: c for c in summary["checks"]}["label share"]["value"] == pytest.approx(0.4, abs=0.05)


def test_a_log_like_the_reference_flags_nothing(tmp_path, model_dir):
    db = tmp_path / "log.db"
    write_log(db, model_dir, drift_from_hour=None)
    code, summary, report = run_monitor(tmp_path, db, model_dir, "--fail-on-drift")
    assert code == 0 and summary["drift"] is False
    checks = {c["name"]: c for c in summary["checks"]}
    assert checks["label share"]["value"] < 0.05 and checks["input length"]["value"] < 0.1  # judged, not skipped
    assert "No drift flagged." in report and "DRIFT" not in report


def test_too_few_rows_are_not_judged(tmp_path, model_dir):
    db = tmp_path / "log.db"
    write_log(db, model_dir, drift_from_hour=0)
    code, summary, _ = run_monitor(tmp_path, db, model_dir, "--min-rows", str(HOURS * PER_HOUR + 1))
    assert code == 0 and summary["drift"] is False
    assert all(c["value"] is None and "fewer than" in c["detail"] for c in summary["checks"])


def test_a_model_dir_without_a_reference_is_named_and_the_rest_is_reported(tmp_path, model_dir):
    older = tmp_path / "older"
    shutil.copytree(model_dir, older)
    report = json.loads((older / "export_report.json").read_text())
    del report["reference"]
    (older / "export_report.json").write_text(json.dumps(report))
    db = tmp_path / "log.db"
    write_log(db, model_dir, drift_from_hour=12)
    code, summary, text = run_monitor(tmp_path, db, older, "--fail-on-drift")
    assert code == 0 and summary["reference_label_share"] is None
    assert "predates input references" in summary["reference_note"] and "re-export" in text
    assert all(c["value"] is None for c in summary["checks"])
    assert "![input length](input_length.png)" in text and "| 64-95 | 50.0% | - |" in text


def test_bad_input_is_one_line(tmp_path, model_dir, capsys):
    assert main(["--db", str(tmp_path / "none.db"), "--model-dir", str(model_dir), "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.db" in err[0]


def test_without_matplotlib_the_monitor_says_so_in_one_line(tmp_path, model_dir):
    code = (
        "import sys; sys.modules['matplotlib'] = None; from server.monitor import main; "
        f"sys.exit(main(['--db', 'x.db', '--model-dir', {str(model_dir)!r}, '--output-dir', {str(tmp_path)!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "matplotlib" in lines[0] and "[monitor]" in lines[0]
