"""A target's capacity: the highest open-loop request rate that meets the SLA.

`search` probes closed-loop throughput, then runs open-loop steps on the rate grid of
bench/rates.py until the search is done, re-running a step that missed while other
processes kept the CPUs busy. It measures a target through two awaitables, so the same
search runs over HTTP against a served process (`serve_and_search`) and against the
server's inference layer in this process (`search_in_process`, configuration 2c).
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bench.config import BenchConfig
from bench.httpclient import LeanClient
from bench.inprocess import InProcessServer
from bench.machine import machine_info
from bench.openloop import (
    StepResult,
    closed_loop,
    closed_loop_throughput,
    open_loop_step,
    payloads,
    run_step,
    wait_for_quiet,
)
from bench.procs import ServedProcess, parse_cpus
from bench.rates import SEARCH_START, capacity, next_rate
from loadtest.texts import load_texts
from server.config import ServerConfig

# probe(concurrency, seconds) -> successes per second; step(rate, seed) -> one open-loop step.
Probe = Callable[[int, float], Awaitable[float]]
Step = Callable[[float, int], Awaitable[StepResult]]


def serve_and_search(
    name: str,
    cmd: list[str],
    bodies: list[bytes],
    config: BenchConfig,
    fractions: tuple[float, ...] = (),
    log_name: str = "",
    bound: float | None = None,
) -> dict[str, Any]:
    """Start `cmd` as a served process, search its capacity, stop it (`bound`: see search)."""
    log = config.log_dir / f"{log_name or name}.log"
    with ServedProcess(cmd, log, parse_cpus(config.server_cpus)) as proc:
        return {
            "command": shlex.join(cmd[1:] + ["--port", str(proc.port)]),
            "ready": proc.ready_body,
            "model_info": proc.get_json("/v1/model") if name.startswith("server") else {},
            **asyncio.run(search_served(name, proc, bodies, config, fractions, bound)),
        }


async def search_served(
    name: str,
    proc: ServedProcess,
    bodies: Sequence[bytes],
    config: BenchConfig,
    extra_fractions: tuple[float, ...] = (),
    bound: float | None = None,
) -> dict[str, Any]:
    """`search` over HTTP against a served process."""
    async with LeanClient(proc.url) as client:
        requests = [client.build("POST", "/v1/predict", body) for body in bodies]
        return await search(
            name,
            config,
            extra_fractions,
            own_cpu=proc.cpu_seconds,
            where=f" (see {proc.log_path})",
            bound=bound,
            probe=lambda n, seconds: closed_loop_throughput(client, requests, n, seconds),
            step=lambda rate, seed: run_step(
                client,
                requests,
                rate,
                config.duration_s,
                seed=seed,
                timeout_s=config.timeout_s,
                server_cpu=proc.cpu_seconds,
            ),
        )


async def search_in_process(
    name: str, server_config: ServerConfig, texts: list[str], config: BenchConfig
) -> dict[str, Any]:
    """`search` over the server's batcher and workers in this process (configuration 2c)."""
    target = InProcessServer(server_config, texts)
    async with target:
        start = target.start(config.timeout_s)
        result = await search(
            name,
            config,
            (),
            probe=lambda n, seconds: closed_loop(start, len(texts), n, seconds),
            step=lambda rate, seed: open_loop_step(start, len(texts), rate, config.duration_s, seed),
        )
    return {"model_info": target.info(), **result}


def workload(config: BenchConfig, label: str) -> tuple[list[str], str, list[bytes], dict[str, Any]]:
    """What every benchmark sends and records: (texts, their source, request bodies, machine facts),
    announced in one line."""
    texts, source = load_texts(config.texts, config.data_dir, seed=config.seed)
    info = machine_info()
    print(
        f"{label}: {len(texts)} texts ({source}); model {config.model_dir}; {info['cpu_model']}, "
        f"{info['logical_cpus']} CPUs",
        flush=True,
    )
    return texts, source, payloads(texts), info


PROBE_REST_S = 10.0
STEP_REST_S = 2.0


async def search(
    name: str,
    config: BenchConfig,
    extra_fractions: tuple[float, ...],
    probe: Probe,
    step: Step,
    own_cpu: Callable[[], float] | None = None,
    where: str = "",
    bound: float | None = None,
) -> dict[str, Any]:
    """Probe closed-loop throughput, then bisect the open-loop rate that meets the SLA.

    `probe(concurrency, seconds)` and `step(rate, seed)` are awaitables measuring the target;
    `own_cpu` returns its CPU seconds when it is another process. `bound`, when given, stands
    for the probe's throughput (the search then starts where another target's did: the same
    grid of rates, so two capacities compare like for like).
    """
    await probe(4, min(2.0, config.probe_s))  # warm-up
    if bound is None:
        bound = await probe(config.probe_concurrency, config.probe_s)
        print(f"[{name}] closed-loop throughput ({config.probe_concurrency} clients): {bound:.1f} req/s", flush=True)
        # The probe overloads the server on purpose, and its admission remembers an overload: the
        # refused share fades by 1/e a second (server/admission.py), and a closed loop's refusals
        # come by the thousand, so it takes ~8 s to fall under the 3% that means "overloaded". The
        # first step must meet a server at rest (measured: 2.4-7.6% refused at 70% of capacity
        # after a 0.5 s rest, in the step right after the probe).
        await asyncio.sleep(PROBE_REST_S)
    else:
        print(f"[{name}] search starts from a closed-loop throughput of {bound:.1f} req/s (given)", flush=True)
    if bound <= 0:
        return {
            "closed_loop_rps": 0.0,
            "capacity_rps": 0.0,
            "capacity_is_lower_bound": False,
            "at_capacity": None,
            "at_fraction": {},
            "steps": [],
            "error": f"no successful answer in the closed-loop probe{where}",
        }
    history: list[tuple[float, bool]] = []
    steps: list[dict[str, Any]] = []
    retries = [config.retries]

    async def measure(rate: float, **tags: Any) -> bool:
        """One step at `rate`; a miss while other processes kept the CPUs busy is run again."""
        while True:
            await wait_for_quiet(config.max_other_cpu, config.quiet_wait_s, own_cpu)
            result = await step(rate, config.seed + len(steps))
            # Every answer is in; let the server settle before the next rate: a step past capacity
            # leaves the admission's memory of its refusals for a second or two.
            await asyncio.sleep(STEP_REST_S)
            ok = result.meets(config.sla_p95_ms, config.max_error_rate)
            disturbed = not ok and retries[0] > 0 and (result.other_cpu_cores or 0.0) > config.max_other_cpu
            steps.append({**result.to_dict(), "meets_sla": ok, "discarded": disturbed, **tags})
            print(
                f"[{name}] {_describe(result)} -> {'meets' if ok else 'misses'} SLA"
                + (" (other processes busy: run again)" if disturbed else ""),
                flush=True,
            )
            if not disturbed:
                return ok
            retries[0] -= 1

    while (rate := next_rate(history, start=SEARCH_START * bound, max_steps=config.max_steps)) is not None:
        history.append((rate, await measure(rate)))
    cap = capacity(history)
    at = {}
    for fraction in extra_fractions if cap > 0 else ():
        await measure(fraction * cap, fraction=fraction)
        at[f"{fraction:.0%}"] = steps[-1]
    best = next((s for s in steps if s["rate"] == cap and not s["discarded"] and "fraction" not in s), None)
    # Out of steps before a rate failed: the true capacity is higher than the one reported.
    lower_bound = bool(history) and all(ok for _, ok in history)
    return {
        "closed_loop_rps": bound,
        "capacity_rps": cap,
        "capacity_is_lower_bound": lower_bound,
        "at_capacity": best,
        "at_fraction": at,
        "steps": steps,
    }


def _describe(step: StepResult) -> str:
    other = "n/a" if step.other_cpu_cores is None else f"{step.other_cpu_cores:.2f}"
    return (
        f"rate {step.rate:.1f}/s: sent {step.sent}, p50 {step.p50_ms:.0f} ms, p95 {step.p95_ms:.0f} ms, "
        f"p99 {step.p99_ms:.0f} ms, errors {step.error_rate:.1%}, CPU cores: generator "
        f"{step.client_cpu_cores:.2f}, other processes {other}"
    )
