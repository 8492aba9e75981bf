"""The capacity benchmark's overhead row: what serving costs when the model costs almost nothing.

The same review, over and over, through a tiny random model (bench/tinymodel.py: 2 layers,
hidden size 32, int8, 256 tokens head+tail), in a closed loop of `--overhead-concurrency`
connections for `--overhead-s` seconds, against

- one process: `python -m server --processes 1`;
- a process per core: `python -m server --processes <physical cores>`;
- FastAPI + uvicorn, a worker process per core, no batching (bench/fastapi_baseline.py).
The automatic setting (`--processes 0`, core.layout.auto_processes) is whichever of the first two
it resolves to on this machine (one process on a CPU), or a row of its own where it is neither.

Per configuration: answered requests per second, p95, and the server's CPU time per answered
request (the whole process tree, bench.procs.tree_cpu_seconds, over the measured window). With
inference this cheap, those are the server's own costs (HTTP, JSON, the event loop, batching,
the tokenizer), so "automatic / one process" and "automatic / FastAPI" measure the serving code.

The generator is `hey` when it is installed (a compiled closed-loop client: it needs less CPU
than Python per request, on the same cores as the server), else this process's own LeanClient.
Each measured run follows a 2 s warm-up with the same generator on the same fresh process.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.config import BenchConfig
from bench.httpclient import LeanClient
from bench.openloop import closed_loop, payloads
from bench.procs import ServedProcess, parse_cpus, server_command
from bench.tinymodel import TINY_ARCHITECTURE, export_tiny_model, missing_build_modules
from core.layout import model_on_gpu, physical_cores, process_layout
from core.modeldir import read_model_dir

TARGET_WORDS = 174  # the review sent: the workload's text closest to this many words
WARMUP_S = 2.0
GENERATORS = ("auto", "hey", "python")
MODEL_DIR_NAME = "overhead-model"
ONE, PER_CORE, AUTO, FASTAPI = "one process", "a process per core", "automatic", "FastAPI + uvicorn"


@dataclass(frozen=True)
class Measured:
    """One closed-loop run: answers by status, failed requests, wall time, p95 of the answers."""

    statuses: dict[int, int]
    failed: int  # no HTTP answer at all (timeout, refused or reset connection)
    wall_s: float
    p95_ms: float | None

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def errors(self) -> int:
        return self.failed + sum(n for status, n in self.statuses.items() if status != 200)


def pick_review(texts: list[str], words: int = TARGET_WORDS) -> str:
    """The text whose word count is closest to `words` (the first of equals)."""
    if not texts:
        raise ValueError("the overhead row needs at least one text")
    return min(texts, key=lambda t: abs(len(t.split()) - words))


def resolve_generator(generator: str) -> str:
    """The generator that runs: "auto" is hey when it is on PATH, else "python"; "hey" without hey raises."""
    if generator not in GENERATORS:
        raise ValueError(f"generator must be one of {', '.join(GENERATORS)}, got {generator!r}")
    if generator == "auto":
        return "hey" if shutil.which("hey") else "python"
    if generator == "hey" and not shutil.which("hey"):
        raise RuntimeError("hey is not installed (apt-get install hey)")
    return generator


def run_overhead(config: BenchConfig, texts: list[str], generator: str = "auto") -> dict[str, Any]:
    """The overhead row (see the module's docstring); {"skipped": reason} when the tiny model
    cannot be built here (no torch/transformers, and no earlier export to reuse)."""
    model_dir = config.log_dir / MODEL_DIR_NAME
    missing = missing_build_modules()
    if missing and not (model_dir / "model.onnx").is_file():
        return {"skipped": f"building the tiny model needs {', '.join(missing)} (the train extra)"}
    gen = resolve_generator(generator)
    print(f"[overhead] tiny model -> {model_dir}", flush=True)
    export_tiny_model(model_dir)
    review = pick_review(texts)
    config.log_dir.mkdir(parents=True, exist_ok=True)
    body_path = config.log_dir / "overhead-body.json"
    body_path.write_bytes(payloads([review])[0])
    cores = physical_cores()
    gpu = model_on_gpu(model_dir)
    targets: list[tuple[str, list[str], str]] = []
    counts = [(ONE, 1)] + ([(PER_CORE, cores)] if cores > 1 else [])
    auto = process_layout(0, gpu=gpu).processes
    automatic = next((name for name, n in counts if n == auto), AUTO)  # the row --processes 0 is
    if automatic == AUTO:
        counts.append((AUTO, 0))
    for name, processes in counts:
        layout = process_layout(processes, gpu=gpu)
        shape = " x ".join(
            _count(n, what)
            for n, what in ((layout.processes, "process"), (layout.workers, "worker"), (layout.threads, "thread"))
        )
        targets.append((name, server_command(model_dir, "--processes", str(processes)), shape))
    if "fastapi" not in config.skipped and importlib.util.find_spec("fastapi") and importlib.util.find_spec("uvicorn"):
        from bench.capacity import fastapi_command

        targets.append((FASTAPI, fastapi_command(cores), f"{_count(cores, 'worker process')} x 1 thread"))
    rows = {}
    for name, cmd, shape in targets:
        rows[name] = {"layout": shape, **measure_target(name, cmd, model_dir, body_path, gen, config)}
        row = rows[name]
        print(
            f"[overhead] {name}: {_fmt(row.get('rps'))} req/s, p95 {_fmt(row.get('p95_ms'))} ms, "
            f"server CPU {_fmt(row.get('cpu_ms_per_request'), '.3f')} ms per request, errors {row.get('errors')}"
            + (f" ({row['error']})" if row.get("error") else ""),
            flush=True,
        )
    model = read_model_dir(model_dir)
    return {
        "generator": gen,
        "review_words": len(review.split()),
        "review_chars": len(review),
        "concurrency": config.overhead_concurrency,
        "seconds": config.overhead_s,
        "warmup_s": WARMUP_S,
        "model": {
            "path": str(model_dir),
            "name": model.serving.get("model_name"),
            **TINY_ARCHITECTURE,
            "max_length": model.truncation.max_length,
            "truncation": model.truncation.strategy,
            "quantization": model.serving.get("quantization"),
        },
        "rows": rows,
        "automatic": automatic,
        "ratios": {
            "automatic/one": _ratio(rows, automatic, ONE),
            "per_core/one": _ratio(rows, PER_CORE, ONE),
            "automatic/fastapi": _ratio(rows, automatic, FASTAPI),
            "per_core/fastapi": _ratio(rows, PER_CORE, FASTAPI),
        },
    }


def measure_target(
    name: str, cmd: list[str], model_dir: Path, body_path: Path, generator: str, config: BenchConfig
) -> dict[str, Any]:
    """A fresh served process: warm-up, then the measured closed loop with its CPU delta. A process
    that fails to start gives a row with "error" (the other configurations still run)."""
    log = config.log_dir / f"overhead-{name.split()[0].lower()}.log"
    env_key, before = None, None
    if name == FASTAPI:
        from bench.fastapi_baseline import MODEL_DIR_ENV

        # Its workers read the model directory from the environment; put back what was there.
        env_key, before = MODEL_DIR_ENV, os.environ.get(MODEL_DIR_ENV)
        os.environ[MODEL_DIR_ENV] = str(model_dir)
    try:
        with ServedProcess(cmd, log, parse_cpus(config.server_cpus)) as proc:
            command = shlex.join(cmd[1:] + ["--port", str(proc.port)])
            run(generator, proc.url, body_path, config.overhead_concurrency, WARMUP_S, config)
            cpu0 = proc.cpu_seconds()  # bench.procs.tree_cpu_seconds: the parent and its live children
            measured = run(generator, proc.url, body_path, config.overhead_concurrency, config.overhead_s, config)
            cpu_s = proc.cpu_seconds() - cpu0
    except RuntimeError as exc:
        return {"command": shlex.join(cmd[1:]), "error": str(exc)}
    finally:
        if env_key is not None:
            if before is None:
                os.environ.pop(env_key, None)
            else:
                os.environ[env_key] = before
    return {
        "command": command,
        "rps": measured.ok / measured.wall_s if measured.wall_s > 0 else 0.0,
        "p95_ms": measured.p95_ms,
        "cpu_ms_per_request": 1000 * cpu_s / measured.ok if measured.ok else None,
        "errors": measured.errors,
        "answered": measured.ok,
        "statuses": {str(k): v for k, v in sorted(measured.statuses.items())},
        "wall_s": measured.wall_s,
        "server_cpu_s": cpu_s,
        "log": str(log),
    }


def run(generator: str, url: str, body_path: Path, concurrency: int, seconds: float, config: BenchConfig) -> Measured:
    if generator == "hey":
        return hey_closed_loop(url, body_path, concurrency, seconds, config.timeout_s, parse_cpus(config.client_cpus))
    return asyncio.run(python_closed_loop(url, body_path.read_bytes(), concurrency, seconds, config.timeout_s))


def hey_closed_loop(
    url: str, body_path: Path, concurrency: int, seconds: float, timeout_s: float, cpus: set[int] | None = None
) -> Measured:
    """`hey -z {seconds}s -c {concurrency}` POSTing the body file to /v1/predict."""
    cmd = ["hey", "-z", f"{seconds:g}s", "-c", str(concurrency), "-t", str(max(1, math.ceil(timeout_s)))]
    cmd += ["-m", "POST", "-T", "application/json", "-D", str(body_path), url + "/v1/predict"]
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, preexec_fn=preexec)
    if done.returncode != 0:
        raise RuntimeError(f"hey exited with status {done.returncode}: {done.stderr.strip()[-300:]}")
    return parse_hey(done.stdout, fallback_wall_s=time.monotonic() - start)


def parse_hey(text: str, fallback_wall_s: float = 0.0) -> Measured:
    """hey's summary: "Total:", "95% in X secs", "[200]\\tN responses" and the error distribution."""
    total = re.search(r"^\s*Total:\s+([\d.]+) secs", text, re.M)
    p95 = re.search(r"^\s*95% in ([\d.]+) secs", text, re.M)
    statuses = {int(code): int(n) for code, n in re.findall(r"^\s*\[(\d{3})\]\s+(\d+) responses", text, re.M)}
    errors = text.split("Error distribution:", 1)[1] if "Error distribution:" in text else ""
    failed = sum(int(n) for n in re.findall(r"^\s*\[(\d+)\]\s", errors, re.M))
    return Measured(
        statuses=statuses,
        failed=failed,
        wall_s=float(total.group(1)) if total else fallback_wall_s,
        p95_ms=1000 * float(p95.group(1)) if p95 else None,
    )


async def python_closed_loop(url: str, body: bytes, concurrency: int, seconds: float, timeout_s: float) -> Measured:
    """bench.openloop.closed_loop over a LeanClient, every answer's status and latency kept."""
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    failed = 0
    async with LeanClient(url) as client:
        request = client.build("POST", "/v1/predict", body)

        async def one(_k: int) -> int:
            nonlocal failed
            t0 = time.perf_counter()
            try:
                status, _ = await client.request(request, timeout_s)
            except Exception:
                failed += 1
                raise
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1
            return status

        start = time.monotonic()
        # closed_loop awaits what `start` returns: a coroutine serves as well as a future.
        await closed_loop(one, 1, concurrency, seconds, status_of=lambda status: status)  # type: ignore[arg-type]
        wall = time.monotonic() - start
    p95 = 1000 * float(np.percentile(latencies, 95)) if latencies else None
    return Measured(statuses=statuses, failed=failed, wall_s=wall, p95_ms=p95)


def _ratio(rows: dict[str, dict[str, Any]], top: str, bottom: str) -> float | None:
    a, b = rows.get(top, {}).get("rps"), rows.get(bottom, {}).get("rps")
    return a / b if a and b else None


def _count(n: int, what: str) -> str:
    """'1 process', '2 processes', '2 workers'."""
    return f"{n} {what}" + ("" if n == 1 else "es" if what.endswith("s") else "s")


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "n/a" if value is None else f"{value:{spec}}"
