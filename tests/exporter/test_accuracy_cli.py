"""`python -m exporter.accuracy`: the tiny model's graphs scored on a whole (small) split."""

from __future__ import annotations

import json

import pandas as pd

from exporter.accuracy import main


def test_the_onnx_graph_and_the_openvino_ir_are_scored_on_every_review(tiny_openvino_model_dir, reviews, tmp_path):
    texts, labels = [t for t, _ in reviews], [y for _, y in reviews]
    pd.DataFrame({"text": texts, "label": labels}).to_parquet(tmp_path / "test.parquet")
    out = tmp_path / "accuracy.json"
    args = ["--model-dir", str(tiny_openvino_model_dir), "--data-dir", str(tmp_path), "--openvino"]
    assert main([*args, "--output", str(out), "--batch-size", "4"]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [row["engine"].split()[0] for row in rows] == ["onnx", "openvino"]
    assert all(row["samples"] == len(texts) and 0 <= row["accuracy"] <= 1 for row in rows)
    assert "agreement_with_first" in rows[1]


def test_a_model_directory_without_the_ir_is_one_line(tiny_model_dir, reviews, tmp_path, capsys):
    pd.DataFrame({"text": [t for t, _ in reviews], "label": [y for _, y in reviews]}).to_parquet(
        tmp_path / "test.parquet"
    )
    code = main(["--model-dir", str(tiny_model_dir), "--data-dir", str(tmp_path), "--openvino"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and "no openvino_model.xml (export with --openvino-int8)" in err[-1]
