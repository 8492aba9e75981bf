"""`python -m loadtest` end to end: real locust, real HTTP, against a stand-in server.

A few seconds of load each: a fast server must PASS (exit 0), one answering in 400 ms
must FAIL the 200 ms p95 gate (exit 1). Bad flags and an unreachable host exit 2.
"""

from __future__ import annotations

import asyncio
import sys

from standin_server import SEEN, create_app

from bench.procs import free_port
from loadtest.__main__ import main

LOCUST_ARGS = ["--", "--think-min-s", "0.05", "--think-max-s", "0.1", "--multi-fraction", "0.3", "--review-pool", "50"]


async def run_gate(server, report_dir, *extra: str, users: int = 4, run_time: str = "3s") -> tuple[int, str, str]:
    """The gate against a test server: `users` spawned at once, locust's short think times."""
    return await run_cli(
        "--host",
        str(server.make_url("")).rstrip("/"),
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--run-time",
        run_time,
        *extra,
        "--report-dir",
        str(report_dir),
        *LOCUST_ARGS,
    )


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtest",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode, out.decode(), err.decode()


async def test_fast_server_passes(aiohttp_server, tmp_path):
    server = await aiohttp_server(create_app(delay_s=0.0))
    code, out, err = await run_gate(server, tmp_path)
    assert code == 0, out + err
    last = out.strip().splitlines()[-1]
    assert last.startswith("PASS: requests="), out
    assert "/v1/predict [single]" in out and "/v1/predict [multi]" in out
    for name in ("locust_stats.csv", "locust_report.html", "locust_summary.json"):
        assert (tmp_path / name).is_file(), name
    seen = server.app[SEEN]
    # The gate counts every request the server answered: nothing lost at the end of the run.
    assert f"requests={len(seen)} " in last
    assert len(seen) >= 20, "locust sent too few requests to mean anything"
    multi = [b for b in seen if "texts" in b]
    assert multi and all(2 <= len(b["texts"]) <= 4 for b in multi)
    assert all(len(b.get("text") or b["texts"][0]) > 20 for b in seen), "reviews should be realistic text"


async def test_slow_server_fails_the_p95_gate(aiohttp_server, tmp_path):
    server = await aiohttp_server(create_app(delay_s=0.4))
    code, out, err = await run_gate(server, tmp_path)
    assert code == 1, out + err
    last = out.strip().splitlines()[-1]
    assert last.startswith("FAIL: p95 ") and "> 200 ms" in last, last


async def test_generous_sla_passes_the_slow_server(aiohttp_server, tmp_path):
    server = await aiohttp_server(create_app(delay_s=0.4))
    code, out, _ = await run_gate(server, tmp_path, "--sla-p95-ms", "1000", users=2, run_time="2s")
    assert code == 0 and out.strip().splitlines()[-1].startswith("PASS"), out


def test_unreachable_host_exits_2_with_one_line(tmp_path, capsys):
    code = main(["--host", f"http://127.0.0.1:{free_port()}", "--run-time", "1s", "--report-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: cannot connect to http://127.0.0.1:") and "\n" not in err


def test_bad_flags_exit_2(tmp_path, capsys):
    for argv in (
        ["--host", "127.0.0.1:8000"],
        ["--host", "http://x", "--users", "0"],
        ["--host", "http://x", "--run-time", "soon"],
        ["--host", "http://x", "--max-error-rate", "2"],
    ):
        assert main([*argv, "--report-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
