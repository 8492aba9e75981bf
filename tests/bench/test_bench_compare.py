"""`python -m bench.compare` end to end on the tiny model: real servers, real steps."""

from __future__ import annotations

import json

import pytest

from bench.compare import main as compare_main
from bench.compare import mean_batch_size, parse_variant


@pytest.mark.slow
def test_two_variants_one_round(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "cells.json"
    code = compare_main(
        [
            "--model-dir",
            str(tiny_model_dir),
            "--rates",
            "20,40",
            "--rounds",
            "1",
            "--duration-s",
            "1",
            "--texts",
            "16",
            "--data-dir",
            str(tmp_path / "no-data"),
            "--output",
            str(out),
            "--log-dir",
            str(tmp_path / "logs"),
            "one at a time=--max-batch-size 1",
            "batched=--max-batch-size 8 --max-wait-ms 20",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    cells = json.loads(out.read_text())["cells"]
    assert [(c["variant"], c["rate"]) for c in cells] == [
        ("one at a time", 20.0),
        ("one at a time", 40.0),
        ("batched", 20.0),
        ("batched", 40.0),
    ]
    assert all(c["error_rate"] == 0 and c["p95_ms"] > 0 and c["server_cpu_ms_per_request"] > 0 for c in cells)
    assert all(c["mean_batch_size"] == 1.0 for c in cells[:2])
    assert cells[3]["mean_batch_size"] > 1.0  # a 20 ms wait at 40 req/s gathers company
    assert "| one at a time | " in printed and "| setting | round 1, 20 req/s | round 1, 40 req/s |" in printed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["no-equals-sign"], "name=server flags"),
        (["a=--x", "a=--y"], "names must differ"),
        (["--rates", "0", "a="], "--rates"),
        (["--rates", "fast", "a="], "could not convert"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, argv, message, capsys):
    assert compare_main(["--model-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_missing_model_exits_2(tmp_path, capsys):
    assert compare_main(["--model-dir", str(tmp_path), "a=--max-batch-size 1"]) == 2
    assert "has no model.onnx" in capsys.readouterr().err


def test_parsing_helpers():
    assert parse_variant(" 256 tokens = --max-batch-tokens 256 ") == ("256 tokens", "--max-batch-tokens 256")
    page = "# HELP x\nsentiment_batch_size_sum 12.0\nsentiment_batch_size_count 8.0\n"
    assert mean_batch_size(page) == (12.0, 8.0)
    assert mean_batch_size("") == (0.0, 0.0)
