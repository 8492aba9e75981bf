"""The SLA verdict from given statistics, and reading locust's CSV."""

from __future__ import annotations

import json
import math

import pytest

from loadtest.sla import EndpointStats, SlaConfig, evaluate, format_table, read_summary


def stats(requests=100, failures=0, p95=150.0, p99=180.0) -> EndpointStats:
    return EndpointStats(
        name="Aggregated",
        method="",
        requests=requests,
        failures=failures,
        rps=10.0,
        p50_ms=50.0,
        p95_ms=p95,
        p99_ms=p99,
        max_ms=300.0,
    )


def test_within_limits_passes_and_line_says_pass():
    sla = SlaConfig()
    verdict = evaluate(stats(), sla)
    assert verdict.passed and verdict.reasons == ()
    line = verdict.line(sla)
    assert line.startswith("PASS:") and "p95=150ms (<= 200 ms)" in line and "errors=0.00%" in line


def test_slow_p95_fails_with_figures():
    verdict = evaluate(stats(p95=201.0), SlaConfig(p95_ms=200))
    assert not verdict.passed
    assert verdict.line(SlaConfig()).startswith("FAIL: p95 201ms > 200 ms")


def test_exactly_at_thresholds_passes():
    sla = SlaConfig(p95_ms=200, p99_ms=300, max_error_rate=0.01)
    assert evaluate(stats(requests=1000, failures=10, p95=200.0, p99=300.0), sla).passed
    assert not evaluate(stats(requests=1000, failures=11, p95=200.0, p99=300.0), sla).passed


def test_p99_only_checked_when_set():
    assert evaluate(stats(p99=5000.0), SlaConfig()).passed
    verdict = evaluate(stats(p99=5000.0), SlaConfig(p99_ms=400))
    assert not verdict.passed and verdict.reasons == ("p99 5000ms > 400 ms",)


def test_zero_requests_fails():
    verdict = evaluate(stats(requests=0, failures=0, p95=math.nan, p99=math.nan), SlaConfig())
    assert not verdict.passed and verdict.reasons == ("no requests completed",)
    assert "errors=n/a" in verdict.line(SlaConfig())


def test_all_failures_fail_even_when_fast():
    verdict = evaluate(stats(requests=50, failures=50, p95=2.0, p99=3.0), SlaConfig())
    assert not verdict.passed and verdict.reasons == ("error rate 100.00% > 1.00%",)


def test_zero_error_budget():
    assert evaluate(stats(failures=0), SlaConfig(max_error_rate=0.0)).passed
    assert not evaluate(stats(failures=1), SlaConfig(max_error_rate=0.0)).passed


def test_missing_percentile_fails():
    assert not evaluate(stats(p95=math.nan), SlaConfig()).passed


@pytest.mark.parametrize("kwargs", [{"p95_ms": 0}, {"p99_ms": -1}, {"max_error_rate": 1.5}, {"max_error_rate": -0.1}])
def test_bad_thresholds_rejected(kwargs):
    with pytest.raises(ValueError):
        SlaConfig(**kwargs)


def test_read_summary(tmp_path):
    path = tmp_path / "locust_summary.json"
    path.write_text(
        json.dumps(
            [
                {
                    "name": "/v1/predict [single]",
                    "method": "POST",
                    "requests": 90,
                    "failures": 1,
                    "rps": 9.0,
                    "p50_ms": 40,
                    "p95_ms": 120,
                    "p99_ms": 200,
                    "max_ms": 300.5,
                },
                {
                    "name": "/v1/predict [multi]",
                    "method": "POST",
                    "requests": 0,
                    "failures": 0,
                    "rps": 0.0,
                    "p50_ms": None,
                    "p95_ms": None,
                    "p99_ms": None,
                    "max_ms": None,
                },
                {
                    "name": "Aggregated",
                    "method": "",
                    "requests": 90,
                    "failures": 1,
                    "rps": 9.0,
                    "p50_ms": 40,
                    "p95_ms": 120,
                    "p99_ms": 200,
                    "max_ms": 300.5,
                },
            ]
        )
    )
    rows, total = read_summary(path)
    assert [r.name for r in rows] == ["/v1/predict [single]", "/v1/predict [multi]"]
    assert (total.requests, total.failures, total.p50_ms, total.p95_ms, total.p99_ms) == (90, 1, 40, 120, 200)
    assert math.isnan(rows[1].p95_ms) and math.isnan(rows[1].error_rate)
    table = format_table(rows, total)
    assert "POST /v1/predict [single]" in table and "1.11%" in table and "n/a" in table


def test_read_rejects_file_without_aggregated_entry(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("[]")
    with pytest.raises(ValueError, match="no Aggregated entry"):
        read_summary(path)
