"""`python -m bench.compare`: server settings side by side, in paired open-loop steps.

    python -m bench.compare --model-dir artifacts/model --rates 62,68 --rounds 2 \
        "512 tokens=--max-batch-tokens 512" "256 tokens=--max-batch-tokens 256"

Each variant is `name=server flags`. In every round, each variant's server is started in
turn and sent the same Poisson arrivals (same texts, same seeds) at each rate; one cell per
(variant, round, rate): p95 ms / server CPU ms per request / mean batch size. Rounds
interleave the variants, so a slow spell on a shared machine hits one cell, not one variant.
Where `python -m bench` searches each configuration's capacity, this answers "is A better than
B at these rates", which is how the server's defaults were chosen (docs/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bench.httpclient import LeanClient
from bench.openloop import payloads, run_step
from bench.procs import ServedProcess, server_command
from core import cli
from core.cli import opt
from loadtest.texts import DEFAULT_DATA_DIR, load_texts

PROG = "python -m bench.compare"


@dataclass(frozen=True)
class CompareConfig:
    """Server settings side by side, in paired open-loop steps."""

    model_dir: Path = field(metadata=opt("exporter's model directory"))
    # (name, server flags); on the command line, positional 'name=server flags' arguments.
    variants: tuple[tuple[str, str], ...] = field(
        metadata=opt("'name=server flags', e.g. '256 tokens=--max-batch-tokens 256'")
    )
    # On the command line one comma list (--rates 62,68).
    rates: tuple[float, ...] = field(default=(50.0,), metadata=opt("comma list of request rates (req/s), e.g. 62,68"))
    rounds: int = field(default=2, metadata=opt("times every variant runs every rate, interleaved"))
    duration_s: float = field(default=30.0, metadata=opt("seconds per step"))
    texts: int = field(default=1000, metadata=opt("reviews loaded and sent"))
    data_dir: str = field(default=DEFAULT_DATA_DIR, metadata=opt("directory with test.parquet"))
    seed: int = field(default=0, metadata=opt("seed for review order and arrival times"))
    output: Path | None = field(default=None, metadata=opt("also write the cells as JSON here"))
    log_dir: Path = field(default=Path("reports/compare"), metadata=opt("served processes' logs"))

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


async def _variant_round(
    config: CompareConfig, name: str, flags: str, bodies: list[bytes], rnd: int
) -> list[dict[str, Any]]:
    cmd = server_command(config.model_dir, "--log-level", "warning", *shlex.split(flags))
    log_path = config.log_dir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}-round{rnd + 1}.log"
    cells: list[dict[str, Any]] = []
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
                        if step.achieved_rps and step.server_cpu_cores is not None
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


def build_parser() -> cli.OneLineParser:
    """One flag per setting; the variants are positional and the rates one comma list, as before."""
    parser = cli.OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    cli.add_fields(parser, CompareConfig, skip=("variants", "rates"))
    specs = {f.name: f for f in fields(CompareConfig)}
    parser.add_argument("variants", nargs="+", help=specs["variants"].metadata["help"])
    parser.add_argument("--rates", default="50", metavar="RATES", help=specs["rates"].metadata["help"])
    return parser


def parse_config(argv: list[str] | None) -> CompareConfig:
    """The settings from the command line; a bad value raises ValueError (one line for the user)."""
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {f.name: getattr(args, f.name) for f in fields(CompareConfig)}
    values["variants"] = tuple(parse_variant(v) for v in args.variants)
    values["rates"] = tuple(float(r) for r in args.rates.split(",") if r.strip())
    return CompareConfig(**values)


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_config(argv)
    except ValueError as exc:
        return cli.fail("", str(exc))
    if not (config.model_dir / "model.onnx").is_file():
        return cli.fail("", f"--model-dir {config.model_dir} has no model.onnx")
    try:
        run(config)
    except RuntimeError as exc:  # a served process failed to start: one line, log path included
        return cli.fail("", str(exc), code=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
