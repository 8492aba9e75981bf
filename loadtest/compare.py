"""`python -m loadtest.compare`: server settings side by side, in paired open-loop steps.

    python -m loadtest.compare --model-dir artifacts/model --rates 62,68 --rounds 2 \
        "512 tokens=--max-batch-tokens 512" "256 tokens=--max-batch-tokens 256"

Each variant is `name=server flags`. In every round, each variant's server is started in
turn and sent the same Poisson arrivals (same texts, same seeds) at each rate; one cell per
(variant, round, rate): p95 ms / server CPU ms per request / mean batch size. Rounds
interleave the variants, so a slow spell on a shared machine hits one cell, not one variant.
Where `loadtest.bench` searches each configuration's capacity, this answers "is A better than
B at these rates", which is how the server's defaults were chosen (docs/RESULTS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from loadtest.httpclient import LeanClient
from loadtest.openloop import payloads, run_step
from loadtest.procs import ServedProcess
from loadtest.texts import DEFAULT_DATA_DIR, load_texts


@dataclass(frozen=True)
class CompareConfig:
    model_dir: Path
    variants: tuple[tuple[str, str], ...]  # (name, server flags)
    rates: tuple[float, ...] = (50.0,)
    rounds: int = 2
    duration_s: float = 30.0
    texts: int = 1000
    data_dir: str = DEFAULT_DATA_DIR
    seed: int = 0
    output: Path | None = None
    log_dir: Path = Path("reports/compare")

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("give at least one variant, as 'name=server flags'")
        if len({name for name, _ in self.variants}) != len(self.variants):
            raise ValueError("variant names must differ")
        if not self.rates or min(self.rates) <= 0:
            raise ValueError("--rates must be positive numbers, e.g. 62,68")
        if self.rounds < 1 or self.texts < 1 or not self.duration_s > 0:
            raise ValueError("--rounds and --texts must be >= 1 and --duration-s > 0")


def parse_variant(text: str) -> tuple[str, str]:
    name, sep, flags = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"a variant is 'name=server flags', got {text!r}")
    shlex.split(flags)  # raise now on unbalanced quotes
    return name.strip(), flags.strip()


def mean_batch_size(metrics_text: str) -> tuple[float, float]:
    """(sum, count) of sentiment_batch_size from a /metrics page."""

    def value(name: str) -> float:
        match = re.search(rf"^{name} ([0-9.e+-]+)$", metrics_text, re.M)
        return float(match.group(1)) if match else 0.0

    return value("sentiment_batch_size_sum"), value("sentiment_batch_size_count")


async def _variant_round(config: CompareConfig, name: str, flags: str, bodies: list[bytes], rnd: int) -> list[dict]:
    cmd = [
        sys.executable,
        "-m",
        "server",
        "--model-dir",
        str(config.model_dir),
        "--host",
        "127.0.0.1",
        "--log-level",
        "warning",
        *shlex.split(flags),
    ]
    log_path = config.log_dir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}-round{rnd + 1}.log"
    cells = []
    with ServedProcess(cmd, log_path) as proc:
        async with LeanClient(proc.url) as client:
            requests = [client.build("POST", "/v1/predict", body) for body in bodies]
            await run_step(client, requests, min(config.rates) / 2, 3.0, seed=config.seed)  # warm-up
            for rate in config.rates:
                before = mean_batch_size(proc.get_text("/metrics"))
                step = await run_step(
                    client,
                    requests,
                    rate,
                    config.duration_s,
                    seed=config.seed + rnd * 1000 + int(rate),
                    server_cpu=proc.cpu_seconds,
                )
                after = mean_batch_size(proc.get_text("/metrics"))
                batches = after[1] - before[1]
                cells.append(
                    {
                        "variant": name,
                        "round": rnd + 1,
                        "rate": rate,
                        "p95_ms": step.p95_ms,
                        "p50_ms": step.p50_ms,
                        "error_rate": step.error_rate,
                        "server_cpu_ms_per_request": step.server_cpu_cores * 1000 / step.achieved_rps
                        if step.achieved_rps
                        else None,
                        "mean_batch_size": (after[0] - before[0]) / batches if batches else None,
                        "other_cpu_cores": step.other_cpu_cores,
                    }
                )
                await asyncio.sleep(0.5)
    return cells


def run(config: CompareConfig) -> list[dict]:
    texts, source = load_texts(config.texts, config.data_dir, seed=config.seed)
    bodies = payloads(texts)
    config.log_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"compare: {len(texts)} texts ({source}); rates {', '.join(f'{r:g}' for r in config.rates)}/s; "
        f"{config.duration_s:g} s per step; {config.rounds} round(s)",
        flush=True,
    )
    cells = []
    for rnd in range(config.rounds):
        for name, flags in config.variants:
            row = asyncio.run(_variant_round(config, name, flags, bodies, rnd))
            cells += row
            print(f"round {rnd + 1} | {name} | " + " | ".join(_cell(c) for c in row), flush=True)
    print(render_table(config, cells))
    if config.output:
        config.output.parent.mkdir(parents=True, exist_ok=True)
        config.output.write_text(
            json.dumps(
                {
                    "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
                    "cells": cells,
                },
                indent=2,
            )
            + "\n"
        )
    return cells


def _cell(c: dict) -> str:
    cpu = "n/a" if c["server_cpu_ms_per_request"] is None else f"{c['server_cpu_ms_per_request']:.1f}"
    batch = "n/a" if c["mean_batch_size"] is None else f"{c['mean_batch_size']:.2f}"
    errors = f" ({c['error_rate']:.1%} errors)" if c["error_rate"] else ""
    return f"{c['p95_ms']:.0f} / {cpu} / {batch}{errors}"


def render_table(config: CompareConfig, cells: list[dict]) -> str:
    """Markdown: one row per variant, one column per (round, rate)."""
    columns = [(rnd + 1, rate) for rnd in range(config.rounds) for rate in config.rates]
    lines = [
        "| setting | " + " | ".join(f"round {r}, {rate:g} req/s" for r, rate in columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for name, _ in config.variants:
        by_key = {(c["round"], c["rate"]): c for c in cells if c["variant"] == name}
        lines.append(f"| {name} | " + " | ".join(_cell(by_key[k]) if k in by_key else "-" for k in columns) + " |")
    return "\n".join(lines) + "\n\ncells: p95 ms / server CPU ms per request / mean batch size"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.compare", description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="'name=server flags', e.g. '256 tokens=--max-batch-tokens 256'")
    parser.add_argument("--model-dir", type=Path, required=True, help="exporter's model directory")
    parser.add_argument("--rates", default="50", help="comma list of request rates (req/s), e.g. 62,68")
    parser.add_argument("--rounds", type=int, default=2, help="times every variant runs every rate, interleaved")
    parser.add_argument("--duration-s", type=float, default=30.0, help="seconds per step")
    parser.add_argument("--texts", type=int, default=1000, help="reviews loaded and sent")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="directory with test.parquet")
    parser.add_argument("--seed", type=int, default=0, help="seed for review order and arrival times")
    parser.add_argument("--output", type=Path, default=None, help="also write the cells as JSON here")
    parser.add_argument("--log-dir", type=Path, default=Path("reports/compare"), help="served processes' logs")
    args = parser.parse_args(argv)
    try:
        config = CompareConfig(
            model_dir=args.model_dir,
            variants=tuple(parse_variant(v) for v in args.variants),
            rates=tuple(float(r) for r in args.rates.split(",") if r.strip()),
            rounds=args.rounds,
            duration_s=args.duration_s,
            texts=args.texts,
            data_dir=args.data_dir,
            seed=args.seed,
            output=args.output,
            log_dir=args.log_dir,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not (config.model_dir / "model.onnx").is_file():
        print(f"error: --model-dir {config.model_dir} has no model.onnx", file=sys.stderr)
        return 2
    try:
        run(config)
    except RuntimeError as exc:  # a served process failed to start: one line, log path included
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
