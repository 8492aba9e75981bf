"""The overhead row (bench/overhead.py): the tiny 256-token model exported by bench/tinymodel.py,
served as one process, a process per core and FastAPI + uvicorn, driven in a closed loop by the
bench's Python client and by hey. A smoke run: these numbers mean nothing."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace

import pytest

from bench.capacity_report import overhead_lines
from bench.config import BenchConfig
from bench.fastapi_baseline import MODEL_DIR_ENV
from bench.overhead import FASTAPI, ONE, PER_CORE, parse_hey, pick_review, run_overhead
from core.layout import physical_cores

pytest.importorskip("torch")
pytest.importorskip("transformers")

TEXTS = [
    "short one",
    " ".join(["word"] * 170),  # 170 words: the closest to 174
    " ".join(["long"] * 400),
]


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    """One log dir for the module's runs: the first exports the tiny model, the others reuse it."""
    return tmp_path_factory.mktemp("overhead")


def overhead_config(log_dir) -> BenchConfig:
    return BenchConfig(
        model_dir=log_dir / "unused",
        skip="torch",
        log_dir=log_dir,
        overhead_s=1.5,
        overhead_concurrency=4,
        timeout_s=10.0,
    )


def check(result: dict, generator: str) -> None:
    assert result["generator"] == generator
    assert result["review_words"] == 170 and result["concurrency"] == 4 and result["seconds"] == 1.5
    model = result["model"]
    assert (model["layers"], model["hidden_size"], model["quantization"]) == (2, 32, "int8")
    assert (model["max_length"], model["truncation"]) == (256, "head+tail")
    rows = result["rows"]
    served = (ONE, PER_CORE) if physical_cores() > 1 else (ONE,)
    for name in served:
        row = rows[name]
        assert row["rps"] > 0 and row["cpu_ms_per_request"] > 0 and row["errors"] == 0, row
        assert row["answered"] > 0 and row["p95_ms"] > 0
    assert "--processes 1" in rows[ONE]["command"]
    assert result["automatic"] == ONE  # --processes 0 on a CPU: one process, so no row of its own
    assert result["ratios"]["automatic/one"] == pytest.approx(1.0)
    if PER_CORE in rows:
        assert f"--processes {physical_cores()}" in rows[PER_CORE]["command"]
        assert result["ratios"]["per_core/one"] == pytest.approx(rows[PER_CORE]["rps"] / rows[ONE]["rps"])
    if FASTAPI in rows:
        assert rows[FASTAPI]["rps"] > 0 and rows[FASTAPI]["errors"] == 0
        assert result["ratios"]["automatic/fastapi"] == pytest.approx(rows[ONE]["rps"] / rows[FASTAPI]["rps"])
    section = "\n".join(overhead_lines(result))
    assert "## Overhead: a tiny random model (2 layers, hidden 32, int8), one 170-word review" in section
    assert "| configuration | req/s | p95 ms | server CPU per request ms | errors |" in section
    assert f"| {ONE} (1 process x " in section and "`--processes 0` (automatic) is one process here" in section


@pytest.mark.slow
def test_overhead_row_with_the_python_client(log_dir, monkeypatch):
    monkeypatch.setenv(MODEL_DIR_ENV, "the capacity run's model")
    result = run_overhead(overhead_config(log_dir), TEXTS, generator="python")
    check(result, "python")
    assert os.environ[MODEL_DIR_ENV] == "the capacity run's model"  # put back after the FastAPI row
    assert (log_dir / "overhead-model" / "model.onnx").is_file()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("hey") is None, reason="hey is not installed (apt-get install hey)")
def test_overhead_row_with_hey(log_dir):
    config = overhead_config(log_dir)
    result = run_overhead(replace(config, skip="torch,fastapi"), TEXTS, generator="hey")
    check(result, "hey")
    assert FASTAPI not in result["rows"] and result["ratios"]["automatic/fastapi"] is None


def test_overhead_skipped_without_torch(tmp_path, monkeypatch):
    monkeypatch.setattr("bench.overhead.missing_build_modules", lambda: ["torch"])
    result = run_overhead(overhead_config(tmp_path), TEXTS)
    assert result == {"skipped": "building the tiny model needs torch (the train extra)"}
    assert "Not measured: building the tiny model needs torch" in "\n".join(overhead_lines(result))


def test_pick_review_and_parse_hey():
    assert pick_review(TEXTS) == TEXTS[1]
    summary = (
        "Summary:\n  Total:\t2.0030 secs\n  Requests/sec:\t1865.2102\n\nLatency distribution:\n"
        "  90% in 0.0049 secs\n  95% in 0.0051 secs\n\nStatus code distribution:\n  [200]\t3736 responses\n"
        '  [503]\t4 responses\n\nError distribution:\n  [3]\tPost "http://x/v1/predict": EOF\n'
    )
    measured = parse_hey(summary)
    assert (measured.ok, measured.errors, measured.wall_s) == (3736, 7, 2.003)
    assert measured.p95_ms == pytest.approx(5.1)
