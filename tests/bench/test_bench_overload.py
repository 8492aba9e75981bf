"""The overload benchmark: its figures as pure functions, its report section, and a smoke run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.__main__ import main as bench_main
from bench.openloop import Samples
from bench.overload import STEPS
from bench.overload_figures import cpu_per_refusal_ms, median_steps, recovery_seconds, rejected_counts, summarize
from bench.overload_report import BEGIN, END, current_section, merge_section


def samples(status, latency_ms, due_s=None, duration_s=10.0) -> Samples:
    n = len(status)
    return Samples(
        rate=n / duration_s,
        duration_s=duration_s,
        due_s=np.asarray(due_s if due_s is not None else np.linspace(0, duration_s, n, endpoint=False)),
        latency_ms=np.asarray(latency_ms, dtype=float),
        status=list(status),
        send_lag_s=np.zeros(n),
        wall_s=duration_s,
        client_cpu_s=1.0,
        server_cpu_s=15.0,
    )


def test_summarize_splits_answers_refusals_and_errors():
    status = [200] * 6 + [503] * 3 + [504]
    latency = [50, 60, 70, 80, 150, 250, 2, 3, 40, 1000]
    figures = summarize("2x", samples(status, latency), budget_ms=200)
    assert (figures.sent, figures.answered, figures.refused, figures.other_errors) == (10, 6, 3, 1)
    assert figures.goodput_rps == pytest.approx(5 / 10.0)  # 250 ms is an answer, not goodput
    assert figures.refused_share == pytest.approx(0.3)
    assert figures.refusal_p50_ms == pytest.approx(3) and figures.answered_p50_ms == pytest.approx(75)
    assert figures.error_kinds == {"503": 3, "504": 1}
    assert figures.server_cpu_cores == pytest.approx(1.5) and figures.server_cpu_ms_per_request == pytest.approx(1500)
    assert figures.recovery_s is None  # only asked of the recovery step


def test_recovery_is_the_start_of_the_first_window_after_which_p95_stays_under_budget():
    due = np.arange(0, 10, 0.1)  # 10 s, 10 requests a second
    latency = np.where(due < 3.0, 400.0, 50.0)  # late for the first 3 s
    ok = np.ones(len(due), dtype=bool)
    assert recovery_seconds(due, latency, ok, 200) == 3.0
    assert recovery_seconds(due, np.full(len(due), 50.0), ok, 200) == 0.0
    assert recovery_seconds(due, np.full(len(due), 400.0), ok, 200) is None  # never within the step
    late_again = latency.copy()
    late_again[(due >= 5) & (due < 6)] = 400.0  # a relapse counts: recovered only after it
    assert recovery_seconds(due, late_again, ok, 200) == 6.0


def test_cpu_per_refusal_from_the_event_loop():
    # 100 answers cost 0.1 s of loop CPU (1 ms each); a step with 50 answers and 1000 refusals used 0.35 s.
    assert cpu_per_refusal_ms(100, 0.1, 50, 1000, 0.35) == pytest.approx(0.3)
    assert cpu_per_refusal_ms(100, 0.1, 50, 0, 0.35) is None


def test_rejected_counts_read_from_metrics():
    text = (
        '# HELP x\nsentiment_rejected_total{reason="overloaded"} 12.0\n'
        'sentiment_rejected_total{reason="shed"} 3.0\nsentiment_requests_total{endpoint="predict",code="200"} 5.0\n'
    )
    assert rejected_counts(text) == {"overloaded": 12.0, "shed": 3.0}


def test_median_over_rounds_per_step():
    rounds = [
        [{"name": "a", "x": 1.0, "y": None, "kinds": {}}],
        [{"name": "a", "x": 3.0, "y": None, "kinds": {}}],
        [{"name": "a", "x": 2.0, "y": 5.0, "kinds": {}}],
    ]
    assert median_steps(rounds) == [{"name": "a", "x": 2.0, "y": 5.0}]


def test_the_section_is_replaced_in_place_and_carried_over():
    section = f"{BEGIN}\n## Overload\nnew\n{END}\n"
    assert merge_section("", section) == section
    existing = f"# Capacity\ntable\n\n{BEGIN}\nold\n{END}\n\n## After\n"
    merged = merge_section(existing, section)
    assert merged.count(BEGIN) == 1 and "new" in merged and "old" not in merged
    assert merged.startswith("# Capacity") and merged.rstrip().endswith("## After")
    assert current_section(merged) == section
    assert current_section("# no section") == ""


@pytest.mark.slow
def test_overload_smoke_writes_a_section_and_json(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "docs"
    (out).mkdir()
    (out / "BENCHMARKS.md").write_text("# Capacity report\n")
    code = bench_main(
        [
            "--overload",
            "--model-dir",
            str(tiny_model_dir),
            "--quick",
            "--texts",
            "32",
            "--duration-s",
            "1",
            "--max-steps",
            "2",
            "--probe-s",
            "1",
            "--overload-step-s",
            "1",
            "--rounds",
            "1",
            "--output-dir",
            str(out),
            "--log-dir",
            str(tmp_path / "logs"),
            "--data-dir",
            str(tmp_path / "no-data"),
            "--inference-workers",
            "1",
            "--intra-op-threads",
            "1",
            "--retries",
            "0",
            "--quiet-wait-s",
            "0",
        ]
    )
    assert code == 0, capsys.readouterr()
    results = json.loads((out / "overload.json").read_text())
    assert results["capacity_rps"] == results["capacity"]["budget_off"]["capacity_rps"] > 0
    for name in ("budget_on", "budget_off"):
        [steps] = results["rounds"][name]
        assert [s["name"] for s in steps] == [name for name, _ in STEPS]
        assert all(s["sent"] > 0 and s["answered"] + s["refused"] + s["other_errors"] == s["sent"] for s in steps)
        # Recovered, or the step shows why not: its answers past the budget, or none answered at all
        # (a 1 s step right after a 5x burst of a ~2,000 req/s model can refuse all of it; p95 is then NaN).
        last = steps[-1]
        p95 = last["answered_p95_ms"]
        assert last["recovery_s"] is not None or p95 is None or not p95 <= results["budget_ms"], last
        if last["recovery_s"] is None and last["answered"] == 0:
            assert last["refused"] == last["sent"]
        assert [s["name"] for s in results["median"][name]] == [s["name"] for s in steps]
    assert results["commands"]["budget_off"][-2:] == ["--latency-budget-ms", "0"]
    assert results["commands"]["budget_on"][-2:] == ["--latency-budget-ms", "200"]  # the budget goodput counts against
    assert set(results["targets"]) >= {"goodput_1.5x", "goodput_5x", "refusal_p99_ms", "capacity_drop"}
    md = (out / "BENCHMARKS.md").read_text()
    assert md.startswith("# Capacity report") and md.count(BEGIN) == 1 and "| budget off | 5x |" in md
