"""`python -m demo`: its commands are accepted by the real CLIs, and the serving half
runs end to end (real server process, real HTTP, real locust) on the tiny model."""

from __future__ import annotations

import re
import shutil
import socket
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.procs import ServedProcess
from demo import commands, queries, recipes, tour
from demo.config import DemoConfig, parse_config

REPO = Path(__file__).resolve().parents[2]


def test_defaults_fit_a_short_cpu_run():
    cfg = parse_config([])
    assert cfg.train_config == Path("configs/minilm.yaml") and cfg.model_dir == Path("artifacts/model")
    assert cfg.train_samples == 0 and cfg.max_length <= 128 and cfg.epochs == 1 and cfg.dropout == 0
    assert cfg.run_time == "30s" and cfg.sla_p95_ms == 200 and not cfg.force
    cfg = parse_config(["--force", "--train-samples", "100", "--model-dir", "/tmp/m"])
    assert cfg.force and cfg.train_samples == 100 and cfg.model_dir == Path("/tmp/m")


@pytest.mark.parametrize(
    "argv",
    [["--users", "0"], ["--port", "70000"], ["--max-length", "8"], ["--epochs", "x"], ["--train-samples", "-1"]],
)
def test_bad_flags_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m demo: error: "), err


def train_config(cfg: DemoConfig, recipe):
    from trainer.config import config_from_args, make_parser

    cmd = commands.train_command(cfg, recipe)
    assert cmd[:4] == [sys.executable, "-m", "trainer", "train"]
    return config_from_args(make_parser().parse_args(cmd[4:]))  # raises on an unknown key


def test_train_command_is_accepted_by_the_trainer():
    train_cfg = train_config(DemoConfig(), recipes.FAST)
    assert train_cfg.max_train_samples is None and train_cfg.max_eval_samples == 1000  # the whole split
    assert train_cfg.max_length == 128 and train_cfg.epochs == 1 and train_cfg.base_model == "packaged-minilm"
    assert (train_cfg.batch_size, train_cfg.lr, train_cfg.head_tokens, train_cfg.warmup_ratio) == (32, 1e-4, 64, 0.06)
    assert (train_cfg.hidden_dropout, train_cfg.attention_dropout, train_cfg.precision) == (0.0, 0.0, "auto")
    assert train_cfg.output_dir == "artifacts/checkpoint"
    assert train_config(DemoConfig(), recipes.SMALL).max_train_samples == recipes.SMALL.train_samples
    assert train_config(DemoConfig(train_samples=700), recipes.FAST).max_train_samples == 700  # the flag wins


def test_the_recipe_follows_the_trainers_precision():
    assert recipes.choose("bf16") is recipes.FAST and recipes.choose("fp16") is recipes.FAST  # a GPU
    assert recipes.choose("fp32") is recipes.SMALL
    assert recipes.machine_precision() in ("fp32", "bf16", "fp16")
    for recipe in (recipes.FAST, recipes.SMALL):
        line = tour.recipe_line(DemoConfig(), recipe)
        assert recipe.samples_text in line and recipe.measured in line and "%" in recipe.measured
    assert tour.recipe_line(DemoConfig(train_samples=700), recipes.FAST).startswith("--train-samples 700 ")


def test_export_server_and_loadtest_commands_are_accepted(tmp_path):
    from exporter.config import parse_config as export_config
    from loadtest.__main__ import LoadtestConfig, build_parser
    from server.config import parse_config as server_config

    cfg = DemoConfig()
    exp = export_config(commands.export_command(cfg)[3:])
    assert exp.resolved_quantization == "int8" and exp.min_agreement == 0.98  # the default gate applies
    served = ServedProcess(commands.server_command(cfg), tmp_path / "server.log", port=8123)  # not started
    srv = server_config(served.cmd[3:], env={})
    assert (srv.port, srv.host, srv.model_dir) == (8123, "127.0.0.1", Path("artifacts/model"))
    args = build_parser().parse_args(commands.loadtest_command(cfg, "http://127.0.0.1:8123")[3:])
    lt = LoadtestConfig(**{k: v for k, v in vars(args).items() if k != "locust_args"})
    assert (lt.run_time, lt.sla_p95_ms, lt.users) == ("30s", 200.0, 20)


def test_data_command_links_the_shared_copy_when_present(tmp_path):
    cmd = commands.data_command(DemoConfig(shared_data_dir=tmp_path))
    assert cmd[cmd.index("--shared-dir") + 1] == str(tmp_path)
    assert "--shared-dir" not in commands.data_command(DemoConfig(shared_data_dir=tmp_path / "absent"))


def test_metric_summary():
    text = "\n".join(
        [
            "# TYPE sentiment_batch_size histogram",
            'sentiment_batch_size_bucket{le="1.0"} 2.0',
            "sentiment_batch_size_sum 30.0",
            "sentiment_batch_size_count 6.0",
            "sentiment_padding_ratio_sum 1.5",
            "sentiment_padding_ratio_count 6.0",
            'sentiment_requests_total{code="200",endpoint="predict"} 4.0',
            'sentiment_requests_total{code="503",endpoint="predict"} 1.0',
        ]
    )
    assert queries.metric_totals(text)["sentiment_requests_total"] == 5.0
    assert queries.server_summary(text) == {
        "batches": 6.0,
        "mean_batch_size": 5.0,
        "texts": 30.0,
        "mean_padding_ratio": 0.25,
    }
    assert queries.server_summary("") == {"batches": 0.0}


def write_data(data_dir: Path, reviews) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    long_reviews = [(text + " " + text * 3, label) for text, label in reviews]  # 200-900 characters
    labels = [lb for _, lb in long_reviews]
    df = pd.DataFrame(
        {
            "id": range(len(long_reviews)),
            "rating": [10 if lb else 1 for lb in labels],
            "label": labels,
            "text": [t for t, _ in long_reviews],
        }
    )
    # An ambiguous 4-star review of each label: the demo must not pick these.
    df.loc[len(df)] = [98, 4, 0, "Ambiguous, neither here nor there. " * 8]
    df.loc[len(df)] = [99, 7, 1, "Ambiguous, neither here nor there. " * 8]
    df.to_parquet(data_dir / "train.parquet")
    df.to_parquet(data_dir / "test.parquet")


def test_pick_reviews(tmp_path, reviews):
    write_data(tmp_path, reviews)
    picked = queries.pick_reviews(tmp_path, n=4)
    assert len(picked) == 4 and sorted(label for _, label in picked) == [0, 0, 1, 1]
    assert all(200 <= len(text) <= 900 and "Ambiguous" not in text for text, _ in picked)
    assert picked == queries.pick_reviews(tmp_path, n=4)
    everything = queries.pick_reviews(tmp_path, n=10)  # more than there are clear-cut reviews
    assert len(everything) == 8 and not any("Ambiguous" in text for text, _ in everything)
    assert queries.pick_reviews(tmp_path / "none", n=2) == queries.SAMPLE_REVIEWS[:2]


def port_open(url: str) -> bool:
    host, port = url.rsplit("/", 1)[-1].split(":")
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) == 0


def test_serving_half_end_to_end(tmp_path, tiny_model_dir, reviews, capfd):
    """An existing model dir: train/export skipped; serve, query, a 3 s SLA-gated load test, stop."""
    write_data(tmp_path / "data", reviews)
    cfg = DemoConfig(
        data_dir=tmp_path / "data",
        model_dir=tiny_model_dir,
        report_dir=tmp_path / "reports",
        checkpoint=tmp_path / "never-written",
        users=2,
        run_time="3s",
        sla_p95_ms=2000,
    )
    code = tour.run(cfg)
    out = capfd.readouterr().out
    assert code == 0, out[-3000:]
    for n, name in enumerate(["data", "train", "export", "baseline", "serve", "query", "load", "stop"], start=1):
        assert f"[{n}/8] {name}:" in out and f"---- {name} done in" in out
    assert "skipped: " in out and not cfg.checkpoint.exists()
    assert out.count("  truth: ") == 6 and "one request with all 6 texts" in out
    assert "PASS: requests=" in out and "drained and exited 0" in out
    assert "server batching: " in out and out.rstrip().splitlines()[-1].startswith("demo: PASS")
    assert (cfg.report_dir / "loadtest" / "locust_stats.csv").is_file()
    url = re.search(r"---- serve done in [\d.]+ s: (http://\S+) ready", out).group(1)
    assert not port_open(url), "the server is still running"


def test_a_broken_model_fails_the_serve_step(tmp_path, tiny_model_dir, capfd):
    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    cfg = DemoConfig(
        data_dir=tmp_path / "no-data",
        shared_data_dir=tmp_path / "no-shared",
        model_dir=broken,
        report_dir=tmp_path / "reports",
        ready_timeout_s=30,
    )
    cfg.data_dir.mkdir()
    for name in ("train.parquet", "test.parquet"):  # present, so the data step does not download
        (cfg.data_dir / name).write_bytes(b"")
    code = tour.run(cfg)
    out = capfd.readouterr().out
    assert code == 2
    assert "---- serve FAILED" in out and "exited with status" in out
    assert "[7/8]" not in out and out.rstrip().splitlines()[-1] == "demo: FAIL (a step failed)"


def test_baseline_command_is_accepted_and_scores_every_test_review(tmp_path):
    from demo.commands import baseline_command
    from exporter.config import parse_config as export_config
    from trainer.__main__ import build_parser

    cfg = parse_config(["--report-dir", str(tmp_path), "--eval-samples", "321"])
    cmd = baseline_command(cfg)
    assert cmd[1:4] == ["-m", "trainer", "baseline"]
    args = build_parser().parse_args(cmd[3:])  # the trainer's own parser takes it
    assert args.max_eval_samples is None and str(args.output_dir) == str(tmp_path / "baseline")
    assert export_config(commands.export_command(cfg)[3:]).test_accuracy  # the model is scored on them all too


def test_the_summary_sets_the_model_beside_the_baseline():
    from demo.tour import FULL_RECIPE, baseline_line

    line = baseline_line(0.9021, 25000, {"accuracy": 0.8852})
    assert line == (
        "served int8 model 0.9021 vs TF-IDF + logistic regression 0.8852 on the same 25,000 test reviews: "
        "the demo model beats the baseline (+1.7 points)"
    )
    assert "does not beat the baseline (-1.3 points)" in baseline_line(0.872, 500, {"accuracy": 0.885})
    assert "92.45%" in FULL_RECIPE
