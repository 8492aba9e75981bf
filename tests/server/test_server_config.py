"""ServerConfig: flags and SENTIMENT_* variables come from the same fields."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from server.config import ServerConfig, build_parser, env_name, flag, parse_config

ISSUE_FLAGS = (
    "--model-dir",
    "--host",
    "--port",
    "--max-batch-size",
    "--max-wait-ms",
    "--max-batch-tokens",
    "--max-queue",
    "--request-timeout-ms",
    "--max-text-chars",
    "--max-texts-per-request",
    "--intra-op-threads",
    "--drain-timeout-s",
    "--log-level",
)


def test_every_field_is_a_flag_and_every_issue_flag_exists():
    help_text = build_parser({}).format_help()
    for f in fields(ServerConfig):
        assert flag(f.name) in help_text and env_name(f.name) in help_text
    for name in ISSUE_FLAGS:
        assert name in help_text


def test_defaults():
    config = parse_config([], env={})
    assert config == ServerConfig()
    assert (
        config.max_batch_size,
        config.max_wait_ms,
        config.max_queue,
        config.request_timeout_ms,
        config.max_texts_per_request,
        config.drain_timeout_s,
    ) == (32, 2.0, 256, 1000.0, 64, 10.0)


def test_environment_then_command_line():
    env = {
        "SENTIMENT_MAX_BATCH_SIZE": "8",
        "SENTIMENT_PORT": "9000",
        "SENTIMENT_TRUNCATE": "false",
        "SENTIMENT_MODEL_DIR": "/m",
    }
    config = parse_config(["--port", "9100"], env=env)
    assert config.max_batch_size == 8 and config.port == 9100 and config.truncate is False
    assert config.model_dir == Path("/m")
    assert parse_config(["--truncate"], env=env).truncate is True


@pytest.mark.parametrize(
    "argv,env,needle",
    [
        (["--max-batch-size", "0"], {}, "--max-batch-size must be > 0"),
        (["--log-level", "loud"], {}, "--log-level"),
        ([], {"SENTIMENT_MAX_QUEUE": "many"}, "SENTIMENT_MAX_QUEUE"),
        (["--port", "x"], {}, "--port"),
        (["--no-such-flag"], {}, "--no-such-flag"),
        (["--max-padding-ratio", "1.5"], {}, "--max-padding-ratio must be within [0, 1]"),
        (["--max-padding-ratio", "-0.1"], {}, "--max-padding-ratio must be within [0, 1]"),
        # 0 means "by device" for these; below it is an error.
        (["--inference-workers", "-1"], {}, "--inference-workers must be >= 0"),
        ([], {"SENTIMENT_INFERENCE_WORKERS": "-1"}, "--inference-workers must be >= 0"),
        (["--max-batch-tokens", "-5"], {}, "--max-batch-tokens must be >= 0"),
        (["--shape-bucket", "-1"], {}, "--shape-bucket must be >= 0"),
        (["--latency-budget-ms", "-1"], {}, "--latency-budget-ms must be >= 0"),
        (["--max-wait-ms", "200"], {}, "--max-wait-ms (200) must be below --latency-budget-ms (200)"),
    ],
)
def test_bad_values_exit_2_with_one_line(argv, env, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(argv, env=env)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0]


def test_inference_workers_from_flag_or_environment():
    assert parse_config([], env={}).inference_workers == 0  # 0 = physical cores
    assert parse_config(["--inference-workers", "3"], env={}).inference_workers == 3
    assert parse_config([], env={"SENTIMENT_INFERENCE_WORKERS": "3"}).inference_workers == 3
    assert parse_config(["--inference-workers", "2"], env={"SENTIMENT_INFERENCE_WORKERS": "3"}).inference_workers == 2


def test_batch_tokens_default_to_auto():
    assert parse_config([], env={}).max_batch_tokens == 0  # 0 = by device (server.app.batch_limits)
    assert parse_config(["--max-batch-tokens", "1024"], env={}).max_batch_tokens == 1024


def test_latency_budget_from_flag_or_environment():
    assert parse_config([], env={}).latency_budget_ms == 200.0  # the SLA
    assert parse_config(["--latency-budget-ms", "0"], env={}).latency_budget_ms == 0.0  # off
    assert parse_config([], env={"SENTIMENT_LATENCY_BUDGET_MS": "150"}).latency_budget_ms == 150.0
