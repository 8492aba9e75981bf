"""The benchmark end to end on the tiny model (a smoke run: these numbers mean nothing),
and the PyTorch baseline's answers against a direct forward pass."""

from __future__ import annotations

import json
import statistics
import urllib.request

import pytest

from bench.__main__ import main as bench_main
from bench.procs import ServedProcess, parse_cpus


def post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_parse_cpus():
    assert parse_cpus("") == set() and parse_cpus("0,2") == {0, 2} and parse_cpus("1-3") == {1, 2, 3}
    with pytest.raises(ValueError):
        parse_cpus("a-b")


def test_torch_baseline_matches_direct_forward(tiny_checkpoint, tmp_path, reviews):
    import sys

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cmd = [sys.executable, "-m", "bench.torch_baseline", "--checkpoint", str(tiny_checkpoint), "--threads", "1"]
    with ServedProcess(cmd, tmp_path / "torch.log") as proc:
        assert proc.ready_body["threads"] == 1 and proc.ready_body["device"] == "cpu"
        single = post(proc.url + "/v1/predict", {"text": reviews[0][0]})
        multi = post(proc.url + "/v1/predict", {"texts": [t for t, _ in reviews[:3]]})
    model = AutoModelForSequenceClassification.from_pretrained(tiny_checkpoint).eval()
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    with torch.inference_mode():
        enc = tok([reviews[0][0]], truncation=True, max_length=64, return_tensors="pt")
        expected = torch.softmax(model(**enc).logits[0], -1).tolist()
    assert single["probabilities"]["positive"] == pytest.approx(expected[1], abs=1e-4)
    assert single["label"] == ("positive" if expected[1] > expected[0] else "negative")
    assert len(multi["predictions"]) == 3


@pytest.mark.slow
def test_bench_smoke_writes_report(tiny_model_dir, tiny_checkpoint, tmp_path, capsys):
    # The real server as a subprocess; batch-size-1 and torch runs are the same code path with
    # other commands (the torch server has its own test above), skipped to keep this short.
    out = tmp_path / "docs"
    code = bench_main(
        [
            "--model-dir",
            str(tiny_model_dir),
            "--checkpoint",
            str(tiny_checkpoint),
            "--quick",
            "--texts",
            "32",
            "--duration-s",
            "1",
            "--max-steps",
            "2",
            "--probe-s",
            "1",
            "--ceiling-s",
            "0.3",
            "--max-batch-size",
            "8",
            "--output-dir",
            str(out),
            "--log-dir",
            str(tmp_path / "logs"),
            "--data-dir",
            str(tmp_path / "no-data"),
            "--skip",
            "single_worker,batch1,torch,overhead",  # the overhead row: tests/bench/test_bench_overhead.py
            "--inference-workers",
            "2",
            "--intra-op-threads",
            "1",
            "--retries",
            "0",
            "--quiet-wait-s",
            "0",  # a shared test machine would otherwise wait and re-run steps
            "--rounds",
            "2",
        ]
    )
    assert code == 0, capsys.readouterr()
    results = json.loads((out / "benchmarks.json").read_text())
    assert results["texts"] == {"count": 32, "source": "synthetic"}
    ceiling = results["ceiling"]
    measured = ceiling["measurements"]
    assert {e["batch_size"] for e in measured} == {1, 4, 8}
    assert (2, 1) in {(e["streams"], e["threads"]) for e in measured}  # the server's own layout
    assert ceiling["sweep_best_texts_per_s"] == max(e["texts_per_s"] for e in measured) > 0
    assert ceiling["server_layout_texts_per_s"] <= ceiling["sweep_best_texts_per_s"]
    # the tiny export checked ONNX Runtime only: the one engine measured, and the report names the CPU's flags
    assert ceiling["engines"] == ["ort"] == list(ceiling["server_layout_by_engine"]) and ceiling["best_engine"] == "ort"
    assert {e["engine"] for e in measured} == {"ort"} and isinstance(results["machine"]["cpu_flags"], list)
    # The winner ran again around each round of the server's search; the ceiling is the median of its runs.
    repeats = ceiling["repeats"]
    assert [r["when"] for r in repeats] == ["before round 1", "after round 1", "after round 2"]
    best = ceiling["best_layout"]
    assert all(
        (r["streams"], r["threads"], r["batch_size"]) == (best["streams"], best["threads"], ceiling["best_batch_size"])
        for r in repeats
    )
    runs = [ceiling["sweep_best_texts_per_s"], *(r["texts_per_s"] for r in repeats)]
    assert ceiling["texts_per_s"] == pytest.approx(statistics.median(runs))
    entry = results["server"]
    # Two rounds, each a fresh server between two ceiling runs; 2 is the lower-median round, and
    # 2/1 the median of the rounds' own ratios.
    rounds = entry["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for k, r in enumerate(rounds):
        beside = (repeats[k]["texts_per_s"] + repeats[k + 1]["texts_per_s"]) / 2
        assert r["ceiling_beside"] == pytest.approx(beside)
        assert r["vs_ceiling"] == pytest.approx(r["capacity_rps"] / beside)
        # The ideal server, put through this round's search in simulation, against the same ceiling.
        ideal = r["ideal_same_search"]
        assert ideal["searches"] == 40 and 0 <= ideal["q1"] <= ideal["median"] <= ideal["q3"]
        assert r["vs_ideal_same_search"] == pytest.approx(r["capacity_rps"] / (ideal["median"] * beside))
        assert (tmp_path / "logs" / f"server-round{k + 1}.log").is_file()
    assert entry["capacity_rps"] == min(r["capacity_rps"] for r in rounds)
    assert entry["round"] in (1, 2) and entry["steps"] == rounds[entry["round"] - 1]["steps"]
    assert results["summary"]["capacity_vs_ceiling"] == pytest.approx(
        statistics.median(r["vs_ceiling"] for r in rounds)
    )
    assert results["summary"]["capacity_vs_ideal_same_search"] == pytest.approx(
        statistics.median(r["vs_ideal_same_search"] for r in rounds)
    )
    assert len(entry["steps"]) == 4 and entry["closed_loop_rps"] > 0  # 2 search steps, then 50% and 80%
    assert all(
        s["sent"] > 0
        and s["client_cpu_cores"] >= 0
        and s["server_cpu_cores"] > 0
        and s["other_cpu_cores"] >= 0
        and not s["discarded"]
        for s in entry["steps"]
    )
    assert [s.get("fraction") for s in entry["steps"]] == [None, None, 0.5, 0.8]
    assert entry["capacity_rps"] > 0, "the tiny model meets 200 ms at 70% of its closed-loop rate"
    assert set(entry["at_fraction"]) == {"50%", "80%"}
    assert "server_batch1" not in results and "torch_baseline" not in results and "server_single_worker" not in results
    alone = results["in_process"]  # the same settings, no HTTP
    assert alone["closed_loop_rps"] > 0 and len(alone["steps"]) == 2 and alone["capacity_rps"] > 0
    assert alone["model_info"]["batching"]["inference_workers"] == 2 and alone["model_info"]["intra_op_threads"] == 1
    assert alone["command"].startswith("in this process: --model-dir ")
    assert results["summary"]["vs_in_process"] == entry["capacity_rps"] / alone["capacity_rps"]
    assert entry["model_info"]["batching"]["inference_workers"] == 2 and entry["model_info"]["intra_op_threads"] == 1
    md = (out / "BENCHMARKS.md").read_text()
    assert "Quick mode" in md and "2 / 1: server capacity / ceiling" in md and "2 / 4" not in md
    assert "- CPU flags that decide the engines' int8 and bf16 kernels: " in md and "| ort | 2 x 1 |" in md
    assert "2 inference workers x 1 thread" in md and "| 2 x 1 |" in md and "median of 4 runs (sweep " in md
    assert (
        "median of 2 rounds (" in md and "| round | capacity (req/s) |" in md and "median of the rounds' ratios" in md
    )
    assert "ideal server, same search: median (quartiles)" in md and "2 / the ideal server under the same search" in md
    assert "| 2c. the server's batcher and workers in this process" in md and "2 / 2c: HTTP server" in md
    assert results["command"].startswith("python -m bench --model-dir ")
    # The generator's peak leaves 2c out: that process is the in-process server as well.
    generator_steps = [*(s for r in rounds for s in r["steps"]), *entry["at_fraction"].values()]
    # FastAPI + uvicorn runs too where it is installed (CI's dev extra): its steps count as well.
    generator_steps += results.get("fastapi_uvicorn", {}).get("steps", [])
    generator_peak = max(s["client_cpu_cores"] for s in generator_steps)
    assert max(s["client_cpu_cores"] for s in alone["steps"]) > generator_peak  # else the check below proves nothing
    assert f"at most {generator_peak:.2f} cores in any step of this run (2c aside" in md


def test_bench_bad_flags_exit_2(tmp_path, capsys):
    assert bench_main(["--model-dir", str(tmp_path), "--checkpoint", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: --model-dir")
    assert bench_main(["--model-dir", str(tmp_path), "--checkpoint", str(tmp_path), "--skip", "gpu"]) == 2
    assert "--skip takes" in capsys.readouterr().err


def test_ceiling_layouts_cover_both_extremes_and_the_servers():
    from bench.ceiling import ceiling_layouts

    assert ceiling_layouts(2, (2, 1)) == [(1, 2), (2, 1)]
    assert ceiling_layouts(4, (2, 2)) == [(1, 4), (2, 2), (4, 1)]
    assert ceiling_layouts(1, (1, 1)) == [(1, 1)]


def test_the_ceiling_measures_every_engine_auto_would_weigh(tiny_model_dir, tiny_openvino_model_dir):
    from bench.ceiling import ceiling_engines

    assert ceiling_engines(tiny_model_dir) == ["ort"]  # OpenVINO installed or not: the export did not check it
    assert ceiling_engines(tiny_openvino_model_dir) == ["ort", "openvino"]


def test_bench_pairs_auto_with_todays_engine_where_auto_weighs_several(tiny_openvino_model_dir, tmp_path, capsys):
    # The export checked OpenVINO too, so auto has a choice: each round searches the same server with
    # --engine ort right after 2, and 2 / 2o is the median of the rounds' own ratios.
    out = tmp_path / "docs"
    code = bench_main(
        [
            *("--model-dir", str(tiny_openvino_model_dir), "--quick", "--texts", "16", "--duration-s", "1"),
            *("--max-steps", "1", "--probe-s", "0.5", "--ceiling-s", "0.2", "--max-batch-size", "4"),
            *("--output-dir", str(out), "--log-dir", str(tmp_path / "logs"), "--data-dir", str(tmp_path / "none")),
            # One round (the smoke test above covers several): 2 then 2o, each a fresh server.
            *("--skip", "in_process,single_worker,batch1,torch,fastapi,overhead", "--rounds", "1"),
            *("--inference-workers", "2", "--intra-op-threads", "1", "--retries", "0", "--quiet-wait-s", "0"),
        ]
    )
    assert code == 0, capsys.readouterr()
    results = json.loads((out / "benchmarks.json").read_text())
    assert results["ceiling"]["engines"] == ["ort", "openvino"]
    baseline, rounds = results["server_ort"], results["server"]["rounds"]
    assert baseline["command"].split("--port")[0].rstrip().endswith("--engine ort")
    assert baseline["model_info"]["engine"]["name"] == "ort" and [r["round"] for r in baseline["rounds"]] == [1]
    assert results["server"]["model_info"]["engine"]["requested"] == "auto"
    for r, b in zip(rounds, baseline["rounds"], strict=True):
        assert r["vs_ort"] == pytest.approx(r["capacity_rps"] / b["capacity_rps"])
        assert (tmp_path / "logs" / f"server-ort-round{r['round']}.log").is_file()
    summary = results["summary"]
    assert summary["vs_ort"] == pytest.approx(statistics.median(r["vs_ort"] for r in rounds))
    fast = {"avx512_vnni", "amx_int8"} & set(results["machine"]["cpu_flags"])
    assert summary["vs_ort_target"] == (1.25 if fast else 1.0)
    md = (out / "BENCHMARKS.md").read_text()
    assert "| 2o. the same server with --engine ort, today's engine (2 inference workers x 1 thread" in md
    assert "| 2 / 2o: --engine auto / today's engine" in md
    assert "| round |" not in md  # one round: no rounds table (its 2o columns need two or more)
    assert "- server_ort: `python -m server --model-dir " in md
    # Pinning the engine leaves nothing to pair: 2o is not run.
    from bench.capacity import ort_baseline
    from bench.config import BenchConfig

    pinned = BenchConfig(model_dir=tiny_openvino_model_dir, skip="torch", server_args="--engine openvino")
    assert ort_baseline(pinned, ["ort", "openvino"], ["server"]) is None
    free = BenchConfig(model_dir=tiny_openvino_model_dir, skip="torch")
    assert ort_baseline(free, ["ort"], ["server"]) is None
    assert ort_baseline(free, ["ort", "openvino"], ["server"]) == ["server", "--engine", "ort"]


def test_the_rounds_table_pairs_each_round_with_its_2o():
    # The Zen 5 run in docs/engines/ (three rounds, auto against --engine ort), rendered again.
    from pathlib import Path

    from bench.capacity_report import render_markdown

    recorded = Path(__file__).parents[2] / "docs" / "engines" / "benchmarks-zen5-auto-vs-ort.json"
    md = render_markdown(json.loads(recorded.read_text()))
    assert "| 2o, --engine ort (req/s) | 2 / 2o |" in md
    assert "| 143.9 | 1.18x |" in md and "| 132.2 | 1.48x |" in md
    assert (
        "| 2 / 2o: --engine auto / today's engine (ONNX Runtime dynamic int8)" in md
        and "| 1.18x | >= 1.25x | no |" in md
    )
