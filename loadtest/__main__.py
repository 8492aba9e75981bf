"""`python -m loadtest`: run locust headless against a server and gate on the SLA.

    python -m loadtest --host http://127.0.0.1:8000 --users 20 --spawn-rate 20 --run-time 60s \
        [--sla-p95-ms 200] [--sla-p99-ms N] [--max-error-rate 0.01] [--report-dir reports/loadtest] \
        [-- extra locust options, e.g. --multi-fraction 0.3 --think-min-s 0.1 --think-max-s 0.5]

Writes locust's CSV (`locust_stats.csv`, ...) and HTML report, plus the final statistics
the gate reads (`locust_summary.json`), into the report directory; prints a per-endpoint
table, and ends with one line: PASS or FAIL with the figures.
Exit status: 0 PASS, 1 FAIL (SLA broken), 2 the test could not run (bad flag, server
unreachable, locust failed). User mix and think time: see loadtest/locustfile.py.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

from core import cli
from core.cli import opt
from loadtest.sla import SlaConfig, evaluate, format_table, read_summary

PROG = "python -m loadtest"
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
_RUN_TIME = re.compile(r"^(?:\d+h)?(?:\d+m)?(?:\d+s)?$|^\d+$")


@dataclass(frozen=True)
class LoadtestConfig:
    """Locust SLA gate: exit 0 when p95/p99/error rate hold, 1 when broken, 2 when it cannot run."""

    host: str = field(metadata=opt("server base URL, e.g. http://127.0.0.1:8000"))
    users: int = field(default=20, metadata=opt("concurrent locust users"))
    spawn_rate: float = field(default=20.0, metadata=opt("users started per second"))
    run_time: str = field(default="60s", metadata=opt("test duration: 30s, 5m, 1h30m"))
    sla_p95_ms: float = field(default=200.0, metadata=opt("p95 latency limit, ms"))
    sla_p99_ms: float | None = field(default=None, metadata=opt("p99 latency limit, ms (off by default)"))
    max_error_rate: float = field(default=0.01, metadata=opt("largest allowed share of failed requests"))
    report_dir: str = field(default="reports/loadtest", metadata=opt("where locust's CSV and HTML go"))

    def __post_init__(self) -> None:
        url = urlsplit(self.host)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"--host must be an http(s) URL like http://127.0.0.1:8000, got {self.host!r}")
        if self.users < 1:
            raise ValueError(f"--users must be >= 1, got {self.users}")
        if not self.spawn_rate > 0:
            raise ValueError(f"--spawn-rate must be > 0, got {self.spawn_rate}")
        if not self.run_time or not _RUN_TIME.match(self.run_time):
            raise ValueError(f"--run-time must look like 30s, 5m or 1h30m, got {self.run_time!r}")

    def sla(self) -> SlaConfig:
        return SlaConfig(p95_ms=self.sla_p95_ms, p99_ms=self.sla_p99_ms, max_error_rate=self.max_error_rate)


def build_parser() -> cli.OneLineParser:
    """One flag per LoadtestConfig field (core.cli), then locust's own options after `--`."""
    parser = cli.build_parser(LoadtestConfig, prog=PROG)
    parser.add_argument("locust_args", nargs="*", help="after `--`: extra options passed to locust unchanged")
    return parser


def locust_command(config: LoadtestConfig, extra: list[str]) -> list[str]:
    prefix = Path(config.report_dir) / "locust"
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        config.host,
        "--users",
        str(config.users),
        "--spawn-rate",
        str(config.spawn_rate),
        "--run-time",
        config.run_time,
        "--csv",
        str(prefix),
        "--html",
        str(prefix) + "_report.html",
        "--only-summary",
        "--stop-timeout",
        "5",
        "--loglevel",
        "WARNING",
        # The SLA decides the exit status, not "any request failed".
        "--exit-code-on-error",
        "0",
        "--summary-json",
        str(prefix) + "_summary.json",
        *extra,
    ]


def check_reachable(url: str, timeout_s: float = 3.0) -> None:
    """Fail fast with one clear line, rather than a minute of connection errors."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with socket.create_connection((parts.hostname, port), timeout=timeout_s):
        pass


def run(config: LoadtestConfig, extra: list[str]) -> int:
    report_dir = Path(config.report_dir)
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return cli.fail("", f"cannot create --report-dir {report_dir}: {exc.strerror or exc}")
    try:
        check_reachable(config.host)
    except OSError as exc:
        return cli.fail("", f"cannot connect to {config.host}: {exc.strerror or exc}")
    log_path = report_dir / "locust.log"
    stats_path = report_dir / "locust_summary.json"
    stats_path.unlink(missing_ok=True)  # never judge a stale file from an earlier run
    print(
        f"locust: {config.users} users (spawn {config.spawn_rate:g}/s) for {config.run_time} against {config.host}",
        flush=True,
    )
    with open(log_path, "w") as log:
        proc = subprocess.run(locust_command(config, extra), stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not stats_path.is_file():
        tail = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()][-1:]
        return cli.fail(
            "", f"locust exited with status {proc.returncode}: {tail[0] if tail else 'no output'} (log: {log_path})"
        )
    rows, total = read_summary(stats_path)
    verdict = evaluate(total, config.sla())
    print(format_table(rows, total))
    print(f"reports in {report_dir}: locust_stats.csv, locust_report.html, locust_summary.json, locust.log")
    print(verdict.line(config.sla()), flush=True)
    return 0 if verdict.passed else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(LoadtestConfig)}
    try:
        config = LoadtestConfig(**values)
        config.sla()
    except ValueError as exc:
        return cli.fail("", str(exc))
    return run(config, list(args.locust_args))


if __name__ == "__main__":
    sys.exit(main())
